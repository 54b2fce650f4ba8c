"""The in-process engines' tokenizer: prompts are encoded off the event loop, and the worker's
decoding and the prompts' encoding take turns (a fast tokenizer fails when two threads call it)."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import pytest

from slmkit.serve.engines.errors import ApiError
from slmkit.serve.engines.in_process import SharedTokenizer
from slmkit.serve.engines.request import GenerationRequest


class SlowTokenizer:
    """Encodes a prompt as its characters' codes; notes when two calls overlap. `gate`, when set,
    must open before encoding ends (opened by a coroutine, so only if the event loop runs)."""

    chat_template = None

    def __init__(self, gate: threading.Event | None = None) -> None:
        self.gate = gate
        self.inside = 0
        self.overlaps = 0

    def _enter(self) -> None:
        self.inside += 1
        self.overlaps += self.inside > 1
        time.sleep(0.002)

    def __call__(self, text: str, **kwargs: Any) -> dict[str, list[int]]:
        self._enter()
        try:
            if self.gate is not None and not self.gate.wait(10):
                raise RuntimeError("the event loop was blocked while the prompt was encoded")
            return {"input_ids": [ord(c) for c in text]}
        finally:
            self.inside -= 1

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        self._enter()
        try:
            return "".join(map(chr, ids))
        finally:
            self.inside -= 1


def _request(prompt: str) -> GenerationRequest:
    return GenerationRequest(model_id="m", messages=None, prompt=prompt, max_tokens=8, stream=False)


def test_a_prompt_is_encoded_while_the_event_loop_runs_on() -> None:
    gate = threading.Event()
    tokens = SharedTokenizer(SlowTokenizer(gate))

    async def scenario() -> list[int]:
        async def open_gate() -> None:
            await asyncio.sleep(0)
            gate.set()

        opener = asyncio.create_task(open_gate())
        ids = await tokens.admit(_request("hi"), "ready", n_ctx=100)
        await opener
        return ids

    assert asyncio.run(scenario()) == [ord("h"), ord("i")]


def test_encoding_and_decoding_from_two_threads_take_turns() -> None:
    fake = SlowTokenizer()
    tokens = SharedTokenizer(fake)

    def decode_many() -> None:
        for _ in range(50):
            assert tokens.decode([104, 105]) == "hi"

    worker = threading.Thread(target=decode_many)
    worker.start()
    for _ in range(50):
        assert tokens.encode(_request("ok")) == [111, 107]
    worker.join()
    assert fake.overlaps == 0


@pytest.mark.parametrize(
    ("state", "n_ctx", "status", "code"),
    [("starting", 100, 503, "engine_unavailable"), ("ready", 5, 400, "context_length_exceeded")],
)
def test_admit_refuses_an_engine_not_ready_and_a_prompt_without_room(
    state: str, n_ctx: int, status: int, code: str
) -> None:
    tokens = SharedTokenizer(SlowTokenizer())
    with pytest.raises(ApiError) as refused:
        asyncio.run(tokens.admit(_request("hello"), state, n_ctx))  # type: ignore[arg-type]
    assert (refused.value.status, refused.value.code) == (status, code)
