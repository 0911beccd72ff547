"""`cmesh verify show`: a job's verification verdict and its fraud records."""

from __future__ import annotations

from typing import Any

import typer
from rich.table import Table

from computemesh.app.consumer import open_jobs
from computemesh.cli.context import home_of
from computemesh.cli.output import console, emit_json, reported_errors, short
from computemesh.models.validation import parse_job_spec
from computemesh.store import JobRecord

app = typer.Typer(help="Inspect how results were verified.", no_args_is_help=True)


def verification_view(record: JobRecord, frauds: list[dict[str, Any]]) -> dict[str, Any]:
    """What `verify show --json` prints: the policy, each replica's answer, the frauds."""
    spec = parse_job_spec(record.spec)
    lost = {fraud["contract_id"] for fraud in frauds}
    return {
        "job_id": record.job_id,
        "status": record.status,
        "verified": record.verified,
        "reason": record.reason,
        "policy": spec.verification.model_dump(mode="json") if spec.verification else None,
        "replicas": [
            {
                "provider": document["body"]["provider"],
                "contract_id": document["body"]["contract_id"],
                "status": document["body"]["status"],
                "exit_code": document["body"]["exit_code"],
                "outputs": {o["path"]: o["sha256"] for o in document["body"]["outputs"]},
                "lost": document["body"]["contract_id"] in lost,
            }
            for document in record.results
        ],
        "fraud_records": frauds,
    }


@app.command("show")
def show(
    ctx: typer.Context,
    job_id: str = typer.Argument(..., help="Job id (or a unique prefix)."),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Show a job's verification: replicas, their answers, and any fraud records."""
    with reported_errors(as_json=as_json):
        jobs = open_jobs(home_of(ctx))
        record = jobs.find(job_id)
        view = verification_view(record, jobs.fraud.for_job(record.job_id))
        if as_json:
            emit_json(view)
            return
        print_verification(view)


def print_verification(view: dict[str, Any]) -> None:
    policy = view["policy"]["policy"] if view["policy"] else "network default"
    verdict = "verified" if view["verified"] else "not verified"
    console.print(
        f"job {view['job_id']}  {view['status']}  {verdict}  policy {policy}", highlight=False
    )
    if view["reason"]:
        console.print(f"  {view['reason']}", highlight=False)
    table = Table(title=f"{len(view['replicas'])} replica(s)")
    for column in ("provider", "status", "exit", "outputs", "verdict"):
        table.add_column(column)
    for replica in view["replicas"]:
        outputs = ", ".join(f"{path} {digest[:12]}" for path, digest in replica["outputs"].items())
        table.add_row(
            short(replica["provider"]),
            replica["status"],
            str(replica["exit_code"]),
            outputs,
            "WRONG (fraud record)" if replica["lost"] else "ok",
        )
    console.print(table)
    for fraud in view["fraud_records"]:
        verdict_body = fraud["verdict"]["body"]
        console.print(
            f"fraud: {fraud['provider']} on contract {fraud['contract_id']}:"
            f" {verdict_body['reason']}; verdict signed by {fraud['verdict']['signer']}",
            highlight=False,
        )
