"""`cmesh reputation`: this consumer's record of providers, and signed attestations of it.

``show`` reads the home's consumer store; ``export`` writes a ``reputation-attestation``
signed by the home's identity, which another network checks with ``check`` (or
``verification.check_reputation_attestation``) without trusting the file's carrier.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer
from rich.table import Table

from computemesh.app.consumer import open_jobs
from computemesh.app.home import MeshHome
from computemesh.cli.context import home_of
from computemesh.cli.output import console, emit_json, reported_errors, short
from computemesh.identity import load_or_create_identity
from computemesh.identity.did import public_key_from_did
from computemesh.models.errors import IdentityError, VerificationError
from computemesh.verification import (
    ReputationAttestation,
    ReputationBook,
    attest_reputation,
    check_reputation_attestation,
)

app = typer.Typer(help="Providers' reputation, and attestations of it.", no_args_is_help=True)

MAX_ATTESTATION_BYTES = 64 * 1024


def provider_view(book: ReputationBook, did: str) -> dict[str, Any]:
    """What `reputation show --json` prints for one provider."""
    records = book.records(did)
    uptime = book.uptime(did)
    return {
        "did": did,
        "score": round(book.reputation_of(did), 6),
        "excluded": book.is_excluded(did),
        "uptime": {
            "up_s": round(uptime.up_s, 3),
            "down_s": round(uptime.down_s, 3),
            "availability": round(uptime.availability, 6),
        },
        "executors": {
            record.executor: {
                "verified": round(record.verified, 6),
                "timeouts": round(record.timeouts, 6),
                "disputes_lost": round(record.disputes_lost, 6),
                "fraud": record.fraud,
            }
            for record in sorted(records, key=lambda record: record.executor)
        },
    }


def _book(home: MeshHome) -> ReputationBook:
    return ReputationBook(open_jobs(home).reputation)


def _checked_did(did: str) -> str:
    try:
        public_key_from_did(did)
    except IdentityError as exc:
        raise VerificationError(f"{did!r}: {exc.message}", code="bad_did") from exc
    return did


@app.command("show")
def show(
    ctx: typer.Context,
    did: str | None = typer.Argument(None, help="A provider's DID; all providers if left out."),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Show the reputation this consumer holds of one provider, or of every one it met."""
    with reported_errors(as_json=as_json):
        book = _book(home_of(ctx))
        dids = [_checked_did(did)] if did is not None else book.store.providers()
        views = [provider_view(book, each) for each in dids]
        if as_json:
            emit_json(views[0] if did is not None else {"providers": views})
            return
        print_providers(views)


@app.command("export")
def export(
    ctx: typer.Context,
    did: str = typer.Argument(..., help="The provider's DID."),
    output: Path = typer.Option(..., "--output", "-o", help="File to write the attestation to."),
    valid_days: float = typer.Option(7.0, "--valid-days", min=0.001, help="Days it stays valid."),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Write a signed attestation of a provider's reputation, for another network to check."""
    with reported_errors(as_json=as_json):
        home = home_of(ctx)
        book = _book(home)
        if _checked_did(did) not in book.store.providers():
            raise VerificationError(
                f"this consumer holds no record of {did}", code="unknown_provider"
            )
        issuer = load_or_create_identity(home.root)
        document = attest_reputation(issuer, book, did, valid_for_s=valid_days * 86_400)
        output.write_text(json.dumps(document, indent=2, sort_keys=True) + "\n")
        checked = check_reputation_attestation(document, issuer=issuer.did)
        if as_json:
            emit_json({"file": str(output), "attestation": checked.to_dict()})
            return
        console.print(f"wrote {output}", highlight=False)
        print_attestation(checked)


@app.command("check")
def check(
    file: Path = typer.Argument(..., help="An attestation written by `reputation export`."),
    issuer: str | None = typer.Option(None, "--issuer", help="Accept it only from this DID."),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Check an attestation's signature, fields and validity period; refuse it with the reason."""
    with reported_errors(as_json=as_json):
        checked = check_reputation_attestation(_read_document(file), issuer=issuer)
        if as_json:
            emit_json({"valid": True, "attestation": checked.to_dict()})
            return
        console.print("valid attestation", highlight=False)
        print_attestation(checked)


def _read_document(file: Path) -> object:
    try:
        with file.open("rb") as handle:
            data = handle.read(MAX_ATTESTATION_BYTES + 1)
    except OSError as exc:
        raise VerificationError(
            f"cannot read {file}: {exc.strerror}", code="bad_attestation"
        ) from exc
    if len(data) > MAX_ATTESTATION_BYTES:
        raise VerificationError(
            f"{file} is over {MAX_ATTESTATION_BYTES} bytes: not an attestation",
            code="bad_attestation",
        )
    try:
        return json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise VerificationError(f"{file} is not JSON: {exc}", code="bad_attestation") from exc


def print_providers(views: list[dict[str, Any]]) -> None:
    table = Table(title=f"{len(views)} provider(s)")
    for column in ("provider", "score", "verified", "timeouts", "lost", "up", "status"):
        table.add_column(column)
    for view in views:
        counts = view["executors"].values()
        table.add_row(
            short(view["did"]),
            f"{view['score']:.3f}",
            f"{sum(c['verified'] for c in counts):.1f}",
            f"{sum(c['timeouts'] for c in counts):.1f}",
            f"{sum(c['disputes_lost'] for c in counts):.1f}",
            f"{view['uptime']['availability']:.1%}",
            "EXCLUDED (fraud)" if view["excluded"] else "ok",
        )
    console.print(table)


def print_attestation(attestation: ReputationAttestation) -> None:
    data = attestation.to_dict()
    for name in ("issuer", "subject", "score", "verified", "timeouts", "disputes_lost", "fraud"):
        console.print(f"  {name}: {data[name]}", highlight=False)
    console.print(f"  up/down: {data['up_s']:.0f} s / {data['down_s']:.0f} s", highlight=False)
    console.print(
        f"  issued at {data['issued_at_ms']} ms, expires at {data['expires_at_ms']} ms",
        highlight=False,
    )
