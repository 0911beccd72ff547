"""The `cmesh` command."""

from __future__ import annotations

import logging

import typer

from computemesh import __version__
from computemesh.app.logs import configure_logging
from computemesh.cli import demo as demo_commands
from computemesh.cli import identity as identity_commands
from computemesh.cli import jobs as job_commands
from computemesh.cli import ledger as ledger_commands
from computemesh.cli import logs as log_commands
from computemesh.cli import mesh as mesh_commands
from computemesh.cli import reputation as reputation_commands
from computemesh.cli import verify as verify_commands

app = typer.Typer(
    name="cmesh",
    help="computemesh: run work on anyone's machines, signed, sandboxed and verified.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        print(f"cmesh {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    ctx: typer.Context,
    home: str | None = typer.Option(
        None, "--home", envvar="CMESH_HOME", help="Home directory (default ~/.computemesh)."
    ),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log at debug level."),
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version."
    ),
) -> None:
    ctx.obj = {"home": home}
    configure_logging(level="DEBUG" if verbose else "WARNING")
    logging.captureWarnings(True)


app.add_typer(identity_commands.app, name="id")
app.add_typer(mesh_commands.node_app, name="node")
app.add_typer(job_commands.schema_app, name="schema")
app.add_typer(ledger_commands.wallet_app, name="wallet")
app.add_typer(ledger_commands.ledger_app, name="ledger")
app.add_typer(verify_commands.app, name="verify")
app.add_typer(reputation_commands.app, name="reputation")
app.command("up")(mesh_commands.up)
app.command("down")(mesh_commands.down)
app.command("status")(mesh_commands.status)
app.command("submit")(job_commands.submit)
app.command("match")(job_commands.match)
app.command("jobs")(job_commands.jobs)
app.command("result")(job_commands.result)
app.command("cancel")(job_commands.cancel)
app.command("logs")(log_commands.logs)
app.command("demo")(demo_commands.demo)
