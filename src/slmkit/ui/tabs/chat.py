"""Chat: any model reference (default, a run folder, an export or .gguf) answers through a real
`slm serve` child, streamed; a second model answers the same prompt side by side; thumbs up/down
and a corrected answer go to the gateway's `POST /v1/feedback` (the store `slm logs feedback` reads)."""

from __future__ import annotations

import atexit
import copy
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from gradio import LikeData

from slmkit.errors import SlmError
from slmkit.train.run_index import list_runs
from slmkit.ui.chat_gateways import ChatGateways, ChatSettings, send_feedback, stream_reply
from slmkit.ui.context import Board
from slmkit.ui.messages import error_html, reports_errors, status_html

DEFAULTS = ChatSettings()
MAX_GGUF_LISTED = 50


@dataclass
class PaneState:
    """One side's conversation and, per answer (its index in the chat), who answered and its id."""

    messages: list[dict[str, str]] = field(default_factory=list)
    answers: dict[int, dict[str, str]] = field(default_factory=dict)


def model_choices(board: Board) -> list[str]:
    """`default`, every run folder and every .gguf under the runs and board folders."""
    choices = ["default"] + [run.path for run in list_runs(board.runs_dir)]
    for root in (board.runs_dir, board.work_dir):
        for path in sorted(root.rglob("*.gguf"))[:MAX_GGUF_LISTED]:
            choices.append(str(path))
    return list(dict.fromkeys(choices))


def settings_from(system: str, temperature: float, max_tokens: float, seed: str) -> ChatSettings:
    """The form's values; a seed that is not a whole number is the user's one-line error."""
    text = (seed or "").strip()
    if text and not text.lstrip("-").isdigit():
        raise SlmError(f"seed must be a whole number, not {text!r}")
    return ChatSettings(
        system=system or "",
        temperature=float(temperature),
        max_tokens=int(max_tokens or DEFAULTS.max_tokens),
        seed=int(text) if text else None,
    )


def reply(
    gateways: ChatGateways,
    side: str,
    question: str,
    ref: str | None,
    settings: ChatSettings,
    state: PaneState,
) -> Iterator[tuple[Any, ...]]:
    """Stream one side's answer: (status, chat messages, state) as the tokens arrive."""
    import gradio as gr

    ref = (ref or "").strip()
    if not question.strip():
        yield status_html("type a message first"), gr.skip(), gr.skip()
        return
    if not ref:
        hint = "pick a second model to compare its answer side by side" if side == "B" else ""
        yield status_html(hint or "pick a model"), gr.skip(), gr.skip()
        return
    state = copy.deepcopy(state)
    asked = [*state.messages, {"role": "user", "content": question}]
    yield status_html(f"{ref}: starting or reaching its `slm serve` …"), asked, gr.skip()
    try:
        gateway = gateways.get(ref)
        started = time.perf_counter()  # the answer's time, without the gateway's start
        answer = None
        for answer in stream_reply(gateway, asked, settings):
            yield gr.skip(), [*asked, *answer_messages(answer)], gr.skip()
    except Exception as exc:
        yield error_html(exc), state.messages, gr.skip()
        return
    if answer is None or not answer.id:
        yield status_html(f"{ref}: no answer", "error"), state.messages, gr.skip()
        return
    state.messages = [*asked, *answer_messages(answer)]
    state.answers[len(state.messages) - 1] = {"id": answer.id, "url": gateway.url, "ref": ref}
    yield _answer_line(gateway.model_id, answer.completion_tokens, started), state.messages, state


def answer_messages(answer: Any) -> list[dict[str, Any]]:
    """The answer as chat messages: a reasoning model's thinking first, folded under a title."""
    folded = [{"role": "assistant", "content": answer.reasoning, "metadata": {"title": "Thinking"}}]
    return [*(folded if answer.reasoning else []), {"role": "assistant", "content": answer.text}]


def _answer_line(model_id: str, tokens: int | None, started: float) -> str:
    seconds = time.perf_counter() - started
    speed = f", {tokens / seconds:.1f} tokens/s" if tokens and seconds > 0 else ""
    count = f"{tokens} tokens in " if tokens is not None else ""
    return status_html(f"{model_id}: {count}{seconds:.1f} s{speed}", "ok")


