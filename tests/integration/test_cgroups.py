"""Per-job cgroups on a machine that lets the node create them (skipped where it does not)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from computemesh.executor import ExecutionRequest, ProcessExecutor, SandboxLimits
from computemesh.executor.base import run_to_completion
from computemesh.executor.cgroups import detect_cgroups

SUPPORT = detect_cgroups()

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap is not installed"),
    pytest.mark.skipif(SUPPORT is None, reason="no writable cgroup hierarchy on this machine"),
]

TWO_HUNGRY_PROCESSES = """
import os, time
pid = os.fork()
block = bytearray(200 * 1024 * 1024)
for i in range(0, len(block), 4096):
    block[i] = 1
time.sleep(0.5)
if pid:
    _, status = os.waitpid(pid, 0)
    raise SystemExit(0 if status == 0 else 3)
"""


def request(script: str, memory_mb: int) -> ExecutionRequest:
    return ExecutionRequest(
        job_id="cgroup-probe",
        command=["python3", "-c", script],
        env={},
        inputs=[],
        outputs=[],
        limits=SandboxLimits(wall_time_s=30, cpu_time_s=30, memory_mb=memory_mb),
    )


def job_groups() -> list[Path]:
    assert SUPPORT is not None
    return [
        child
        for parent in SUPPORT.parents.values()
        for child in parent.iterdir()
        if child.is_dir() and child.name.startswith("job-")
    ]


async def test_memory_of_the_whole_job_is_bounded_and_the_group_removed(tmp_path: Path) -> None:
    executor = ProcessExecutor()
    assert executor.cgroups is not None
    before = set(job_groups())
    # Each process stays under RLIMIT_AS (300 MiB of address space); together they do not
    # fit the job's 300 MiB memory group with the interpreters' own memory on top.
    bounded = await run_to_completion(executor, request(TWO_HUNGRY_PROCESSES, 300), tmp_path)
    assert bounded.status != "completed"
    roomy = await run_to_completion(executor, request(TWO_HUNGRY_PROCESSES, 1500), tmp_path)
    assert roomy.status == "completed", roomy.reason
    assert set(job_groups()) <= before  # this test's groups are gone (others may come and go)
