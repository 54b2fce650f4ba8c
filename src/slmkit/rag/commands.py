"""CLI: `slm index`. Thin: parse, call the stage, print."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from slmkit.config import from_options, option
from slmkit.errors import ConfigError
from slmkit.rag.config import IndexSettings


def index_cmd(
    docs: Annotated[
        list[Path],
        typer.Argument(
            help="Files and folders to index (.md .markdown .txt .html .htm; .pdf with pypdf installed).",
        ),
    ],
    out: Annotated[
        Path | None,
        typer.Option("--out", "-o", help="Index folder to build (replaced if it is one)."),
    ] = None,
    update: Annotated[
        Path | None,
        typer.Option(
            "--update",
            help="Index folder to bring up to date with DOCS: re-embed added and changed files, drop the others.",
        ),
    ] = None,
    chunk_tokens: int | None = option(IndexSettings, "chunk_tokens", from_config=True),
    overlap_tokens: int | None = option(IndexSettings, "overlap_tokens", from_config=True),
    ivf: bool | None = option(IndexSettings, "ivf", "--ivf", from_config=True),
) -> None:
    """Chunk documents, embed them with all-MiniLM-L6-v2 and store a FAISS index for `rag:` serving."""
    from slmkit.console import out as stdout
    from slmkit.rag.index import build_index, update_index

    given = {"chunk_tokens": chunk_tokens, "overlap_tokens": overlap_tokens, "ivf": ivf}
    given = {k: v for k, v in given.items() if v is not None}
    if out is not None and update is None:
        report = build_index(docs, out, from_options(IndexSettings, given))
    elif update is not None and out is None:
        if given:
            flags = ", ".join("--" + k.replace("_", "-") for k in given)
            raise ConfigError(
                f"--update keeps the index's settings; {flags} needs a new build (-o)"
            )
        report = update_index(update, docs)
    else:
        raise ConfigError(
            "give either -o INDEX (build) or --update INDEX (update), not both or none"
        )
    counts = ", ".join(
        f"{name} {report.counts[name]}" for name in ("added", "changed", "unchanged", "removed")
    )
    stdout.print(
        f"index {report.path}: {report.files} files, {report.chunks} chunks ({report.kind}); "
        f"{counts}; embedded {report.embedded} chunks in {report.seconds:.1f} s",
        soft_wrap=True,
    )


def register(app: typer.Typer) -> None:
    app.command("index")(index_cmd)
