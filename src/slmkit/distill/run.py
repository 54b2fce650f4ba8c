"""`distill(settings, output)`: ask the teacher every prompt not answered yet, keep the answers
that pass the filters as SFT rows in `output` (appended and flushed one line at a time) and the
others, with their reason, in `output.rejected.jsonl`. A re-run skips every prompt found in
either file, so an interrupted run continues without duplicates."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from slmkit.console import info, progress_bar
from slmkit.distill.config import DistillSettings
from slmkit.distill.filters import REASONS, rejection
from slmkit.distill.prompts import PromptRow, read_prompts
from slmkit.distill.teacher import NoAnswer, Teacher, check_teacher, open_teacher
from slmkit.errors import ConfigError, DataError, SlmError


class DistillIncomplete(SlmError):
    """Some prompts got no answer from the teacher; a re-run asks for just those."""

    exit_code = 1


@dataclass
class DistillResult:
    output: Path
    rejected: Path
    counts: Counter[str]  # prompts, done_before, duplicate, accepted, each reason, failed
    failures: list[str] = field(default_factory=list)  # why prompts got no answer (first few)

    @property
    def rejected_total(self) -> int:
        return sum(self.counts[reason] for reason in REASONS)


def rejected_path(output: Path) -> Path:
    return output.with_name(output.name + ".rejected.jsonl")


def distill(
    settings: DistillSettings, output: Path, *, log: Callable[[str], None] = info
) -> DistillResult:
    """Distil the teacher's answers to `settings.prompts` into `output` (resuming where it stopped)."""
    if settings.teacher is None or settings.prompts is None:
        raise ConfigError("distill: give a teacher and a prompts file")
    check_teacher(settings)
    prompts_path = Path(settings.prompts)
    if output.resolve() == prompts_path.resolve():
        raise ConfigError(f"-o {output}: is the prompts file; write the data to another file")
    rows = read_prompts(prompts_path)
    result = DistillResult(output, rejected_path(output), Counter(prompts=len(rows)))
    done = done_keys(output) | done_keys(result.rejected)
    todo: list[PromptRow] = []
    seen: set[str] = set()
    for row in rows:
        if row.key in seen:
            result.counts["duplicate"] += 1
        elif row.key in done:
            result.counts["done_before"] += 1
        else:
            todo.append(row)
        seen.add(row.key)
    if result.counts["done_before"]:
        log(f"resuming: {result.counts['done_before']} prompt(s) already done in {output}")
    if todo:
        output.parent.mkdir(parents=True, exist_ok=True)
        log(f"asking {settings.teacher} for {len(todo)} answer(s), {settings.concurrency} at once")
        asyncio.run(_ask_all(settings, todo, result))
    return result


def check_complete(result: DistillResult) -> None:
    """DistillIncomplete when some prompts got no answer (after the counts were shown)."""
    if result.counts["failed"]:
        raise DistillIncomplete(
            f"{result.counts['failed']} prompt(s) got no answer from the teacher (first: "
            f"{result.failures[0]}); run the same command again to ask only for those"
        )


def done_keys(path: Path) -> set[str]:
    """The prompt keys already in an output (or rejected) file. A last line cut off by a kill is
    removed, so that prompt is asked again."""
    if not path.is_file():
        return set()
    raw = path.read_bytes()
    if raw and not raw.endswith(b"\n"):
        raw = raw[: raw.rfind(b"\n") + 1]
        with path.open("r+b") as handle:
            handle.truncate(len(raw))
    keys: set[str] = set()
    for number, line in enumerate(raw.decode("utf-8", errors="replace").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            keys.add(str(json.loads(line)["id"]))
        except (ValueError, KeyError, TypeError) as exc:
            raise DataError(
                f"{path}:{number}: not a line written by slm distill (no id); "
                "give another -o or remove the file"
            ) from exc
    return keys


async def _ask_all(settings: DistillSettings, todo: list[PromptRow], result: DistillResult) -> None:
    gate = asyncio.Semaphore(settings.concurrency)
    with (
        result.output.open("a", encoding="utf-8") as kept,
        result.rejected.open("a", encoding="utf-8") as dropped,
        progress_bar("distill", total=len(todo), unit_field="tally") as progress,
    ):
        task = progress.add_task("distill", total=len(todo), tally="")

        async def one(teacher: Teacher, row: PromptRow) -> None:
            async with gate:
                await _distill_one(teacher, row, settings, result, kept, dropped)
            counts = result.counts
            tally = f"kept {counts['accepted']}, rejected {result.rejected_total}"
            progress.update(task, advance=1, tally=tally + f", failed {counts['failed']}")

        async with open_teacher(settings) as teacher:
            await asyncio.gather(*(one(teacher, row) for row in todo))


async def _distill_one(
    teacher: Teacher,
    row: PromptRow,
    settings: DistillSettings,
    result: DistillResult,
    kept: IO[str],
    dropped: IO[str],
) -> None:
    asked = row.messages
    if settings.system and asked[0]["role"] != "system":
        asked = [{"role": "system", "content": settings.system}, *asked]
    try:
        answer = await teacher.ask(asked)
    except NoAnswer as exc:
        result.counts["failed"] += 1
        if len(result.failures) < 5:
            result.failures.append(f"line {row.line}: {exc}")
        return
    problem = rejection(answer.text, answer.finish_reason, row.must_include, settings)
    if problem is None:
        result.counts["accepted"] += 1
        messages = [*row.messages, {"role": "assistant", "content": answer.text}]
        _write(kept, {"id": row.key, "messages": messages})
        return
    reason, detail = problem
    result.counts[reason] += 1
    _write(
        dropped,
        {
            "id": row.key,
            "reason": reason,
            "detail": detail,
            "messages": row.messages,
            "answer": answer.text,
        },
    )


def _write(handle: IO[str], row: dict[str, Any]) -> None:
    """One whole line per write, flushed: a kill can cut at most the line being written."""
    handle.write(json.dumps(row, ensure_ascii=False) + "\n")
    handle.flush()