@dataclass
class Pane:
    """One side of the chat: its model picker, status line, chat and conversation."""

    side: str
    ref: Any
    status: Any
    chat: Any
    state: Any


@dataclass
class FeedbackBox:
    """The feedback status line and the thumbs-down form (the answer it is for, a correction)."""

    status: Any
    pending: Any  # the answer a thumbs-down is for, until saved or cancelled
    box: Any
    target: Any
    correction: Any
    save: Any
    cancel: Any


def build(board: Board) -> None:
    import gradio as gr

    gateways = ChatGateways(board.folder("chat"))
    atexit.register(gateways.close)
    refs = _model_pickers(model_choices(board))
    settings = _settings()
    panes = _panes(*refs)
    with gr.Row():
        prompt = gr.Textbox(
            placeholder="ask something (Enter sends)",
            show_label=False,
            scale=6,
            elem_id="chat-prompt",
        )
        send = gr.Button("Send", variant="primary", scale=1, elem_id="chat-send")
        clear = gr.Button("Clear", scale=1, elem_id="chat-clear")
    feedback = _feedback_box()
    _wire_answers(gateways, settings, panes, prompt, [send.click, prompt.submit])
    _wire_feedback(panes, feedback)

    def clear_all() -> tuple[Any, ...]:
        hidden = gr.update(visible=False)
        return [], [], PaneState(), PaneState(), None, hidden

    a, b = panes
    clear.click(
        clear_all, outputs=[a.chat, b.chat, a.state, b.state, feedback.pending, feedback.box]
    )
    for pane in panes:
        pane.chat.clear(PaneState, outputs=[pane.state])  # the chat's own bin icon

    def refresh_models() -> tuple[Any, Any]:
        found = model_choices(board)
        return gr.update(choices=found), gr.update(choices=["", *found])

    board.on_load(refresh_models, [], list(refs))


def _model_pickers(choices: list[str]) -> tuple[Any, Any]:
    import gradio as gr

    with gr.Row():
        ref_a = gr.Dropdown(
            choices=choices,
            value="default",
            allow_custom_value=True,
            label="model A: default, a run folder, an export folder or a .gguf",
            elem_id="chat-model-a",
        )
        ref_b = gr.Dropdown(
            choices=["", *choices],
            value="",
            allow_custom_value=True,
            label="model B (optional): answers the same prompt side by side",
            elem_id="chat-model-b",
        )
    return ref_a, ref_b


def _settings() -> list[Any]:
    """The generation settings both sides use: system prompt, temperature, max tokens, seed."""
    import gradio as gr

    with gr.Accordion("generation settings", open=True), gr.Row():
        system = gr.Textbox(
            label="system prompt",
            lines=2,
            scale=3,
            elem_id="chat-system",
            value=DEFAULTS.system,
        )
        temperature = gr.Slider(
            0.0,
            2.0,
            value=DEFAULTS.temperature,
            step=0.05,
            label="temperature",
            elem_id="chat-temperature",
        )
        max_tokens = gr.Number(
            value=DEFAULTS.max_tokens,
            minimum=1,
            maximum=8192,
            precision=0,
            label="max tokens",
            elem_id="chat-max-tokens",
        )
        seed = gr.Textbox(label="seed (empty: random)", max_lines=1, elem_id="chat-seed")
    return [system, temperature, max_tokens, seed]


def _panes(ref_a: Any, ref_b: Any) -> tuple[Pane, Pane]:
    import gradio as gr

    with gr.Row(equal_height=False):
        with gr.Column():
            status_a = gr.HTML(status_html("model A answers here"), elem_id="chat-status-a")
            chat_a = gr.Chatbot(label="model A", height=380, buttons=["copy_all"], elem_id="chat-a")
        with gr.Column():
            status_b = gr.HTML(
                status_html("pick model B to compare answers"), elem_id="chat-status-b"
            )
            chat_b = gr.Chatbot(label="model B", height=380, buttons=["copy_all"], elem_id="chat-b")
    return (
        Pane("A", ref_a, status_a, chat_a, gr.State(PaneState())),
        Pane("B", ref_b, status_b, chat_b, gr.State(PaneState())),
    )


