;; A core consumer whose invoke hands chunkd a string pointer outside its memory.
(module
  (import "chunkd:streams/blobs@0.1.0" "open" (func $open (param i32 i32 i32 i32 i32)))
  (memory (export "memory") 1)
  (func (export "cabi_realloc") (param i32 i32 i32 i32) (result i32) (i32.const 1024))
  (func (export "chunkd:streams/trigger@0.1.0#invoke") (param i32 i32) (result i32)
    (call $open (i32.const 0x7ffffff0) (i32.const 64) (i32.const 0) (i32.const 1) (i32.const 2048))
    (i32.const 4096))
  (func (export "chunkd:streams/chunked-stream-handler@0.1.0#handle-chunk")
    (param i32 i64 i64 i64 i32 i32) (result i32) (i32.const 1))
)
