"""Real mesh processes for the integration tests, driven as the chaos run drives them.

``chaos`` is ``bench/chaos.py`` loaded as a module: its consumer process
(``start_consumer``: submits ``chaos-N`` jobs, resumes the store's unfinished ones, exits
once every job is final), ``kill`` (SIGKILL and reap) and ``tally`` (the store and ledger
audit: lost, duplicated, paid twice, escrow left) are what the tests use, so that the
bench and the tests count the same way.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

from computemesh.app.consumer import open_jobs
from computemesh.app.home import MeshHome
from computemesh.transport.natsserver import client_host

REPO = Path(__file__).resolve().parents[2]


def _load_chaos() -> ModuleType:
    spec = importlib.util.spec_from_file_location("chaos", REPO / "bench" / "chaos.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["chaos"] = module  # dataclasses resolve their annotations through it
    spec.loader.exec_module(module)
    return module


chaos = _load_chaos()


def wait_until(check: Callable[[], bool], what: str, *, timeout_s: float) -> None:
    """Poll ``check`` until it holds; fail naming ``what`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, f"{what} within {timeout_s:.0f} s"
        time.sleep(0.1)


def statuses(home: MeshHome) -> list[str]:
    """The status of every job in the consumer's store."""
    return [record.status for record in open_jobs(home).recent(limit=10_000)]


def finish_consumer(home: MeshHome, consumer: subprocess.Popen[bytes], *, timeout_s: float) -> None:
    """Wait for the consumer process to see every job final and exit cleanly; kill it and
    fail after ``timeout_s``."""
    log = home.logs_dir / "consumer.log"
    try:
        code = consumer.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        stop_consumer(consumer)
        raise AssertionError(f"the consumer did not finish within {timeout_s:.0f} s") from None
    assert code == 0, log.read_text(errors="replace")[-3000:]


def stop_consumer(consumer: subprocess.Popen[bytes]) -> None:
    """SIGKILL the consumer process unless it has exited already."""
    if consumer.poll() is None:
        chaos.kill(consumer.pid)


def hub_clients(hub: dict[str, Any]) -> int:
    """Client connections hub ``hub`` (a mesh state record) holds, from its monitor port."""
    url = f"http://{client_host(hub['host'])}:{hub['monitor_port']}/varz"
    with urllib.request.urlopen(url, timeout=2.0) as response:
        return int(json.load(response)["connections"])
