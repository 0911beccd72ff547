"""Rlimits, job uids and the launch plan."""

from __future__ import annotations

import os
import resource
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from computemesh.executor import SandboxLimits
from computemesh.executor.launch import (
    JobUidPool,
    LaunchPlan,
    make_preexec,
    reachable_by_others,
    user_task_count,
)
from computemesh.executor.limits import enforced_cpu_seconds, rlimits_for
from computemesh.models.errors import ExecutionError

MIB = 1024 * 1024


def test_limits_validate_their_values() -> None:
    with pytest.raises(ValueError):
        SandboxLimits(wall_time_s=0, cpu_time_s=1, memory_mb=64)
    with pytest.raises(ValueError):
        SandboxLimits(wall_time_s=1, cpu_time_s=1, memory_mb=0)
    with pytest.raises(ValueError):
        SandboxLimits(wall_time_s=1, cpu_time_s=1, memory_mb=64, max_output_bytes=-1)


def test_rlimits_map_each_field() -> None:
    limits = SandboxLimits(
        wall_time_s=10,
        cpu_time_s=2.2,
        memory_mb=128,
        max_processes=16,
        max_open_files=64,
        max_file_mb=5,
    )
    table = {r.name: (r.resource, r.soft, r.hard) for r in rlimits_for(limits, extra_processes=1)}
    assert table == {
        "AS": (resource.RLIMIT_AS, 128 * MIB, 128 * MIB),
        "CPU": (resource.RLIMIT_CPU, 3, 3),
        "NPROC": (resource.RLIMIT_NPROC, 17, 17),
        "NOFILE": (resource.RLIMIT_NOFILE, 64, 64),
        "FSIZE": (resource.RLIMIT_FSIZE, 5 * MIB, 5 * MIB),
        "CORE": (resource.RLIMIT_CORE, 0, 0),
    }


def test_cpu_limit_rounds_up_to_whole_seconds() -> None:
    assert enforced_cpu_seconds(SandboxLimits(wall_time_s=1, cpu_time_s=0.2, memory_mb=1)) == 1
    assert enforced_cpu_seconds(SandboxLimits(wall_time_s=1, cpu_time_s=3.0, memory_mb=1)) == 3


def test_preexec_applies_limits_in_the_child() -> None:
    limits = SandboxLimits(wall_time_s=5, cpu_time_s=4, memory_mb=512, max_open_files=40)
    plan = LaunchPlan(rlimits=rlimits_for(limits, extra_processes=10_000))
    code = (
        "import resource as r\n"
        "print(*(r.getrlimit(x) for x in (r.RLIMIT_NOFILE, r.RLIMIT_CPU, r.RLIMIT_CORE)))\n"
        "print(open('/proc/self/status').read().split('NoNewPrivs:')[1].split()[0])\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        preexec_fn=make_preexec(plan),
        capture_output=True,
        check=True,
        timeout=30,
    )
    assert result.stdout.decode().splitlines() == ["(40, 40) (4, 4) (0, 0)", "1"]


def test_uid_pool_hands_out_distinct_uids_in_range() -> None:
    pool = JobUidPool(base=5000, count=8)
    uids = {pool.acquire() for _ in range(8)}
    assert uids == set(range(5000, 5008))
    with pytest.raises(ExecutionError) as caught:
        pool.acquire()
    assert caught.value.code == "no_job_uid"
    pool.release(5003)
    assert pool.acquire() == 5003


def test_reachable_by_others() -> None:
    base = Path(tempfile.mkdtemp(dir="/tmp"))
    try:
        os.chmod(base, 0o711)
        (base / "open" / "inner").mkdir(parents=True)
        (base / "closed" / "inner").mkdir(parents=True)
        os.chmod(base / "open", 0o711)
        os.chmod(base / "closed", 0o700)
        assert reachable_by_others(base / "open" / "inner" / "work")
        assert not reachable_by_others(base / "closed" / "inner" / "work")
    finally:
        shutil.rmtree(base)


def test_user_task_count_includes_this_process() -> None:
    assert user_task_count(os.getuid()) >= 1
