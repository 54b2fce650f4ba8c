"""Reasoning text: found in data in any of its forms, split from the answer as it streams (piece by
piece gives what the whole text gives), hidden or kept raw on request, redacted like the answer."""

from __future__ import annotations

import pytest

from slmkit.models.reasoning import (
    ReasoningSplitter,
    for_history,
    for_reply,
    normalize_message,
    split_reasoning,
)
from slmkit.serve.answer_text import AnswerText
from slmkit.serve.config import OutputFilter

R1_OUTPUT = "<think>\nThe order ships in two days.\n</think>\n\nIt ships tomorrow."


@pytest.mark.parametrize(
    "message",
    [
        {"role": "assistant", "content": "It ships.", "reasoning_content": "Two days."},
        {"role": "assistant", "content": "It ships.", "reasoning": "Two days."},
        {"role": "assistant", "content": "<think>\nTwo days.\n</think>\n\nIt ships."},
    ],
)
def test_every_form_of_reasoning_in_data_becomes_reasoning_content(message: dict) -> None:
    assert normalize_message(message) == {
        "role": "assistant",
        "content": "It ships.",
        "reasoning_content": "Two days.",
    }


def test_a_user_message_with_think_tags_is_left_alone() -> None:
    message = {"role": "user", "content": "<think>hi</think> there"}
    assert normalize_message(message) is message


def test_templates_get_reasoning_where_they_expect_it() -> None:
    reply = {"role": "assistant", "content": "It ships.", "reasoning_content": "Two days."}
    plain = "{% for m in messages %}{{ m.content }}{% endfor %}"
    r1_like = plain + "{% if add_generation_prompt %}<think>\n{% endif %}"
    reads_field = plain + "{{ messages[-1].reasoning_content }}"
    assert for_reply(reply, plain)["content"] == "<think>\nTwo days.\n</think>\n\nIt ships."
    assert for_reply(reply, reads_field) is reply
    assert for_history([reply], plain) == [{"role": "assistant", "content": "It ships."}]
    assert for_history([reply], reads_field) == [reply]
    bare = {"role": "assistant", "content": "Hi."}
    assert for_reply(bare, plain) is bare
    assert for_reply(bare, r1_like)["content"] == "<think>\n\n</think>\n\nHi."  # an empty block


@pytest.mark.parametrize("size", [1, 2, 3, 7, 100])
def test_splitting_piece_by_piece_gives_what_the_whole_text_gives(size: int) -> None:
    splitter = ReasoningSplitter()
    thought, said = [], []
    for start in range(0, len(R1_OUTPUT), size):
        t, s = splitter.feed(R1_OUTPUT[start : start + size])
        thought.append(t)
        said.append(s)
    t, s = splitter.finish()
    assert ("".join(thought) + t).strip() == "The order ships in two days."
    assert "".join(said) + s == "It ships tomorrow."
    assert split_reasoning(R1_OUTPUT) == ("The order ships in two days.", "It ships tomorrow.")


def test_text_without_a_block_is_all_answer_and_unchanged() -> None:
    for text in ("Plain answer.", "<b>bold</b> answer", "  \n\nleading blanks", "<thin"):
        assert split_reasoning(text) == (None, text)


def test_a_block_that_never_closes_is_all_reasoning() -> None:
    assert split_reasoning("<think>\nstill thinking") == ("still thinking", "")
    assert split_reasoning("thinking from the start</think>done", inside=True) == (
        "thinking from the start",
        "done",
    )


def test_answer_text_separates_hides_or_keeps_raw_and_redacts_both_parts() -> None:
    redact = OutputFilter(redact_pii=True)
    text = "<think>mail bob@example.com</think>\n\nWrote to bob@example.com."
    reasoning, content = AnswerText("separate", redact).whole(text)
    assert "bob@example.com" not in (reasoning or "") and "bob@example.com" not in content
    assert content.startswith("Wrote to") and reasoning and reasoning.startswith("mail")
    assert AnswerText("hide", OutputFilter()).whole(R1_OUTPUT) == (None, "It ships tomorrow.")
    assert AnswerText("raw", OutputFilter()).whole(R1_OUTPUT) == (None, R1_OUTPUT)
    streamed = AnswerText("separate", OutputFilter())
    pieces = [streamed.feed(c) for c in R1_OUTPUT] + [streamed.flush()]
    assert "".join(p[1] for p in pieces) == "It ships tomorrow."


def test_a_chat_request_can_hide_reasoning_and_plain_completions_stay_raw() -> None:
    from slmkit.serve.protocol import ChatCompletionRequest, CompletionRequest, generation_request

    chat = {"model": "m", "messages": [{"role": "user", "content": "Hi"}]}
    assert generation_request(ChatCompletionRequest(**chat), "m", 8).reasoning == "separate"
    hidden = ChatCompletionRequest(**chat, include_reasoning=False)
    assert generation_request(hidden, "m", 8).reasoning == "hide"
    plain = CompletionRequest(model="m", prompt="Hi")
    assert generation_request(plain, "m", 8, "separate").reasoning == "raw"


def test_route_checks_judge_the_answer_not_the_thinking() -> None:
    from slmkit.serve.config import RepetitionGuard
    from slmkit.serve.engines.request import GenerationRequest
    from slmkit.serve.generation import Outcome
    from slmkit.serve.route_config import EscalationChecks
    from slmkit.serve.routing import failed_check

    gen = GenerationRequest("m", [{"role": "user", "content": "Hi"}], None, 16, False)
    checks = EscalationChecks(empty=True, refusal=["I cannot"], must_not_include=["secret"])
    thinking_only = Outcome(["<think>I cannot say the secret</think>\n\nHere you are."])
    assert failed_check(thinking_only, checks, gen, RepetitionGuard(), []) is None
    empty_answer = Outcome(["<think>long thought</think>\n\n"])
    assert failed_check(empty_answer, checks, gen, RepetitionGuard(), []) == "empty"


def test_eval_scores_the_answer_and_keeps_the_thinking_apart() -> None:
    import asyncio

    from slmkit.evaluate.config import EvalSettings
    from slmkit.evaluate.evalset import EvalItem
    from slmkit.evaluate.generate import _ask
    from slmkit.serve.engines.base import Delta

    class ThinkingEngine:  # what llama-server streams for an R1 model
        async def generate(self, request: object):  # type: ignore[no-untyped-def]
            for piece in ("<think>\n", "Oslo is in ", "Norway.", "\n</think>", "\n\nYes."):
                yield Delta(text=piece)
            yield Delta(finish_reason="stop", prompt_tokens=9, completion_tokens=7)

    item = EvalItem(1, [{"role": "user", "content": "Ship to Oslo?"}], "Yes.")
    answer = asyncio.run(_ask(ThinkingEngine(), "r1", item, EvalSettings()))
    assert (answer.text, answer.reasoning) == ("Yes.", "Oslo is in Norway.")
