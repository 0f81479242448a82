;; Three tables of 400,000 elements each: 6.4 MB apiece at 16 bytes an
;; element, 19.2 MB together, against a 16 MiB cap.
(module
  (memory (export "memory") 1)
  (table $a 400000 funcref)
  (table $b 400000 funcref)
  (table $c 400000 funcref)
  (func (export "cabi_realloc") (param i32 i32 i32 i32) (result i32)
    i32.const 8)
  (func (export "configure") (param i32 i32) (result i32)
    unreachable)
  (func (export "define-target")
    (param i32 i32 i32 i32 i32 i32 i32)
    unreachable)
  (func (export "evaluate")
    (param i32 i64 i32 i32 i32 i32 i32 i32 i32) (result i32)
    unreachable)
  (func (export "forget-target") (param i32)
    unreachable))
