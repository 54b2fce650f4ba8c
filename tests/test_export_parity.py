"""The parity gate on a real llama-server: the GGUF's greedy answers are compared with the answers
PyTorch gives for the model it was made from; a perturbed PyTorch model, or a template that differs
from the training template, stops the export with the differing prompt shown; `--force` lets it
through; the matching model and template pass."""

from __future__ import annotations

from pathlib import Path

import pytest
from transformers import AutoTokenizer

from slmkit.export.config import Thresholds
from slmkit.export.errors import ParityError
from slmkit.export.gguf_file import convert_to_gguf
from slmkit.export.parity import compare_parity, enforce_parity, probe_gguf, torch_answers

PROMPTS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [{"role": "user", "content": "Name a colour."}],
]
# what a tokenizer looks like after someone trained with a different (alpaca-style) template
ALPACA = (
    "{% for m in messages %}{% if m['role'] == 'user' %}### Instruction:\n{{ m['content'] }}\n\n"
    "{% endif %}{% endfor %}### Response:\n"
)


MAX_TOKENS = 8


@pytest.fixture(scope="module")
def probe(embedded_model_dir: Path, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """The embedded model converted to an f16 GGUF (as the export does before the gate), served by
    llama-server: its rendered prompts, tokens and answers."""
    gguf = convert_to_gguf(
        embedded_model_dir, tmp_path_factory.mktemp("parity") / "smol-f16.gguf", "f16"
    )
    return probe_gguf(gguf, PROMPTS, max_tokens=MAX_TOKENS, threads=1)


@pytest.fixture(scope="module")
def pytorch_answers(embedded_model_dir: Path) -> dict[str, list[str]]:
    """Greedy answers in PyTorch of the HF model the GGUF was made from, and of a perturbed copy."""
    import torch
    from transformers import AutoModelForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(embedded_model_dir)
    model = AutoModelForCausalLM.from_pretrained(embedded_model_dir, dtype=torch.float32).eval()
    answers = {"same": torch_answers(model, tokenizer, PROMPTS, MAX_TOKENS)}
    torch.manual_seed(0)
    with torch.no_grad():  # what a broken merge looks like: every projection off by noise
        for name, weight in model.named_parameters():
            if name.endswith("proj.weight"):
                weight.add_(torch.randn_like(weight) * weight.std())
    answers["perturbed"] = torch_answers(model, tokenizer, PROMPTS, MAX_TOKENS)
    return answers


def test_gguf_answers_match_pytorch(probe, pytorch_answers, embedded_model_dir: Path) -> None:  # type: ignore[no-untyped-def]
    tokenizer = AutoTokenizer.from_pretrained(embedded_model_dir)
    answers = pytorch_answers["same"]
    assert all(answers), answers
    report = compare_parity(PROMPTS, tokenizer, answers, answers, probe, Thresholds())
    assert report.passed and not report.template_mismatches and not report.token_mismatches
    assert report.gguf_rates["different"] == 0.0, (answers, probe.answers)
    enforce_parity(report, PROMPTS, Thresholds(), force=False)  # does not raise


def test_perturbed_model_fails_the_gate(probe, pytorch_answers, embedded_model_dir: Path) -> None:  # type: ignore[no-untyped-def]
    tokenizer = AutoTokenizer.from_pretrained(embedded_model_dir)
    broken = pytorch_answers["perturbed"]
    assert broken != pytorch_answers["same"]
    report = compare_parity(PROMPTS, tokenizer, broken, broken, probe, Thresholds())
    assert not report.passed and not report.template_mismatches
    assert report.gguf_rates["different"] > Thresholds().parity_max_different
    assert any("GGUF f16 answers differ" in r for r in report.reasons)
    with pytest.raises(ParityError, match="PyTorch"):
        enforce_parity(report, PROMPTS, Thresholds(), force=False)


def test_template_drift_stops_the_export_unless_forced(
    probe, pytorch_answers, embedded_model_dir: Path
) -> None:  # type: ignore[no-untyped-def]
    tokenizer = AutoTokenizer.from_pretrained(embedded_model_dir)
    tokenizer.chat_template = ALPACA
    answers = pytorch_answers["same"]
    report = compare_parity(PROMPTS, tokenizer, answers, answers, probe, Thresholds())
    assert not report.passed and report.template_mismatches == [0, 1]
    with pytest.raises(ParityError) as caught:
        enforce_parity(report, PROMPTS, Thresholds(), force=False)
    message = str(caught.value)
    assert "template bug" in message and "What is the capital of France?" in message
    enforce_parity(report, PROMPTS, Thresholds(), force=True)  # --force goes on
