"""The parity gate on a real llama-server: a GGUF whose template differs from the training template
stops the export with the differing prompt shown; `--force` lets it through; a matching template
passes."""

from __future__ import annotations

from pathlib import Path

import pytest
from transformers import AutoTokenizer

from slmkit.export.config import Thresholds
from slmkit.export.errors import ParityError
from slmkit.export.parity import compare_parity, enforce_parity, probe_gguf
from slmkit.models.embedded import embedded_gguf_path

PROMPTS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [{"role": "user", "content": "Name a colour."}],
]
# what a tokenizer looks like after someone trained with a different (alpaca-style) template
ALPACA = (
    "{% for m in messages %}{% if m['role'] == 'user' %}### Instruction:\n{{ m['content'] }}\n\n"
    "{% endif %}{% endfor %}### Response:\n"
)


@pytest.fixture(scope="module")
def probe():  # type: ignore[no-untyped-def]
    """The embedded GGUF served by llama-server: its rendered prompts, tokens and answers."""
    return probe_gguf(embedded_gguf_path(), PROMPTS, max_tokens=8, threads=1)


def test_matching_template_passes(probe, embedded_model_dir: Path) -> None:  # type: ignore[no-untyped-def]
    tokenizer = AutoTokenizer.from_pretrained(embedded_model_dir)
    answers = probe.answers
    report = compare_parity(PROMPTS, tokenizer, answers, answers, probe, Thresholds())
    assert report.passed and not report.template_mismatches and not report.token_mismatches
    enforce_parity(report, PROMPTS, Thresholds(), force=False)  # does not raise


def test_template_drift_stops_the_export_unless_forced(probe, embedded_model_dir: Path) -> None:  # type: ignore[no-untyped-def]
    tokenizer = AutoTokenizer.from_pretrained(embedded_model_dir)
    tokenizer.chat_template = ALPACA
    answers = probe.answers
    report = compare_parity(PROMPTS, tokenizer, answers, answers, probe, Thresholds())
    assert not report.passed and report.template_mismatches == [0, 1]
    with pytest.raises(ParityError) as caught:
        enforce_parity(report, PROMPTS, Thresholds(), force=False)
    message = str(caught.value)
    assert "template bug" in message and "What is the capital of France?" in message
    enforce_parity(report, PROMPTS, Thresholds(), force=True)  # --force goes on


def test_answer_drift_beyond_the_threshold_fails(probe, embedded_model_dir: Path) -> None:  # type: ignore[no-untyped-def]
    tokenizer = AutoTokenizer.from_pretrained(embedded_model_dir)
    unrelated = ["Zebras sleep standing up in the savanna.", "Quantum chromodynamics."]
    report = compare_parity(PROMPTS, tokenizer, unrelated, unrelated, probe, Thresholds())
    assert not report.passed and report.gguf_rates["different"] == 1.0
    assert any("GGUF f16 answers differ" in r for r in report.reasons)
