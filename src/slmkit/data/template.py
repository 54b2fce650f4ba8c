"""Render records with a chat template and build labels so that only assistant turns carry loss.

For each assistant turn the prompt is what inference renders for it (the conversation so far plus
the generation prompt, in the model's own template), and the target is what the model must write
after that prompt: found with TRL's training variant of the template (its `{% generation %}`
markers) where one exists, else as the text the template adds when the turn is rendered. When
every turn's prompt + target is a prefix of the next turn's prompt, the conversation is one sample
with a span per turn; a template that rewrites history (R1 drops earlier reasoning, Mistral v0.3
moves the system prompt into the last user turn) gives one sample per turn, each exactly what
inference produces for that turn. Tokens are mapped to characters through the fast tokenizer's
offsets, so BPE merges across a boundary cannot shift the mask.
"""

from __future__ import annotations

import itertools
import os
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Literal

from slmkit.data.records import Problem, Record, Severity
from slmkit.errors import DataError
from slmkit.models import reasoning
from slmkit.models.messages import prepare_messages, template_knows_tools
from slmkit.models.templates import named_template, training_template_for

IGNORE_INDEX = -100
Overflow = Literal["truncate", "drop"]


class TemplateMismatch(DataError):
    """The chat template cannot be masked for this conversation (not prefix-preserving)."""


@dataclass
class TokenizedSample:
    """One training row: token ids and labels (-100 where no loss is taken)."""

    input_ids: list[int]
    labels: list[int]
    source: str

    def __len__(self) -> int:
        return len(self.input_ids)

    @property
    def n_trainable(self) -> int:
        return sum(1 for label in self.labels if label != IGNORE_INDEX)

    def cut(self, cutoff_len: int) -> TokenizedSample:
        """The first `cutoff_len` tokens (the answer's end goes when it alone is too long)."""
        if len(self) <= cutoff_len:
            return self
        return TokenizedSample(self.input_ids[:cutoff_len], self.labels[:cutoff_len], self.source)


@dataclass
class TokenizeResult:
    samples: list[TokenizedSample] = field(default_factory=list)
    records: list[Record] = field(
        default_factory=list
    )  # chat records as trained (after shortening)
    n_truncated: int = 0
    n_dropped: int = 0
    n_over_cutoff: int = 0
    problems: list[Problem] = field(default_factory=list)
    lengths: list[int] = field(default_factory=list)  # untruncated token length of every record
    length_sources: list[str] = field(default_factory=list)

    @property
    def trainable_share(self) -> float:
        total = sum(len(s) for s in self.samples)
        return sum(s.n_trainable for s in self.samples) / total if total else 0.0

    def trainable_share_by_file(self) -> dict[str, float]:
        tokens: dict[str, int] = defaultdict(int)
        trainable: dict[str, int] = defaultdict(int)
        for s in self.samples:
            file = s.source.rsplit(":", 1)[0]
            tokens[file] += len(s)
            trainable[file] += s.n_trainable
        return {f: trainable[f] / tokens[f] if tokens[f] else 0.0 for f in tokens}


def resolve_chat_template(tokenizer: Any, template: str | None = None) -> str:
    """The Jinja template to render with: a named one (`slm data templates`), else the tokenizer's own."""
    if template is not None:
        return named_template(template).text
    own = getattr(tokenizer, "chat_template", None)
    if isinstance(own, dict):  # several named templates: use the default one
        own = own.get("default")
    if not own:
        raise DataError(
            "this model has no chat template (tokenizer.chat_template is empty; a base model?)",
            hint="pass --template NAME (recipe: data.template); `slm data templates` lists them",
        )
    return str(own)


