"""Parity gate: base+adapter (PyTorch) -> merged -> GGUF f16 must answer alike at temperature 0.

At f16 the only expected differences are rounding; a template, tokenizer or merge bug shows up
as a prompt rendered differently by llama-server, different prompt tokens, or many "different"
answers. Any of those stops the export (unless forced) and shows the differing answers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from slmkit.export.agreement import Messages, agreement_rates, classify
from slmkit.export.config import Thresholds
from slmkit.export.errors import ParityError
from slmkit.export.llama_server import LlamaServerProcess


def torch_answers(
    model: Any, tokenizer: Any, prompts: list[Messages], max_tokens: int
) -> list[str]:
    """Greedy answers of a transformers model, all prompts in one left-padded batch."""
    return decode_answers(tokenizer, torch_answer_ids(model, tokenizer, prompts, max_tokens))


def torch_answer_ids(
    model: Any, tokenizer: Any, prompts: list[Messages], max_tokens: int
) -> list[list[int]]:
    """Greedy answer token ids (up to and including the first end token) of a transformers model,
    all prompts in one left-padded batch."""
    import torch

    texts = [_prompt_text(tokenizer, m) for m in prompts]
    side, tokenizer.padding_side = tokenizer.padding_side, "left"
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    batch = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    tokenizer.padding_side = side
    with torch.inference_mode():
        out = model.generate(
            **batch,
            max_new_tokens=max_tokens,
            do_sample=False,
            temperature=None,
            top_p=None,
            top_k=None,
            pad_token_id=tokenizer.pad_token_id,
        )
    ends = _end_ids(model, tokenizer)
    return [_until_end(row.tolist(), ends) for row in out[:, batch.input_ids.shape[1] :]]


def answers_following(
    model: Any,
    tokenizer: Any,
    prompts: list[Messages],
    known_ids: list[list[int]],
    max_tokens: int,
) -> list[str]:
    """Greedy answers of `model`, where `known_ids` are another model's greedy answers (e.g. the
    same weights before merging): one forward pass per prompt checks that `model` picks those
    tokens too, and only the prompts where it does not are decoded again."""
    redo = [
        i
        for i, (m, ids) in enumerate(zip(prompts, known_ids, strict=True))
        if not follows_greedily(model, tokenizer, m, ids)
    ]
    ids = list(known_ids)
    fresh = (
        torch_answer_ids(model, tokenizer, [prompts[i] for i in redo], max_tokens) if redo else []
    )
    for i, answer in zip(redo, fresh, strict=True):
        ids[i] = answer
    return decode_answers(tokenizer, ids)


def follows_greedily(model: Any, tokenizer: Any, messages: Messages, answer_ids: list[int]) -> bool:
    """Whether `model`'s argmax after the prompt and each prefix of `answer_ids` is the next answer
    token, i.e. greedy decoding would give exactly `answer_ids` (the end token included)."""
    import torch

    if not answer_ids:
        return True
    prompt = tokenizer(_prompt_text(tokenizer, messages), add_special_tokens=False).input_ids
    ids = torch.tensor([prompt + answer_ids])
    with torch.inference_mode():
        logits = model(ids).logits[0, len(prompt) - 1 : -1]
    return bool((logits.argmax(-1) == ids[0, len(prompt) :]).all())


def decode_answers(tokenizer: Any, answers: list[list[int]]) -> list[str]:
    return [tokenizer.decode(ids, skip_special_tokens=True).strip() for ids in answers]


def _prompt_text(tokenizer: Any, messages: Messages) -> str:
    from slmkit.models.chat import render_chat_prompt

    return str(render_chat_prompt(tokenizer, messages))


def _end_ids(model: Any, tokenizer: Any) -> set[int]:
    """Token ids that stop `generate` (it pads a finished row after them)."""
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if configured is None:
        configured = tokenizer.eos_token_id
    ends = configured if isinstance(configured, list) else [configured]
    return {int(i) for i in ends if i is not None}


def _until_end(row: list[int], ends: set[int]) -> list[int]:
    for i, token in enumerate(row):
        if token in ends:
            return row[: i + 1]
    return row


@dataclass
class GgufProbe:
    """What llama-server does with the f16 GGUF: rendered prompts, their tokens, greedy answers."""

    rendered: list[str]
    tokens: list[list[int]]
    answers: list[str]


def probe_gguf(gguf: Path, prompts: list[Messages], *, max_tokens: int, threads: int) -> GgufProbe:
    with LlamaServerProcess(gguf, threads=threads) as server:
        rendered = [server.apply_template(m) for m in prompts]
        return GgufProbe(
            rendered,
            [server.tokenize(r, add_special=True) for r in rendered],
            [server.chat(m, max_tokens=max_tokens) for m in prompts],
        )


@dataclass
class ParityReport:
    reference_answers: list[str]  # base+adapter in PyTorch (fp32)
    merged_answers: list[str]
    gguf_answers: list[str]
    merged_rates: dict[str, float]
    gguf_rates: dict[str, float]
    template_mismatches: list[int] = field(default_factory=list)  # prompt indices
    token_mismatches: list[int] = field(default_factory=list)
    passed: bool = True
    reasons: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


def compare_parity(
    prompts: list[Messages],
    tokenizer: Any,
    reference: list[str],
    merged: list[str],
    probe: GgufProbe,
    thresholds: Thresholds,
) -> ParityReport:
    from slmkit.models.chat import render_chat_prompt

    threshold = thresholds.similar_rouge_l
    report = ParityReport(
        reference,
        merged,
        probe.answers,
        agreement_rates(merged, reference, threshold),
        agreement_rates(probe.answers, reference, threshold),
    )
    for i, messages in enumerate(prompts):
        expected = render_chat_prompt(tokenizer, messages)
        if not same_prompt(probe.rendered[i], expected, tokenizer.bos_token):
            report.template_mismatches.append(i)
        elif probe.tokens[i] != tokenizer(expected, add_special_tokens=False).input_ids:
            report.token_mismatches.append(i)
    if report.template_mismatches:
        report.reasons.append(
            f"llama-server renders {len(report.template_mismatches)} prompt(s) differently from the "
            "training template (template bug)"
        )
    if report.token_mismatches:
        report.reasons.append(
            f"{len(report.token_mismatches)} prompt(s) tokenize differently in the GGUF (tokenizer bug)"
        )
    for name, rates in (("merged", report.merged_rates), ("GGUF f16", report.gguf_rates)):
        if rates["different"] > thresholds.parity_max_different:
            report.reasons.append(
                f"{name} answers differ from base+adapter on {rates['different']:.0%} of prompts "
                f"(> {thresholds.parity_max_different:.0%})"
            )
    report.passed = not report.reasons
    return report


def same_prompt(served: str, expected: str, bos: str | None) -> bool:
    """Whether llama-server's rendering is the training one. The server drops a template's leading
    BOS text when the GGUF adds BOS itself at tokenization, so that BOS is not doubled; the token
    comparison then checks that the BOS came back."""
    if served == expected:
        return True
    return bool(bos) and expected.startswith(str(bos)) and served == expected[len(str(bos)) :]


def enforce_parity(
    report: ParityReport, prompts: list[Messages], thresholds: Thresholds, force: bool
) -> None:
    """Raise `ParityError` with the differing answers unless the gate passed or `force` is set."""
    if report.passed or force:
        return
    shown = []
    for i, messages in enumerate(prompts):
        label = classify(
            report.gguf_answers[i], report.reference_answers[i], thresholds.similar_rouge_l
        )
        if label == "different" or i in report.template_mismatches:
            shown.append(
                f"[{messages[-1]['content'][:60]!r}: PyTorch {report.reference_answers[i][:80]!r} "
                f"vs GGUF {report.gguf_answers[i][:80]!r}]"
            )
        if len(shown) >= 3:
            break
    raise ParityError(
        f"parity gate failed: {'; '.join(report.reasons)}; e.g. {' '.join(shown)}",
        hint="this is a template, tokenizer or merge problem, not quantization; fix it or pass --force",
    )
