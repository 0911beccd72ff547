"""Word frequencies of a text, most frequent first."""

import collections
import json
import re

with open("text.txt", encoding="utf-8") as source:
    words = re.findall(r"[a-z']+", source.read().lower())
counts = collections.Counter(words)
ranked = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
with open("counts.json", "w") as out:
    json.dump({"total": len(words), "top": ranked[:10]}, out, sort_keys=True)
print(f"{len(words)} words, {len(counts)} distinct")
