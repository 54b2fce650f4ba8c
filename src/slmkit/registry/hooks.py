"""What the stages call: a finished run or export registers a version, `slm eval` attaches scores.

The stage-facing functions never fail the stage: a registry problem is a warning.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

from slmkit.console import warn
from slmkit.errors import ModelNotFoundError
from slmkit.registry.store import Registry, Version

T = TypeVar("T")
RUN_MANIFEST = "manifest.json"
EXPORT_MANIFEST = "export.json"


def _quietly(what: str, action: Callable[[], T]) -> T | None:
    try:
        return action()
    except Exception as exc:  # registration must never fail a run: say so and go on
        warn(f"model registry: {what} not recorded ({type(exc).__name__}: {exc})")
        return None


def parent_of(ref: str | None, registry: Registry) -> str | None:
    """The version a model reference names: `@v3`/`@alias`, or a registered folder/file path."""
    if not ref:
        return None
    if ref.startswith("@"):
        return registry.resolve(ref).id
    path = Path(ref).expanduser()
    if not path.exists():
        return None
    for candidate in (path, path.parent) if path.is_file() else (path,):
        found = registry.find_by_path(candidate)
        if found is not None:
            return found.id
    return None


def register_run(run_dir: Path, registry: Registry | None = None) -> Version:
    """A finished `slm train` run folder: recipe hash and data hashes from its manifest."""
    registry = registry or Registry()
    manifest = json.loads((run_dir / RUN_MANIFEST).read_text())
    data_files = manifest.get("data_files") or {}
    parent = parent_of(manifest.get("init_adapter"), registry) or parent_of(
        manifest.get("base_model"), registry
    )
    return registry.register(
        run_dir,
        "run",
        parent=parent,
        recipe_sha256=manifest.get("recipe_sha256"),
        data_files={str(k): str(v) for k, v in data_files.items()},
    )


def register_export(
    out_dir: Path, source: str, files: Iterable[Path], registry: Registry | None = None
) -> Version:
    """A finished `slm export` folder; its parent is the version of what was exported."""
    registry = registry or Registry()
    exports = [{"name": f.name, "size_bytes": f.stat().st_size} for f in files if f.is_file()]
    return registry.register(
        out_dir, "export", parent=parent_of(source, registry), export_files=exports
    )


def register_path(path: Path, note: str | None, registry: Registry | None = None) -> Version:
    """`slm models register PATH`: a run folder, an export folder, a .gguf or an HF folder."""
    registry = registry or Registry()
    path = path.expanduser().resolve()
    if not path.exists():
        raise ModelNotFoundError(f"{path}: no such file or folder")
    if path.is_dir() and (path / RUN_MANIFEST).is_file():
        version = register_run(path, registry)
    elif path.is_file() and path.suffix == ".gguf":
        version = register_export(path, "", [path], registry)
    elif path.is_dir() and ((path / EXPORT_MANIFEST).is_file() or any(path.glob("*.gguf"))):
        version = register_export(path, _export_source(path), sorted(path.glob("*.gguf")), registry)
    elif path.is_dir() and (path / "config.json").is_file():
        version = registry.register(path, "model")
    else:
        raise ModelNotFoundError(
            f"{path}: not a model (a run or export folder, a .gguf file or an HF folder)"
        )
    if note is not None:
        registry.set_note(version.id, note)
        version.note = note
    return version


def _export_source(out_dir: Path) -> str:
    try:
        source = json.loads((out_dir / EXPORT_MANIFEST).read_text()).get("source")
    except (OSError, ValueError, AttributeError):
        return ""
    return source if isinstance(source, str) else ""


def record_run(run_dir: Path) -> None:
    """Stage hook of `slm train`."""
    version = _quietly(f"run {run_dir}", lambda: register_run(run_dir))
    if version is not None:
        from slmkit.console import info

        info(f"registered {run_dir.name} as version {version.id}")


def record_export(out_dir: Path, source: str, files: Iterable[Path]) -> None:
    """Stage hook of `slm export`."""
    version = _quietly(f"export {out_dir}", lambda: register_export(out_dir, source, files))
    if version is not None:
        from slmkit.console import info

        info(f"registered {out_dir.name} as version {version.id}")


def record_eval(candidates: Iterable[Path | str | None], scores: dict[str, Any]) -> str | None:
    """Stage hook of `slm eval`: scores go to the registered version among `candidates` (paths of
    the evaluated model: run folder, export folder, GGUF file); returns its id."""

    def attach() -> str | None:
        registry = Registry()
        for candidate in candidates:
            if candidate is None:
                continue
            version = parent_of(str(candidate), registry)
            if version is not None:
                registry.set_eval_scores(version, scores)
                return version
        return None

    return _quietly("eval scores", attach)
