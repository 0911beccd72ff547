;; primes.wat: count the primes below N with a sieve of Eratosthenes, as a WASI command.
;;
;;     primes.wat [N]        N from 0 to 1000000000; 1000000 when not given
;;
;; Writes "primes below N: COUNT" to primes.txt in the work dir (WASI descriptor 3,
;; preopened as /work) and to stdout. The sieve takes one byte per number, above the first
;; 64 KiB page; memory grows to fit it, so a memory limit too small for N ends the run with
;; "primes: out of memory" on stderr and a trap. Exit codes: 0 done, 1 primes.txt could
;; not be written, 2 bad arguments.
(module
  (import "wasi_snapshot_preview1" "args_sizes_get"
    (func $args_sizes_get (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "args_get" (func $args_get (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "path_open"
    (func $path_open (param i32 i32 i32 i32 i32 i64 i64 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_close" (func $fd_close (param i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit" (func $proc_exit (param i32)))

  ;; Memory layout:
  ;;   0      one iovec (pointer, length)     8  bytes written    12  opened fd
  ;;   16     argc                            20  size of the argv strings
  ;;   1024   argv pointers (at most 256)      2048  argv strings (at most 4 KiB)
  ;;   20480  the line being built             28672  decimal digits, written backwards
  ;;   32768  constant text                    65536  the sieve: byte k is 1 when k is composite
  (memory (export "memory") 1)
  (data (i32.const 32768) "primes: N must be a number from 0 to 1000000000\n")
  (data (i32.const 32832) "primes: out of memory\n")
  (data (i32.const 32896) "primes: cannot write primes.txt\n")
  (data (i32.const 32960) "primes below ")
  (data (i32.const 32992) ": ")
  (data (i32.const 33024) "primes.txt")

  (global $sieve i32 (i32.const 65536))

  ;; Write all of [ptr, ptr + len) to fd; the WASI errno, or 0.
  (func $write_all (param $fd i32) (param $ptr i32) (param $len i32) (result i32)
    (local $errno i32)
    (local $written i32)
    (block $done
      (loop $more
        (br_if $done (i32.eqz (local.get $len)))
        (i32.store (i32.const 0) (local.get $ptr))
        (i32.store (i32.const 4) (local.get $len))
        (local.set $errno
          (call $fd_write (local.get $fd) (i32.const 0) (i32.const 1) (i32.const 8)))
        (if (local.get $errno) (then (return (local.get $errno))))
        (local.set $written (i32.load (i32.const 8)))
        (if (i32.eqz (local.get $written)) (then (return (i32.const 29))))
        (local.set $ptr (i32.add (local.get $ptr) (local.get $written)))
        (local.set $len (i32.sub (local.get $len) (local.get $written)))
        (br $more)))
    (i32.const 0))

  (func $append (param $dst i32) (param $src i32) (param $len i32) (result i32)
    (memory.copy (local.get $dst) (local.get $src) (local.get $len))
    (i32.add (local.get $dst) (local.get $len)))

  (func $append_decimal (param $dst i32) (param $value i32) (result i32)
    (local $p i32)
    (local.set $p (i32.const 28692))
    (loop $digit
      (local.set $p (i32.sub (local.get $p) (i32.const 1)))
      (i32.store8 (local.get $p)
        (i32.add (i32.const 48) (i32.rem_u (local.get $value) (i32.const 10))))
      (local.set $value (i32.div_u (local.get $value) (i32.const 10)))
      (br_if $digit (local.get $value)))
    (call $append (local.get $dst) (local.get $p) (i32.sub (i32.const 28692) (local.get $p))))

  (func $die (param $message i32) (param $length i32) (param $code i32)
    (drop (call $write_all (i32.const 2) (local.get $message) (local.get $length)))
    (call $proc_exit (local.get $code))
    (unreachable))

  ;; N from argv[1] (decimal digits only), or 1000000.
  (func $limit (result i32)
    (local $p i32)
    (local $c i32)
    (local $n i64)
    (if (call $args_sizes_get (i32.const 16) (i32.const 20))
      (then (call $die (i32.const 32768) (i32.const 48) (i32.const 2))))
    (if (i32.lt_u (i32.load (i32.const 16)) (i32.const 2)) (then (return (i32.const 1000000))))
    (if (i32.or (i32.gt_u (i32.load (i32.const 16)) (i32.const 2))
                (i32.gt_u (i32.load (i32.const 20)) (i32.const 4096)))
      (then (call $die (i32.const 32768) (i32.const 48) (i32.const 2))))
    (drop (call $args_get (i32.const 1024) (i32.const 2048)))
    (local.set $p (i32.load (i32.const 1028)))
    (if (i32.eqz (i32.load8_u (local.get $p)))
      (then (call $die (i32.const 32768) (i32.const 48) (i32.const 2))))
    (block $done
      (loop $digit
        (local.set $c (i32.load8_u (local.get $p)))
        (br_if $done (i32.eqz (local.get $c)))
        (if (i32.gt_u (i32.sub (local.get $c) (i32.const 48)) (i32.const 9))
          (then (call $die (i32.const 32768) (i32.const 48) (i32.const 2))))
        (local.set $n
          (i64.add (i64.mul (local.get $n) (i64.const 10))
            (i64.extend_i32_u (i32.sub (local.get $c) (i32.const 48)))))
        (if (i64.gt_u (local.get $n) (i64.const 1000000000))
          (then (call $die (i32.const 32768) (i32.const 48) (i32.const 2))))
        (local.set $p (i32.add (local.get $p) (i32.const 1)))
        (br $digit)))
    (i32.wrap_i64 (local.get $n)))

  ;; Grow memory to hold the sieve for numbers below n; trap when it may not grow.
  (func $make_room (param $n i32)
    (local $pages i32)
    (local.set $pages
      (i32.shr_u (i32.add (i32.add (global.get $sieve) (local.get $n)) (i32.const 65535))
        (i32.const 16)))
    (if (i32.gt_u (local.get $pages) (memory.size))
      (then
        (if (i32.eq (memory.grow (i32.sub (local.get $pages) (memory.size))) (i32.const -1))
          (then
            (drop (call $write_all (i32.const 2) (i32.const 32832) (i32.const 22)))
            (unreachable))))))

  ;; The number of primes below n.
  (func $count_primes (param $n i32) (result i32)
    (local $i i32)
    (local $j i32)
    (local $count i32)
    (local.set $i (i32.const 2))
    (block $sieved
      (loop $next_i
        (br_if $sieved (i32.ge_u (i32.mul (local.get $i) (local.get $i)) (local.get $n)))
        (if (i32.eqz (i32.load8_u (i32.add (global.get $sieve) (local.get $i))))
          (then
            (local.set $j (i32.mul (local.get $i) (local.get $i)))
            (block $crossed
              (loop $next_j
                (br_if $crossed (i32.ge_u (local.get $j) (local.get $n)))
                (i32.store8 (i32.add (global.get $sieve) (local.get $j)) (i32.const 1))
                (local.set $j (i32.add (local.get $j) (local.get $i)))
                (br $next_j)))))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $next_i)))
    (local.set $i (i32.const 2))
    (block $counted
      (loop $next
        (br_if $counted (i32.ge_u (local.get $i) (local.get $n)))
        (if (i32.eqz (i32.load8_u (i32.add (global.get $sieve) (local.get $i))))
          (then (local.set $count (i32.add (local.get $count) (i32.const 1)))))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $next)))
    (local.get $count))

  (func (export "_start")
    (local $n i32)
    (local $p i32)
    (local $length i32)
    (local $fd i32)
    (local.set $n (call $limit))
    (call $make_room (local.get $n))
    ;; "primes below <n>: <count>\n"
    (local.set $p (call $append (i32.const 20480) (i32.const 32960) (i32.const 13)))
    (local.set $p (call $append_decimal (local.get $p) (local.get $n)))
    (local.set $p (call $append (local.get $p) (i32.const 32992) (i32.const 2)))
    (local.set $p (call $append_decimal (local.get $p) (call $count_primes (local.get $n))))
    (i32.store8 (local.get $p) (i32.const 10))
    (local.set $length (i32.sub (i32.add (local.get $p) (i32.const 1)) (i32.const 20480)))
    ;; primes.txt (oflags: CREAT | TRUNC; rights: FD_WRITE), then stdout
    (if (call $path_open (i32.const 3) (i32.const 0) (i32.const 33024) (i32.const 10)
          (i32.const 9) (i64.const 64) (i64.const 0) (i32.const 0) (i32.const 12))
      (then (call $die (i32.const 32896) (i32.const 32) (i32.const 1))))
    (local.set $fd (i32.load (i32.const 12)))
    (if (call $write_all (local.get $fd) (i32.const 20480) (local.get $length))
      (then (call $die (i32.const 32896) (i32.const 32) (i32.const 1))))
    (drop (call $fd_close (local.get $fd)))
    (drop (call $write_all (i32.const 1) (i32.const 20480) (local.get $length)))))
