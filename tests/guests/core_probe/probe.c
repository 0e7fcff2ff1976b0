/* core_probe: a core wasm module implementing chunkd's consumer-with-events world
 * at the canonical-ABI level (what wit-bindgen emits before componentization),
 * written by hand so the fast core path can be tested and benchmarked.
 *
 * invoke(args):
 *   [CONTAINER, NAME, CHUNK, CID, STOP_AT, MODE]  open + start-chunking-read;
 *        STOP_AT: handle-chunk answers false at that chunk (-1: never);
 *        MODE "log": log every chunk with an FNV-1a hash of the stream so far,
 *             "quiet": only touch every byte (benchmarks),
 *             "receive": only receive the bytes, no pass over them (benchmarks: the data
 *             path alone, as PERF-BASELINE's minimal guests measured it),
 *             "trapat" / "loopat": log, and trap / loop forever at chunk STOP_AT,
 *             "bombat": log, and grow memory without end at chunk STOP_AT (a memory bomb)
 *   ["read", CONTAINER, NAME, LEN]   pull LEN bytes, log "read N HASH" or the error
 *   ["again", CID, CHUNK]            start-chunking-read again on the last stream
 *   ["many", CONTAINER, NAME, CHUNK, COUNT]  COUNT quiet streams of one blob (cids 0..COUNT-1)
 *   ["report"]  returns everything logged since the last report
 *   ["fail"]    returns err("asked to fail")
 *   ["trap"]    traps
 *   ["loop"]    loops forever
 * Log lines: "start CID ok" | "start CID err DISC MSG", "chunk CID CUR TOTAL LEN HASH",
 *            "ended CID DISC HASH [MSG]".
 */
#include <stdint.h>
#include <stddef.h>

typedef struct { const char *ptr; size_t len; } str_t;

/* the compiler emits calls to these for struct copies and loops */
void *memcpy(void *d, const void *s, size_t n) {
  unsigned char *dd = d; const unsigned char *ss = s;
  while (n--) *dd++ = *ss++;
  return d;
}
void *memset(void *d, int c, size_t n) {
  unsigned char *dd = d;
  while (n--) *dd++ = (unsigned char)c;
  return d;
}

#define IMPORT(m, n) __attribute__((import_module(m), import_name(n)))
#define EXPORT(n) __attribute__((export_name(n)))

IMPORT("chunkd:streams/blobs@0.1.0", "open")
void blobs_open(const char *c, size_t cl, const char *n, size_t nl, void *ret);
IMPORT("chunkd:streams/types@0.1.0", "[method]input-stream.start-chunking-read")
void stream_start(int32_t self, int64_t chunk, int64_t cid, void *ret);
IMPORT("chunkd:streams/types@0.1.0", "[method]input-stream.read")
void stream_read(int32_t self, int64_t len, void *ret);
IMPORT("chunkd:streams/types@0.1.0", "[resource-drop]input-stream")
void stream_drop(int32_t self);

/* ---- a bump heap, reset at the end of every export call ---- */
extern unsigned char __heap_base;
static uintptr_t heap_top = 0;

static void heap_reset(void) { heap_top = (uintptr_t)&__heap_base; }

EXPORT("cabi_realloc")
void *cabi_realloc(void *old, size_t old_size, size_t align, size_t new_size) {
  if (!heap_top) heap_reset();
  uintptr_t p = (heap_top + align - 1) & ~(uintptr_t)(align - 1);
  uintptr_t end = p + new_size;
  size_t have = __builtin_wasm_memory_size(0) * 65536;
  if (end > have) {
    size_t pages = (end - have + 65535) / 65536;
    if (__builtin_wasm_memory_grow(0, pages) == (size_t)-1) __builtin_trap();
  }
  heap_top = end;
  unsigned char *d = (unsigned char *)p, *s = (unsigned char *)old;
  for (size_t i = 0; old && i < old_size && i < new_size; i++) d[i] = s[i];
  return (void *)p;
}

/* ---- a log the host reads back through invoke(["report"]) ---- */
static char logbuf[1 << 16];
static size_t loglen = 0;
static void put(const char *s, size_t n) {
  for (size_t i = 0; i < n && loglen < sizeof logbuf; i++) logbuf[loglen++] = s[i];
}
static void puts_(const char *s) { size_t n = 0; while (s[n]) n++; put(s, n); }
static void putu(uint64_t v) {
  char b[24]; int i = 24;
  do { b[--i] = '0' + v % 10; v /= 10; } while (v);
  put(b + i, 24 - i);
}
static void puti(int64_t v) { if (v < 0) { put("-", 1); v = -v; } putu((uint64_t)v); }

