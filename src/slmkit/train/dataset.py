"""Recipe data -> tokenized train/validation sets (through the data layer) and a padding collator."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from slmkit.console import info, warn
from slmkit.errors import DataError
from slmkit.recipe import Recipe
from slmkit.train.config import resolve_data_paths


@dataclass
class PreparedData:
    """What the trainer needs plus the numbers the model card reports."""

    train_rows: list[dict[str, list[int]]]
    val_rows: list[dict[str, list[int]]]
    files: list[Path]
    stats: dict[str, Any] = field(default_factory=dict)
    preference_rows: list[dict[str, Any]] = field(default_factory=list)
    val_preference_rows: list[dict[str, Any]] = field(default_factory=list)
    prompt_rows: list[dict[str, Any]] = field(default_factory=list)  # GRPO

    @property
    def size(self) -> int:
        """Training rows of whichever kind this method reads (samples, pairs, ratings, prompts)."""
        return len(self.train_rows or self.preference_rows or self.prompt_rows)


def data_files(recipe: Recipe, recipe_dir: Path) -> list[Path]:
    """Every data file a recipe reads (folders expanded), for hashing and lineage."""
    paths = resolve_data_paths(recipe.data.train + recipe.data.val, recipe_dir)
    files: list[Path] = []
    for path in paths:
        if path.is_dir() and (path / "dataset_info.json").is_file():
            files.extend(_dataset_info_files(path / "dataset_info.json", recipe.data.names))
        elif path.is_dir():
            files.extend(sorted(p for p in path.rglob("*") if p.is_file()))
        elif path.is_file():
            files.append(path)
        else:
            raise DataError(f"{path}: data file not found (data.train / data.val in the recipe)")
    return files


def _dataset_info_files(info: Path, names: list[str] | None) -> list[Path]:
    """dataset_info.json itself plus the files of the datasets a recipe picks from it."""
    try:
        entries = json.loads(info.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise DataError(f"{info}: unreadable dataset_info.json ({exc})") from exc
    picked = names or list(entries)
    files = [info]
    for name in picked:
        entry = entries.get(name)
        if isinstance(entry, dict) and "file_name" in entry:
            target = info.parent / entry["file_name"]
            files += (
                sorted(p for p in target.rglob("*") if p.is_file()) if target.is_dir() else [target]
            )
    return [f for f in files if f.is_file()]


def load_recipe_records(recipe: Recipe, recipe_dir: Path, which: str = "train") -> list[Any]:
    """Records of `data.train` (or `data.val`), with every problem reported as file:line."""
    from slmkit.data import load_records

    paths = resolve_data_paths(
        recipe.data.train if which == "train" else recipe.data.val, recipe_dir
    )
    if not paths:
        return []
    result = load_records(list[str | Path](paths), recipe.data.format, names=recipe.data.names)
    result.raise_for_errors()
    records = _handle_duplicates(list(result.records), recipe.data.dedupe)
    if recipe.data.max_samples:
        records = records[: recipe.data.max_samples]
    if not records:
        raise DataError(f"{', '.join(map(str, paths))}: no records found")
    return records


def _handle_duplicates(records: list[Any], dedupe: bool) -> list[Any]:
    """Drop exact duplicates under `data.dedupe`; otherwise keep them and say so once."""
    from slmkit.data.loader import drop_duplicates

    kept, copies = drop_duplicates(records)
    if not copies:
        return records
    first = ", ".join(r.source for r in copies[:3])
    if dedupe:
        info(
            f"data.dedupe: dropped {len(copies)} exact duplicate record(s) of {len(records)} "
            f"(first: {first})"
        )
        return kept
    warn(
        f"{len(copies)} exact duplicate record(s) kept (first: {first}); "
        "data.dedupe: true drops them"
    )
    return records


def split_train_val(recipe: Recipe, recipe_dir: Path) -> tuple[list[Any], list[Any]]:
    records = load_recipe_records(recipe, recipe_dir, "train")
    if recipe.data.val:
        return records, load_recipe_records(recipe, recipe_dir, "val")
    if recipe.data.val_ratio > 0:
        from slmkit.data.split import split_records

        return split_records(records, recipe.data.val_ratio, recipe.train.seed)
    return records, []


def prepare_sft_data(recipe: Recipe, recipe_dir: Path, tokenizer: Any) -> PreparedData:
    """Tokenize records with assistant-only labels (or plain-text labels for `method: pt`)."""
    from slmkit.data.template import tokenize_sft

    train_records, val_records = split_train_val(recipe, recipe_dir)
    _check_kinds(train_records, recipe.method)
    settings: dict[str, Any] = dict(
        cutoff_len=recipe.data.cutoff_len,
        train_on_prompt=recipe.data.train_on_prompt,
        template=recipe.data.template,
        overflow=recipe.data.overflow,
    )
    train_tok = tokenize_sft(train_records, tokenizer, **settings)
    _raise_for_problems(train_tok)
    _report_overflow(train_tok, recipe.data.cutoff_len)
    train_rows = [_row(s) for s in train_tok.samples]
    val_rows: list[dict[str, list[int]]] = []
    if val_records:
        val_tok = tokenize_sft(val_records, tokenizer, **settings)
        _raise_for_problems(val_tok)
        val_rows = [_row(s) for s in val_tok.samples]
    if not train_rows:
        raise DataError(
            "no training samples left after tokenization (all dropped: raise data.cutoff_len?)"
        )
    lengths = [len(r["input_ids"]) for r in train_rows]
    stats = {
        "records": len(train_records),
        "val_records": len(val_records),
        "samples": len(train_rows),
        "tokens": sum(lengths),
        "mean_len": round(sum(lengths) / len(lengths), 1),
        "max_len": max(lengths),
        "truncated": train_tok.n_truncated,
        "dropped": train_tok.n_dropped,
        "trainable_share": round(float(train_tok.trainable_share), 3),
    }
    if recipe.data.packing:
        from slmkit.data.packing import pack_samples

        train_rows = [
            row.as_dict() for row in pack_samples(train_tok.samples, recipe.data.cutoff_len)
        ]
        stats["packed_rows"] = len(train_rows)
    return PreparedData(train_rows, val_rows, data_files(recipe, recipe_dir), stats)


def prepare_dpo_data(recipe: Recipe, recipe_dir: Path, tokenizer: Any = None) -> PreparedData:
    """Preference pairs in TRL's conversational format (prompt / chosen / rejected); a pair over
    `data.cutoff_len` has its prompt cut from its start (or is dropped) before TRL sees it, since
    TRL would cut the answers' ends or leave the pair out."""
    from slmkit.data.preference import to_preference_rows

    return _prepare_rated(recipe, recipe_dir, tokenizer, to_preference_rows, "preference pairs")


