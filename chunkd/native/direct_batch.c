/* chunkd's direct core-path batch, in C. A batch is a list of runs (a stream's
 * consecutive chunks); for each chunk of a run, ask the guest's cabi_realloc for a
 * buffer, pread the file chunk straight into guest memory, and call handle-chunk (and its
 * post-return), with the epoch deadline re-armed per call.
 *
 * Python (chunkd/host/native.py) loads this with ctypes, which releases the GIL for the
 * whole batch, and hands it wasmtime's own C functions as pointers: this file needs no
 * wasmtime header and links against nothing but libc. The value layout (wasmtime_val_t:
 * 32 bytes, kind at 0, the union at 8) is checked against wasmtime-py's at load time.
 * Same semantics as the Python loop in host/instance.py (_run_batch), which stays the
 * reference and the fallback.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>
#include <unistd.h>

typedef struct {
  uint8_t kind;
  uint8_t pad_[7];
  union { int32_t i32; int64_t i64; uint8_t raw[24]; } of;
} val_t;

enum { KIND_I32 = 0, KIND_I64 = 1 };

/* wasmtime_val_raw_t: what wasmtime_func_call_unchecked reads arguments from and writes
 * results into (16 bytes; i32 and i64 at offset 0) */
typedef union { int32_t i32; int64_t i64; uint8_t bytes[16]; } raw_t;

typedef void *(*func_call_fn)(void *ctx, const void *func, const val_t *args, size_t nargs,
                               val_t *results, size_t nresults, void **trap);
typedef void *(*func_call_unchecked_fn)(void *ctx, const void *func, raw_t *args_and_results, size_t n,
                                         void **trap);
typedef uint8_t *(*memory_data_fn)(const void *ctx, const void *mem);
typedef size_t (*memory_size_fn)(const void *ctx, const void *mem);
typedef void (*set_deadline_fn)(void *ctx, uint64_t ticks);

typedef struct {
  func_call_fn func_call;
  memory_data_fn memory_data;
  memory_size_fn memory_size;
  set_deadline_fn set_deadline;
  func_call_unchecked_fn func_call_unchecked;  /* used when `unchecked`: types verified by the caller */
} api_t;

/* one item of a batch: a run of `count` consecutive chunks of one stream (DirectRun in
 * host/instance.py), one handle-chunk call per chunk; then what happened */
typedef struct {
  int32_t handle;  /* the borrow handle handed to handle-chunk */
  int32_t fd;
  int64_t cid, first, total;  /* correlation-id, the run's first chunk, total-chunks */
  int64_t offset, chunk_size, count, last_length;
  int64_t hint_offset, hint_length;  /* posix_fadvise(WILLNEED) over this range first (length 0: none) */
  int32_t status;  /* 0 not reached, 1 answered, 2 skipped, 3 short read, 4 read error, 5 bad pointer,
                      6 trapped, 7 halted */
  int32_t answer;  /* the last call's bool (answered: the run's calls before it said true) */
  int64_t made;    /* calls that returned */
  int64_t detail;  /* short read: bytes got; read error: errno; bad pointer: the pointer */
  int64_t at;      /* the offset of the chunk a read failed at, or a bad pointer's length */
  double seconds;
} run_t;

/* the instance's CallClock (host/instance.py): restarted before each guest call, so that
 * host time handed back during a call (an import waiting on I/O) counts from that call */
typedef struct { int64_t start, waited; } call_clock_t;

enum { NOT_REACHED, ANSWERED, SKIPPED, SHORT_READ, READ_ERROR, BAD_POINTER, TRAPPED, HALTED };

size_t chunkd_val_size(void) { return sizeof(val_t); }
size_t chunkd_val_union_offset(void) { return offsetof(val_t, of); }
size_t chunkd_run_size(void) { return sizeof(run_t); }
size_t chunkd_raw_size(void) { return sizeof(raw_t); }

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static int stopped(const run_t *runs, int64_t i) {  /* an earlier run ended this cid */
  for (int64_t j = 0; j < i; j++) {
    const run_t *r = &runs[j];
    if (r->cid != runs[i].cid) continue;
    if ((r->status == ANSWERED && !r->answer) || r->status == SHORT_READ || r->status == READ_ERROR) return 1;
  }
  return 0;
}

static void set_i32(val_t *v, int32_t x) { v->kind = KIND_I32; v->of.i64 = 0; v->of.i32 = x; }
static void set_i64(val_t *v, int64_t x) { v->kind = KIND_I64; v->of.i64 = x; }

/* the three guest calls of a chunk, through wasmtime_func_call_unchecked when the caller
 * verified the exports' exact types (cabi_realloc (i32 i32 i32 i32) -> i32, handle-chunk
 * (i32 i64 i64 i64 i32 i32) -> i32, its post-return (i32) -> ()), else the checked call */
typedef struct {
  const api_t *api;
  void *ctx;
  int unchecked;
  const void *realloc_f, *handle_f, *post_f;
} guest_t;