def _feedback_box() -> FeedbackBox:
    import gradio as gr

    status = gr.HTML(
        status_html(
            "thumbs up / down under an answer saves your rating; thumbs down lets you add the right answer"
        ),
        elem_id="chat-feedback-status",
    )
    pending = gr.State(None)
    with gr.Group(visible=False, elem_id="chat-correction-box") as box:
        target = gr.Markdown(elem_id="chat-correction-for")
        correction = gr.Textbox(
            label="corrected answer (optional): what the model should have said",
            lines=3,
            elem_id="chat-correction",
        )
        with gr.Row():
            save = gr.Button("Save thumbs-down", variant="primary", elem_id="chat-save-feedback")
            cancel = gr.Button("Cancel", elem_id="chat-cancel-feedback")
    return FeedbackBox(status, pending, box, target, correction, save, cancel)


def _wire_answers(
    gateways: ChatGateways,
    settings: list[Any],
    panes: tuple[Pane, Pane],
    prompt: Any,
    triggers: list[Any],
) -> None:
    """Send (or Enter) takes the prompt out of the box; then each side streams its answer."""
    import gradio as gr

    question = gr.State("")

    def take(text: str) -> tuple[str, str]:
        return "", text

    def answer_with(side: str) -> Any:
        def answer(
            q: str,
            ref: str | None,
            sys_: str,
            temp: float,
            tokens: float,
            seed_: str,
            st: PaneState,
        ) -> Iterator[tuple[Any, ...]]:
            try:
                chosen = settings_from(sys_, temp, tokens, seed_)
            except SlmError as exc:
                yield error_html(exc), gr.skip(), gr.skip()
                return
            yield from reply(gateways, side, q, ref, chosen, st)

        return answer

    for trigger in triggers:
        asked = trigger(take, inputs=[prompt], outputs=[prompt, question], show_progress="hidden")
        for pane in panes:
            asked.then(
                answer_with(pane.side),
                inputs=[question, pane.ref, *settings, pane.state],
                outputs=[pane.status, pane.chat, pane.state],
                show_progress="hidden",
            )


def _wire_feedback(panes: tuple[Pane, Pane], feedback: FeedbackBox) -> None:
    """A thumbs-up is saved at once; a thumbs-down opens the form for a corrected answer."""
    import gradio as gr

    def like_with(side: str) -> Any:
        @reports_errors(outputs=4)
        def on_like(state: PaneState, data: LikeData) -> tuple[Any, ...]:
            index = data.index[0] if isinstance(data.index, (list, tuple)) else data.index
            answer = state.answers.get(int(index))
            if answer is None:
                return (
                    status_html("that answer has no id to rate (it did not finish)", "error"),
                    None,
                    gr.skip(),
                    gr.skip(),
                )
            if data.liked is True:
                send_feedback(answer["url"], answer["id"], 1, None)
                line = f"thumbs-up saved for {answer['id']} ({answer['ref']})"
                return status_html(line, "ok"), None, gr.update(visible=False), gr.skip()
            target = {**answer, "side": side}
            note = f"Thumbs-down for model {side}'s answer `{answer['id']}`: add the right answer if you know it, then save."
            return (
                status_html("press Save to store the thumbs-down"),
                target,
                gr.update(visible=True),
                note,
            )

        return on_like

    like_outputs = [feedback.status, feedback.pending, feedback.box, feedback.target]
    for pane in panes:
        pane.chat.like(like_with(pane.side), inputs=[pane.state], outputs=like_outputs)

    @reports_errors(outputs=4)
    def save_down(target: dict[str, str] | None, text: str) -> tuple[Any, ...]:
        if not target:
            return (
                status_html("press thumbs-down under an answer first", "error"),
                gr.skip(),
                gr.skip(),
                gr.skip(),
            )
        send_feedback(target["url"], target["id"], -1, text.strip() or None)
        with_text = " with your corrected answer" if text.strip() else ""
        line = f"thumbs-down saved for {target['id']} ({target['ref']}){with_text}"
        return status_html(line, "ok"), None, gr.update(visible=False), ""

    feedback.save.click(
        save_down,
        inputs=[feedback.pending, feedback.correction],
        outputs=[feedback.status, feedback.pending, feedback.box, feedback.correction],
    )
    feedback.cancel.click(
        lambda: (status_html("thumbs-down not saved"), None, gr.update(visible=False)),
        outputs=[feedback.status, feedback.pending, feedback.box],
    )