def prepare_kto_data(recipe: Recipe, recipe_dir: Path, tokenizer: Any = None) -> PreparedData:
    """Rated answers as KTO rows (`prompt_ids`, `completion_ids`, `label`), tokenized like DPO's
    pairs and fitted to `data.cutoff_len` by the same rules."""
    from slmkit.data.preference import to_unpaired_rows

    return _prepare_rated(recipe, recipe_dir, tokenizer, to_unpaired_rows, "rated answers")


def _prepare_rated(
    recipe: Recipe,
    recipe_dir: Path,
    tokenizer: Any,
    to_rows: Callable[[list[Any], Any], list[dict[str, Any]]],
    what: str,
) -> PreparedData:
    """Pairs or rated answers: fitted to `data.cutoff_len`, then tokenized by `to_rows` as
    inference renders them."""
    from slmkit.data.template import ChatRenderer, resolve_chat_template

    train_records, val_records = split_train_val(recipe, recipe_dir)
    _check_kinds(train_records, recipe.method)
    tokenizer = tokenizer or _recipe_tokenizer(recipe)
    fitted = _fit_pairs(recipe, train_records, tokenizer)
    renderer = ChatRenderer(tokenizer, resolve_chat_template(tokenizer, recipe.data.template))
    rows = to_rows(fitted.records, renderer)
    val_rows = to_rows(_fit_pairs(recipe, val_records, tokenizer).records, renderer)
    if not rows:
        raise DataError(f"no {what} left (all dropped: raise data.cutoff_len?)")
    stats: dict[str, Any] = {"records": len(train_records), "val_records": len(val_records)}
    if "label" in rows[0]:
        up = sum(1 for row in rows if row["label"])
        stats.update(rated=len(rows), thumbs_up=up, thumbs_down=len(rows) - up)
    else:
        stats["pairs"] = len(rows)
    stats.update(truncated=fitted.n_truncated, dropped=fitted.n_dropped)
    return PreparedData([], [], data_files(recipe, recipe_dir), stats, rows, val_rows)


