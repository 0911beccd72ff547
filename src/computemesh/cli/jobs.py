"""`cmesh submit`, `jobs`, `result`, `cancel` and `schema`."""

from __future__ import annotations

import asyncio
import json
import time
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import typer
from rich.table import Table

from computemesh.app.consumer import consumer_session, open_jobs
from computemesh.app.home import MeshHome
from computemesh.cli.context import home_of
from computemesh.cli.output import console, emit_json, err_console, reported_errors, short
from computemesh.models.errors import MeshError
from computemesh.models.validation import ensemble_spec_schema, job_spec_schema
from computemesh.orchestrator import Orchestrator
from computemesh.orchestrator.cancellation import Cancellation
from computemesh.orchestrator.dry_run import dry_run
from computemesh.orchestrator.ensembles import (
    EnsembleOutcome,
    is_ensemble_document,
    load_ensemble_spec,
)
from computemesh.orchestrator.specfile import load_job_spec, read_spec_data
from computemesh.store import JobRecord, JobRepository

NatsOption = typer.Option(None, "--nats", help="NATS URL of the mesh (default: the local mesh).")
RegionOption = typer.Option(
    None,
    "--region",
    help="This consumer's region, for round trips to providers "
    "(default: $CMESH_REGION, else the local mesh's first region).",
)
SuspectAfterOption = typer.Option(
    None,
    "--suspect-after",
    help="Seconds of silence after which a node is suspect "
    "(default: $CMESH_SUSPECT_AFTER_S, else 2.5).",
)
DeadAfterOption = typer.Option(
    None,
    "--dead-after",
    help="Seconds of silence after which a node is declared dead and its jobs move "
    "(default: $CMESH_DEAD_AFTER_S, else 5).",
)


@dataclass(frozen=True)
class SessionOptions:
    """What a command's options say about its consumer session (``consumer_session``)."""

    region: str | None = None
    suspect_after_s: float | None = None
    dead_after_s: float | None = None

    def session(self, home: MeshHome, url: str) -> AbstractAsyncContextManager[Orchestrator]:
        return consumer_session(
            home,
            url,
            region=self.region,
            suspect_after_s=self.suspect_after_s,
            dead_after_s=self.dead_after_s,
        )


def job_view(record: JobRecord, queue_position: int | None = None) -> dict[str, Any]:
    """A job as `--json` prints it: status, providers, and each signed result's essentials."""
    return {
        "job_id": record.job_id,
        "name": record.name,
        "status": record.status,
        "queue_position": queue_position,
        "verified": record.verified,
        "reason": record.reason,
        "providers": [contract["terms"]["provider"] for contract in record.contracts],
        "results": [document["body"] for document in record.results],
        "history": record.history,
        "created_at": record.created_at,
        "updated_at": record.updated_at,
    }


def print_history(record: JobRecord) -> None:
    """One line per event of the job's history, oldest first."""
    if not record.history:
        return
    console.print("  history:", highlight=False)
    for entry in record.history:
        when = time.strftime("%H:%M:%S", time.localtime(entry["at"]))
        detail = ", ".join(
            f"{key} {short(value) if key in ('provider', 'from', 'to') else value}"
            for key, value in entry["detail"].items()
            if value not in (None, "")
        )
        console.print(f"    {when}  {entry['event']}  {detail}".rstrip(), highlight=False)


def print_job(record: JobRecord, queue_position: int | None = None) -> None:
    verified = {True: "verified", False: "NOT verified", None: "not verified yet"}
    console.print(
        f"job {record.job_id} ({record.name}): {record.status}, {verified[record.verified]}",
        highlight=False,
    )
    if queue_position is not None:
        console.print(f"  queue position: {queue_position}", highlight=False)
    if record.reason:
        reason = record.reason.replace("\n", "\n    ")
        console.print(f"  reason: {reason}", highlight=False)
    for document in record.results:
        body = document["body"]
        console.print(
            f"  provider {short(body['provider'])}: {body['status']} exit {body['exit_code']}"
            f" in {body['usage']['wall_s']:.2f}s",
            highlight=False,
        )
        for output in body["outputs"]:
            console.print(f"    {output['path']}  sha256 {output['sha256']}", highlight=False)
        if body["stdout"]:
            console.print("  stdout: " + body["stdout"].rstrip()[-2000:], highlight=False)
        if body["stderr"]:
            console.print("  stderr: " + body["stderr"].rstrip()[-2000:], highlight=False)


def queued_note(record: JobRecord, position: int | None) -> str:
    first = record.reason.splitlines()[0] if record.reason else "capacity is short"
    return f"queued at position {position}: {first}"


