"""`cmesh logs JOB_ID [--follow] [--json]`: a job's live output, as its providers pushed it.

Chunks are read from this home's store, where the consumer session running the job keeps
them; ``--follow`` polls for new ones until the job is final. ``--json`` prints one JSON
object per chunk per line (``job_id, contract_id, seq, stream, data, dropped``).
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import asdict

import typer

from computemesh.app.consumer import open_jobs
from computemesh.cli.context import home_of
from computemesh.cli.output import reported_errors
from computemesh.store import JobRepository
from computemesh.store.logs import StoredLogChunk

FOLLOW_POLL_S = 0.25


def logs(
    ctx: typer.Context,
    job_id: str = typer.Argument(..., help="Job id (or a unique prefix)."),
    follow: bool = typer.Option(False, "--follow", "-f", help="Wait for more until it ends."),
    as_json: bool = typer.Option(False, "--json", help="One JSON object per chunk per line."),
) -> None:
    """Print a job's output as it ran (stdout and stderr, in arrival order)."""
    with reported_errors(as_json=as_json):
        jobs = open_jobs(home_of(ctx))
        full_id = jobs.find(job_id).job_id
        last = print_new_chunks(jobs, full_id, 0, as_json=as_json)
        while follow and not jobs.get(full_id).is_final:
            time.sleep(FOLLOW_POLL_S)
            last = print_new_chunks(jobs, full_id, last, as_json=as_json)
        if follow:
            print_new_chunks(jobs, full_id, last, as_json=as_json)


def print_new_chunks(jobs: JobRepository, job_id: str, last_id: int, *, as_json: bool) -> int:
    """Print the chunks stored after ``last_id``; returns the id of the last one printed."""
    while chunks := jobs.logs.after(job_id, last_id):
        for chunk in chunks:
            write_chunk(chunk, as_json=as_json)
        last_id = chunks[-1].id
    return last_id


def write_chunk(chunk: StoredLogChunk, *, as_json: bool) -> None:
    if as_json:
        view = {key: value for key, value in asdict(chunk).items() if key != "id"}
        sys.stdout.write(json.dumps(view, sort_keys=True) + "\n")
    else:
        if chunk.dropped:
            sys.stderr.write(f"[{chunk.dropped} bytes of {chunk.stream} not streamed]\n")
        (sys.stdout if chunk.stream == "stdout" else sys.stderr).write(chunk.data)
    sys.stdout.flush()
