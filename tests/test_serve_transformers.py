"""The transformers engine: unmerged LoRA adapters served in-process, several on one base, chosen by
model id; a request queue with batched generation. Driven by the official openai client."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from serve_helpers import ServerProcess, write_adapter_run


@pytest.fixture(scope="module")
def adapter_server(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path):
    root = tmp_path_factory.mktemp("serve-tf")
    run_a = write_adapter_run(tiny_model_dir, root / "run_a", seed=1)
    run_b = write_adapter_run(tiny_model_dir, root / "run_b", seed=2)
    args = [
        "--model",
        f"support={run_a}",
        "--model",
        f"sales={run_b}",
        "--model",
        f"base={tiny_model_dir}",
    ]
    with ServerProcess(args, env={"SLM_HOME": str(root / "home")}) as server:
        yield server


def _greedy(server: ServerProcess, model: str, prompt: str = "hello", max_tokens: int = 8) -> str:
    reply = server.client().chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": prompt}],
        max_tokens=max_tokens,
        temperature=0,
    )
    assert reply.choices[0].finish_reason in ("stop", "length")
    return reply.choices[0].message.content or ""


def test_adapters_and_base_are_served_as_separate_model_ids(adapter_server: ServerProcess) -> None:
    ids = {m.id for m in adapter_server.client().models.list()}
    assert ids == {"support", "sales", "base"}
    health = adapter_server.get("/health").json()
    assert [e["engine"] for e in health["engines"]] == [
        "transformers"
    ]  # one base in memory for all three


def test_each_model_id_selects_its_own_adapter(adapter_server: ServerProcess) -> None:
    answers = {model: _greedy(adapter_server, model) for model in ("support", "sales", "base")}
    assert len(set(answers.values())) == 3, answers
    assert (
        _greedy(adapter_server, "support") == answers["support"]
    )  # deterministic at temperature 0


def test_stream_carries_chunks_and_usage(adapter_server: ServerProcess) -> None:
    stream = adapter_server.client().chat.completions.create(
        model="sales",
        messages=[{"role": "user", "content": "hi"}],
        max_tokens=5,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == _greedy(adapter_server, "sales", "hi", 5)
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 5
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"


def _batches(server: ServerProcess) -> dict[str, int]:
    (engine,) = server.get("/health").json()["engines"]
    return engine["batches"]


def test_concurrent_requests_are_batched_and_all_answered(adapter_server: ServerProcess) -> None:
    before = _batches(adapter_server)
    with ThreadPoolExecutor(8) as pool:
        answers = list(
            pool.map(lambda _: _greedy(adapter_server, "support", "same prompt", 48), range(8))
        )
    assert len(set(answers)) == 1 and answers[0]
    after = _batches(adapter_server)
    assert after["rows"] - before["rows"] == 8  # every request went through the batch worker
    # one generate call per request would make runs grow by 8: some requests shared a call
    assert after["runs"] - before["runs"] < 8 and after["largest"] >= 2, (before, after)


def _engine_answers(base: Path, adapters: dict[str, Path | None], dtype: str) -> tuple[Any, str]:
    """Greedy answer of the first model id from an in-process engine, and the engine."""
    from slmkit.models import resolve_model
    from slmkit.serve.engines.request import GenerationRequest
    from slmkit.serve.engines.settings import TransformersSettings
    from slmkit.serve.engines.transformers_engine import TransformersEngine

    settings = TransformersSettings(dtype=dtype)  # type: ignore[arg-type]
    engine = TransformersEngine(resolve_model(str(base)), adapters, settings)

    async def ask() -> str:
        await engine.start()
        try:
            request = GenerationRequest(
                model_id=next(iter(adapters)),
                messages=[{"role": "user", "content": "hello there"}],
                prompt=None,
                max_tokens=12,
                stream=True,
                temperature=0.0,
            )
            return "".join([d.text async for d in engine.generate(request) if d.text])
        finally:
            await engine.stop()

    return engine, asyncio.run(ask())


def test_a_lone_adapter_is_merged_and_answers_as_the_unmerged_one(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    run = write_adapter_run(tiny_model_dir, tmp_path / "run", seed=3)
    adapter = run / "adapter"
    merged, alone = _engine_answers(tiny_model_dir, {"support": adapter}, "float32")
    unmerged, beside_base = _engine_answers(
        tiny_model_dir, {"support": adapter, "base": None}, "float32"
    )
    assert not hasattr(merged.model, "peft_config")  # folded into the weights: plain layers
    assert hasattr(unmerged.model, "peft_config")  # the base is asked for too: kept apart
    assert alone and alone == beside_base


def test_auto_generates_in_bf16_only_where_a_bf16_matmul_is_faster(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from slmkit.models import precision

    monkeypatch.setattr(precision, "bf16_speed_on_cpu", lambda: 0.3)
    assert precision.generation_dtype("auto", "float32", "cpu") == "bfloat16"
    assert precision.generation_dtype("float32", "float32", "cpu") == "float32"  # asked for
    assert precision.generation_dtype("auto", "float32", "cuda:0") == "float32"
    monkeypatch.setattr(precision, "bf16_speed_on_cpu", lambda: 1.2)  # emulated, slower
    assert precision.generation_dtype("auto", "float32", "cpu") == "float32"
    monkeypatch.setattr(precision, "bf16_speed_on_cpu", lambda: None)  # wrong results/crash
    assert precision.generation_dtype("auto", "float32", "cpu") == "float32"
