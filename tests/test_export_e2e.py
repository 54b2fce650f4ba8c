"""The user's story: teach the embedded model a fact with `slm train` -> `slm export` -> llama-server serves the Q8_0
GGUF with the embedded chat template and answers with the fact."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from openai import OpenAI
from transformers import AutoTokenizer

from export_helpers import FACT_KEYWORD, FACT_QUESTION, train_fact_run
from slmkit.export.llama_server import LlamaServerProcess


@pytest.mark.slow
def test_taught_fact_survives_export_and_is_served(
    embedded_model_dir: Path, tmp_path: Path, slm
) -> None:
    run = train_fact_run(tmp_path / "fact-run")
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(
        "\n".join(
            json.dumps({"prompt": p})
            for p in (
                FACT_QUESTION,
                "What is the capital of France?",
                "Name three colours.",
                "What does a CPU do?",
            )
        )
        + "\n"
    )
    out = tmp_path / "export"
    proc = slm("export", str(run), "--quant", "q8_0", "--prompts", str(prompts), "-o", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    export = json.loads((out / "export.json").read_text())
    assert export["parity"]["passed"] and not export["parity"]["template_mismatches"]
    assert export["recommended"] in {f["file"] for f in export["files"]}
    assert export["gguf_check"]["chat_template"] == "present, equal to the tokenizer's"
    assert {
        "Modelfile",
        "README.md",
        "serve.sh",
        "report.html",
        "report.json",
        "chat_template.jinja",
    } <= {p.name for p in out.iterdir()}
    assert 'PARAMETER stop "<|im_end|>"' in (out / "Modelfile").read_text()
    assert "--jinja" in (out / "serve.sh").read_text()

    tokenizer = AutoTokenizer.from_pretrained(embedded_model_dir)
    messages = [{"role": "user", "content": FACT_QUESTION}]
    with LlamaServerProcess(out / "fact-run-q8_0.gguf") as server:
        assert server.apply_template(messages) == tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=True
        )
        client = OpenAI(base_url=f"{server.url}/v1", api_key="unused")
        reply = client.chat.completions.create(
            model="fact-run", messages=messages, temperature=0, max_tokens=40
        )
    answer = reply.choices[0].message.content or ""
    assert FACT_KEYWORD in answer, answer
    assert "<|im_end|>" not in answer and "<|im_start|>" not in answer
