"""The run folder: manifest with lineage, resume checks, model card and loss plot."""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import math
import os
import platform
import subprocess
import time
from pathlib import Path
from typing import Any

from slmkit.errors import ConfigError
from slmkit.recipe import Recipe
from slmkit.train.config import PREFERENCE_METHODS

MANIFEST = "manifest.json"
CHECKPOINTS = "checkpoints"
LIBRARIES = ("slmkit", "torch", "transformers", "peft", "trl", "accelerate", "datasets")
FINGERPRINT_CHUNK = 8 << 20


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def weights_fingerprint(folder: Path | str) -> str | None:
    """sha256 over size + first and last 8 MiB of every weight file: cheap even for 8B models."""
    folder = Path(folder)
    if not folder.is_dir():
        return None
    files = sorted(
        p for p in folder.iterdir() if p.suffix in (".safetensors", ".bin", ".gguf", ".pt")
    )
    if not files:
        return None
    digest = hashlib.sha256()
    for path in files:
        size = path.stat().st_size
        digest.update(f"{path.name}:{size}".encode())
        with path.open("rb") as fh:
            digest.update(fh.read(FINGERPRINT_CHUNK))
            if size > 2 * FINGERPRINT_CHUNK:
                fh.seek(size - FINGERPRINT_CHUNK)
                digest.update(fh.read(FINGERPRINT_CHUNK))
    return digest.hexdigest()


def library_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in LIBRARIES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return versions


def git_revision() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            cwd=Path(__file__).resolve().parent,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def recipe_hash(recipe: Recipe) -> str:
    """Hash of everything in the recipe that changes what is trained (output_dir excluded)."""
    data = recipe.model_dump(mode="json")
    data.pop("output_dir", None)
    # other pipeline stages, not training (distill: writes a data file, hashed as data); SFT/PT
    # never read the dpo: section
    unread = (
        "distill",
        "preference",
        "evaluate",
        "export",
        *(() if recipe.method in (*PREFERENCE_METHODS, "grpo") else ("dpo",)),
        *(() if recipe.method == "grpo" else ("grpo",)),
    )
    for section in unread:
        data.pop(section, None)
    data["train"].pop("report_to", None)
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


def build_manifest(
    recipe: Recipe,
    base_ref: str,
    base_path: Path | str,
    files: list[Path],
    init_adapter: Path | None = None,
) -> dict[str, Any]:
    return {
        "base_model": base_ref,
        "base_model_path": str(base_path),
        "base_weights_fingerprint": weights_fingerprint(base_path),
        "init_adapter": str(init_adapter) if init_adapter else None,
        "method": recipe.method,
        "finetuning_type": recipe.finetuning,
        "init": recipe.init.mode,
        "data_files": {str(p): file_sha256(p) for p in files},
        "recipe_sha256": recipe_hash(recipe),
        "recipe": recipe.model_dump(mode="json"),
        "versions": library_versions(),
        "git_rev": git_revision(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "status": "running",
        "pid": os.getpid(),
    }


def mark_stopped(run_dir: Path, exc: BaseException) -> None:
    """Record how a training that did not finish ended: `interrupted` (Ctrl-C) or `failed`."""
    path = run_dir / MANIFEST
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError):
        return
    interrupted = isinstance(exc, (KeyboardInterrupt, SystemExit))
    manifest["status"] = "interrupted" if interrupted else "failed"
    if not interrupted:
        manifest["error"] = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
    write_json(path, manifest)


def check_lineage(old: dict[str, Any], new: dict[str, Any], run_dir: Path) -> None:
    """Refuse to resume when the data, recipe or base model differ from the run's manifest."""
    changed = []
    old_files, new_files = old.get("data_files", {}), new["data_files"]
    for path in sorted(set(old_files) | set(new_files)):
        if old_files.get(path) != new_files.get(path):
            what = (
                "added"
                if path not in old_files
                else "removed"
                if path not in new_files
                else "changed"
            )
            changed.append(f"data file {path} {what}")
    if old.get("recipe_sha256") != new["recipe_sha256"]:
        changed.append(
            "recipe settings " + ", ".join(_recipe_diff(old.get("recipe", {}), new["recipe"]))
        )
    if old.get("base_weights_fingerprint") != new["base_weights_fingerprint"]:
        changed.append(f"base model weights ({new['base_model']})")
    if changed:
        raise ConfigError(
            f"{run_dir}: cannot resume, the run was started with different inputs: {'; '.join(changed[:3])}",
            hint="use --force to resume anyway, --no-resume to start over, or a new output_dir",
        )


