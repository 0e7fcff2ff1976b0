;; Exports chunkd:streams/trigger but not chunked-stream-handler: still not a consumer.
(component
  (core module $m
    (memory (export "memory") 1)
    (global $bump (mut i32) (i32.const 1024))
    (func (export "realloc") (param i32 i32 i32 i32) (result i32)
      (local $p i32)
      (local.set $p (global.get $bump))
      (global.set $bump (i32.add (global.get $bump) (local.get 3)))
      (local.get $p))
    ;; invoke(list<string>) -> result<string,string>: always ok("") (ptr to a zeroed area)
    (func (export "invoke") (param i32 i32) (result i32) (i32.const 2048)))
  (core instance $i (instantiate $m))
  (func $invoke (param "args" (list string)) (result (result string (error string)))
    (canon lift (core func $i "invoke") (memory (core memory $i "memory")) (realloc (core func $i "realloc"))))
  (instance $trigger (export "invoke" (func $invoke)))
  (export "chunkd:streams/trigger@0.1.0" (instance $trigger))
)