async def _follow_queue(orchestrator: Orchestrator, job_id: str) -> None:
    """Print the job's queue position and reason whenever they change, until it leaves."""
    shown = ""
    while True:
        record = orchestrator.jobs.get(job_id)
        if record.status != "queued":
            return
        note = queued_note(record, orchestrator.queue_position(job_id))
        if note != shown:
            err_console.print(note, highlight=False)
            shown = note
        await asyncio.sleep(1.0)


async def _submit(
    home: MeshHome, url: str, spec_path: Path, wait: bool, options: SessionOptions
) -> JobRecord:
    spec = load_job_spec(spec_path)
    async with options.session(home, url) as orchestrator:
        await orchestrator.discover(window_s=0.3)
        job_id = orchestrator.submit(spec)
        err_console.print(f"job {job_id} submitted; collecting bids ...")
        await orchestrator.place(job_id)
        if wait:
            await _follow_queue(orchestrator, job_id)
            err_console.print("running; waiting for the signed result ...")
            return await orchestrator.await_outcome(job_id, timeout=spec.timeout_s + 30)
        return orchestrator.jobs.get(job_id)


async def _submit_ensemble(
    home: MeshHome, url: str, spec_path: Path, options: SessionOptions
) -> EnsembleOutcome:
    ensemble = load_ensemble_spec(read_spec_data(spec_path), spec_path.parent)
    async with options.session(home, url) as orchestrator:
        await orchestrator.discover(window_s=0.5)
        err_console.print(
            f"ensemble {ensemble.name}: placing {len(ensemble.allocations)} allocation(s) ..."
        )
        return await orchestrator.deploy_ensemble(ensemble)


def print_ensemble(outcome: EnsembleOutcome) -> None:
    console.print(f"ensemble {outcome.ensemble}: {outcome.status}", highlight=False)
    if outcome.reason:
        console.print(f"  reason: {outcome.reason}", highlight=False)
    for name, view in outcome.to_dict()["allocations"].items():
        console.print(
            f"  {name}: job {view['job_id']} on {short(view['provider'])}: {view['status']}",
            highlight=False,
        )


def submit_ensemble(
    home: MeshHome, url: str, spec: Path, as_json: bool, options: SessionOptions
) -> None:
    outcome = asyncio.run(_submit_ensemble(home, url, spec, options))
    if as_json:
        emit_json(outcome.to_dict())
    else:
        print_ensemble(outcome)
    if outcome.status != "completed":
        raise typer.Exit(1)


