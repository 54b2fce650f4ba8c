"""The Train tab's recipe form: its fields come from the recipe's pydantic models (default, choices,
description), its values become a validated recipe YAML, and a run's metrics become a progress line."""

from __future__ import annotations

import re
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo

from slmkit.config import format_validation_error
from slmkit.errors import ConfigError
from slmkit.recipe import Recipe, load_recipe
from slmkit.train.config import resolve_data_paths
from slmkit.train.estimate import GIB, MemoryEstimate, estimate_memory, total

# The recipe keys the form edits, in the order shown; every other key of a loaded recipe is kept.
FORM_KEYS = (
    "model",
    "method",
    "finetuning",
    "data.train",
    "data.val_ratio",
    "data.cutoff_len",
    "data.packing",
    "data.template",
    "data.max_samples",
    "lora.r",
    "lora.alpha",
    "lora.dropout",
    "lora.target_modules",
    "train.lr",
    "train.epochs",
    "train.max_steps",
    "train.batch_size",
    "train.grad_accum",
    "train.scheduler",
    "train.max_grad_norm",
    "train.precision",
    "train.seed",
)
PATH_KEYS = ("data.train", "data.val")
_PROGRESS_LINE = re.compile(r": (\d+)/(\d+) \(\d+%\)")


def field_info(key: str) -> FieldInfo:
    """The pydantic field behind a dotted recipe key (`train.lr` -> TrainSection.lr)."""
    model: type[BaseModel] = Recipe
    *sections, name = key.split(".")
    for section in sections:
        annotation = model.model_fields[section].annotation
        assert isinstance(annotation, type) and issubclass(annotation, BaseModel)
        model = annotation
    return model.model_fields[name]


def default_value(key: str) -> Any:
    """The field's default as the form shows it (lists as text)."""
    return to_form(key, field_info(key).get_default(call_default_factory=True))


# optional fields the form shows empty for "not set" (None in the recipe)
OPTIONAL_KEYS = ("data.template", "data.max_samples")


def choices(key: str) -> list[str] | None:
    """The allowed values of a Literal field (None for free values); the chat template's are its
    names, with "" for the model's own."""
    if key == "data.template":
        from slmkit.models.templates import TEMPLATE_NAMES

        return ["", *TEMPLATE_NAMES]
    annotation = field_info(key).annotation
    if typing.get_origin(annotation) is typing.Literal:
        return [str(v) for v in typing.get_args(annotation)]
    return None


def kind(key: str) -> str:
    """How the form edits a field: choice, bool, int, float, auto-number (`auto` or a number),
    lines (a list of paths) or text."""
    annotation = field_info(key).annotation
    if choices(key):
        return "choice"
    if annotation in (bool, int, float):
        return annotation.__name__  # type: ignore[union-attr]
    if annotation == list[str]:
        return "lines"
    if set(typing.get_args(annotation)) == {float, typing.Literal["auto"]}:
        return "auto-number"  # a textbox: `auto` or a number
    return "text"


def to_form(key: str, value: Any) -> Any:
    if value is None and key in OPTIONAL_KEYS:
        return ""
    if isinstance(value, list):
        return ("\n" if kind(key) == "lines" else ", ").join(str(v) for v in value)
    if kind(key) == "auto-number":
        return f"{value:g}" if isinstance(value, float) else str(value)
    return value


def from_form(key: str, value: Any) -> Any:
    """A form value as the recipe holds it (pydantic then checks it)."""
    form_kind = kind(key)
    if key in OPTIONAL_KEYS:
        text = str(value if value is not None else "").strip()
        if not text:
            return None
        return int(text) if key == "data.max_samples" and text.isdigit() else text
    if form_kind == "lines":
        return [line.strip() for line in str(value or "").splitlines() if line.strip()]
    if key == "lora.target_modules":
        text = str(value or "").strip()
        return (
            text
            if text in ("", "all-linear")
            else [p.strip() for p in text.split(",") if p.strip()]
        )
    if form_kind == "int" and isinstance(value, float) and value.is_integer():
        return int(value)
    if form_kind == "auto-number":
        text = str(value if value is not None else "").strip()
        try:
            return "auto" if text in ("", "auto") else float(text)
        except ValueError:
            return text  # the recipe's check names the key and what it takes
    return value


def recipe_data(
    values: list[Any], run_name: str, runs_dir: Path, base: dict[str, Any] | None
) -> dict[str, Any]:
    """The recipe as a nested dict: `base` (a loaded recipe) overlaid with the form's values,
    absolute data paths, and output_dir under the board's runs folder."""
    data: dict[str, Any] = yaml.safe_load(yaml.safe_dump(base or {}))
    for key, value in zip(FORM_KEYS, values, strict=True):
        *sections, name = key.split(".")
        node = data
        for section in sections:
            node = node.setdefault(section, {})
        node[name] = from_form(key, value)
    data_section = data.setdefault("data", {})
    for key in ("train", "val"):
        if data_section.get(key):
            data_section[key] = [str(p) for p in resolve_data_paths(data_section[key], Path.cwd())]
    name = run_name.strip()
    if not name or "/" in name or name.startswith("."):
        raise ConfigError(f"run name {run_name!r}: give a folder name (letters, digits, - and _)")
    data.pop("output_dir", None)  # a loaded recipe's folder: the run name box decides
    return {"model": data.pop("model"), "output_dir": str(runs_dir / name), **data}