def tokenize_sft(
    records: list[Record],
    tokenizer: Any,
    *,
    cutoff_len: int = 1024,
    train_on_prompt: bool = False,
    template: str | None = None,
    overflow: Overflow = "truncate",
) -> TokenizeResult:
    """Records -> token ids with loss masks; over-cutoff samples are shortened or dropped and counted.

    `truncate` cuts the prompt from its start (see `data.overflow.shorten_prompt`) so the answer keeps
    its tokens; `drop` leaves the sample out. Both are located warnings. A sample with no trainable
    token at all is an error (reported in `problems`, left out of `samples`).
    """
    if overflow not in ("truncate", "drop"):
        raise ValueError(f"overflow must be 'truncate' or 'drop', not {overflow!r}")
    needs_template = any(r.kind != "text" for r in records)
    chat_template = resolve_chat_template(tokenizer, template) if needs_template else ""
    renderer = ChatRenderer(tokenizer, chat_template, train_on_prompt)
    result = TokenizeResult()
    for record in records:
        if record.kind == "text":
            _add_text_record(record, tokenizer, cutoff_len, result)
            continue
        try:
            _add_chat_record(record, renderer, cutoff_len, overflow, result)
        except TemplateMismatch as exc:
            result.problems.append(located(record.source, "(template)", str(exc)))
    return result


@dataclass
class ChatRenderer:
    """Renders a record with one chat template into token ids and assistant-only labels."""

    tokenizer: Any
    chat_template: str
    train_on_prompt: bool = False
    training_template: str | None = field(init=False)

    def __post_init__(self) -> None:
        self.training_template = training_template_for(self.chat_template)

    def samples(self, record: Record) -> list[TokenizedSample]:
        """One sample for a conversation the template renders by appending turns, else one per
        assistant turn (see the module docstring)."""
        out = []
        for input_ids, trainable in render_with_mask(
            record.messages,
            self.tokenizer,
            self.chat_template,
            record.tools,
            training_template=self.training_template,
        ):
            labels = [
                t if (ok or self.train_on_prompt) else IGNORE_INDEX
                for t, ok in zip(input_ids, trainable, strict=True)
            ]
            out.append(TokenizedSample(input_ids, labels, record.source))
        return out

    def length(
        self, messages: list[dict[str, Any]], tools: Any, *, generation_prompt: bool = False
    ) -> int:
        """Token count of a rendering (no mask)."""
        prepared = prepare_messages(messages, self.chat_template, tools, keep_reasoning=True)
        text = render_text(
            self.tokenizer,
            _as_reply(prepared, self.chat_template),
            self.chat_template,
            generation_prompt=generation_prompt,
            tools=tools,
        )
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])


def located(source: str, field_name: str, message: str, severity: Severity = "error") -> Problem:
    """A Problem at a record's `file:line` source."""
    file, _, line = source.rpartition(":")
    return Problem(file, int(line), field_name, message, severity)


def _add_chat_record(
    record: Record,
    renderer: ChatRenderer,
    cutoff_len: int,
    overflow: Overflow,
    result: TokenizeResult,
) -> None:
    samples = renderer.samples(record)
    longest = max((len(s) for s in samples), default=0)
    result.lengths.append(longest)
    result.length_sources.append(record.source)
    if not any(s.n_trainable for s in samples):
        result.problems.append(
            located(
                record.source,
                "(labels)",
                "no trainable tokens after templating and masking (expected the assistant's reply "
                "to carry labels; does the chat template render assistant turns?)",
            )
        )
        return
    if longest > cutoff_len:
        result.n_over_cutoff += 1
        fitted = _fit_over_cutoff(record, longest, renderer, cutoff_len, overflow, result)
        if fitted is None:
            return
        record, samples = fitted
    result.records.append(record)
    result.samples.extend(s for s in samples if s.n_trainable)


