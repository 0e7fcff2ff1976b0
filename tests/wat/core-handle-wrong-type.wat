;; A core consumer whose handle-chunk has the wrong type: its fifth parameter (the list's
;; pointer) is an i64. invoke opens local/a.bin and starts a chunked read of 1000-byte
;; chunks (cid 1). chunkd must refuse the call with a clear error, not call it unchecked.
(module
  (import "chunkd:streams/blobs@0.1.0" "open" (func $open (param i32 i32 i32 i32 i32)))
  (import "chunkd:streams/types@0.1.0" "[method]input-stream.start-chunking-read"
    (func $start (param i32 i64 i64 i32)))
  (memory (export "memory") 1)
  (data (i32.const 100) "local")
  (data (i32.const 110) "a.bin")
  (func (export "cabi_realloc") (param i32 i32 i32 i32) (result i32) (i32.const 4096))
  (func (export "chunkd:streams/trigger@0.1.0#invoke") (param i32 i32) (result i32)
    (call $open (i32.const 100) (i32.const 5) (i32.const 110) (i32.const 5) (i32.const 200))
    (call $start (i32.load (i32.const 204)) (i64.const 1000) (i64.const 1) (i32.const 220))
    (i32.store8 (i32.const 300) (i32.const 0))
    (i32.store (i32.const 304) (i32.const 100))
    (i32.store (i32.const 308) (i32.const 2))
    (i32.const 300))
  (func (export "chunkd:streams/chunked-stream-handler@0.1.0#handle-chunk")
    (param i32 i64 i64 i64 i64 i32) (result i32) (i32.const 1))
)
