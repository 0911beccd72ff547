"""Composition root of a provider node process (`cmesh node start`)."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
from pathlib import Path

from computemesh.actor import Actor, Supervisor
from computemesh.app.home import READY_FILE
from computemesh.app.ledger import node_ledger_path, open_node_ledger
from computemesh.executor import ProcessExecutor, WasmExecutor
from computemesh.executor.base import Executor
from computemesh.executor.docker import DockerExecutor
from computemesh.executor.model_cache import ModelCache
from computemesh.executor.onnx import OnnxExecutor, python_runtime_for_onnx
from computemesh.executor.python_runtime import PythonRuntime, resolve_python_runtime
from computemesh.identity import load_or_create_identity
from computemesh.models.errors import ExecutionError
from computemesh.node.hardware import detect_hardware
from computemesh.node.provider import ProviderNode
from computemesh.node.settings import NodeSettings
from computemesh.store import AllocationRepository, open_database, sqlite_url
from computemesh.transport import NatsTransport, Transport

log = logging.getLogger(__name__)


def build_executors(settings: NodeSettings) -> dict[str, Executor]:
    """Every executor this node can offer, by name; one that cannot start is left out."""
    executors: dict[str, Executor] = {}
    try:
        executors["process"] = ProcessExecutor(
            sandbox=settings.sandbox,
            max_inline_output_bytes=settings.max_inline_output_bytes,
            allow_network=settings.allow_network,
            runtime=process_runtime(settings),
        )
    except ExecutionError as exc:
        log.error("not offering the process executor: %s", exc)
    try:
        executors["wasm"] = WasmExecutor(
            cache_dir=settings.home / "cache" / "wasm",
            max_inline_output_bytes=settings.max_inline_output_bytes,
        )
    except ExecutionError as exc:
        log.error("not offering the wasm executor: %s", exc)
    try:
        executors["onnx"] = OnnxExecutor(
            runtime=python_runtime_for_onnx(),
            cache=ModelCache(settings.home / "cache" / "onnx"),
            sandbox=settings.sandbox,
            max_inline_output_bytes=settings.max_inline_output_bytes,
        )
    except ExecutionError as exc:
        log.error("not offering the onnx executor: %s", exc)
    try:
        executors["docker"] = DockerExecutor(
            max_inline_output_bytes=settings.max_inline_output_bytes,
            allow_network=settings.allow_network,
        )
    except ExecutionError as exc:
        log.info("not offering the docker executor: %s", exc)
    return executors


def process_runtime(settings: NodeSettings) -> PythonRuntime | None:
    """The Python runtime process jobs may declare; None (logged) when the node has none."""
    if not settings.process_python_packages:
        return None
    try:
        return resolve_python_runtime(settings.process_python_packages)
    except ExecutionError as exc:
        log.error("offering process jobs no python runtime: %s", exc)
        return None


def build_node(
    settings: NodeSettings, transport: Transport, *, ledger_path: Path | None = None
) -> ProviderNode:
    """The node; with a ledger (``node_ledger_path``: ``ledger_path``, ``$CMESH_LEDGER`` or
    its home's ``ledger.json``; an embedded ledger file or a ledger config naming a chain)
    it countersigns only contracts whose escrow is locked there."""
    settings.home.mkdir(parents=True, exist_ok=True, mode=0o700)
    identity = load_or_create_identity(settings.home)
    sessions = open_database(sqlite_url(settings.database_path))
    path = node_ledger_path(ledger_path, home=settings.home)
    settlement = open_node_ledger(path, identity) if path is not None else None
    if path is not None:
        log.info("checking escrow on the ledger %s", path)
    return ProviderNode(
        actor=Actor(identity=identity, transport=transport),
        settings=settings,
        hardware=detect_hardware(settings.work_root),
        allocations=AllocationRepository(sessions),
        executors=build_executors(settings),
        settlement=settlement,
    )


def _write_ready_file(home: Path, did: str) -> Path:
    path = home / READY_FILE
    path.write_text(json.dumps({"pid": os.getpid(), "did": did}))
    return path


async def run_node(
    settings: NodeSettings, nats_url: str, *, ledger_path: Path | None = None
) -> None:
    """Serve until SIGINT or SIGTERM, then shut down cleanly."""
    transport = await NatsTransport.connect(nats_url, name=f"cmesh-node:{settings.home.name}")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    supervisor = Supervisor()
    try:
        node = build_node(settings, transport, ledger_path=ledger_path)
        await node.run(supervisor)
        ready = _write_ready_file(settings.home, node.did)
        try:
            await stop.wait()
        finally:
            log.info("node %s shutting down", node.did)
            ready.unlink(missing_ok=True)
            await supervisor.stop()
            await node.stop()
    finally:
        await transport.close()
