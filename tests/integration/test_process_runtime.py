"""A process job that declares the python runtime gets it, read-only, in the real sandbox;
one that does not declare it, or asks for a package the node lacks, does not."""

from __future__ import annotations

import secrets
import sys
from pathlib import Path

import numpy
import pytest

from computemesh.executor import (
    ExecutionRequest,
    ProcessExecutor,
    SandboxLimits,
    bubblewrap_available,
    run_to_completion,
)
from computemesh.executor.python_runtime import RUNTIME_SITE_DIR, resolve_python_runtime
from computemesh.models.errors import ExecutionError
from computemesh.models.job import RuntimeSpec

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not bubblewrap_available(), reason="bubblewrap (bwrap) is not installed"),
    pytest.mark.timeout(120),
]

VERSION = f"{sys.version_info.major}.{sys.version_info.minor}"
LIMITS = SandboxLimits(wall_time_s=60, cpu_time_s=60, memory_mb=1024, max_processes=64)
NUMPY_JOB = (
    "import numpy\n"
    "print(numpy.__version__, int(numpy.arange(10).sum()), numpy.__file__)\n"
    "try:\n"
    f"    open({RUNTIME_SITE_DIR + '/numpy/written'!r}, 'w')\n"
    "except OSError as exc:\n"
    "    print('read-only', exc.errno)\n"
)


def numpy_job(runtime: RuntimeSpec | None) -> ExecutionRequest:
    return ExecutionRequest(
        job_id=f"rt-{secrets.token_hex(4)}",
        command=["python3", "-c", NUMPY_JOB],
        env={},
        inputs=[],
        outputs=[],
        limits=LIMITS,
        runtime=runtime,
    )


@pytest.fixture(scope="module")
def executor() -> ProcessExecutor:
    return ProcessExecutor(sandbox=True, runtime=resolve_python_runtime(["numpy"]))


async def test_a_job_declaring_the_runtime_imports_numpy_read_only(
    executor: ProcessExecutor, tmp_path: Path
) -> None:
    wanted = RuntimeSpec(python=VERSION, packages=["numpy"])
    result = await run_to_completion(executor, numpy_job(wanted), tmp_path)
    assert result.status == "completed", result.stderr
    version, total, location, *rest = result.stdout.decode().split()
    assert (version, total) == (numpy.__version__, "45")
    assert location.startswith(f"{RUNTIME_SITE_DIR}/numpy/")
    assert rest[0] == "read-only"


async def test_a_job_without_a_runtime_sees_no_packages(
    executor: ProcessExecutor, tmp_path: Path
) -> None:
    result = await run_to_completion(executor, numpy_job(None), tmp_path)
    assert result.status == "failed"
    assert b"No module named 'numpy'" in result.stderr


async def test_a_package_the_node_lacks_is_refused_with_the_reason(
    executor: ProcessExecutor, tmp_path: Path
) -> None:
    wanted = RuntimeSpec(python=VERSION, packages=["numpy", "torch"])
    with pytest.raises(ExecutionError) as refused:
        await run_to_completion(executor, numpy_job(wanted), tmp_path)
    assert refused.value.code == "runtime_missing"
    assert refused.value.message == f"runtime: package torch not offered with python {VERSION}"
    assert not any(tmp_path.iterdir())
