"""Render records with a chat template and build labels so that only assistant turns carry loss.

The mask is found by rendering the conversation incrementally: for each assistant turn, the text up
to the turn (with the generation prompt) and the text including the turn must both be prefixes of
the full rendering; the characters between them (minus trailing whitespace) are the assistant's
reply plus its end-of-turn token. Tokens are mapped to characters through the fast tokenizer's
offsets, so BPE merges across a boundary cannot shift the mask. Templates that rewrite earlier
turns (not prefix-preserving) are refused with a clear error instead of a silently wrong mask.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Literal

from slmkit.data.records import Problem, Record, Severity
from slmkit.errors import DataError

IGNORE_INDEX = -100
Overflow = Literal["truncate", "drop"]

BUILTIN_TEMPLATES: dict[str, str] = {
    "chatml": (
        "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] "
        "+ '<|im_end|>' + '\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}"
        "{% endif %}"
    ),
    "llama2": (
        "{% if messages and messages[0]['role'] == 'system' %}{% set system = messages[0]['content'] %}"
        "{% set loop_messages = messages[1:] %}{% else %}{% set system = '' %}{% set loop_messages = messages %}"
        "{% endif %}{% for message in loop_messages %}{% if message['role'] == 'assistant' %}"
        "{{ ' ' + message['content'] + ' ' + (eos_token or '') }}{% else %}{{ (bos_token or '') + '[INST] ' }}"
        "{% if loop.first and system %}{{ '<<SYS>>\\n' + system + '\\n<</SYS>>\\n\\n' }}{% endif %}"
        "{% if message['role'] != 'user' %}{{ message['role'] + ': ' }}{% endif %}"
        "{{ message['content'] + ' [/INST]' }}{% endif %}{% endfor %}"
    ),
    "alpaca": (
        "{% if not messages or messages[0]['role'] != 'system' %}{{ 'Below is an instruction that describes a "
        "task. Write a response that appropriately completes the request.\\n\\n' }}{% endif %}"
        "{% for message in messages %}{% if message['role'] == 'system' %}{{ message['content'] + '\\n\\n' }}"
        "{% elif message['role'] == 'user' %}{{ '### Instruction:\\n' + message['content'] + "
        "'\\n\\n### Response:\\n' }}{% elif message['role'] == 'assistant' %}"
        "{{ message['content'] + (eos_token or '') + '\\n\\n' }}{% else %}{{ '### Input:\\n' + "
        "message['content'] + '\\n\\n' }}{% endif %}{% endfor %}"
    ),
}
TEMPLATE_CHOICES = tuple(BUILTIN_TEMPLATES)


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
    """The Jinja template to render with: a built-in one by name, else the tokenizer's own."""
    if template is not None:
        if template not in BUILTIN_TEMPLATES:
            raise DataError(
                f"unknown template {template!r} (expected one of {', '.join(TEMPLATE_CHOICES)})"
            )
        return BUILTIN_TEMPLATES[template]
    own = getattr(tokenizer, "chat_template", None)
    if isinstance(own, dict):  # several named templates: use the default one
        own = own.get("default")
    if not own:
        raise DataError(
            "this model has no chat template (tokenizer.chat_template is empty; a base model?)",
            hint=f"pass --template {'|'.join(TEMPLATE_CHOICES)} (recipe: data.template)",
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

    def sample(self, record: Record) -> TokenizedSample:
        input_ids, trainable = render_with_mask(
            record.messages, self.tokenizer, self.chat_template, record.tools
        )
        labels = [
            t if (ok or self.train_on_prompt) else IGNORE_INDEX
            for t, ok in zip(input_ids, trainable, strict=True)
        ]
        return TokenizedSample(input_ids, labels, record.source)

    def length(
        self, messages: list[dict[str, Any]], tools: Any, *, generation_prompt: bool = False
    ) -> int:
        """Token count of a rendering (no mask)."""
        text = _render(
            self.tokenizer,
            prepare_messages(messages, self.chat_template, tools),
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
    sample = renderer.sample(record)
    result.lengths.append(len(sample))
    result.length_sources.append(record.source)
    if sample.n_trainable == 0:
        result.problems.append(
            located(
                record.source,
                "(labels)",
                "no trainable tokens after templating and masking (expected the assistant's reply "
                "to carry labels; does the chat template render assistant turns?)",
            )
        )
        return
    if len(sample) > cutoff_len:
        result.n_over_cutoff += 1
        fitted = _fit_over_cutoff(record, len(sample), renderer, cutoff_len, overflow, result)
        if fitted is None:
            return
        record, sample = fitted
    result.records.append(record)
    result.samples.append(sample)


def _fit_over_cutoff(
    record: Record,
    length: int,
    renderer: ChatRenderer,
    cutoff_len: int,
    overflow: Overflow,
    result: TokenizeResult,
) -> tuple[Record, TokenizedSample] | None:
    """The record shortened to `cutoff_len` (prompt cut from its start), or None when dropped."""
    from slmkit.data.overflow import shorten_record

    over = f"{length} tokens, over cutoff_len {cutoff_len}"
    if overflow == "truncate":
        record, how = shorten_record(record, renderer, cutoff_len)
        sample = renderer.sample(record).cut(cutoff_len)
        if sample.n_trainable:
            result.n_truncated += 1
            result.problems.append(
                located(record.source, "(record)", f"{over}: truncated, {how}", "warning")
            )
            return record, sample
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


def render_with_mask(
    messages: list[dict[str, Any]],
    tokenizer: Any,
    chat_template: str,
    tools: list[dict[str, Any]] | None = None,
) -> tuple[list[int], list[bool]]:
    """Token ids of the rendered conversation, and for each token whether it belongs to an assistant reply."""
    messages = prepare_messages(messages, chat_template, tools)
    full = _render(tokenizer, messages, chat_template, generation_prompt=False, tools=tools)
    spans: list[tuple[int, int]] = []
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        if i == 0:
            raise TemplateMismatch(
                "the conversation opens with an assistant reply, which cannot be masked apart from "
                "what the template puts before it (expected a user turn first)"
            )
        before = _render(
            tokenizer, messages[:i], chat_template, generation_prompt=True, tools=tools
        )
        upto = _render(
            tokenizer, messages[: i + 1], chat_template, generation_prompt=False, tools=tools
        )
        if not (upto.startswith(before) and full.startswith(upto)):
            raise TemplateMismatch(
                f"the chat template is not prefix-preserving at turn {i} (the rendering up to this "
                "reply is not a prefix of the full rendering), so no loss mask can be built "
                f"(expected a template that appends turns; try --template {'|'.join(TEMPLATE_CHOICES)})"
            )
        spans.append((len(before), len(upto.rstrip())))
    if not getattr(tokenizer, "is_fast", False):
        return _mask_by_prefix_lengths(tokenizer, full, spans)
    encoded = tokenizer(full, add_special_tokens=False, return_offsets_mapping=True)
    ids = list(encoded["input_ids"])
    trainable = [any(s <= start < e for s, e in spans) for start, _ in encoded["offset_mapping"]]
    return ids, trainable


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


def _render(
    tokenizer: Any,
    messages: list[dict[str, Any]],
    chat_template: str,
    *,
    generation_prompt: bool,
    tools: list[dict[str, Any]] | None = None,
) -> str:
    return str(
        tokenizer.apply_chat_template(
            messages,
            tools=tools if template_knows_tools(chat_template) else None,
            chat_template=chat_template,
            tokenize=False,
            add_generation_prompt=generation_prompt,
        )
    )


def template_knows_tools(chat_template: str) -> bool:
    """Whether a chat template renders the `tools` it is given (else they go in the system prompt)."""
    return "tools" in chat_template


TOOLS_PREAMBLE = (
    "You can call these functions. To call one, answer with a JSON object "
    '{"name": <function name>, "arguments": <arguments object>}:'
)


def prepare_messages(
    messages: list[dict[str, Any]],
    chat_template: str,
    tools: list[dict[str, Any]] | None = None,
) -> list[dict[str, Any]]:
    """Messages as a template can render them: for templates that know nothing of tools, the tool
    schemas go in the system prompt and tool calls become JSON text in the assistant's content."""
    if tools and not template_knows_tools(chat_template):
        messages = _tools_in_system_prompt(messages, tools)
    if "tool_calls" in chat_template:
        return messages
    prepared = []
    for message in messages:
        if message.get("tool_calls"):
            calls = [c.get("function", c) for c in message["tool_calls"]]
            text = json.dumps(calls if len(calls) > 1 else calls[0], ensure_ascii=False)
            message = {
                "role": message["role"],
                "content": _append_text(message.get("content"), text),
            }
        prepared.append(message)
    return prepared


def _append_text(content: Any, text: str) -> Any:
    """`text` after a message's content: a string, None, or a list of content parts."""
    if isinstance(content, list):
        return [*content, {"type": "text", "text": text}]
    return (content or "") + text


def _tools_in_system_prompt(
    messages: list[dict[str, Any]], tools: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    listing = "\n".join(json.dumps(t.get("function", t), ensure_ascii=False) for t in tools)
    text = f"{TOOLS_PREAMBLE}\n{listing}"
    if messages and messages[0]["role"] == "system":
        system = {**messages[0], "content": _append_text(messages[0].get("content"), f"\n\n{text}")}
        return [system, *messages[1:]]
    return [{"role": "system", "content": text}, *messages]