static void *call_realloc(const guest_t *g, int64_t length, uint32_t *ptr, void **trap) {
  void *error;
  if (g->unchecked) {
    raw_t a[4];
    a[0].i64 = 0; a[1].i64 = 0; a[2].i64 = 1; a[3].i64 = 0; a[3].i32 = (int32_t)length;
    error = g->api->func_call_unchecked(g->ctx, g->realloc_f, a, 4, trap);
    *ptr = (uint32_t)a[0].i32;
  } else {
    val_t args[4], res[1];
    set_i32(&args[0], 0); set_i32(&args[1], 0); set_i32(&args[2], 1); set_i32(&args[3], (int32_t)length);
    error = g->api->func_call(g->ctx, g->realloc_f, args, 4, res, 1, trap);
    *ptr = (uint32_t)res[0].of.i32;
  }
  return error;
}

static void *call_handle(const guest_t *g, const run_t *r, int64_t cur, uint32_t p, int64_t length,
                         int32_t *answer, void **trap) {
  void *error;
  if (g->unchecked) {
    raw_t a[6];
    a[0].i64 = 0; a[0].i32 = r->handle;
    a[1].i64 = r->cid; a[2].i64 = cur; a[3].i64 = r->total;
    a[4].i64 = 0; a[4].i32 = (int32_t)p;
    a[5].i64 = 0; a[5].i32 = (int32_t)length;
    error = g->api->func_call_unchecked(g->ctx, g->handle_f, a, 6, trap);
    *answer = a[0].i32;
  } else {
    val_t args[6], res[1];
    set_i32(&args[0], r->handle); set_i64(&args[1], r->cid); set_i64(&args[2], cur);
    set_i64(&args[3], r->total); set_i32(&args[4], (int32_t)p); set_i32(&args[5], (int32_t)length);
    error = g->api->func_call(g->ctx, g->handle_f, args, 6, res, 1, trap);
    *answer = res[0].of.i32;
  }
  if (error || *trap || !g->post_f) return error;
  if (g->unchecked) {
    raw_t a[1];
    a[0].i64 = 0; a[0].i32 = *answer;
    return g->api->func_call_unchecked(g->ctx, g->post_f, a, 1, trap);
  }
  val_t args[1], res[1];
  set_i32(&args[0], *answer);
  return g->api->func_call(g->ctx, g->post_f, args, 1, res, 0, trap);
}

/* Runs runs[0..n) in order; returns how many were reached. On a trap or a wasmtime error
 * the run is marked TRAPPED (`made` says how many of its calls returned before), *trap or
 * *error is set (owned by the caller) and the batch stops there. `halt` is read before
 * each call (the loop may set it: cluster fencing). */
int64_t chunkd_run_direct(const api_t *api, void *ctx, const void *realloc_f, const void *handle_f,
                          const void *post_f, const void *mem, run_t *runs, int64_t n,
                          uint64_t deadline_ticks, const volatile int32_t *halt,
                          const volatile uint64_t *ticks, call_clock_t *clock,
                          void **trap, void **error, int32_t unchecked) {
  guest_t g = {api, ctx, unchecked != 0, realloc_f, handle_f, post_f};
  int64_t stops = 0;  /* runs that ended their cid so far: only then is the batch scanned */
  for (int64_t i = 0; i < n; i++) {
    run_t *r = &runs[i];
    r->made = 0;
    r->seconds = 0;
    if (r->status == SKIPPED) continue;  /* preset: an earlier batch stopped it */
    if (*halt) { r->status = HALTED; continue; }
    if (stops && stopped(runs, i)) { r->status = SKIPPED; continue; }
    double t0 = now();
    if (r->hint_length > 0) posix_fadvise(r->fd, r->hint_offset, r->hint_length, POSIX_FADV_WILLNEED);
    r->status = ANSWERED;
    r->answer = 1;
    for (int64_t j = 0; j < r->count; j++) {
      if (*halt) { r->status = HALTED; break; }
      int64_t length = j < r->count - 1 ? r->chunk_size : r->last_length;
      int64_t offset = r->offset + j * r->chunk_size;
      clock->start = (int64_t)*ticks; clock->waited = 0;
      api->set_deadline(ctx, deadline_ticks);
      uint32_t p = 0;
      *error = call_realloc(&g, length, &p, trap);
      if (*error || *trap) { r->status = TRAPPED; r->seconds = now() - t0; return i + 1; }
      size_t size = api->memory_size(ctx, mem);
      if ((uint64_t)p + (uint64_t)length > size) {
        r->status = BAD_POINTER; r->detail = (int64_t)p; r->at = length; r->seconds = now() - t0; return i + 1;
      }
      uint8_t *base = api->memory_data(ctx, mem);  /* after realloc: the memory may have moved */
      int64_t got = 0;
      int err = 0;
      while (got < length) {
        ssize_t k = pread(r->fd, base + p + got, (size_t)(length - got), offset + got);
        if (k < 0) { if (errno == EINTR) continue; err = errno; break; }
        if (k == 0) break;
        got += k;
      }
      if (err) { r->status = READ_ERROR; r->detail = err; r->at = offset; stops++; break; }
      if (got != length) { r->status = SHORT_READ; r->detail = got; r->at = offset; stops++; break; }
      clock->start = (int64_t)*ticks; clock->waited = 0;
      api->set_deadline(ctx, deadline_ticks);  /* the read was host time, not the guest's */
      int32_t answer = 0;
      *error = call_handle(&g, r, r->first + j, p, length, &answer, trap);
      if (*error || *trap) { r->status = TRAPPED; r->seconds = now() - t0; return i + 1; }
      r->made = j + 1;
      if (!answer) { r->answer = 0; stops++; break; }
    }
    r->seconds = now() - t0;
  }
  return n;
}
