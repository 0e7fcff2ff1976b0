;; A core module that imports WASI beyond fd_write: core guests get only chunkd's
;; functions and wasi_snapshot_preview1.fd_write (stdout and stderr).
(module
  (import "wasi_snapshot_preview1" "path_open"
    (func (param i32 i32 i32 i32 i32 i64 i64 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (func (export "cabi_realloc") (param i32 i32 i32 i32) (result i32) (i32.const 0))
  (func (export "chunkd:streams/trigger@0.1.0#invoke") (param i32 i32) (result i32) (i32.const 0))
  (func (export "chunkd:streams/chunked-stream-handler@0.1.0#handle-chunk")
    (param i32 i64 i64 i64 i32 i32) (result i32) (i32.const 1))
)
