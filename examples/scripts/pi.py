"""Digits of pi by Machin's formula in integer arithmetic."""

import sys

digits = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
scale = 10 ** (digits + 10)


def arctan_inverse(x: int) -> int:
    total = term = scale // x
    n, sign, x2 = 3, -1, x * x
    while term:
        term //= x2
        total += sign * (term // n)
        n, sign = n + 2, -sign
    return total


pi = 4 * (4 * arctan_inverse(5) - arctan_inverse(239))
text = str(pi // 10**10)
with open("pi.txt", "w") as out:
    out.write(f"{text[0]}.{text[1:]}\n")
print(f"pi to {digits} digits ends ...{text[-10:]}")
