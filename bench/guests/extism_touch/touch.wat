;; An Extism plugin that touches every byte of its input (the same work as the
;; chunkd bench guests): 8 bytes at a time through the Extism kernel's
;; input_load_u64, the tail byte by byte, folded into a global so nothing is skipped.
(module
  (import "extism:host/env" "input_length" (func $input_length (result i64)))
  (import "extism:host/env" "input_load_u64" (func $input_load_u64 (param i64) (result i64)))
  (import "extism:host/env" "input_load_u8" (func $input_load_u8 (param i64) (result i32)))
  (memory (export "memory") 1)
  (global $acc (mut i64) (i64.const 0))
  (func (export "touch") (result i32)
    (local $n i64) (local $i i64) (local $x i64)
    (local.set $n (call $input_length))
    (block $done
      (loop $l
        (br_if $done (i64.gt_u (i64.add (local.get $i) (i64.const 8)) (local.get $n)))
        (local.set $x (i64.xor (local.get $x) (call $input_load_u64 (local.get $i))))
        (local.set $i (i64.add (local.get $i) (i64.const 8)))
        (br $l)))
    (block $tail
      (loop $t
        (br_if $tail (i64.ge_u (local.get $i) (local.get $n)))
        (local.set $x (i64.xor (local.get $x) (i64.extend_i32_u (call $input_load_u8 (local.get $i)))))
        (local.set $i (i64.add (local.get $i) (i64.const 1)))
        (br $t)))
    (global.set $acc (i64.xor (global.get $acc) (local.get $x)))
    (i32.const 0)))
