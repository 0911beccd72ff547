"""Multiply two deterministic integer matrices and report a checksum of the product."""

import hashlib
import sys

n = int(sys.argv[1]) if len(sys.argv) > 1 else 60
a = [[(i * 31 + j * 17) % 97 for j in range(n)] for i in range(n)]
b = [[(i * 13 + j * 7) % 89 for j in range(n)] for i in range(n)]
columns = list(zip(*b))
product = [[sum(x * y for x, y in zip(row, col)) for col in columns] for row in a]
text = "\n".join(" ".join(str(v) for v in row) for row in product)
with open("product.txt", "w") as out:
    out.write(text + "\n")
print(hashlib.sha256(text.encode()).hexdigest())
