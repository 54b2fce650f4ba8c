"""Temperature-0 answers from the same engines `slm serve` uses, with a generation cache.

Each model gets its engine built by `slmkit.serve.server.build_engines` (llama-server for GGUF
files, the in-process transformers engine for HF folders and run folders with adapters), started,
asked every uncached prompt (`concurrency` at a time, so the engine batches them), and stopped.
Answers are cached under `$SLM_HOME/eval-cache/`, keyed by the model's identity (its files' sizes
and modification times), the engine, the prompt and the generation settings: a rerun is instant.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from slmkit.evaluate.config import EvalSettings, ModelSpec
from slmkit.evaluate.evalset import EvalItem
from slmkit.models import ResolvedModel, resolve_model
from slmkit.models.reasoning import split_reasoning
from slmkit.paths import slm_home

CACHE_VERSION = 2  # 2: the transformers engine may generate in bf16 (`dtype: auto`)


@dataclass
class Generation:
    """One model's answer to one eval item, with its timing."""

    text: str  # the answer, without a reasoning model's thinking (that is in `reasoning`)
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    latency_s: float = 0.0
    ttft_s: float | None = None
    finish_reason: str | None = None
    error: str | None = None
    cached: bool = False
    reasoning: str | None = None

    @property
    def tokens_per_s(self) -> float | None:
        if not self.completion_tokens or self.latency_s <= 0:
            return None
        return self.completion_tokens / self.latency_s


@dataclass
class ModelTarget:
    """A model of the comparison, resolved, with the engine that will serve it."""

    spec: ModelSpec
    resolved: ResolvedModel
    engine: str
    cache_key: str

    @property
    def name(self) -> str:
        return self.spec.name


def model_target(spec: ModelSpec, settings: EvalSettings) -> ModelTarget:
    from slmkit.serve.model_config import ModelEntry
    from slmkit.serve.server import choose_engine

    resolved = resolve_model(spec.ref, prepare=False)
    engine_choice = spec.engine if spec.engine != "auto" else settings.engine
    entry = ModelEntry.model_validate(
        {"id": _model_id(spec.name), "ref": spec.ref, "engine": engine_choice}
    )
    engine = choose_engine(entry, resolved, "auto")
    identity = {
        "v": CACHE_VERSION,
        "model": model_fingerprint(resolved, engine),
        "engine": engine,
        "max_tokens": settings.max_tokens,
        "temperature": 0.0,
    }
    key = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:32]
    return ModelTarget(spec=spec, resolved=resolved, engine=engine, cache_key=key)


def model_fingerprint(resolved: ResolvedModel, engine: str) -> dict[str, Any]:
    """What identifies a model's weights: file names, sizes and modification times."""
    if resolved.kind == "embedded" and resolved.gguf is not None:
        return {"embedded": _files(resolved.gguf)}
    if resolved.kind == "gguf" and resolved.gguf is not None:
        return {"gguf": _files(resolved.gguf)}
    if resolved.kind == "hub":
        return {"hub": str(resolved.path)}
    out: dict[str, Any] = {"kind": resolved.kind, "weights": _files(Path(resolved.path))}
    if resolved.adapter is not None:
        out["adapter"] = _files(resolved.adapter)
        out["base"] = model_fingerprint(resolved.base, engine) if resolved.base else None
    return out


def _files(path: Path) -> list[tuple[str, int, int]]:
    files = [path] if path.is_file() else sorted(p for p in path.iterdir() if p.is_file())
    return [(str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns) for p in files]


def _model_id(name: str) -> str:
    cleaned = "".join(c if c.isalnum() or c in "._-" else "-" for c in name).strip("-._")
    return (cleaned or "model")[:64]


