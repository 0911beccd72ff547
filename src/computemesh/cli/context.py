"""What every command shares: the resolved home."""

from __future__ import annotations

import typer

from computemesh.app.home import MeshHome


def home_of(ctx: typer.Context) -> MeshHome:
    root = ctx.find_root()
    home = root.obj.get("home") if isinstance(root.obj, dict) else None
    return MeshHome.resolve(home)
