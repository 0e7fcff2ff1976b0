/* {{NAME}}: count the lines of every blob named in the job's args (world {{WORLD}}), in C.
 *
 * It implements the consumer-with-events world of wit/streams.wit at the canonical-ABI
 * level (no libc, no wit-bindgen): the export and import names and the flattened
 * signatures below are what wit-bindgen would generate. build.sh compiles it with
 * clang --target=wasm32 -nostdlib into a core module, then componentize.mjs embeds the
 * WIT and wraps it as a component (jco, WASI preview1 reactor adapter for fd_write).
 *   invoke(args): CONTAINER NAME [NAME...]
 *   prints "LINES  NAME" to stdout when each stream completes.
 */
#include <stddef.h>
#include <stdint.h>

#define IMPORT(m, n) __attribute__((import_module(m), import_name(n)))
#define EXPORT(n) __attribute__((export_name(n)))

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

/* ---- the host's functions (canonical ABI, results through a return pointer) ---- */
typedef struct { const char *ptr; size_t len; } str_t;
/* result<own<input-stream>, stream-error>: u8 disc @0; ok: i32 handle @4;
   err: u8 case @4 (0 closed, 1 invalid-argument, 2 failed), string @8 for cases 1 and 2 */
typedef struct { uint8_t disc; uint8_t pad[3]; union { int32_t handle; struct { uint8_t kase; uint8_t p[3]; str_t msg; } err; } v; } open_ret_t;
typedef struct { uint8_t disc; uint8_t pad[3]; struct { uint8_t kase; uint8_t p[3]; str_t msg; } err; } unit_ret_t;

IMPORT("chunkd:streams/blobs@0.1.0", "open")
void blobs_open(const char *c, size_t cl, const char *n, size_t nl, open_ret_t *ret);
IMPORT("chunkd:streams/types@0.1.0", "[method]input-stream.start-chunking-read")
void stream_start(int32_t self, int64_t chunk, int64_t cid, unit_ret_t *ret);
IMPORT("chunkd:streams/types@0.1.0", "[resource-drop]input-stream")
void stream_drop(int32_t self);

typedef struct { const void *buf; size_t len; } iovec_t;
IMPORT("wasi_snapshot_preview1", "fd_write")
int32_t fd_write(int32_t fd, const iovec_t *iovs, size_t n, size_t *written);

/* ---- memory: a small size-class allocator behind cabi_realloc ----
 * Everything the host hands over (args, chunk data, error strings) is freed once used.
 * What others allocate through cabi_realloc (the preview1 adapter's state and stack,
 * when componentized) is never freed by this module, so it stays valid. */
extern unsigned char __heap_base;
static uintptr_t heap_top;
static void *free_lists[33];
typedef struct { uint32_t cls; uint32_t base; uint32_t pad[2]; } hdr_t;  /* 16 bytes before each block */

static uint8_t *bump(size_t n) {
  if (!heap_top) heap_top = ((uintptr_t)&__heap_base + 15) & ~(uintptr_t)15;
  uintptr_t p = heap_top, end = p + n;
  if (end < p) __builtin_trap();
  size_t have = __builtin_wasm_memory_size(0) * 65536;
  if (end > have && __builtin_wasm_memory_grow(0, (end - have + 65535) / 65536) == (size_t)-1)
    __builtin_trap();  /* out of memory: the host ends this instance's calls as trapped */
  heap_top = end;
  return (uint8_t *)p;
}

static void *mem_alloc(size_t size, size_t align) {
  if (align < 16) align = 16;
  size_t need = size + (align > 16 ? align : 0);
  unsigned c = 4;
  while (c < 32 && ((size_t)1 << c) < need) c++;
  if (((size_t)1 << c) < need) __builtin_trap();
  uint8_t *blk;
  if (free_lists[c]) { blk = free_lists[c]; free_lists[c] = *(void **)blk; }
  else blk = bump(16 + ((size_t)1 << c));
  uintptr_t p = ((uintptr_t)blk + 16 + align - 1) & ~(uintptr_t)(align - 1);
  hdr_t *h = (hdr_t *)(p - 16);
  h->cls = c; h->base = (uint32_t)(uintptr_t)blk;
  return (void *)p;
}

static void mem_free(const void *p) {
  if ((uintptr_t)p < (uintptr_t)&__heap_base + 16) return;  /* null, or a zero-size stand-in */
  hdr_t *h = (hdr_t *)((uintptr_t)p - 16);
  unsigned c = h->cls;
  uint8_t *blk = (uint8_t *)(uintptr_t)h->base;
  *(void **)blk = free_lists[c];
  free_lists[c] = blk;
}

EXPORT("cabi_realloc")
void *cabi_realloc(void *old, size_t old_size, size_t align, size_t new_size) {
  if (new_size == 0) { mem_free(old); return (void *)align; }
  void *p = mem_alloc(new_size, align);
  if (old) { memcpy(p, old, old_size < new_size ? old_size : new_size); mem_free(old); }
  return p;
}

/* ---- output ---- */
static char line[4096 + 256];
static size_t line_len;
static void put(const char *s, size_t n) {
  for (size_t i = 0; i < n && line_len < sizeof line; i++) line[line_len++] = s[i];
}
static void puts_(const char *s) { size_t n = 0; while (s[n]) n++; put(s, n); }
static void putu(uint64_t v) {
  char b[24]; int i = 24;
  do { b[--i] = (char)('0' + v % 10); v /= 10; } while (v);
  put(b + i, 24 - i);
}
static void flush_line(void) {  /* one line to stdout */
  put("\n", 1);
  iovec_t io = { line, line_len };
  size_t written;
  fd_write(1, &io, 1, &written);
  line_len = 0;
}

