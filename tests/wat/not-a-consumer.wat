;; A valid component that exports nothing: the wrong world for chunkd.
(component
  (core module $m (func (export "f")))
  (core instance $i (instantiate $m))
)