def _fit_over_cutoff(
    record: Record,
    length: int,
    renderer: ChatRenderer,
    cutoff_len: int,
    overflow: Overflow,
    result: TokenizeResult,
) -> tuple[Record, list[TokenizedSample]] | None:
    """The record shortened to `cutoff_len` (prompt cut from its start), or None when dropped."""
    from slmkit.data.overflow import shorten_record

    over = f"{length} tokens, over cutoff_len {cutoff_len}"
    if overflow == "truncate":
        record, how = shorten_record(record, renderer, cutoff_len)
        samples = [s.cut(cutoff_len) for s in renderer.samples(record)]
        if any(s.n_trainable for s in samples):
            result.n_truncated += 1
            result.problems.append(
                located(record.source, "(record)", f"{over}: truncated, {how}", "warning")
            )
            return record, samples
        over += " and the system prompt alone leaves no room for the answer"
    result.n_dropped += 1
    result.problems.append(located(record.source, "(record)", f"{over}: dropped", "warning"))
    return None


def mask_segments(sample: TokenizedSample, tokenizer: Any) -> list[tuple[str, bool]]:
    """The sample's text in runs of (text, carries loss), for showing a mask to a person."""
    runs: list[tuple[list[int], bool]] = []
    for token, label in zip(sample.input_ids, sample.labels, strict=True):
        trained = label != IGNORE_INDEX
        if runs and runs[-1][1] == trained:
            runs[-1][0].append(token)
        else:
            runs.append(([token], trained))
    return [(tokenizer.decode(ids), trained) for ids, trained in runs]


def _add_text_record(
    record: Record, tokenizer: Any, cutoff_len: int, result: TokenizeResult
) -> None:
    """Plain text: every token is a label; long documents are split into cutoff_len chunks."""
    ids = list(tokenizer(record.text or "", add_special_tokens=True)["input_ids"])
    if tokenizer.eos_token_id is not None:
        ids.append(int(tokenizer.eos_token_id))
    result.lengths.append(len(ids))
    result.length_sources.append(record.source)
    for start in range(0, len(ids), cutoff_len):
        chunk = ids[start : start + cutoff_len]
        if len(chunk) > 1:
            result.samples.append(TokenizedSample(chunk, list(chunk), record.source))


def reply_ids(
    messages: list[dict[str, Any]], tools: Any, renderer: ChatRenderer
) -> tuple[list[int], list[int]]:
    """(prompt ids, answer ids) of a conversation's last assistant turn: the prompt as inference
    renders it, the answer as the model writes it after that prompt."""
    prepared = prepare_messages(messages, renderer.chat_template, tools, keep_reasoning=True)
    turn = _turn_target(
        prepared,
        len(prepared) - 1,
        renderer.tokenizer,
        renderer.chat_template,
        renderer.training_template,
        tools,
    )
    ids, trainable = _tokens_with_spans(
        renderer.tokenizer, turn.prompt + turn.target, [(len(turn.prompt), turn.end)]
    )
    cut = trainable.index(True) if True in trainable else len(ids)
    return ids[:cut], ids[cut:]


@dataclass
class TurnTarget:
    """One assistant turn: the prompt inference renders for it and the text the model must write."""

    prompt: str
    target: str

    @property
    def end(self) -> int:
        return len(self.prompt) + len(self.target)


def render_with_mask(
    messages: list[dict[str, Any]],
    tokenizer: Any,
    chat_template: str,
    tools: list[dict[str, Any]] | None = None,
    *,
    training_template: str | None = None,
) -> list[tuple[list[int], list[bool]]]:
    """The samples of a conversation: token ids, and for each token whether the model writes it."""
    messages = prepare_messages(messages, chat_template, tools, keep_reasoning=True)
    turns = [
        _turn_target(messages, i, tokenizer, chat_template, training_template, tools)
        for i, message in enumerate(messages)
        if message["role"] == "assistant"
    ]
    if not turns:
        text = render_text(
            tokenizer, reasoning.for_history(messages, chat_template), chat_template, False, tools
        )
        return [_tokens_with_spans(tokenizer, text, [])]
    appends = all(
        later.prompt.startswith(earlier.prompt + earlier.target)
        for earlier, later in itertools.pairwise(turns)
    )
    if not appends:  # the template rewrites history: one sample per turn, as inference sees it
        return [
            _tokens_with_spans(tokenizer, t.prompt + t.target, [(len(t.prompt), t.end)])
            for t in turns
        ]
    last = turns[-1]
    full = render_text(tokenizer, _as_reply(messages, chat_template), chat_template, False, tools)
    text = full if full.startswith(last.prompt + last.target) else last.prompt + last.target
    return [_tokens_with_spans(tokenizer, text, [(len(t.prompt), t.end) for t in turns])]


