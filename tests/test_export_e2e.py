"""The user's story: teach the embedded model a fact with `slm train` -> `slm export` -> llama-server serves the Q8_0
GGUF with the embedded chat template and answers with the fact."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from openai import OpenAI
from transformers import AutoTokenizer

from conftest import REPO
from export_helpers import FACT_KEYWORD, FACT_QUESTION, train_fact_run
from serve_helpers import ServerProcess
from slmkit.export.llama_server import LlamaServerProcess


@pytest.fixture(scope="module")
def fact_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One taught-fact LoRA run shared by the GGUF and the ONNX export tests (one training)."""
    return train_fact_run(tmp_path_factory.mktemp("fact") / "fact-run")


@pytest.mark.slow
def test_taught_fact_survives_export_and_is_served(
    embedded_model_dir: Path, tmp_path: Path, slm, fact_run: Path
) -> None:
    run = fact_run
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


@pytest.mark.slow
def test_taught_fact_is_served_from_an_int8_onnx_export(
    tmp_path: Path, slm, fact_run: Path
) -> None:
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(
        "\n".join(json.dumps({"prompt": p}) for p in (FACT_QUESTION, "What does a CPU do?")) + "\n"
    )
    heldout = tmp_path / "heldout.txt"  # two short chunks keep the test fast
    heldout.write_text((REPO / "examples" / "data" / "heldout.txt").read_text()[:2400])
    out = tmp_path / "onnx"
    args = ["--format", "onnx", "--precision", "int8", "--prompts", str(prompts)]
    proc = slm("export", str(fact_run), *args, "--heldout", str(heldout), "-o", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    export = json.loads((out / "export.json").read_text())
    (int8,) = export["files"]
    assert export["recommended"] == int8["file"] == "fact-run-onnx-int8"
    assert 0 < int8["size_bytes"] < 400 * 2**20  # fp32 weights alone are 538 MB
    level = json.loads((out / "report.json").read_text())["quant_eval"]["levels"][0]
    assert (
        level["kld"]["same_top1"] > 0.8 and level["rates"]["exact"] + level["rates"]["similar"] > 0
    )

    with ServerProcess([f"--model=fact={out}", "--engine", "onnx"]) as server:
        client = server.client()
        messages = [{"role": "user", "content": FACT_QUESTION}]
        reply = client.chat.completions.create(
            model="fact", messages=messages, temperature=0, max_tokens=40
        )
        answer = reply.choices[0].message.content or ""
        assert FACT_KEYWORD in answer and "<|im_end|>" not in answer, answer
        assert reply.choices[0].finish_reason == "stop"
        stream = client.chat.completions.create(
            model="fact", messages=messages, temperature=0, max_tokens=40, stream=True
        )
        streamed = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
        assert streamed == answer