/* ---- streams by correlation-id ---- */
typedef struct { int64_t cid; uint64_t lines; char *name; size_t name_len; } job_stream_t;
#define MAXS 4096
static job_stream_t *streams[MAXS];  /* open addressing on cid; NULL = free */
static int64_t next_cid;

static int find(int64_t cid) {
  for (int k = 0, i = (int)((uint64_t)cid % MAXS); k < MAXS; k++, i = (i + 1) % MAXS)
    if (streams[i] && streams[i]->cid == cid) return i;
  return -1;
}
static int free_slot(int64_t cid) {
  for (int k = 0, i = (int)((uint64_t)cid % MAXS); k < MAXS; k++, i = (i + 1) % MAXS)
    if (!streams[i]) return i;
  return -1;
}
static void forget(int i) {  /* remove slot i, keeping the probe chains intact */
  mem_free(streams[i]->name);
  mem_free(streams[i]);
  streams[i] = 0;
  for (int j = (i + 1) % MAXS; streams[j]; j = (j + 1) % MAXS) {
    job_stream_t *s = streams[j];
    streams[j] = 0;
    streams[free_slot(s->cid)] = s;
  }
}

/* ---- exports ---- */
static struct { uint8_t disc; uint8_t pad[3]; str_t s; } inv_ret;
static char msg[4096 + 256];

static void *reply(int is_err, const char *text, size_t n) {
  if (n > sizeof msg) n = sizeof msg;
  memcpy(msg, text, n);
  inv_ret.disc = (uint8_t)is_err; inv_ret.s.ptr = msg; inv_ret.s.len = n;
  return &inv_ret;
}

static const char *CASES[] = { "closed", "invalid-argument", "failed" };

/* "WHAT CONTAINER/NAME: CASE[: MSG]" into line[]; frees the host's message string */
static void describe_err(const char *what, str_t container, str_t name, uint8_t kase, str_t m) {
  line_len = 0;
  puts_(what); put(" ", 1); put(container.ptr, container.len); put("/", 1); put(name.ptr, name.len);
  puts_(": ");
  puts_(kase < 3 ? CASES[kase] : "?");
  if (kase != 0) { puts_(": "); put(m.ptr, m.len); mem_free(m.ptr); }
}

static void free_args(str_t *args, size_t n) {
  for (size_t i = 0; i < n; i++) mem_free(args[i].ptr);
  mem_free(args);
}

#define CHUNK (1024 * 1024)

EXPORT("chunkd:streams/trigger@0.1.0#invoke")
void *invoke(str_t *args, size_t n) {
  if (n < 2) {
    free_args(args, n);
    line_len = 0;
    puts_("usage: {{NAME}} CONTAINER NAME [NAME...]");
    void *r = reply(1, line, line_len);
    line_len = 0;
    return r;
  }
  str_t container = args[0];
  size_t count = 0;
  for (size_t a = 1; a < n; a++) {
    str_t name = args[a];
    open_ret_t o;
    blobs_open(container.ptr, container.len, name.ptr, name.len, &o);
    if (o.disc) {
      describe_err("no blob", container, name, o.v.err.kase, o.v.err.msg);
      free_args(args, n);
      void *r = reply(1, line, line_len);
      line_len = 0;
      return r;
    }
    int i = free_slot(next_cid);
    if (i < 0) { stream_drop(o.v.handle); free_args(args, n); return reply(1, "too many streams", 16); }
    job_stream_t *s = mem_alloc(sizeof *s, 8);
    s->cid = next_cid++;
    s->lines = 0;
    s->name = mem_alloc(name.len, 1);
    memcpy(s->name, name.ptr, name.len);
    s->name_len = name.len;
    streams[i] = s;
    unit_ret_t r;
    stream_start(o.v.handle, (int64_t)CHUNK, s->cid, &r);
    stream_drop(o.v.handle);  /* the host keeps delivering a started stream */
    if (r.disc) {
      describe_err("cannot read", container, name, r.err.kase, r.err.msg);
      forget(i);
      free_args(args, n);
      void *rr = reply(1, line, line_len);
      line_len = 0;
      return rr;
    }
    count++;
  }
  free_args(args, n);
  line_len = 0;
  puts_("counting lines of "); putu(count); puts_(" blob(s)");
  void *r = reply(0, line, line_len);
  line_len = 0;
  return r;
}

EXPORT("chunkd:streams/chunked-stream-handler@0.1.0#handle-chunk")
int32_t handle_chunk(int32_t stream, int64_t cid, int64_t cur, int64_t total, const uint8_t *data, size_t len) {
  (void)cur; (void)total;
  int i = find(cid);
  if (i >= 0) {
    uint64_t k = 0;
    for (size_t j = 0; j < len; j++) k += data[j] == '\n';
    streams[i]->lines += k;
  }
  mem_free(data);       /* the chunk's buffer is ours once handed over */
  stream_drop(stream);  /* a borrow must be dropped before returning (canonical ABI) */
  return i >= 0;        /* a correlation-id we do not know: cancel it */
}

EXPORT("chunkd:streams/chunked-stream-events@0.1.0#stream-ended")
void stream_ended(int64_t cid, int32_t disc, const char *m, size_t m_len) {
  int i = find(cid);
  if (i >= 0) {
    job_stream_t *s = streams[i];
    line_len = 0;
    if (disc == 0) {
      putu(s->lines); put("  ", 2); put(s->name, s->name_len);
    } else if (disc == 1) {
      puts_("cancelled: "); put(s->name, s->name_len);
    } else {
      puts_("failed: "); put(s->name, s->name_len); puts_(": "); put(m, m_len);
    }
    flush_line();
    forget(i);
  }
  if (disc == 2) mem_free(m);
}
