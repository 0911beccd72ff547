"""Count to N, one step every DELAY seconds, keeping the state in CMESH_CHECKPOINT_DIR.

Usage: counter.py N [DELAY]. Each step adds its number to a running total and prints
"step K"; the state is written atomically (a temporary file renamed over the old one), so
a snapshot taken at any moment holds a whole state. Started with a state already there
(restored from a checkpoint), it prints "resumed at step K" and carries on from it. At the
end it writes the total, N (N + 1) / 2, to total.txt.
"""

import json
import os
import sys
import time


def load(path: str) -> tuple[int, int]:
    if not os.path.exists(path):
        return 0, 0
    with open(path) as handle:
        state = json.load(handle)
    return int(state["step"]), int(state["total"])


def save(path: str, step: int, total: int) -> None:
    partial = path + ".partial"
    with open(partial, "w") as handle:
        json.dump({"step": step, "total": total}, handle)
    os.replace(partial, path)


def main() -> None:
    target = int(sys.argv[1])
    delay = float(sys.argv[2]) if len(sys.argv) > 2 else 0.1
    state_path = os.path.join(os.environ.get("CMESH_CHECKPOINT_DIR", "."), "state.json")
    step, total = load(state_path)
    if step:
        print(f"resumed at step {step}", flush=True)
    while step < target:
        time.sleep(delay)
        step += 1
        total += step
        save(state_path, step, total)
        print(f"step {step}", flush=True)
    with open("total.txt", "w") as handle:
        handle.write(f"{total}\n")
    print(f"total {total}", flush=True)


if __name__ == "__main__":
    main()