def submit(
    ctx: typer.Context,
    spec: Path = typer.Argument(..., exists=True, dir_okay=False, help="Job spec (YAML/JSON)."),
    wait: bool = typer.Option(False, "--wait", help="Wait for the verified result."),
    nats: str | None = NatsOption,
    region: str | None = RegionOption,
    suspect_after: float | None = SuspectAfterOption,
    dead_after: float | None = DeadAfterOption,
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Submit a job (or an ensemble: a file with `allocations`) and run it on the best provider(s).

    An ensemble is deployed whole and always waited for.
    """
    with reported_errors(as_json=as_json):
        home = home_of(ctx)
        options = SessionOptions(region, suspect_after, dead_after)
        if is_ensemble_document(read_spec_data(spec)):
            submit_ensemble(home, home.nats_url(nats), spec, as_json, options)
            return
        record = asyncio.run(_submit(home, home.nats_url(nats), spec, wait, options))
        position = open_jobs(home).queue.position(record.job_id)
        if as_json:
            emit_json(job_view(record, position))
        else:
            print_job(record, position)
        if record.status in {"failed", "no_provider"}:
            raise typer.Exit(1)


def jobs(
    ctx: typer.Context,
    limit: int = typer.Option(50, "--limit", min=1, max=10_000),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """List this home's jobs, newest first."""
    with reported_errors(as_json=as_json):
        store = open_jobs(home_of(ctx))
        records = store.recent(limit=limit)
        positions = queue_positions(store)
        if as_json:
            emit_json([job_view(record, positions.get(record.job_id)) for record in records])
            return
        table = Table(title=f"{len(records)} job(s)")
        for column in ("job", "name", "status", "verified", "provider"):
            table.add_column(column)
        for record in records:
            provider = record.contracts[0]["terms"]["provider"] if record.contracts else None
            position = positions.get(record.job_id)
            table.add_row(
                record.job_id,
                record.name,
                record.status if position is None else f"queued #{position}",
                {True: "yes", False: "no", None: "-"}[record.verified],
                short(provider),
            )
        console.print(table)


def queue_positions(store: JobRepository) -> dict[str, int]:
    return {entry.job_id: place for place, entry in enumerate(store.queue.ordered(), start=1)}


async def _fetch(home: MeshHome, url: str, job_id: str, options: SessionOptions) -> JobRecord:
    async with options.session(home, url) as orchestrator:
        return await orchestrator.fetch_results(job_id)


def result(
    ctx: typer.Context,
    job_id: str = typer.Argument(..., help="Job id (or a unique prefix)."),
    nats: str | None = NatsOption,
    region: str | None = RegionOption,
    suspect_after: float | None = SuspectAfterOption,
    dead_after: float | None = DeadAfterOption,
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Show a job's verified result, fetching it from its provider if not here yet; a
    queued job shows its place in the queue and why it waits."""
    with reported_errors(as_json=as_json):
        home = home_of(ctx)
        store = open_jobs(home)
        record = store.find(job_id)
        if not record.is_final and record.contracts:
            options = SessionOptions(region, suspect_after, dead_after)
            record = asyncio.run(_fetch(home, home.nats_url(nats), record.job_id, options))
        position = store.queue.position(record.job_id)
        if as_json:
            emit_json(job_view(record, position))
        else:
            print_job(record, position)
            print_history(record)


async def _cancel(
    home: MeshHome, url: str, job_id: str, options: SessionOptions
) -> tuple[JobRecord, list[Cancellation]]:
    async with options.session(home, url) as orchestrator:
        cancelled = await orchestrator.cancel(job_id)
        return orchestrator.jobs.get(job_id), cancelled


def cancel(
    ctx: typer.Context,
    job_id: str = typer.Argument(..., help="Job id (or a unique prefix)."),
    nats: str | None = NatsOption,
    region: str | None = RegionOption,
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Cancel a job: its providers stop it and its escrow is refunded."""
    with reported_errors(as_json=as_json):
        home = home_of(ctx)
        found = open_jobs(home).find(job_id)
        options = SessionOptions(region)
        record, cancelled = asyncio.run(_cancel(home, home.nats_url(nats), found.job_id, options))
        if as_json:
            emit_json({**job_view(record), "cancelled": [item.to_dict() for item in cancelled]})
            return
        print_job(record)
        for item in cancelled:
            refunded = ", escrow refunded" if item.refunded else ""
            console.print(f"  {short(item.provider)}: {item.state}{refunded}", highlight=False)


async def _match(
    home: MeshHome, url: str, spec_path: Path, limit: int, window: float, region: str | None
) -> Any:
    spec = load_job_spec(spec_path)
    async with SessionOptions(region).session(home, url) as orchestrator:
        adverts = await orchestrator.discover(window_s=window)
    return dry_run(spec, adverts, limit=limit)


def match(
    ctx: typer.Context,
    spec: Path = typer.Argument(..., exists=True, dir_okay=False, help="Job spec (YAML/JSON)."),
    dry_run_only: bool = typer.Option(
        True, "--dry-run", help="Only rank candidates; `cmesh submit` deploys."
    ),
    limit: int = typer.Option(10, "--limit", min=1, max=1000, help="Candidates to show."),
    window: float = typer.Option(1.0, "--window", min=0.1, max=30, help="Seconds to listen."),
    nats: str | None = NatsOption,
    region: str | None = RegionOption,
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Show the nodes that would take a job, ranked with score breakdowns, and why not."""
    with reported_errors(as_json=as_json):
        if not dry_run_only:
            raise MeshError("`cmesh match` never deploys", hint="deploy with `cmesh submit`")
        home = home_of(ctx)
        report = asyncio.run(_match(home, home.nats_url(nats), spec, limit, window, region))
        if as_json:
            emit_json(report)
            return
        table = Table(title=f"{len(report['candidates'])} candidate(s) for {report['job']}")
        for column in ("rank", "node", "score", "qualities"):
            table.add_column(column)
        for rank, candidate in enumerate(report["candidates"], start=1):
            qualities = ", ".join(f"{k} {v:.2f}" for k, v in candidate["qualities"].items())
            table.add_row(
                str(rank), short(candidate["provider"]), f"{candidate['score']:.3f}", qualities
            )
        console.print(table)
        console.print(report["text"], highlight=False)


schema_app = typer.Typer(help="Published JSON Schemas.", no_args_is_help=True)


@schema_app.command("job")
def schema_job() -> None:
    """Print the JSON Schema of the job spec."""
    print(json.dumps(job_spec_schema(), indent=2))


@schema_app.command("ensemble")
def schema_ensemble() -> None:
    """Print the JSON Schema of the ensemble spec (a file with `allocations`)."""
    print(json.dumps(ensemble_spec_schema(), indent=2))
