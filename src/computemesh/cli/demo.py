"""`cmesh demo`: a local mesh doing real work, with progress and a summary table."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from computemesh.app.demo import DemoReport, run_demo
from computemesh.cli.context import home_of
from computemesh.cli.jobs import DeadAfterOption, SuspectAfterOption
from computemesh.cli.mesh import ledger_backend
from computemesh.cli.output import console, emit_json, err_console, reported_errors, short
from computemesh.settlement import format_credits
from computemesh.store import JobRecord


def demo(
    ctx: typer.Context,
    nodes: int = typer.Option(3, "--nodes", "-n", min=1, max=32, help="Provider processes."),
    jobs: int = typer.Option(10, "--jobs", "-j", min=1, max=10_000, help="Jobs to submit."),
    examples: Path | None = typer.Option(None, "--examples", help="Examples directory."),
    insecure_no_sandbox: bool = typer.Option(
        False, "--insecure-no-sandbox", help="Run jobs without bubblewrap (unsafe)."
    ),
    ledger: str | None = typer.Option(
        None, "--ledger", help="sqlite (embedded, the default) or evm (a local anvil chain)."
    ),
    suspect_after: float | None = SuspectAfterOption,
    dead_after: float | None = DeadAfterOption,
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object at the end."),
) -> None:
    """Bring up a local mesh, run real example jobs on it, verify them, tear it down.

    With ``--ledger evm`` every job is paid on a local anvil chain started for the demo.
    """
    with reported_errors(as_json=as_json):
        home = home_of(ctx)
        progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=err_console,
            disable=as_json,
        )
        task = progress.add_task("jobs verified", total=jobs)

        def on_job(record: JobRecord) -> None:
            progress.advance(task)

        def on_mesh_up(state: dict[str, Any]) -> None:
            if not as_json:
                err_console.print(
                    f"mesh up: {len(state['nodes'])} node(s) on {state['nats_url']};"
                    f" submitting {jobs} job(s)"
                )

        if not as_json:
            err_console.print(f"starting a local mesh of {nodes} node(s) ...")
        with progress:
            report = run_demo(
                home,
                nodes=nodes,
                jobs=jobs,
                examples_dir=examples,
                sandbox=not insecure_no_sandbox,
                progress=on_job,
                on_mesh_up=on_mesh_up,
                ledger=ledger_backend(ledger),
                suspect_after_s=suspect_after,
                dead_after_s=dead_after,
            )
        summary = report.summary()
        if as_json:
            emit_json(summary)
        else:
            print_report(report, summary)
        if summary["failed"] or summary["verified"] != summary["submitted"]:
            raise typer.Exit(1)


def print_report(report: DemoReport, summary: dict[str, Any]) -> None:
    table = Table(title="computemesh demo")
    for column in ("job", "example", "status", "verified", "correct", "provider", "seconds"):
        table.add_column(column, no_wrap=True)
    for row in report.rows:
        table.add_row(
            row["job_id"][:8],
            row["example"].removesuffix(".yaml"),
            row["status"],
            "yes" if row["verified"] else "NO",
            "yes" if row["correct"] else "NO",
            short(row["provider"]),
            f"{row['seconds']:.2f}",
        )
    console.print(table)
    console.print(
        f"submitted {summary['submitted']}, completed {summary['completed']},"
        f" verified {summary['verified']}, correct {summary['correct']},"
        f" failed {summary['failed']} in {summary['wall_s']:.1f}s on {summary['nodes']} node(s)",
        highlight=False,
    )
    for row in report.rows:
        if row["reason"]:
            console.print(f"  {row['job_id'][:12]}: {row['reason']}", highlight=False)
    if report.payments is not None:
        print_payments(report.payments)


def print_payments(payments: dict[str, Any]) -> None:
    """Credits each provider earned, the treasury's and creators' shares, the consumer's."""
    table = Table(title=f"payments (credits, {payments['ledger']})")
    table.add_column("provider", no_wrap=True)
    table.add_column("jobs paid", justify="right")
    table.add_column("earned", justify="right")
    table.add_column("balance", justify="right")
    balances = payments["balances"]
    for row in payments["providers"]:
        balance = balances.get(row["did"])
        table.add_row(
            short(row["did"]),
            str(row["jobs_paid"]),
            format_credits(row["earned"]),
            "" if balance is None else format_credits(balance),
        )
    treasury = format_credits(payments["treasury"])
    table.add_row("treasury", "", treasury, format_credits(payments["treasury_balance"]))
    if payments["creators"]:
        table.add_row("model creators", "", format_credits(payments["creators"]))
    console.print(table)
    console.print(
        f"consumer locked {format_credits(payments['locked'])}, paid"
        f" {format_credits(payments['paid'])}, refunded {format_credits(payments['refunded'])}",
        highlight=False,
    )
