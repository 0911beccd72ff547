;; checksum.wat: the size and FNV-1a (32-bit) hash of a file, as a WASI command.
;;
;;     checksum.wat INPUT OUTPUT
;;
;; Reads INPUT from the work dir (WASI descriptor 3, preopened as /work) and writes one line,
;; "INPUT: N bytes, fnv1a32 XXXXXXXX", to OUTPUT (created or truncated) and to stdout.
;; Exit codes: 0 done, 1 a file could not be opened, read or written, 2 bad arguments.
;;
;; fd_write may write fewer bytes than asked (to a file, only its first iovec), so every
;; write goes through $write_all, which loops until everything is written.
(module
  (import "wasi_snapshot_preview1" "args_sizes_get"
    (func $args_sizes_get (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "args_get" (func $args_get (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "path_open"
    (func $path_open (param i32 i32 i32 i32 i32 i64 i64 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_read" (func $fd_read (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_close" (func $fd_close (param i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit" (func $proc_exit (param i32)))

  ;; Memory layout:
  ;;   0      one iovec (pointer, length)     8  bytes read or written    12  opened fd
  ;;   16     argc                            20  size of the argv strings
  ;;   1024   argv pointers (at most 256)      2048  argv strings (at most 4 KiB)
  ;;   20480  the line being built (8 KiB)     28672  decimal digits, written backwards
  ;;   32768  constant text                    65536  read buffer (64 KiB)
  (memory (export "memory") 2)
  (data (i32.const 32768) "usage: checksum.wat INPUT OUTPUT\n")
  (data (i32.const 32832) "checksum: cannot open ")
  (data (i32.const 32896) "checksum: cannot read ")
  (data (i32.const 32960) "checksum: cannot write ")
  (data (i32.const 33024) ": ")
  (data (i32.const 33040) " bytes, fnv1a32 ")
  (data (i32.const 33088) "0123456789abcdef")

  (func $strlen (param $p i32) (result i32)
    (local $n i32)
    (block $done
      (loop $next
        (br_if $done (i32.eqz (i32.load8_u (i32.add (local.get $p) (local.get $n)))))
        (local.set $n (i32.add (local.get $n) (i32.const 1)))
        (br $next)))
    (local.get $n))

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
        ;; no progress at all: EIO rather than looping for ever
        (if (i32.eqz (local.get $written)) (then (return (i32.const 29))))
        (local.set $ptr (i32.add (local.get $ptr) (local.get $written)))
        (local.set $len (i32.sub (local.get $len) (local.get $written)))
        (br $more)))
    (i32.const 0))

  ;; Copy len bytes from src to dst; the end of the copy.
  (func $append (param $dst i32) (param $src i32) (param $len i32) (result i32)
    (memory.copy (local.get $dst) (local.get $src) (local.get $len))
    (i32.add (local.get $dst) (local.get $len)))

  (func $append_decimal (param $dst i32) (param $value i64) (result i32)
    (local $p i32)
    (local.set $p (i32.const 28692))
    (loop $digit
      (local.set $p (i32.sub (local.get $p) (i32.const 1)))
      (i32.store8 (local.get $p)
        (i32.add (i32.const 48) (i32.wrap_i64 (i64.rem_u (local.get $value) (i64.const 10)))))
      (local.set $value (i64.div_u (local.get $value) (i64.const 10)))
      (br_if $digit (i64.ne (local.get $value) (i64.const 0))))
    (call $append (local.get $dst) (local.get $p) (i32.sub (i32.const 28692) (local.get $p))))

  (func $append_hex32 (param $dst i32) (param $value i32) (result i32)
    (local $i i32)
    (loop $digit
      (i32.store8 (i32.add (local.get $dst) (local.get $i))
        (i32.load8_u
          (i32.add (i32.const 33088)
            (i32.and (i32.const 15)
              (i32.shr_u (local.get $value)
                (i32.sub (i32.const 28) (i32.mul (local.get $i) (i32.const 4))))))))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br_if $digit (i32.lt_u (local.get $i) (i32.const 8))))
    (i32.add (local.get $dst) (i32.const 8)))

  ;; "<message><path>\n" on stderr, then exit 1.
  (func $fail (param $message i32) (param $length i32) (param $path i32)
    (local $p i32)
    (local.set $p (call $append (i32.const 20480) (local.get $message) (local.get $length)))
    (local.set $p (call $append (local.get $p) (local.get $path) (call $strlen (local.get $path))))
    (i32.store8 (local.get $p) (i32.const 10))
    (drop (call $write_all (i32.const 2) (i32.const 20480)
      (i32.sub (i32.add (local.get $p) (i32.const 1)) (i32.const 20480))))
    (call $proc_exit (i32.const 1))
    (unreachable))

  (func $usage
    (drop (call $write_all (i32.const 2) (i32.const 32768) (i32.const 33)))
    (call $proc_exit (i32.const 2))
    (unreachable))

  ;; Open path (NUL-terminated) relative to the work dir; the new fd, or -1.
  (func $open (param $path i32) (param $oflags i32) (param $rights i64) (result i32)
    (if (call $path_open (i32.const 3) (i32.const 0) (local.get $path)
          (call $strlen (local.get $path)) (local.get $oflags) (local.get $rights) (i64.const 0)
          (i32.const 0) (i32.const 12))
      (then (return (i32.const -1))))
    (i32.load (i32.const 12)))

  (func (export "_start")
    (local $input i32)
    (local $output i32)
    (local $fd i32)
    (local $n i32)
    (local $i i32)
    (local $count i64)
    (local $hash i32)
    (local $p i32)
    (if (call $args_sizes_get (i32.const 16) (i32.const 20)) (then (call $usage)))
    (if (i32.or (i32.ne (i32.load (i32.const 16)) (i32.const 3))
                (i32.gt_u (i32.load (i32.const 20)) (i32.const 4096)))
      (then (call $usage)))
    (if (call $args_get (i32.const 1024) (i32.const 2048)) (then (call $usage)))
    (local.set $input (i32.load (i32.const 1028)))
    (local.set $output (i32.load (i32.const 1032)))

    ;; read the input (rights: FD_READ) and hash it
    (local.set $fd (call $open (local.get $input) (i32.const 0) (i64.const 2)))
    (if (i32.lt_s (local.get $fd) (i32.const 0))
      (then (call $fail (i32.const 32832) (i32.const 22) (local.get $input))))
    (local.set $hash (i32.const 0x811c9dc5))
    (block $end_of_file
      (loop $chunk
        (i32.store (i32.const 0) (i32.const 65536))
        (i32.store (i32.const 4) (i32.const 65536))
        (if (call $fd_read (local.get $fd) (i32.const 0) (i32.const 1) (i32.const 8))
          (then (call $fail (i32.const 32896) (i32.const 22) (local.get $input))))
        (local.set $n (i32.load (i32.const 8)))
        (br_if $end_of_file (i32.eqz (local.get $n)))
        (local.set $count (i64.add (local.get $count) (i64.extend_i32_u (local.get $n))))
        (local.set $i (i32.const 0))
        (loop $byte
          (local.set $hash
            (i32.mul
              (i32.xor (local.get $hash)
                (i32.load8_u (i32.add (i32.const 65536) (local.get $i))))
              (i32.const 0x01000193)))
          (local.set $i (i32.add (local.get $i) (i32.const 1)))
          (br_if $byte (i32.lt_u (local.get $i) (local.get $n))))
        (br $chunk)))
    (drop (call $fd_close (local.get $fd)))

    ;; "<input>: <count> bytes, fnv1a32 <hash>\n"
    (local.set $p
      (call $append (i32.const 20480) (local.get $input) (call $strlen (local.get $input))))
    (local.set $p (call $append (local.get $p) (i32.const 33024) (i32.const 2)))
    (local.set $p (call $append_decimal (local.get $p) (local.get $count)))
    (local.set $p (call $append (local.get $p) (i32.const 33040) (i32.const 16)))
    (local.set $p (call $append_hex32 (local.get $p) (local.get $hash)))
    (i32.store8 (local.get $p) (i32.const 10))
    (local.set $n (i32.sub (i32.add (local.get $p) (i32.const 1)) (i32.const 20480)))

    ;; write the output (oflags: CREAT | TRUNC; rights: FD_WRITE), then stdout
    (local.set $fd (call $open (local.get $output) (i32.const 9) (i64.const 64)))
    (if (i32.lt_s (local.get $fd) (i32.const 0))
      (then (call $fail (i32.const 32832) (i32.const 22) (local.get $output))))
    (if (call $write_all (local.get $fd) (i32.const 20480) (local.get $n))
      (then (call $fail (i32.const 32960) (i32.const 23) (local.get $output))))
    (drop (call $fd_close (local.get $fd)))
    (drop (call $write_all (i32.const 1) (i32.const 20480) (local.get $n)))))