def prepare_grpo_data(recipe: Recipe, recipe_dir: Path) -> PreparedData:
    """The prompts GRPO samples answers to, with the columns its rewards check."""
    from slmkit.data.prompts import load_prompts

    paths = resolve_data_paths(recipe.data.train, recipe_dir)
    prompts = load_prompts(paths)
    prompts.raise_for_errors()
    rows = prompts.rows[: recipe.data.max_samples] if recipe.data.max_samples else prompts.rows
    stats = {
        "prompts": len(rows),
        "with_response_format": sum(1 for r in rows if r["response_format"]),
        "with_must_include": sum(1 for r in rows if r["must_include"]),
    }
    return PreparedData([], [], data_files(recipe, recipe_dir), stats, prompt_rows=rows)


def prepare_data(recipe: Recipe, recipe_dir: Path, tokenizer: Any) -> PreparedData:
    """The method's data: preference pairs, rated answers, prompts, or SFT / plain-text samples."""
    if recipe.method == "grpo":
        return prepare_grpo_data(recipe, recipe_dir)
    if recipe.method in ("dpo", "orpo", "simpo", "reward"):
        return prepare_dpo_data(recipe, recipe_dir, tokenizer)
    if recipe.method == "kto":
        return prepare_kto_data(recipe, recipe_dir, tokenizer)
    return prepare_sft_data(recipe, recipe_dir, tokenizer)


def _fit_pairs(recipe: Recipe, records: list[Any], tokenizer: Any) -> Any:
    """Pairs shortened to `data.cutoff_len` by the same rules as SFT samples."""
    from slmkit.data.template import tokenize_sft

    fitted = tokenize_sft(
        records,
        tokenizer,
        cutoff_len=recipe.data.cutoff_len,
        template=recipe.data.template,
        overflow=recipe.data.overflow,
    )
    _raise_for_problems(fitted)
    _report_overflow(fitted, recipe.data.cutoff_len)
    return fitted


def _recipe_tokenizer(recipe: Recipe) -> Any:
    from slmkit.train.modeling import load_tokenizer_for, resolve_base

    return load_tokenizer_for(resolve_base(recipe), recipe.data.template)


def _report_overflow(result: Any, cutoff_len: int) -> None:
    """One warning line for the samples over `cutoff_len`, with the first one located."""
    if not result.n_over_cutoff:
        return
    first = next(p for p in result.problems if p.severity == "warning")
    warn(
        f"{result.n_over_cutoff} sample(s) over cutoff_len {cutoff_len}: {result.n_truncated} "
        f"truncated, {result.n_dropped} dropped (first: {_problem_text(first)})"
    )


# the record kind each method trains on, and the method that trains on each kind
KIND_OF_METHOD = {
    "sft": "sft",
    "pt": "text",
    "dpo": "preference",
    "orpo": "preference",
    "simpo": "preference",
    "reward": "preference",
    "kto": "unpaired",
}
METHOD_FOR_KIND = {"sft": "sft", "text": "pt", "preference": "dpo", "unpaired": "kto"}


def _check_kinds(records: list[Any], method: str) -> None:
    wanted = KIND_OF_METHOD[method]
    wrong = next((r for r in records if r.kind != wanted), None)
    if wrong is None:
        return
    raise DataError(
        f"{wrong.source}: a {wrong.kind!r} record, but method {method!r} needs {wanted!r} records",
        hint=f"use method: {METHOD_FOR_KIND.get(wrong.kind, wrong.kind)} for this data, or point "
        "data.train at the right file",
    )


def _raise_for_problems(result: Any) -> None:
    errors = [
        p for p in getattr(result, "problems", []) if getattr(p, "severity", "error") == "error"
    ]
    if errors:
        first = errors[0]
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        raise DataError(f"{_problem_text(first)}{more}")


def _problem_text(problem: Any) -> str:
    where = (
        f"{problem.file}:{problem.line}"
        if getattr(problem, "line", None)
        else str(getattr(problem, "file", ""))
    )
    return f"{where}: {getattr(problem, 'field', '') or 'record'}: {problem.message}"


def _row(sample: Any) -> dict[str, list[int]]:
    return {"input_ids": list(sample.input_ids), "labels": list(sample.labels)}
