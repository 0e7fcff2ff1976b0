;; A core guest that prints with wasi_snapshot_preview1.fd_write: two iovecs to stdout
;; (one line split across them), one line to stderr, and a write to fd 7, which must
;; fail with errno 8 (badf). invoke returns ok("badf") or err("no badf: ...").
(module
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 100) "hello from ")
  (data (i32.const 111) "core\n")
  (data (i32.const 120) "to stderr\n")
  (data (i32.const 140) "badf")
  (data (i32.const 150) "no badf")
  ;; iovecs at 200: (100, 11) (111, 5); at 216: (120, 10)
  (data (i32.const 200) "\64\00\00\00\0b\00\00\00\6f\00\00\00\05\00\00\00\78\00\00\00\0a\00\00\00")
  (func (export "cabi_realloc") (param i32 i32 i32 i32) (result i32) (i32.const 1024))
  (func (export "chunkd:streams/trigger@0.1.0#invoke") (param i32 i32) (result i32)
    (drop (call $fd_write (i32.const 1) (i32.const 200) (i32.const 2) (i32.const 300)))
    (drop (call $fd_write (i32.const 2) (i32.const 216) (i32.const 1) (i32.const 304)))
    (if (i32.eq (call $fd_write (i32.const 7) (i32.const 216) (i32.const 1) (i32.const 308)) (i32.const 8))
      (then
        (i32.store8 (i32.const 400) (i32.const 0))
        (i32.store (i32.const 404) (i32.const 140))
        (i32.store (i32.const 408) (i32.const 4)))
      (else
        (i32.store8 (i32.const 400) (i32.const 1))
        (i32.store (i32.const 404) (i32.const 150))
        (i32.store (i32.const 408) (i32.const 7))))
    (i32.const 400))
  (func (export "chunkd:streams/chunked-stream-handler@0.1.0#handle-chunk")
    (param i32 i64 i64 i64 i32 i32) (result i32) (i32.const 1))
)
