;; Two extra memories of 200 pages (12.5 MiB) each besides the one the
;; canonical ABI uses: each is under a 16 MiB cap, together they are not.
(module
  (memory (export "memory") 1)
  (memory $more 200)
  (memory $yet_more 200)
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
