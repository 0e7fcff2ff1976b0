;; A component whose handle-chunk has the wrong type: (correlation-id: u64, data: list<u8>)
;; -> bool, without the stream borrow and the chunk numbers. chunkd must refuse it at load
;; time, naming the export, its type and the one expected.
(component
  (core module $m
    (memory (export "memory") 1)
    (func (export "realloc") (param i32 i32 i32 i32) (result i32) (i32.const 1024))
    (func (export "handle") (param i64 i32 i32) (result i32) (i32.const 1))
    (func (export "invoke") (param i32 i32) (result i32) (i32.const 2048)))
  (core instance $i (instantiate $m))
  (func $handle (param "correlation-id" u64) (param "data" (list u8)) (result bool)
    (canon lift (core func $i "handle") (memory (core memory $i "memory")) (realloc (core func $i "realloc"))))
  (func $invoke (param "args" (list string)) (result (result string (error string)))
    (canon lift (core func $i "invoke") (memory (core memory $i "memory")) (realloc (core func $i "realloc"))))
  (instance $handler (export "handle-chunk" (func $handle)))
  (instance $trigger (export "invoke" (func $invoke)))
  (export "chunkd:streams/chunked-stream-handler@0.1.0" (instance $handler))
  (export "chunkd:streams/trigger@0.1.0" (instance $trigger))
)
