"""Count the primes below a bound with a sieve of Eratosthenes."""

import sys

bound = int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000
sieve = bytearray([1]) * bound
sieve[0:2] = b"\x00\x00"
for n in range(2, int(bound**0.5) + 1):
    if sieve[n]:
        sieve[n * n :: n] = bytes(len(range(n * n, bound, n)))
count = sum(sieve)
with open("primes.txt", "w") as out:
    out.write(f"{count}\n")
print(f"{count} primes below {bound}")
