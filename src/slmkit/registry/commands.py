"""CLI: `slm models` (names, `warm`, and the registry: `versions`, `promote`, `register`)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from slmkit.console import out, result_line

models_app = typer.Typer(invoke_without_command=True)


@models_app.callback()
def models_cmd(ctx: typer.Context) -> None:
    """List the model names slm knows; `warm` prepares a cache; `versions`, `promote` and
    `register` manage the version registry ($SLM_HOME/registry.db, or SLM_REGISTRY: another
    file or the postgresql:// URL that several gateways follow)."""
    if ctx.invoked_subcommand is not None:
        return
    from slmkit.models import available_models

    table = Table("name", "what")
    for model_name, description in available_models():
        table.add_row(model_name, description)
    table.add_row("PATH", "a local HF folder, .gguf file, run folder or export folder")
    table.add_row("@v3, @ALIAS", "a registered version, or the version an alias points at")
    table.add_row("org/name", "a Hugging Face hub id (where the hub is reachable)")
    out.print(table)


@models_app.command("warm")
def warm_cmd(name: Annotated[str, typer.Argument(help="Model to prepare, e.g. default.")]) -> None:
    """Prepare a model's cache now (the embedded model is converted once)."""
    from slmkit.models import resolve_model

    resolved = resolve_model(name)
    result_line(f"{resolved.name}: {resolved.path}")


@models_app.command("versions")
def versions_cmd(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
    aliases: Annotated[
        bool, typer.Option("--aliases", help="Show when each alias moved, instead of versions.")
    ] = False,
) -> None:
    """Registered versions, newest first: every `slm train` run and `slm export` is one."""
    from slmkit.registry.store import Registry

    registry = Registry()
    if aliases:
        moves = registry.alias_moves()
        if as_json:
            _print_json([m.to_dict() for m in moves])
            return
        table = Table("alias", "version", "previous", "moved")
        for move in moves:
            table.add_row(move.alias, move.version, move.previous or "", _when(move.moved))
        out.print(table)
        return
    versions = registry.versions()
    if as_json:
        _print_json([v.to_dict() for v in versions])
        return
    if not versions:
        out.print(f"no versions in {registry.where} yet: `slm train` and `slm export` add them")
        return
    table = Table("id", "kind", "parent", "created", "main score", "aliases")
    table.add_column("path", overflow="fold")
    for v in versions:
        table.add_row(
            v.id,
            v.kind,
            v.parent or "",
            _when(v.created),
            v.main_score,
            ", ".join(v.aliases),
            escape(v.path),
        )
    out.print(table)


@models_app.command("promote")
def promote_cmd(
    version: Annotated[str, typer.Argument(help="Version id, e.g. v3.")],
    alias: Annotated[str, typer.Option("--as", help="Alias to point at it, e.g. support.")],
) -> None:
    """Point an alias at a version; a served `@ALIAS` model switches to it without dropping requests."""
    from slmkit.registry.store import Registry

    move = Registry().promote(version, alias)
    was = f" (was {move.previous})" if move.previous else ""
    out.print(f"@{move.alias} -> {move.version}{was}")


@models_app.command("register")
def register_cmd(
    path: Annotated[Path, typer.Argument(help="A run or export folder, a .gguf, an HF folder.")],
    note: Annotated[
        str | None, typer.Option("--note", help="A note kept with the version.")
    ] = None,
) -> None:
    """Register a model made elsewhere (runs and exports register themselves)."""
    from slmkit.registry.hooks import register_path

    version = register_path(path, note)
    result_line(f"{version.id}: {version.kind} {version.path}")


def _when(ts: float) -> str:
    return time.strftime("%m-%d %H:%M:%S", time.localtime(ts))


def _print_json(data: Any) -> None:
    result_line(json.dumps(data, indent=2))


def register(app: typer.Typer) -> None:
    app.add_typer(models_app, name="models")
