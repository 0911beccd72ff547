"""`cmesh logs`: a job's stored output, and `--follow` until the job is final."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

from typer.testing import CliRunner

from computemesh.app.consumer import open_jobs
from computemesh.app.home import MeshHome
from computemesh.cli.main import app
from computemesh.store import JobRepository

runner = CliRunner()
JOB_ID = "3f2a9c1e-logs-test"


def stored_job(home: Path) -> JobRepository:
    jobs = open_jobs(MeshHome(home))
    jobs.create(JOB_ID, "counter", {"name": "counter"})
    jobs.set_status(JOB_ID, "running")
    return jobs


def append(jobs: JobRepository, seq: int, data: str, stream: str = "stdout") -> None:
    jobs.logs.append(job_id=JOB_ID, contract_id="c1", seq=seq, stream=stream, data=data, dropped=0)


def test_logs_prints_the_stored_chunks_in_order_by_prefix(tmp_path: Path) -> None:
    jobs = stored_job(tmp_path)
    append(jobs, 0, "one\n")
    append(jobs, 1, "two\n")
    append(jobs, 1, "two again\n")  # a repeated chunk is stored once

    result = runner.invoke(app, ["--home", str(tmp_path), "logs", JOB_ID[:8], "--json"])

    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [(line["seq"], line["data"]) for line in lines] == [(0, "one\n"), (1, "two\n")]
    assert all(line["job_id"] == JOB_ID for line in lines)


def test_follow_prints_chunks_as_they_arrive_and_stops_when_the_job_ends(
    tmp_path: Path,
) -> None:
    jobs = stored_job(tmp_path)
    append(jobs, 0, "before\n")

    def keep_running() -> None:
        for seq in range(1, 4):
            time.sleep(0.3)
            append(jobs, seq, f"tick {seq}\n")
        jobs.set_status(JOB_ID, "completed")

    writer = threading.Thread(target=keep_running)
    writer.start()
    result = runner.invoke(app, ["--home", str(tmp_path), "logs", JOB_ID, "--follow"])
    writer.join()

    assert result.exit_code == 0, result.output
    assert result.stdout == "before\ntick 1\ntick 2\ntick 3\n"


def test_logs_of_an_unknown_job_is_a_clear_error(tmp_path: Path) -> None:
    stored_job(tmp_path)
    result = runner.invoke(app, ["--home", str(tmp_path), "logs", "nope", "--json"])
    assert result.exit_code != 0
    assert "no job matches 'nope'" in result.output
