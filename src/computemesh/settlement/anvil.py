"""A local anvil chain (npm ``@foundry-rs/anvil``) for tests, benchmarks and demos.

``make setup`` installs the pinned package under ``.tools/``; ``find_anvil`` looks there
(the native binary, then the npm launcher) and then on ``PATH``. ``start_anvil`` runs it on
loopback on a free port and ``stop_anvil`` ends it by its pid; with ``detached`` it runs
in its own session and outlives the caller (a local mesh records its pid and stops it by
pid). ``fund_from_dev_account`` pays gas money from anvil's unlocked dev account.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from computemesh.settlement.errors import ChainError

ENV_ANVIL = "CMESH_ANVIL"
TOOLS_DIR = Path(__file__).resolve().parents[3] / ".tools"
LOCAL_CHAIN_ID = 31337


@dataclass(frozen=True)
class AnvilNode:
    """A running anvil: its pid and JSON-RPC URL."""

    pid: int
    url: str
    chain_id: int
    process: subprocess.Popen[bytes]


def find_anvil() -> Path | None:
    """The anvil binary: ``$CMESH_ANVIL``, then ``.tools/``, then ``PATH``; None if absent."""
    explicit = os.environ.get(ENV_ANVIL)
    if explicit:
        return Path(explicit) if Path(explicit).is_file() else None
    modules = TOOLS_DIR / "node_modules"
    native = sorted(modules.glob("@foundry-rs/anvil-*/bin/anvil"))
    for candidate in [*native, modules / ".bin" / "anvil"]:
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    found = shutil.which("anvil")
    return Path(found) if found else None


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port on ``host`` that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def start_anvil(
    *,
    chain_id: int = LOCAL_CHAIN_ID,
    port: int | None = None,
    log_file: Path | None = None,
    ready_timeout: float = 20.0,
    detached: bool = False,
) -> AnvilNode:
    """Start anvil on ``127.0.0.1`` (a free port unless given) and wait until it answers.

    Mines each transaction at once, with no prefunded accounts in use by computemesh (tests
    fund their own keys with ``anvil_setBalance``). Raises ``ChainError``
    (``anvil_missing``, ``anvil_failed``); on failure the process is stopped.
    """
    binary = find_anvil()
    if binary is None:
        raise ChainError(
            "anvil is not installed", code="anvil_missing", hint="run `make setup` (npm)"
        )
    port = port or free_port()
    argv = [
        str(binary),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--chain-id",
        str(chain_id),
        "--accounts",
        "1",
        "--silent",
        "--gas-limit",
        "60000000",
    ]
    out = log_file.open("ab") if log_file else subprocess.DEVNULL
    try:
        process = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=detached,
        )
    finally:
        if log_file and not isinstance(out, int):
            out.close()
    node = AnvilNode(process.pid, f"http://127.0.0.1:{port}", chain_id, process)
    if not _wait_ready(node, ready_timeout):
        stop_anvil(node)
        raise ChainError(f"anvil did not answer on port {port}", code="anvil_failed")
    return node


def stop_anvil(node: AnvilNode, *, timeout: float = 10.0) -> None:
    """SIGTERM anvil by its pid, then SIGKILL after ``timeout`` seconds; reaps it."""
    if node.process.poll() is not None:
        return
    os.kill(node.pid, signal.SIGTERM)
    try:
        node.process.wait(timeout)
    except subprocess.TimeoutExpired:
        os.kill(node.pid, signal.SIGKILL)
        node.process.wait(timeout)


def fund_from_dev_account(url: str, address: str, wei: int, *, timeout: float = 30.0) -> str:
    """Send ``wei`` to ``address`` from the anvil at ``url``'s first unlocked dev account;
    returns the transaction hash once mined. ``ChainError`` (``funding_failed``) otherwise."""
    accounts = _rpc(url, "eth_accounts", [])
    if not isinstance(accounts, list) or not accounts:
        raise ChainError(f"the chain at {url} has no unlocked dev account", code="funding_failed")
    tx = {"from": accounts[0], "to": address, "value": hex(wei)}
    tx_hash = str(_rpc(url, "eth_sendTransaction", [tx]))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        receipt = _rpc(url, "eth_getTransactionReceipt", [tx_hash])
        if isinstance(receipt, dict):
            if int(receipt["status"], 16) != 1:
                break
            return tx_hash
        time.sleep(0.05)
    raise ChainError(f"funding {address} from the dev account failed", code="funding_failed")


def _rpc(url: str, method: str, params: list[object]) -> object:
    request = json.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": params})
    try:
        with urllib.request.urlopen(
            urllib.request.Request(
                url, data=request.encode(), headers={"Content-Type": "application/json"}
            ),
            timeout=10.0,
        ) as response:
            answer = json.loads(response.read())
    except (OSError, ValueError) as exc:
        raise ChainError(f"{method} at {url}: {exc}", code="chain_unreachable") from exc
    if "error" in answer:
        raise ChainError(f"{method} at {url}: {answer['error']}", code="funding_failed")
    return answer.get("result")


def _wait_ready(node: AnvilNode, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    request = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "eth_chainId", "params": []})
    while time.monotonic() < deadline:
        if node.process.poll() is not None:
            return False
        try:
            with urllib.request.urlopen(
                urllib.request.Request(
                    node.url, data=request.encode(), headers={"Content-Type": "application/json"}
                ),
                timeout=1.0,
            ) as response:
                if int(json.loads(response.read())["result"], 16) == node.chain_id:
                    return True
        except (OSError, urllib.error.URLError, ValueError, KeyError):
            time.sleep(0.05)
    return False
