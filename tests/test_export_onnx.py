"""`slm export --format onnx` on a tiny random model: fp32 / int8 / int4 ONNX Runtime GenAI folders,
measured against PyTorch, then served by `slm serve` with the `onnx` engine (openai client)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from serve_helpers import ServerProcess

PRECISIONS = ("fp32", "int8", "int4")


@pytest.fixture(scope="module")
def onnx_export(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Path:
    from conftest import REPO, run_slm

    root = tmp_path_factory.mktemp("onnx-export")
    heldout = root / "heldout.txt"  # two 256-token chunks keep the eval short
    heldout.write_text((REPO / "examples" / "data" / "heldout.txt").read_text()[:2400])
    out = root / "export"
    proc = run_slm(
        "export",
        str(tiny_model_dir),
        "--format",
        "onnx",
        "--precision",
        ",".join(PRECISIONS),
        "--max-prompts",
        "2",
        "--heldout",
        str(heldout),
        "-o",
        str(out),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


def precision_folder(export: Path, precision: str) -> Path:
    manifest = json.loads((export / "export.json").read_text())
    (name,) = [f["file"] for f in manifest["files"] if f["level"] == f"onnx-{precision}"]
    return export / name


@pytest.fixture(scope="module")
def onnx_server(onnx_export: Path, tmp_path_factory: pytest.TempPathFactory):
    home = tmp_path_factory.mktemp("onnx-serve-home")
    args = ["--model", f"tiny={precision_folder(onnx_export, 'fp32')}"]
    with ServerProcess(args, env={"SLM_HOME": str(home)}) as server:
        yield server


def test_every_precision_is_a_loadable_genai_folder_with_tokenizer_and_template(
    onnx_export: Path,
) -> None:
    import onnxruntime_genai as og

    manifest = json.loads((onnx_export / "export.json").read_text())
    assert manifest["format"] == "onnx"
    files = {f["level"]: f for f in manifest["files"]}
    assert set(files) == {f"onnx-{p}" for p in PRECISIONS}
    for precision in PRECISIONS:
        folder = onnx_export / files[f"onnx-{precision}"]["file"]
        names = {p.name for p in folder.iterdir()}
        assert {"genai_config.json", "model.onnx", "tokenizer.json", "chat_template.jinja"} <= names
        assert files[f"onnx-{precision}"]["size_bytes"] == sum(
            p.stat().st_size for p in folder.iterdir()
        )
        og.Model(str(folder))  # the runtime loads it
    sizes = {p: files[f"onnx-{p}"]["size_bytes"] for p in PRECISIONS}
    # int8 vs fp32 is not compared: this tiny model is mostly its embedding table, which stays
    # fp32 for the Gather while the tied output MatMul gets its own quantized copy
    assert sizes["int4"] < sizes["int8"], sizes
    # every MatMul of the fp32 graph is weight-only quantized (MatMulNBits) at int8 and int4
    ops = {p: _op_counts(onnx_export / files[f"onnx-{p}"]["file"]) for p in PRECISIONS}
    matmuls = ops["fp32"]["MatMul"]
    assert matmuls > 0 and ops["int8"]["MatMulNBits"] == ops["int4"]["MatMulNBits"] == matmuls
    assert "MatMul" not in ops["int8"] and "MatMul" not in ops["int4"]
    assert manifest["recommended"] in {f["file"] for f in manifest["files"]}
    assert {"report.json", "report.html"} <= {p.name for p in onnx_export.iterdir()}


def _op_counts(folder: Path) -> Counter[str]:
    import onnx

    graph = onnx.load(str(folder / "model.onnx"), load_external_data=False).graph
    return Counter(node.op_type for node in graph.node)


def test_quant_eval_compares_each_precision_with_pytorch(onnx_export: Path) -> None:
    report = json.loads((onnx_export / "report.json").read_text())
    quant = report.get("quant_eval", report)
    levels = {lv["level"]: lv for lv in quant["levels"]}
    fp32 = levels["onnx-fp32"]
    assert fp32["kld"]["same_top1"] > 0.99 and fp32["kld"]["mean_kld"] < 1e-3, fp32["kld"]
    assert abs(fp32["kld"]["ppl_ratio"] - 1) < 1e-2
    assert fp32["rates"]["exact"] == 1.0  # greedy answers equal PyTorch's
    for precision in ("int8", "int4"):
        kld = levels[f"onnx-{precision}"]["kld"]
        assert kld["mean_kld"] > 0 and 0 < kld["same_top1"] <= 1, (precision, kld)


def test_fp32_greedy_tokens_equal_transformers(onnx_export: Path, tiny_model_dir: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from slmkit.export.onnx_eval import load_genai, prompt_ids, stream_tokens

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    ids = prompt_ids(tokenizer, [{"role": "user", "content": "Name three colours."}])
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    hf = model.generate(torch.tensor([ids]), max_new_tokens=8, do_sample=False)[0, len(ids) :]
    onnx = list(stream_tokens(load_genai(precision_folder(onnx_export, "fp32")), ids, 8))
    assert onnx == hf.tolist()


@pytest.mark.parametrize(
    ("args", "flag"),
    [
        (["--precision", "int8"], "--precisions"),  # --format gguf is the default
        (["--format", "onnx", "--quant", "q8_0"], "--quants"),
        (["--format", "onnx", "--precision", "int2"], "--precisions"),
        (["--format", "tflite"], "--format"),
    ],
)
def test_bad_format_precision_combinations_are_one_line_errors(
    args: list[str], flag: str, tiny_model_dir: Path, slm
) -> None:
    proc = slm("export", str(tiny_model_dir), *args)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and flag in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr


def test_onnx_engine_serves_stream_and_non_stream(onnx_server: ServerProcess) -> None:
    client = onnx_server.client()
    health = onnx_server.get("/health").json()
    assert [e["engine"] for e in health["engines"]] == ["onnx"]
    messages = [{"role": "user", "content": "hello"}]
    reply = client.chat.completions.create(
        model="tiny", messages=messages, max_tokens=8, temperature=0
    )
    text = reply.choices[0].message.content or ""
    assert reply.choices[0].finish_reason == "length" and reply.usage.completion_tokens == 8
    assert reply.usage.prompt_tokens > 0 and text
    stream = client.chat.completions.create(
        model="tiny",
        messages=messages,
        max_tokens=8,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    pieces = [c.choices[0].delta.content or "" for c in chunks if c.choices]
    assert len([p for p in pieces if p]) > 1 and "".join(pieces) == text
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 8
    cut = text.strip()[2:5]
    stopped = client.chat.completions.create(
        model="tiny", messages=messages, max_tokens=8, temperature=0, stop=[cut]
    )
    assert stopped.choices[0].finish_reason == "stop"
    assert stopped.choices[0].message.content == text[: text.find(cut)]


def test_engine_and_folder_mismatch_is_a_one_line_error(
    onnx_export: Path, tiny_model_dir: Path, slm
) -> None:
    folder = precision_folder(onnx_export, "int8")
    for ref, engine in ((folder, "llamacpp"), (tiny_model_dir, "onnx")):
        proc = slm("serve", str(ref), "--engine", engine, "--port", "1", timeout=120)
        assert proc.returncode == 2, proc.stderr
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and "onnx" in lines[0].lower(), proc.stderr


def test_slm_eval_compares_an_onnx_export_with_pytorch(
    onnx_export: Path, tiny_model_dir: Path, tmp_path: Path, slm
) -> None:
    data = tmp_path / "eval.jsonl"
    data.write_text(
        "\n".join(
            json.dumps({"prompt": p, "reference": "red", "must_include": ["red"]})
            for p in ("Name a colour.", "What colour is the sky?")
        )
        + "\n"
    )
    models = f"pt={tiny_model_dir},onnx={precision_folder(onnx_export, 'fp32')}"
    proc = slm(
        "eval", "-m", models, "-d", str(data), "--max-tokens", "6", "-o", str(tmp_path / "r")
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((tmp_path / "r" / "report.json").read_text())
    assert [(m["name"], m["engine"]) for m in report["models"]] == [
        ("pt", "transformers"),
        ("onnx", "onnx"),
    ]
    for item in report["items"]:  # fp32 ONNX answers exactly what PyTorch answers, greedy
        onnx, pt = item["answers"]["onnx"], item["answers"]["pt"]
        assert onnx["error"] is None and pt["error"] is None, (onnx, pt)
        assert onnx["text"] == pt["text"]
        assert onnx["completion_tokens"] == pt["completion_tokens"] > 0
