"""What a live process tree has used so far, read from ``/proc`` (Linux).

``wait4`` reports a job's CPU time only once it has ended; a checkpoint is signed while
the job runs, with the CPU time up to then. ``tree_usage`` sums, over the launched
process and every live descendant, its own user and system time plus that of the
children it has already reaped (``utime + stime + cutime + cstime``): a process that
ended counts through its parent once reaped, and never twice. Processes that vanish
while ``/proc`` is read are skipped. The peak is the largest resident set among the
live processes now (a lower bound of the true peak). ``thread_cpu_seconds`` does the same
for one thread of this process (a wasm guest runs on its own thread).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

PROC = Path("/proc")
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PAGE_KB = os.sysconf("SC_PAGE_SIZE") // 1024


@dataclass(frozen=True)
class ProcessStat:
    """The fields of one ``/proc/<pid>/stat`` that metering needs."""

    pid: int
    ppid: int
    cpu_ticks: int
    rss_kb: int


@dataclass(frozen=True)
class TreeUsage:
    cpu_s: float
    max_rss_kb: int


def parse_stat(pid: int, text: str) -> ProcessStat:
    """Parse a ``stat`` line; the command name may hold spaces and parentheses."""
    fields = text[text.rindex(")") + 2 :].split()
    utime, stime, cutime, cstime = (int(value) for value in fields[11:15])
    return ProcessStat(
        pid=pid,
        ppid=int(fields[1]),
        cpu_ticks=utime + stime + cutime + cstime,
        rss_kb=max(0, int(fields[21])) * PAGE_KB,
    )


def tree_usage(root: int, proc: Path = PROC) -> TreeUsage:
    """CPU seconds and largest resident set of ``root`` and its live descendants."""
    stats = _all_stats(proc)
    children: dict[int, list[int]] = {}
    for stat in stats.values():
        children.setdefault(stat.ppid, []).append(stat.pid)
    ticks, rss, pending = 0, 0, [root]
    while pending:
        pid = pending.pop()
        found = stats.get(pid)
        if found is None:
            continue
        ticks += found.cpu_ticks
        rss = max(rss, found.rss_kb)
        pending.extend(children.get(pid, []))
    return TreeUsage(cpu_s=ticks / CLOCK_TICKS, max_rss_kb=rss)


def thread_cpu_seconds(native_id: int, proc: Path = PROC) -> float:
    """CPU seconds of one thread of this process; 0.0 once it has ended."""
    try:
        text = (proc / "self" / "task" / str(native_id) / "stat").read_text()
    except OSError:
        return 0.0
    return parse_stat(native_id, text).cpu_ticks / CLOCK_TICKS


def _all_stats(proc: Path) -> dict[int, ProcessStat]:
    stats = {}
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            text = (entry / "stat").read_text()
        except OSError:
            continue  # ended while we looked
        stat = parse_stat(int(entry.name), text)
        stats[stat.pid] = stat
    return stats
