"""Test doubles: an executor that runs nothing, with a hook deciding what the job "did"."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from computemesh.executor import CollectedOutput, ExecutionRequest, ExecutionResult
from computemesh.models.errors import ExecutionError
from computemesh.models.market import ResourceUsage

Behaviour = Callable[[ExecutionRequest], tuple[int, bytes, dict[str, bytes]]]


def echo_inputs(request: ExecutionRequest) -> tuple[int, bytes, dict[str, bytes]]:
    """Exit 0, print the command, and write every declared output as the joined inputs."""
    joined = b"".join(content for _, content, _ in request.inputs)
    return 0, " ".join(request.command).encode(), dict.fromkeys(request.outputs, joined)


@dataclass
class FakeHandle:
    request: ExecutionRequest
    started: bool = False
    stopped: bool = False


@dataclass
class FakeExecutor:
    """Satisfies the Executor protocol without a sandbox; records what it was asked to run."""

    behaviour: Behaviour = echo_inputs
    name: str = "process"
    ran: list[ExecutionRequest] = field(default_factory=list)

    async def prepare(self, request: ExecutionRequest, work_root: Path) -> FakeHandle:
        return FakeHandle(request)

    async def start(self, handle: FakeHandle) -> None:
        handle.started = True
        self.ran.append(handle.request)

    async def wait(self, handle: FakeHandle) -> ExecutionResult:
        code, stdout, files = self.behaviour(handle.request)
        outputs = [
            CollectedOutput(
                path=path, sha256=hashlib.sha256(data).hexdigest(), size=len(data), data=data
            )
            for path, data in files.items()
        ]
        return ExecutionResult(
            status="completed" if code == 0 else "failed",
            reason="" if code == 0 else f"exit code {code}",
            exit_code=code,
            stdout=stdout,
            stderr=b"",
            stdout_truncated=False,
            stderr_truncated=False,
            outputs=outputs,
            usage=ResourceUsage(wall_s=0.01, cpu_s=0.01, max_rss_kb=1024),
        )

    async def stop(self, handle: FakeHandle) -> None:
        handle.stopped = True

    async def cleanup(self, handle: FakeHandle) -> None:
        return None

    async def usage(self, handle: FakeHandle) -> ResourceUsage:
        return ResourceUsage(wall_s=0.0, cpu_s=0.0, max_rss_kb=0)

    async def checkpoint(self, handle: FakeHandle) -> bytes:
        raise ExecutionError("this executor keeps no checkpoints", code="no_checkpoint")
