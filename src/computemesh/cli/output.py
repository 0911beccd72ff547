"""How the CLI speaks: JSON for scripts, Rich tables for people, errors in one place."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, NoReturn

import typer
from rich.console import Console

from computemesh.identity.did import abbreviate_did
from computemesh.models.errors import MeshError, NoProviderError, SpecError

console = Console(emoji=False)
err_console = Console(stderr=True, emoji=False)

EXIT_ERROR = 1
EXIT_BAD_INPUT = 2


def emit_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")


def fail(exc: MeshError, *, as_json: bool) -> NoReturn:
    if as_json:
        emit_json({"error": exc.to_dict()})
    else:
        err_console.print(f"[bold red]error:[/] {exc.message}", highlight=False)
        if isinstance(exc, NoProviderError):
            for reason in exc.reasons:
                err_console.print(f"  - {reason}", highlight=False)
        if exc.hint:
            err_console.print(f"[dim]hint: {exc.hint}[/]", highlight=False)
    raise typer.Exit(EXIT_BAD_INPUT if isinstance(exc, SpecError) else EXIT_ERROR)


@contextmanager
def reported_errors(*, as_json: bool = False) -> Iterator[None]:
    """Turn MeshError into a clear message and an exit status; Ctrl-C into exit 130."""
    try:
        yield
    except MeshError as exc:
        fail(exc, as_json=as_json)
    except KeyboardInterrupt:
        err_console.print("interrupted")
        raise typer.Exit(130) from None


def short(did: str | None) -> str:
    return abbreviate_did(did) if did else "-"


def render(data: Any, *, as_json: bool, human: Callable[[], None]) -> None:
    if as_json:
        emit_json(data)
    else:
        human()