def _turn_target(
    messages: list[dict[str, Any]],
    index: int,
    tokenizer: Any,
    chat_template: str,
    training_template: str | None,
    tools: list[dict[str, Any]] | None,
) -> TurnTarget:
    """The prompt of assistant turn `index` and the text after it that the model must write."""
    if index == 0:
        raise TemplateMismatch(
            "the conversation opens with an assistant reply, which cannot be masked apart from "
            "what the template puts before it (expected a user turn first)"
        )
    history = reasoning.for_history(messages[:index], chat_template)
    prompt = render_text(tokenizer, history, chat_template, True, tools)
    if training_template is not None:
        target = _marked_target(messages, index, prompt, tokenizer, training_template, tools)
        if target is not None:
            return TurnTarget(prompt, target)
    reply = [*history, reasoning.for_reply(messages[index], chat_template)]
    text = render_text(tokenizer, reply, chat_template, False, tools)
    if text.startswith(prompt):
        return TurnTarget(prompt, text[len(prompt) :].rstrip())
    same = _common_prefix(prompt, text)
    answer = reply[-1].get("content")
    if isinstance(answer, str) and answer.strip() and text[same:].startswith(answer.strip()):
        # The generation prompt ends with what the stored reply leaves out (Gemma 4 closes an
        # empty thinking channel there): the model writes the reply after the prompt it is given.
        before = render_text(tokenizer, history, chat_template, False, tools)
        if same >= len(before) and prompt.startswith(before):
            return TurnTarget(prompt, text[same:].rstrip())
    raise TemplateMismatch(
        f"turn {index}: the chat template's prompt for this reply ends with "
        f"{prompt[same:][-40:]!r}, but rendering the reply puts {text[same:][:40]!r} there, so the "
        "reply cannot be located after its prompt (no loss mask can be built; choose a named "
        "template with --template NAME, listed by `slm data templates`)"
    )


_SENTINEL = "\u2063SLMKIT-REPLY\u2063"


def _marked_target(
    messages: list[dict[str, Any]],
    index: int,
    prompt: str,
    tokenizer: Any,
    training_template: str,
    tools: list[dict[str, Any]] | None,
) -> str | None:
    """The reply as the training variant marks it (`{% generation %}`), less the part the prompt
    already ends with (a generation prompt that opens the reply: R1's `<think>\n`). None when
    the variant does not mark this turn as expected."""
    turn = sum(1 for m in messages[:index] if m["role"] == "assistant")
    history = reasoning.for_history(messages[:index], training_template)
    reply = reasoning.for_reply(messages[index], training_template)
    text, spans = render_spans(tokenizer, [*history, reply], training_template, tools)
    probe = reasoning.for_reply({"role": "assistant", "content": _SENTINEL}, training_template)
    blank, blank_spans = render_spans(tokenizer, [*history, probe], training_template, tools)
    if len(spans) <= turn or len(blank_spans) <= turn:
        return None
    start, end = spans[turn]
    written = text[start:end]
    marked = blank[blank_spans[turn][0] : blank_spans[turn][1]]
    header = marked[: marked.find(_SENTINEL)] if _SENTINEL in marked else ""
    opened = next(
        (k for k in range(len(header), 0, -1) if prompt.endswith(written[:k])),
        0,
    )
    return written[opened:]


def _as_reply(messages: list[dict[str, Any]], chat_template: str) -> list[dict[str, Any]]:
    """Earlier turns in their history form, the last one as the answer being trained."""
    if not messages:
        return messages
    history = reasoning.for_history(messages[:-1], chat_template)
    return [*history, reasoning.for_reply(messages[-1], chat_template)]


