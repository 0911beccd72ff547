"""`cmesh id`: show, import and export this home's identity."""

from __future__ import annotations

from pathlib import Path

import typer

from computemesh.cli.context import home_of
from computemesh.cli.output import console, emit_json, reported_errors
from computemesh.identity import (
    Identity,
    export_identity,
    load_identity,
    load_or_create_identity,
    save_identity,
)
from computemesh.identity.keystore import KEY_FILE_NAME
from computemesh.models.errors import IdentityError

app = typer.Typer(
    help="This home's identity: an Ed25519 key and its did:key.", no_args_is_help=True
)


@app.command("show")
def show(
    ctx: typer.Context,
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """Print this home's DID (creating the identity on first use)."""
    with reported_errors(as_json=as_json):
        home = home_of(ctx)
        home.ensure()
        identity = load_or_create_identity(home.root)
        data = {
            "did": identity.did,
            "public_key_hex": identity.public_key.hex(),
            "key_file": str(home.root / KEY_FILE_NAME),
        }
        if as_json:
            emit_json(data)
        else:
            console.print(identity.did, highlight=False)


@app.command("import")
def import_(
    ctx: typer.Context,
    seed_hex: str = typer.Option(..., "--seed-hex", help="32-byte Ed25519 seed, 64 hex digits."),
    force: bool = typer.Option(False, "--force", help="Replace an existing identity."),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Restore an identity from its Ed25519 seed."""
    with reported_errors(as_json=as_json):
        try:
            seed = bytes.fromhex(seed_hex)
        except ValueError as exc:
            raise IdentityError("--seed-hex is not hexadecimal", code="bad_seed") from exc
        identity = Identity.from_seed(seed)
        home = home_of(ctx)
        path = save_identity(home.root, identity, overwrite=force)
        if as_json:
            emit_json({"did": identity.did, "key_file": str(path)})
        else:
            console.print(f"imported {identity.did} into {path}", highlight=False)


@app.command("export")
def export(
    ctx: typer.Context,
    path: Path = typer.Argument(..., help="Backup file to write (must not exist)."),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Write a backup of this home's identity (mode 0600; keep it secret)."""
    with reported_errors(as_json=as_json):
        identity = load_identity(home_of(ctx).root)
        written = export_identity(identity, path)
        if as_json:
            emit_json({"did": identity.did, "backup": str(written)})
        else:
            console.print(f"wrote {written} for {identity.did}", highlight=False)