class GenerationCache:
    """Append-only JSONL per model key: prompt key -> generation."""

    def __init__(self, model_key: str, enabled: bool = True) -> None:
        self.path = slm_home() / "eval-cache" / f"{model_key}.jsonl"
        self.enabled = enabled
        self.entries: dict[str, Generation] = {}
        if enabled and self.path.is_file():
            for line in self.path.read_text(encoding="utf-8").splitlines():
                try:
                    row = json.loads(line)
                    key = row.pop("prompt_key")
                    self.entries[key] = Generation(**{**row, "cached": True})
                except (ValueError, KeyError, TypeError):
                    continue  # a torn last line of an interrupted run

    def get(self, item: EvalItem) -> Generation | None:
        return self.entries.get(item.prompt_key()) if self.enabled else None

    def put(self, item: EvalItem, generation: Generation) -> None:
        if generation.error is not None:
            return  # errors are retried on the next run
        self.entries[item.prompt_key()] = generation
        self.path.parent.mkdir(parents=True, exist_ok=True)
        row = {"prompt_key": item.prompt_key(), **asdict(generation)}
        row.pop("cached")
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(row) + "\n")


def generate_answers(
    target: ModelTarget,
    items: list[EvalItem],
    settings: EvalSettings,
    on_answer: Callable[[], None] | None = None,
) -> tuple[list[Generation], int]:
    """Answers of one model to every item, in order, and how many were generated (not cached)."""
    cache = GenerationCache(target.cache_key, settings.cache)
    answers: list[Generation | None] = [cache.get(item) for item in items]
    missing = [i for i, answer in enumerate(answers) if answer is None]
    for _ in range(len(items) - len(missing)):
        if on_answer is not None:
            on_answer()
    if missing:

        def store(index: int, generation: Generation) -> None:
            answers[index] = generation
            cache.put(items[index], generation)
            if on_answer is not None:
                on_answer()

        asyncio.run(_generate_missing(target, items, missing, settings, store))
    return [a for a in answers if a is not None], len(missing)


async def _generate_missing(
    target: ModelTarget,
    items: list[EvalItem],
    missing: list[int],
    settings: EvalSettings,
    store: Callable[[int, Generation], None],
) -> None:
    from slmkit.serve.config import ServeConfig
    from slmkit.serve.server import build_engines

    model_id = _model_id(target.name)
    entry = {"id": model_id, "ref": target.spec.ref, "engine": target.engine}
    config = ServeConfig.model_validate({"models": [entry]})
    config.llamacpp.parallel = max(settings.concurrency, 1)
    config.transformers.max_batch_size = max(settings.concurrency, 1)
    engine = build_engines(config)[model_id]
    await engine.start()
    try:
        gate = asyncio.Semaphore(settings.concurrency)

        async def one(index: int) -> None:
            async with gate:
                store(index, await _ask(engine, model_id, items[index], settings))

        await asyncio.gather(*(one(i) for i in missing))
    finally:
        await engine.stop()


async def _ask(engine: Any, model_id: str, item: EvalItem, settings: EvalSettings) -> Generation:
    from slmkit.serve.engines.errors import EngineError
    from slmkit.serve.engines.request import GenerationRequest

    request = GenerationRequest(
        model_id=model_id,
        messages=[dict(m) for m in item.messages],
        prompt=None,
        max_tokens=settings.max_tokens,
        stream=True,
        temperature=0.0,
    )
    started = time.perf_counter()
    out = Generation(text="")
    parts: list[str] = []
    try:
        async for delta in engine.generate(request):
            if delta.text:
                out.ttft_s = out.ttft_s if out.ttft_s is not None else time.perf_counter() - started
                parts.append(delta.text)
            out.finish_reason = delta.finish_reason or out.finish_reason
            out.prompt_tokens = delta.prompt_tokens or out.prompt_tokens
            out.completion_tokens = delta.completion_tokens or out.completion_tokens
    except EngineError as exc:
        out.error = f"{exc.kind}: {exc.message}"
    out.latency_s = time.perf_counter() - started
    out.reasoning, text = split_reasoning("".join(parts))  # scored: the answer alone
    out.text = text.strip()
    return out