def _common_prefix(a: str, b: str) -> int:
    return len(os.path.commonprefix([a, b]))  # noqa: RUF071 (characters, not paths)


def _tokens_with_spans(
    tokenizer: Any, text: str, spans: list[tuple[int, int]]
) -> tuple[list[int], list[bool]]:
    """Token ids of `text` and, per token, whether it starts inside a span. A token that straddles
    the start of a reply (byte-level BPE merges R1's `<think>\n` + `\n</think>` into one `\n\n`)
    would put the reply's first token in the prompt; at inference the prompt is tokenized alone and
    the model writes the rest, so then each part is tokenized on its own."""
    if not getattr(tokenizer, "is_fast", False):
        return _mask_by_prefix_lengths(tokenizer, text, spans)
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = list(encoded["input_ids"]), list(encoded["offset_mapping"])
    starts = {s for s, _ in spans}
    straddles = any(a < b < e for a, e in offsets for b in starts)
    if straddles and not _adds_prefix_space(tokenizer):
        ids, offsets = [], []
        cuts = sorted({0, *starts, len(text)})
        for a, b in itertools.pairwise(cuts):
            part = tokenizer(text[a:b], add_special_tokens=False, return_offsets_mapping=True)
            ids += part["input_ids"]
            offsets += [(a + x, a + y) for x, y in part["offset_mapping"]]
    trainable = [any(s <= start < e for s, e in spans) for start, _ in offsets]
    return ids, trainable


def _adds_prefix_space(tokenizer: Any) -> bool:
    """Whether the tokenizer puts a space before a text it starts on (SentencePiece's dummy prefix),
    which makes a piece tokenized alone differ from the same piece inside a text."""
    ids = tokenizer("a", add_special_tokens=False)["input_ids"]
    first = tokenizer.convert_ids_to_tokens(ids[:1])
    return bool(first) and str(first[0]).startswith(("▁", "Ġ", " "))


def _mask_by_prefix_lengths(
    tokenizer: Any, full: str, spans: list[tuple[int, int]]
) -> tuple[list[int], list[bool]]:
    """Slow tokenizers have no offsets: a span boundary is the token count of the text before it."""
    ids = list(tokenizer(full, add_special_tokens=False)["input_ids"])
    trainable = [False] * len(ids)
    for start, end in spans:
        first = len(tokenizer(full[:start], add_special_tokens=False)["input_ids"])
        last = len(tokenizer(full[:end], add_special_tokens=False)["input_ids"])
        for index in range(first, min(last, len(ids))):
            trainable[index] = True
    return ids, trainable


def render_text(
    tokenizer: Any,
    messages: list[dict[str, Any]],
    chat_template: str,
    generation_prompt: bool,
    tools: list[dict[str, Any]] | None = None,
    **context: Any,
) -> str:
    """The template's text for `messages` with the tokenizer's special tokens."""
    return str(
        tokenizer.apply_chat_template(
            messages,
            tools=tools if template_knows_tools(chat_template) else None,
            chat_template=chat_template,
            tokenize=False,
            add_generation_prompt=generation_prompt,
            **context,
        )
    )


def render_spans(
    tokenizer: Any,
    messages: list[dict[str, Any]],
    template: str,
    tools: list[dict[str, Any]] | None = None,
) -> tuple[str, list[tuple[int, int]]]:
    """The rendering of a template with `{% generation %}` markers and the character spans they mark."""
    from transformers.utils.chat_template_utils import render_jinja_template

    result: Any = render_jinja_template(  # annotated `str`, returns (texts, spans)
        conversations=[messages],
        tools=tools if template_knows_tools(template) else None,  # type: ignore[arg-type]
        chat_template=template,
        return_assistant_tokens_mask=True,
        add_generation_prompt=False,
        **tokenizer.special_tokens_map,
    )
    rendered, indices = result
    return str(rendered[0]), [(int(s), int(e)) for s, e in indices[0]]