def _recipe_diff(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    out = []
    for key in sorted(set(old) | set(new)):
        if key in ("output_dir", "report_to"):
            continue
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += _recipe_diff(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key}: {a!r} -> {b!r}")
    return out


def last_checkpoint(run_dir: Path) -> Path | None:
    folder = run_dir / CHECKPOINTS
    found = [
        p
        for p in folder.glob("checkpoint-*")
        if p.is_dir() and (p / "trainer_state.json").is_file()
    ]
    return max(found, key=lambda p: int(p.name.split("-")[-1])) if found else None


def write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")
    tmp.replace(path)


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def loss_series(rows: list[dict[str, Any]], key: str) -> list[tuple[int, float]]:
    out = []
    for row in rows:
        if key in row:
            value = row[key]
            out.append((int(row["step"]), float(value) if not isinstance(value, str) else math.nan))
    return out


def plot_loss(
    run_dir: Path, rows: list[dict[str, Any]], train_key: str = "loss", val_key: str = "eval_loss"
) -> Path:
    """Save RUN/loss.png (train and validation loss against optimizer step)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    for key, label in ((train_key, "train"), (val_key, "validation")):
        series = loss_series(rows, key)
        if series:
            ax.plot(
                *zip(*series, strict=True), marker="." if len(series) < 40 else None, label=label
            )
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss")
    ax.set_title(f"{run_dir.name}: loss")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path = run_dir / "loss.png"
    fig.savefig(path)
    plt.close(fig)
    return path


def write_model_card(run_dir: Path, manifest: dict[str, Any], summary: dict[str, Any]) -> Path:
    """RUN/README.md: what was trained on what, with which settings, and how the curve looked."""
    recipe = manifest["recipe"]
    diag = summary.get("diagnosis", {})
    stats = summary.get("data_stats", {})
    lines = [
        f"# {run_dir.name}",
        "",
        f"A `{manifest['method']}` fine-tune ({manifest['finetuning_type']}) of `{manifest['base_model']}`, "
        "trained with slmkit (`slm train`).",
        "",
        "## Use it",
        "",
        f"    slm chat {run_dir}",
        f"    slm export {run_dir}",
        "",
        "## Result",
        "",
        f"- diagnosis: **{diag.get('status', '?')}**: {diag.get('summary', '')}",
        *[f"  - advice: {a}" for a in diag.get("advice", [])],
        f"- steps: {summary.get('steps')}, final train loss: {_fmt(summary.get('final_loss'))}, "
        f"final validation loss: {_fmt(diag.get('last_val_loss'))}",
        f"- throughput: {_fmt(summary.get('tokens_per_second'))} non-padding tokens/s, "
        f"{_fmt(summary.get('train_seconds'))} s",
        f"- trainable parameters: {summary.get('trainable_params'):,} of {summary.get('total_params'):,}",
        "",
        "![loss curve](loss.png)",
        "",
        "## Data",
        "",
        *[f"- {key}: {value}" for key, value in stats.items()],
        *[f"- `{path}` sha256 `{digest[:16]}…`" for path, digest in manifest["data_files"].items()],
        "",
        "## Settings",
        "",
        "```yaml",
        _yaml(recipe).rstrip(),
        "```",
        "",
        f"Libraries: {', '.join(f'{k} {v}' for k, v in manifest['versions'].items())}; git {manifest.get('git_rev')}.",
        "",
    ]
    path = run_dir / "README.md"
    path.write_text("\n".join(lines))
    return path


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "-" if value is None else str(value)


def _yaml(data: dict[str, Any]) -> str:
    import yaml

    return yaml.safe_dump(data, sort_keys=False)
