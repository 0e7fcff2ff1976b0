/* sha256-c: the sha256 example in C, one source for both ways chunkd runs C.
 *
 *   core module  clang --target=wasm32 -nostdlib ... -> sha256_c_core.wasm: chunkd's fast
 *                core path runs it and performs the canonical ABI itself.
 *   component    the same module with the WIT embedded (jco embed) and wrapped as a
 *                component (jco new --wasi-reactor) -> sha256_c.wasm: wasmtime's
 *                component API runs it, like any other component.
 * scripts/build-guests does both; docs/guests.md explains each step.
 *
 * It implements the consumer-with-events world of wit/streams.wit at the canonical-ABI
 * level: the export and import names and the flattened signatures below are what
 * wit-bindgen would generate. Same contract and same output as examples/sha256 (Python)
 * and examples/sha256-js:
 *   invoke(args): [--chunk-size=BYTES] CONTAINER NAME [NAME...]  (default 1 MiB)
 *   prints "<hex>  <name>" (the sha256sum format) to stdout when each stream completes,
 *   "cancelled: <name>" or "failed: <name>: <reason>" otherwise.
 * No libc: stdout is wasi_snapshot_preview1.fd_write, the one WASI function chunkd
 * gives core guests (componentized, the preview1 adapter maps it to wasi:cli/stdout).
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

/* ---- SHA-256 (FIPS 180-4) ---- */
typedef struct { uint32_t h[8]; uint8_t buf[64]; size_t fill; uint64_t length; } sha256_t;
static const uint32_t K[64] = {
  0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
  0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
  0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
  0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
  0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
  0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
  0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
  0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
};
#define ROR(x, n) (((x) >> (n)) | ((x) << (32 - (n))))

static void sha256_init(sha256_t *s) {
  static const uint32_t iv[8] = { 0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a,
                                  0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19 };
  for (int i = 0; i < 8; i++) s->h[i] = iv[i];
  s->fill = 0; s->length = 0;
}