static int eq(str_t a, const char *b) {
  size_t n = 0; while (b[n]) n++;
  if (a.len != n) return 0;
  for (size_t i = 0; i < n; i++) if (a.ptr[i] != b[i]) return 0;
  return 1;
}
static int64_t num(str_t a) {
  int64_t v = 0, sign = 1; size_t i = 0;
  if (a.len && a.ptr[0] == '-') { sign = -1; i = 1; }
  for (; i < a.len; i++) v = v * 10 + (a.ptr[i] - '0');
  return v * sign;
}

/* ---- per correlation-id state ---- */
#define MAXS 4096
static struct { int64_t cid; int64_t stop_at; uint32_t hash; int used; } st[MAXS];
static int quiet = 0;
static int touch = 1;  /* quiet mode: pass over every byte ("receive": no) */
static int64_t trap_at = -1, loop_at = -1, bomb_at = -1;
static int32_t last_handle = -1;
static uint64_t touched = 0;

static int slot(int64_t cid) {  /* open addressing on cid */
  uint32_t h = (uint32_t)((uint64_t)cid % MAXS);
  for (int k = 0; k < MAXS; k++) {
    int i = (h + k) % MAXS;
    if (st[i].used && st[i].cid == cid) return i;
    if (!st[i].used) { st[i].used = 1; st[i].cid = cid; st[i].hash = 2166136261u; st[i].stop_at = -1; return i; }
  }
  __builtin_trap();
}
static uint32_t fnv(uint32_t h, const uint8_t *p, size_t n) {
  for (size_t i = 0; i < n; i++) { h ^= p[i]; h *= 16777619u; }
  return h;
}

static void log_err(const uint8_t *ret_at4) {  /* stream-error at offset 4 of a result */
  put(" err ", 5); putu(ret_at4[0]);
  if (ret_at4[0] != 0) {
    const str_t *m = (const str_t *)(ret_at4 + 4);
    put(" ", 1); put(m->ptr, m->len);
  }
}

/* ---- exports ---- */
static struct { uint8_t disc; uint8_t pad[3]; str_t s; } inv_ret;

static void *ret_ok(const char *s) { inv_ret.disc = 0; inv_ret.s.ptr = s; inv_ret.s.len = 0; while (s[inv_ret.s.len]) inv_ret.s.len++; return &inv_ret; }