def validate_recipe(data: dict[str, Any]) -> Recipe:
    """The recipe model of the form's values; a bad value is one line naming its key."""
    try:
        return Recipe.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc)) from exc


def recipe_yaml(data: dict[str, Any], path: Path) -> str:
    """The recipe file's text: the command that runs it, then the settings."""
    return f"# slm train {path}\n" + yaml.safe_dump(data, sort_keys=False, allow_unicode=True)


def load_form(path: Path) -> tuple[list[Any], str, dict[str, Any]]:
    """(form values, run name, the recipe's other settings) of an existing recipe file; relative
    data paths are made absolute against the recipe's folder, as `slm train` resolves them."""
    recipe = load_recipe(path)
    data = yaml.safe_load(Path(path).read_text()) or {}
    data.setdefault("data", {})
    for key in ("train", "val"):
        paths = getattr(recipe.data, key)
        if paths:
            data["data"][key] = [str(p) for p in resolve_data_paths(paths, Path(path).parent)]
    values = []
    for key in FORM_KEYS:
        node: Any = recipe
        for part in key.split("."):
            node = getattr(node, part)
        values.append(to_form(key, node))
    return values, Path(recipe.output_dir).name, data


def memory_estimate(recipe: Recipe) -> tuple[str, list[list[Any]]]:
    """`slm estimate` for the recipe: a summary line and rows of GiB per part and precision."""
    method = "full" if recipe.finetuning == "freeze" else recipe.finetuning
    result: MemoryEstimate = estimate_memory(
        recipe.model,
        method=method,
        batch=recipe.train.batch_size,
        cutoff=recipe.data.cutoff_len,
        lora_r=recipe.lora.r,
        gradient_checkpointing=recipe.train.gradient_checkpointing,
    )
    parts = list(next(iter(result.training.values())))
    rows = [[part, *[f"{p[part] / GIB:.2f}" for p in result.training.values()]] for part in parts]
    rows.append(["total", *[f"{total(p) / GIB:.2f}" for p in result.training.values()]])
    sizes = ", ".join(f"{total(p) / GIB:.2f} GiB in {name}" for name, p in result.training.items())
    bound = (
        " (freeze: estimated as full fine-tuning, an upper bound)"
        if method != recipe.finetuning
        else ""
    )
    line = (
        f"memory to train {result.shape.params / 1e6:,.1f}M params with {method}, batch "
        f"{result.batch} x {result.cutoff} tokens: {sizes}{bound}"
    )
    return line, rows


def estimate_columns(rows: list[list[Any]]) -> list[str]:
    return [
        "part",
        *(["train fp32", "train bf16"] if rows and len(rows[0]) == 3 else ["train bf16"]),
    ]


@dataclass
class Progress:
    """Where a training stands, from its metrics.jsonl rows and the total steps it announced."""

    step: int
    total: int | None
    tokens_per_second: float | None
    eta_s: float | None
    loss: float | None
    val_loss: float | None

    def line(self) -> str:
        parts = [f"step {self.step}" + (f"/{self.total}" if self.total else "")]
        if self.loss is not None:
            parts.append(f"loss {self.loss:.4f}")
        if self.val_loss is not None:
            parts.append(f"val loss {self.val_loss:.4f}")
        if self.tokens_per_second:
            parts.append(f"{self.tokens_per_second:,.0f} tokens/s")
        if self.eta_s is not None:
            parts.append(f"ETA {_duration(self.eta_s)}")
        return " · ".join(parts)


def total_steps(recipe_path: str | None, log_text: str) -> int | None:
    """train.max_steps of the recipe when set, else the total of the last progress line in the log."""
    if recipe_path:
        try:
            max_steps = load_recipe(recipe_path).train.max_steps
        except Exception:  # a recipe the child rejects: its own error line says why
            max_steps = -1
        if max_steps > 0:
            return max_steps
    found = _PROGRESS_LINE.findall(log_text)
    return int(found[-1][1]) if found else None


def progress(rows: list[dict[str, Any]], total_steps: int | None, running: bool) -> Progress:
    losses = [r for r in rows if "loss" in r]
    vals = [r for r in rows if "eval_loss" in r]
    timed = [r for r in losses if "time" in r]
    step = max((int(r.get("step", 0)) for r in rows), default=0)
    rate = next(
        (r["train_tokens_per_second"] for r in reversed(losses) if "train_tokens_per_second" in r),
        None,
    )
    eta = None
    if running and total_steps and len(timed) >= 2 and timed[-1]["step"] > timed[0]["step"]:
        per_step = (timed[-1]["time"] - timed[0]["time"]) / (timed[-1]["step"] - timed[0]["step"])
        eta = max(0.0, (total_steps - step) * per_step)
    return Progress(
        step,
        total_steps,
        float(rate) if rate else None,
        eta,
        _number(losses[-1]["loss"]) if losses else None,
        _number(vals[-1]["eval_loss"]) if vals else None,
    )


def _number(value: Any) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _duration(seconds: float) -> str:
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return (
        f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"
    )