static void sha256_block(uint32_t *h, const uint8_t *p) {
  uint32_t w[64];
  for (int i = 0; i < 16; i++, p += 4)
    w[i] = (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
  for (int i = 16; i < 64; i++) {
    uint32_t s0 = ROR(w[i - 15], 7) ^ ROR(w[i - 15], 18) ^ (w[i - 15] >> 3);
    uint32_t s1 = ROR(w[i - 2], 17) ^ ROR(w[i - 2], 19) ^ (w[i - 2] >> 10);
    w[i] = w[i - 16] + s0 + w[i - 7] + s1;
  }
  uint32_t a = h[0], b = h[1], c = h[2], d = h[3], e = h[4], f = h[5], g = h[6], hh = h[7];
  for (int i = 0; i < 64; i++) {
    uint32_t t1 = hh + (ROR(e, 6) ^ ROR(e, 11) ^ ROR(e, 25)) + ((e & f) ^ (~e & g)) + K[i] + w[i];
    uint32_t t2 = (ROR(a, 2) ^ ROR(a, 13) ^ ROR(a, 22)) + ((a & b) ^ (a & c) ^ (b & c));
    hh = g; g = f; f = e; e = d + t1; d = c; c = b; b = a; a = t1 + t2;
  }
  h[0] += a; h[1] += b; h[2] += c; h[3] += d; h[4] += e; h[5] += f; h[6] += g; h[7] += hh;
}

static void sha256_update(sha256_t *s, const uint8_t *p, size_t n) {
  s->length += n;
  if (s->fill) {
    while (s->fill < 64 && n) { s->buf[s->fill++] = *p++; n--; }
    if (s->fill < 64) return;
    sha256_block(s->h, s->buf);
    s->fill = 0;
  }
  for (; n >= 64; n -= 64, p += 64) sha256_block(s->h, p);
  while (n) { s->buf[s->fill++] = *p++; n--; }
}

static void sha256_hex(sha256_t *s, char out[64]) {
  uint64_t bits = s->length * 8;
  uint8_t pad = 0x80, zero = 0;
  sha256_update(s, &pad, 1);
  while (s->fill != 56) sha256_update(s, &zero, 1);
  uint8_t len[8];
  for (int i = 0; i < 8; i++) len[i] = (uint8_t)(bits >> (56 - 8 * i));
  sha256_update(s, len, 8);
  static const char hex[] = "0123456789abcdef";
  for (int i = 0; i < 8; i++)
    for (int k = 0; k < 8; k++) out[i * 8 + k] = hex[(s->h[i] >> (28 - 4 * k)) & 15];
}

/* ---- streams by correlation-id ---- */
typedef struct { int64_t cid; sha256_t sha; char *name; size_t name_len; } job_stream_t;
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

static int starts_with(str_t a, const char *p) {
  size_t n = 0; while (p[n]) n++;
  if (a.len < n) return 0;
  for (size_t i = 0; i < n; i++) if (a.ptr[i] != p[i]) return 0;
  return 1;
}

static const char *CASES[] = { "closed", "invalid-argument", "failed" };

/* "WHAT NAME: CASE[: MSG]" into line[]; frees the host's message string */
static void describe_err(const char *what, str_t name, uint8_t kase, str_t m) {
  line_len = 0;
  puts_(what); put(" ", 1); put(name.ptr, name.len); puts_(": ");
  puts_(kase < 3 ? CASES[kase] : "?");
  if (kase != 0) { puts_(": "); put(m.ptr, m.len); mem_free(m.ptr); }
}

static void free_args(str_t *args, size_t n) {
  for (size_t i = 0; i < n; i++) mem_free(args[i].ptr);
  mem_free(args);
}

EXPORT("chunkd:streams/trigger@0.1.0#invoke")
void *invoke(str_t *args, size_t n) {
  uint64_t chunk = 1024 * 1024;
  size_t first = 0;
  if (n && starts_with(args[0], "--chunk-size=")) {
    chunk = 0;
    for (size_t i = 13; i < args[0].len; i++) chunk = chunk * 10 + (uint64_t)(args[0].ptr[i] - '0');
    first = 1;
  }
  if (n - first < 2) {
    free_args(args, n);
    const char *u = "usage: sha256-c [--chunk-size=N] CONTAINER NAME [NAME...]";
    size_t ul = 0; while (u[ul]) ul++;
    return reply(1, u, ul);
  }
  str_t container = args[first];
  size_t count = 0;
  for (size_t a = first + 1; a < n; a++) {
    str_t name = args[a];
    open_ret_t o;
    blobs_open(container.ptr, container.len, name.ptr, name.len, &o);
    if (o.disc) {
      describe_err("open", name, o.v.err.kase, o.v.err.msg);
      free_args(args, n);
      return reply(1, line, line_len);
    }
    int i = free_slot(next_cid);
    if (i < 0) { stream_drop(o.v.handle); free_args(args, n); return reply(1, "too many streams", 16); }
    job_stream_t *s = mem_alloc(sizeof *s, 8);
    s->cid = next_cid++;
    sha256_init(&s->sha);
    s->name = mem_alloc(name.len, 1);
    memcpy(s->name, name.ptr, name.len);
    s->name_len = name.len;
    streams[i] = s;
    unit_ret_t r;
    stream_start(o.v.handle, (int64_t)chunk, s->cid, &r);
    stream_drop(o.v.handle);  /* the host keeps delivering a started stream */
    if (r.disc) {
      describe_err("start-chunking-read", name, r.err.kase, r.err.msg);
      forget(i);
      free_args(args, n);
      return reply(1, line, line_len);
    }
    count++;
  }
  free_args(args, n);
  line_len = 0;
  puts_("digesting "); putu(count); puts_(" blob(s) in "); putu(chunk); puts_("-byte chunks");
  void *r = reply(0, line, line_len);
  line_len = 0;
  return r;
}

EXPORT("chunkd:streams/chunked-stream-handler@0.1.0#handle-chunk")
int32_t handle_chunk(int32_t stream, int64_t cid, int64_t cur, int64_t total, const uint8_t *data, size_t len) {
  (void)cur; (void)total;
  int i = find(cid);
  if (i >= 0) sha256_update(&streams[i]->sha, data, len);
  mem_free(data);       /* the chunk's buffer is ours once handed over */
  stream_drop(stream);  /* a borrow must be dropped before returning (canonical ABI) */
  return i >= 0;   /* a correlation-id we do not know: cancel it */
}

EXPORT("chunkd:streams/chunked-stream-events@0.1.0#stream-ended")
void stream_ended(int64_t cid, int32_t disc, const char *m, size_t m_len) {
  int i = find(cid);
  if (i >= 0) {
    job_stream_t *s = streams[i];
    line_len = 0;
    if (disc == 0) {
      char hex[64];
      sha256_hex(&s->sha, hex);
      put(hex, 64); put("  ", 2); put(s->name, s->name_len);
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