EXPORT("chunkd:streams/trigger@0.1.0#invoke")
void *invoke(str_t *args, size_t n) {
  if (n == 1 && eq(args[0], "report")) {
    inv_ret.disc = 0; inv_ret.s.ptr = logbuf; inv_ret.s.len = loglen;
    return &inv_ret;
  }
  if (n == 1 && eq(args[0], "fail")) { inv_ret.disc = 1; inv_ret.s.ptr = "asked to fail"; inv_ret.s.len = 13; return &inv_ret; }
  if (n == 1 && eq(args[0], "trap")) __builtin_trap();
  if (n == 1 && eq(args[0], "loop")) { volatile int x = 1; while (x) {} }
  _Alignas(8) uint8_t ret[16];
  if (n == 4 && eq(args[0], "read")) {
    blobs_open(args[1].ptr, args[1].len, args[2].ptr, args[2].len, ret);
    if (ret[0]) { puts_("open"); log_err(ret + 4); puts_("\n"); return ret_ok("open failed"); }
    int32_t h = *(int32_t *)(ret + 4);
    stream_read(h, num(args[3]), ret);
    puts_("read");
    if (ret[0]) log_err(ret + 4);
    else { const str_t *l = (const str_t *)(ret + 4); put(" ", 1); putu(l->len); put(" ", 1);
           putu(fnv(2166136261u, (const uint8_t *)l->ptr, l->len)); }
    puts_("\n");
    stream_drop(h);
    return ret_ok("read");
  }
  if (n == 5 && eq(args[0], "many")) {  /* COUNT streams of one blob, quiet: scheduling benchmarks */
    quiet = 1;
    touch = 1;
    int64_t count = num(args[4]);
    for (int64_t c = 0; c < count; c++) {
      blobs_open(args[1].ptr, args[1].len, args[2].ptr, args[2].len, ret);
      if (ret[0]) return ret_ok("open failed");
      int32_t h = *(int32_t *)(ret + 4);
      int s = slot(c); st[s].stop_at = -1;
      stream_start(h, num(args[3]), c, ret);
      stream_drop(h);
      if (ret[0]) { st[s].used = 0; return ret_ok("start failed"); }
    }
    return ret_ok("many");
  }
  if (n == 3 && eq(args[0], "again")) {
    stream_start(last_handle, num(args[2]), num(args[1]), ret);
    puts_("start "); puti(num(args[1]));
    if (ret[0]) log_err(ret + 4); else puts_(" ok");
    puts_("\n");
    return ret_ok("again");
  }
  if (n != 6) { inv_ret.disc = 1; inv_ret.s.ptr = "bad args"; inv_ret.s.len = 8; return &inv_ret; }
  quiet = eq(args[5], "quiet") || eq(args[5], "receive");
  touch = !eq(args[5], "receive");
  trap_at = eq(args[5], "trapat") ? num(args[4]) : -1;
  loop_at = eq(args[5], "loopat") ? num(args[4]) : -1;
  bomb_at = eq(args[5], "bombat") ? num(args[4]) : -1;
  blobs_open(args[0].ptr, args[0].len, args[1].ptr, args[1].len, ret);
  if (ret[0]) { puts_("open"); log_err(ret + 4); puts_("\n"); return ret_ok("open failed"); }
  int32_t h = *(int32_t *)(ret + 4);
  int64_t cid = num(args[3]);
  int s = slot(cid);
  st[s].stop_at = num(args[4]);
  st[s].hash = 2166136261u;
  stream_start(h, num(args[2]), cid, ret);
  if (!quiet) { puts_("start "); puti(cid); if (ret[0]) log_err(ret + 4); else puts_(" ok"); puts_("\n"); }
  if (ret[0]) st[s].used = 0;
  last_handle = h;  /* kept (not dropped) so "again" can reuse it */
  return ret_ok("started");
}

EXPORT("cabi_post_chunkd:streams/trigger@0.1.0#invoke")
void post_invoke(void *ret) {
  if (ret == &inv_ret && inv_ret.s.ptr == logbuf) loglen = 0;  /* a report was read */
  heap_reset();
}

EXPORT("chunkd:streams/chunked-stream-handler@0.1.0#handle-chunk")
int32_t handle_chunk(int32_t stream, int64_t cid, int64_t cur, int64_t total, const uint8_t *data, size_t len) {
  stream_drop(stream);  /* the borrow ends before the call does (componentized, the canonical ABI requires it) */
  int s = slot(cid);
  if (cur == trap_at) __builtin_trap();
  if (cur == loop_at) { volatile int x = 1; while (x) {} }
  if (cur == bomb_at) for (;;) if (__builtin_wasm_memory_grow(0, 256) == (size_t)-1) __builtin_trap();
  int more = st[s].stop_at < 0 || cur < st[s].stop_at || trap_at >= 0 || loop_at >= 0 || bomb_at >= 0;
  if (quiet && !touch) {
    touched ^= len;  /* receive only */
  } else if (quiet) {  /* touch every byte, 8 at a time (vectorized by the compiler) */
    uint64_t acc = 0; size_t i = 0;
    for (; i + 8 <= len; i += 8) acc ^= *(const uint64_t *)(data + i);
    for (; i < len; i++) acc ^= data[i];
    touched ^= acc;
  } else {
    st[s].hash = fnv(st[s].hash, data, len);
    puts_("chunk "); puti(cid); put(" ", 1); puti(cur); put(" ", 1); puti(total); put(" ", 1);
    putu(len); put(" ", 1); putu(st[s].hash); puts_("\n");
  }
  heap_reset();  /* the chunk's buffer is ours to free */
  return more;
}

EXPORT("chunkd:streams/chunked-stream-events@0.1.0#stream-ended")
void stream_ended(int64_t cid, int32_t disc, const char *msg, size_t msg_len) {
  int s = slot(cid);
  if (!quiet) {
    puts_("ended "); puti(cid); put(" ", 1); putu((uint32_t)disc); put(" ", 1); putu(st[s].hash);
    if (disc == 2) { put(" ", 1); put(msg, msg_len); }
    puts_("\n");
  }
  st[s].used = 0;
  heap_reset();
}
