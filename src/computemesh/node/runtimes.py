"""The runtimes a node offers, and the jobs it refuses for want of one.

An executor that gives its jobs a runtime says so with a ``runtimes`` attribute: labels
from ``executor.python_runtime`` such as ``python3.11`` and ``python3.11/numpy==2.4.6``.
The node advertises the union of its executors' labels.

A job's ``runtime`` (``{python: "3.11", packages: ["numpy", "onnxruntime==1.31.1"]}``)
must be met by the executor the job names, not merely by some executor of the node: a
job is refused rather than started without its packages. The ``onnx`` executor binds
its runtime for every job; the ``process`` executor binds one (when the node offers it)
for the jobs that declare it. ``unmet_runtime`` (in ``executor.python_runtime``, which
executors check again in ``prepare``) compares: package names as package indexes do
(case, ``-``, ``_`` and ``.`` do not matter); a pinned version must match exactly.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol, runtime_checkable

from computemesh.executor.python_runtime import unmet_runtime
from computemesh.models.job import JobSpec


@runtime_checkable
class OffersRuntimes(Protocol):
    """An executor that makes runtimes available to its jobs."""

    @property
    def runtimes(self) -> tuple[str, ...]: ...


def executor_runtimes(executor: object) -> tuple[str, ...]:
    """The runtime labels ``executor`` offers (none when it offers no runtime)."""
    return tuple(executor.runtimes) if isinstance(executor, OffersRuntimes) else ()


def offered_runtimes(executors: Mapping[str, object]) -> list[str]:
    """Every runtime label any of ``executors`` offers, sorted: what the node advertises."""
    return sorted({label for item in executors.values() for label in executor_runtimes(item)})


def runtime_refusals(spec: JobSpec, executors: Mapping[str, object]) -> list[str]:
    """Why this node cannot give ``spec`` the runtime it declares; empty when it can.

    A job without a ``runtime``, or naming an executor the node lacks (reported by the
    executor check), gets no reason from here.
    """
    executor = executors.get(spec.executor)
    if spec.runtime is None or executor is None:
        return []
    return unmet_runtime(spec.runtime, executor_runtimes(executor), spec.executor)
