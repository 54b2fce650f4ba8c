"""The in-process engines' tokenizer: prompts are encoded off the event loop, and the worker's
decoding and the prompts' encoding take turns (a fast tokenizer fails when two threads call it)."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import pytest

from slmkit.serve.engines.errors import EngineError
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
    ("state", "n_ctx", "kind", "retryable"),
    [("starting", 100, "unavailable", True), ("ready", 5, "context_length", False)],
)
def test_admit_refuses_an_engine_not_ready_and_a_prompt_without_room(
    state: str, n_ctx: int, kind: str, retryable: bool
) -> None:
    tokens = SharedTokenizer(SlowTokenizer())
    with pytest.raises(EngineError) as refused:
        asyncio.run(tokens.admit(_request("hello"), state, n_ctx))  # type: ignore[arg-type]
    assert (refused.value.kind, refused.value.retryable) == (kind, retryable)


class ByteTokenizer:
    """Token = one UTF-8 byte; a split character decodes to U+FFFD, as a real tokenizer does."""

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return bytes(ids).decode("utf-8", errors="replace")


def _feed(text: bytes, stop: list[str], max_tokens: int, eos: int | None = None) -> Any:
    """Feed `text`'s bytes (then `eos`) to a Job; (texts sent, finish reason)."""
    from slmkit.serve.engines.in_process import Job

    async def scenario() -> tuple[list[str], str | None]:
        request = GenerationRequest(
            model_id="m", messages=None, prompt="p", max_tokens=max_tokens, stream=True, stop=stop
        )
        job = Job(request, [1, 2], asyncio.get_running_loop(), asyncio.Queue())
        tokens, reason = SharedTokenizer(ByteTokenizer()), None
        for token in [*text, *([eos] if eos is not None else [])]:
            if (reason := job.take(token, tokens, {255})) is not None:
                break
        await asyncio.sleep(0)  # the deltas were put with call_soon_threadsafe
        sent = []
        while not job.events.empty():
            item = job.events.get_nowait()
            sent.append(item.text)  # type: ignore[union-attr]
        return sent, reason

    return asyncio.run(scenario())


def test_a_job_sends_whole_characters_and_cuts_at_a_stop_string() -> None:
    sent, reason = _feed("né END more".encode(), stop=["END"], max_tokens=50)
    assert "".join(sent) == "né " and reason == "stop"
    assert "\ufffd" not in "".join(sent)  # é's first byte alone was held back


def test_a_job_ends_at_eos_or_at_max_tokens() -> None:
    assert _feed(b"ok", stop=[], max_tokens=50, eos=255) == (["o", "k"], "stop")
    sent, reason = _feed(b"abcdef", stop=[], max_tokens=3)
    assert "".join(sent) == "abc" and reason == "length"


def test_a_held_back_stop_prefix_is_sent_when_the_stop_string_does_not_come() -> None:
    sent, reason = _feed(b"an ENtry", stop=["END", "###"], max_tokens=50, eos=255)
    assert "".join(sent) == "an ENtry" and reason == "stop"
    sent, reason = _feed(b"x #", stop=["###"], max_tokens=3)  # cut by max_tokens while held
    assert "".join(sent) == "x #" and reason == "length"


def test_stop_prefix_length() -> None:
    from slmkit.serve.engines.in_process import stop_prefix_length

    assert stop_prefix_length("the E", ["END"]) == 1
    assert stop_prefix_length("the EN", ["END", "NOPE"]) == 2
    assert stop_prefix_length("the ##", ["###", "#"]) == 2
    assert stop_prefix_length("the end", ["END"]) == 0
    assert stop_prefix_length("", ["END"]) == 0
