;; Copies standard input to standard output, 4 KiB at a time (WASI fd_read, fd_write).
(module
  (import "wasi_snapshot_preview1" "fd_read" (func $read (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_write" (func $write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (func (export "_start")
    (i32.store (i32.const 0) (i32.const 1024)) (i32.store (i32.const 4) (i32.const 4096))
    (loop $more
      (i32.store (i32.const 16) (i32.const 0))
      (drop (call $read (i32.const 0) (i32.const 0) (i32.const 1) (i32.const 16)))
      (if (i32.gt_u (i32.load (i32.const 16)) (i32.const 0))
        (then
          (i32.store (i32.const 8) (i32.const 1024))
          (i32.store (i32.const 12) (i32.load (i32.const 16)))
          (drop (call $write (i32.const 1) (i32.const 8) (i32.const 1) (i32.const 20)))
          (br $more))))))
