"""The board's Chat tab: a model answers through a real `slm serve` child, streamed; a thumbs-down
with a corrected answer lands in the same feedback store as `POST /v1/feedback` (`slm logs
feedback` lists it); an unknown model reference is the CLI's one-line error."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest

from conftest import run_slm
from serve_helpers import needs_llama_server
from slmkit.errors import SlmError
from slmkit.serve.logs import feedback_rows
from slmkit.ui.chat_gateways import ChatGateways
from slmkit.ui.tabs.chat import settings_from
from ui_helpers import needs_browser, open_tab, screenshot

QUESTION = "What is the capital of France?"
CORRECTION = "Paris is the capital of France."


def test_the_form_gives_generation_settings_and_a_bad_seed_is_one_line() -> None:
    settings = settings_from("Be brief.", 0.0, 32, " 7 ")
    assert (settings.system, settings.temperature, settings.max_tokens, settings.seed) == (
        "Be brief.",
        0.0,
        32,
        7,
    )
    assert settings_from("", 0.7, 16, "").seed is None
    with pytest.raises(SlmError, match="seed must be a whole number, not 'x1'"):
        settings_from("", 0.7, 16, "x1")


def test_an_unknown_model_fails_before_any_child_starts(tmp_path: Path) -> None:
    logs = tmp_path / "chat"
    logs.mkdir()
    gateways = ChatGateways(logs)
    with pytest.raises(SlmError, match="unknown model 'no-such-model'"):
        gateways.get("no-such-model")
    assert not list(logs.iterdir())  # no `slm serve` was started (no log written)
    gateways.close()


def _choose_model(tab: Any, side: str, ref: str) -> None:
    box = tab.locator(f"#chat-model-{side} input")
    box.fill(ref)
    box.press("Enter")


@needs_browser
@pytest.mark.browser
def test_an_unknown_model_reference_shows_the_cli_error_line(board, page) -> None:
    open_tab(page, board, "Chat")
    _choose_model(page, "a", "no-such-model")
    page.locator("#chat-prompt textarea").fill("hello")
    page.locator("#chat-send").click()
    status = page.locator("#chat-status-a .slm-error")
    status.wait_for()
    assert status.inner_text().startswith("error: unknown model 'no-such-model'")
    assert "Traceback" not in page.content()


@needs_browser
@needs_llama_server
@pytest.mark.browser
def test_chat_streams_an_answer_and_a_thumbs_down_with_a_correction_is_stored(
    board,
    page,
) -> None:
    open_tab(page, board, "Chat")
    _choose_model(page, "a", "default")
    page.locator("#chat-max-tokens input").fill("12")
    page.locator("#chat-seed input").fill("7")
    page.locator("#chat-prompt textarea").fill(QUESTION)
    page.locator("#chat-send").click()

    page.locator("#chat-status-a .slm-ok").wait_for(timeout=120_000)  # the answer is complete
    assert "tokens in" in page.locator("#chat-status-a").inner_text()
    answer = page.locator("#chat-a [data-testid='bot']").first
    assert answer.inner_text().strip()

    db = board.home / "serve" / "audit.db"  # the board's SLM_HOME: where `slm logs` looks
    with sqlite3.connect(db) as conn:
        streamed, text = conn.execute(
            "SELECT stream, prompt_text FROM requests WHERE status = 200 ORDER BY ts DESC"
        ).fetchone()
    assert streamed == 1 and QUESTION in text

    page.locator("#chat-a").get_by_role("button", name="Dislike").first.click()
    page.locator("#chat-correction textarea").fill(CORRECTION)
    page.locator("#chat-save-feedback").click()
    page.locator("#chat-feedback-status .slm-ok").wait_for()
    assert "thumbs-down saved" in page.locator("#chat-feedback-status").inner_text()

    rows = feedback_rows(db)
    assert [(r["rating"], r["correction"], r["model"]) for r in rows] == [
        (-1, CORRECTION, "default")
    ]
    screenshot(page, "chat")
    listed = run_slm("logs", "feedback", "--db", str(db), env={"COLUMNS": "200"}, timeout=120)
    assert listed.returncode == 0 and rows[0]["request_id"] in listed.stdout


@needs_browser
@pytest.mark.browser
def test_a_reasoning_models_thinking_is_shown_folded_apart_from_the_answer(board, page) -> None:
    """A tiny DeepSeek-R1-Distill-Qwen (its prompt opens `<think>`) through the transformers
    engine: the thinking arrives in `reasoning_content` and the chat folds it under a title."""
    from families import family_dir

    open_tab(page, board, "Chat")
    _choose_model(page, "a", str(family_dir("deepseek-r1")))
    page.locator("#chat-max-tokens input").fill("8")
    page.locator("#chat-prompt textarea").fill(QUESTION)
    page.locator("#chat-send").click()
    page.locator("#chat-status-a .slm-ok").wait_for(timeout=180_000)
    chat = page.locator("#chat-a")
    folded = chat.get_by_text("Thinking", exact=False).first
    folded.wait_for()
    assert "<think>" not in chat.inner_text() and "</think>" not in chat.inner_text()
