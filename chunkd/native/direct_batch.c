/* chunkd's direct core-path batch, in C: for each chunk of a batch, ask the guest's
 * cabi_realloc for a buffer, pread the file chunk straight into guest memory, and call
 * handle-chunk (and its post-return), with the epoch deadline re-armed per call.
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

typedef void *(*func_call_fn)(void *ctx, const void *func, const val_t *args, size_t nargs,
                               val_t *results, size_t nresults, void **trap);
typedef uint8_t *(*memory_data_fn)(const void *ctx, const void *mem);
typedef size_t (*memory_size_fn)(const void *ctx, const void *mem);
typedef void (*set_deadline_fn)(void *ctx, uint64_t ticks);

typedef struct {
  func_call_fn func_call;
  memory_data_fn memory_data;
  memory_size_fn memory_size;
  set_deadline_fn set_deadline;
} api_t;

/* one chunk of a batch: inputs, then what happened */
typedef struct {
  int32_t handle;  /* the borrow handle handed to handle-chunk */
  int32_t fd;
  int64_t cid, cur, total;
  int64_t offset, length, advise;
  int32_t status;  /* 0 not reached, 1 answered, 2 skipped, 3 short read, 4 read error, 5 bad pointer, 6 trapped */
  int32_t answer;  /* the guest's bool when answered */
  int64_t detail;  /* short read: bytes got; read error: errno; bad pointer: the pointer */
  double seconds;
} call_t;

/* the instance's CallClock (host/instance.py): restarted before each guest call, so that
 * host time handed back during a call (an import waiting on I/O) counts from that call */
typedef struct { int64_t start, waited; } call_clock_t;

enum { NOT_REACHED, ANSWERED, SKIPPED, SHORT_READ, READ_ERROR, BAD_POINTER, TRAPPED };

size_t chunkd_val_size(void) { return sizeof(val_t); }
size_t chunkd_val_union_offset(void) { return offsetof(val_t, of); }
size_t chunkd_call_size(void) { return sizeof(call_t); }

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static int stopped(const call_t *calls, int64_t i) {  /* an earlier call ended this cid */
  for (int64_t j = 0; j < i; j++) {
    const call_t *c = &calls[j];
    if (c->cid != calls[i].cid) continue;
    if ((c->status == ANSWERED && !c->answer) || c->status == SHORT_READ || c->status == READ_ERROR) return 1;
  }
  return 0;
}

static void set_i32(val_t *v, int32_t x) { v->kind = KIND_I32; v->of.i64 = 0; v->of.i32 = x; }
static void set_i64(val_t *v, int64_t x) { v->kind = KIND_I64; v->of.i64 = x; }

/* Runs calls[0..n) in order; returns how many were reached. On a trap or a wasmtime error
 * the call is marked TRAPPED, *trap or *error is set (owned by the caller) and the batch
 * stops there. `halt` is read before each call (the loop may set it: cluster fencing). */
int64_t chunkd_run_direct(const api_t *api, void *ctx, const void *realloc_f, const void *handle_f,
                          const void *post_f, const void *mem, call_t *calls, int64_t n,
                          uint64_t deadline_ticks, const volatile int32_t *halt,
                          const volatile uint64_t *ticks, call_clock_t *clock,
                          void **trap, void **error) {
  val_t args[6], res[1], post_res[1];
  int64_t stops = 0;  /* calls that ended their cid so far: only then is the batch scanned */
  for (int64_t i = 0; i < n; i++) {
    call_t *c = &calls[i];
    if (c->status == SKIPPED) { c->seconds = 0; continue; }  /* preset: an earlier batch stopped it */
    if (*halt || (stops && stopped(calls, i))) { c->status = SKIPPED; c->seconds = 0; continue; }
    double t0 = now();
    if (c->advise > 0) posix_fadvise(c->fd, c->offset + c->length, c->advise, POSIX_FADV_WILLNEED);
    clock->start = (int64_t)*ticks; clock->waited = 0;
    api->set_deadline(ctx, deadline_ticks);
    set_i32(&args[0], 0); set_i32(&args[1], 0); set_i32(&args[2], 1); set_i32(&args[3], (int32_t)c->length);
    *error = api->func_call(ctx, realloc_f, args, 4, res, 1, trap);
    if (*error || *trap) { c->status = TRAPPED; c->seconds = now() - t0; return i + 1; }
    uint64_t p = (uint32_t)res[0].of.i32;
    size_t size = api->memory_size(ctx, mem);
    if (p + (uint64_t)c->length > size) { c->status = BAD_POINTER; c->detail = (int64_t)p; c->seconds = now() - t0; return i + 1; }
    uint8_t *base = api->memory_data(ctx, mem);  /* after realloc: the memory may have moved */
    int64_t got = 0;
    int err = 0;
    while (got < c->length) {
      ssize_t k = pread(c->fd, base + p + got, (size_t)(c->length - got), c->offset + got);
      if (k < 0) { if (errno == EINTR) continue; err = errno; break; }
      if (k == 0) break;
      got += k;
    }
    if (err) { c->status = READ_ERROR; c->detail = err; c->seconds = now() - t0; stops++; continue; }
    if (got != c->length) { c->status = SHORT_READ; c->detail = got; c->seconds = now() - t0; stops++; continue; }
    clock->start = (int64_t)*ticks; clock->waited = 0;
    api->set_deadline(ctx, deadline_ticks);  /* the read was host time, not the guest's */
    set_i32(&args[0], c->handle); set_i64(&args[1], c->cid); set_i64(&args[2], c->cur);
    set_i64(&args[3], c->total); set_i32(&args[4], (int32_t)p); set_i32(&args[5], (int32_t)c->length);
    *error = api->func_call(ctx, handle_f, args, 6, res, 1, trap);
    if (*error || *trap) { c->status = TRAPPED; c->seconds = now() - t0; return i + 1; }
    int32_t answer = res[0].of.i32;
    if (post_f) {
      set_i32(&args[0], answer);
      *error = api->func_call(ctx, post_f, args, 1, post_res, 0, trap);
      if (*error || *trap) { c->status = TRAPPED; c->seconds = now() - t0; return i + 1; }
    }
    c->status = ANSWERED;
    c->answer = answer != 0;
    if (!c->answer) stops++;
    c->seconds = now() - t0;
  }
  return n;
}
