"""Big models on a CPU machine: peak memory of `slm train` (LoRA), of the merge (in memory vs
shard by shard) and of `slm export`, on a random-init model of the Qwen2.5-1.5B shape with Qwen's
real tokenizer, against what `slm estimate` predicts for the same settings.

Each stage runs in its own process; the peak is the largest resident set of its whole process tree
(the converter and llama-quantize included), sampled every 0.2 s. Baseline for the merge: the
in-memory merge (base + adapter in fp32), against which the streamed merge is compared.

    .venv/bin/python benchmarks/bench_families.py [--shape qwen2.5-1.5b] [--steps 2]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from report import finish, machine_line

REPO = Path(__file__).resolve().parents[1]
GIB = 2**30
DATA = REPO / "examples" / "data" / "support_sft.jsonl"


def build_model(folder: Path, shape: str) -> Path:
    """A random-init bf16 model of `shape`, sharded like the hub's, with Qwen2's tokenizer."""
    import torch
    from transformers import AutoModelForCausalLM

    from families import family_dir
    from slmkit.models.shapes import shape_config

    tokenizer_dir = family_dir("qwen2.5")
    config = shape_config(shape)
    config.dtype = "bfloat16"
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model.save_pretrained(folder, max_shard_size="1GB")
    for path in tokenizer_dir.iterdir():
        if path.name.startswith(("tokenizer", "chat_template")):
            shutil.copy2(path, folder / path.name)
    return folder


def peak_of(cmd: list[str], env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run `cmd`; its seconds and the peak resident memory of its process tree."""
    import psutil

    started = time.perf_counter()
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})}
    )
    root = psutil.Process(proc.pid)
    peak = 0
    while proc.poll() is None:
        try:
            tree = [root, *root.children(recursive=True)]
            peak = max(peak, sum(p.memory_info().rss for p in tree if p.is_running()))
        except psutil.Error:
            pass
        time.sleep(0.2)
    output = proc.stdout.read().decode(errors="replace") if proc.stdout else ""
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:6])} failed ({proc.returncode}):\n{output[-3000:]}")
    return {"seconds": round(time.perf_counter() - started, 1), "peak_bytes": peak, "log": output}


def python(code: str) -> list[str]:
    return [sys.executable, "-c", code]


def run(shape: str, steps: int, workdir: Path) -> dict[str, Any]:
    from slmkit.train.estimate import estimate_memory, total

    base = build_model(workdir / "base", shape)
    on_disk = sum(p.stat().st_size for p in base.glob("*.safetensors"))
    recipe = {
        "model": str(base),
        "output_dir": str(workdir / "run"),
        "data": {"train": [str(DATA)], "cutoff_len": 256, "max_samples": 4 * steps},
        "lora": {"r": 16, "alpha": 32},
        "train": {"max_steps": steps, "batch_size": 1, "save_steps": 1000, "report_to": []},
    }
    (workdir / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    slm = [sys.executable, "-m", "slmkit.cli"]
    stages: dict[str, Any] = {}
    stages["train"] = peak_of([*slm, "train", str(workdir / "recipe.yaml")])
    run_dir = workdir / "run"
    merge = "from slmkit.export.merge import merge_adapter; merge_adapter({!r}, __import__('pathlib').Path({!r}), dtype='float32', stream={})"
    stages["merge in memory"] = peak_of(
        python(merge.format(str(run_dir), str(workdir / "merged-mem"), False))
    )
    stages["merge shard by shard"] = peak_of(
        python(merge.format(str(run_dir), str(workdir / "merged-stream"), True))
    )
    shutil.rmtree(workdir / "merged-mem", ignore_errors=True)
    shutil.rmtree(workdir / "merged-stream", ignore_errors=True)
    stages["export (merge + GGUF f16 + q8_0)"] = peak_of(
        [
            *slm,
            "export",
            str(run_dir),
            "--quant",
            "q8_0",
            "--skip-eval",
            "--merge-dtype",
            "float32",
        ]
    )
    tokens_line = next(
        (ln for ln in stages["train"]["log"].splitlines() if "tokens/s" in ln and "steps," in ln),
        "",
    )
    estimate = estimate_memory(shape, method="lora", batch=1, cutoff=256, lora_r=16)
    for stage in stages.values():
        stage.pop("log", None)
    return {
        "machine": machine_line(),
        "shape": shape,
        "params": estimate.shape.params,
        "weights_on_disk": on_disk,
        "stages": stages,
        "train_line": tokens_line.strip(),
        "estimate_train_fp32": total(estimate.training["fp32"]),
        "estimate_infer_bf16": total(estimate.inference["bf16"]),
    }


def summarize(results: dict[str, Any]) -> str:
    stages = results["stages"]
    train = stages["train"]["peak_bytes"]
    memory, streamed = (
        stages["merge in memory"]["peak_bytes"],
        stages["merge shard by shard"]["peak_bytes"],
    )
    lines = [
        f"## Big models on a CPU (`benchmarks/bench_families.py`, random-init {results['shape']})",
        "",
        f"Measured on: {results['machine']}. {results['params'] / 1e9:.2f}B parameters, "
        f"{results['weights_on_disk'] / GIB:.2f} GiB of bf16 safetensors in 1 GB shards, Qwen2's "
        "tokenizer; LoRA r 16, batch 1 x 256 tokens; merges write fp32 (random weights are too flat for the saved-folder check in 16 bits). Peak = largest resident set of the stage's "
        "process tree.",
        "",
        "| stage | peak memory (GiB) | time (s) |",
        "|---|---|---|",
    ]
    for name, stage in stages.items():
        lines.append(f"| {name} | {stage['peak_bytes'] / GIB:.2f} | {stage['seconds']} |")
    estimate = results["estimate_train_fp32"]
    lines += [
        "",
        f"- `slm estimate --model {results['shape']} --batch 1 --cutoff 256`: training (fp32 on a CPU) "
        f"{estimate / GIB:.2f} GiB, measured {train / GIB:.2f} GiB: measured/estimate "
        f"**{train / estimate:.2f}**.",
        f"- Merge shard by shard vs in memory: peak **{streamed / memory:.2f}x** "
        f"({streamed / GIB:.2f} vs {memory / GIB:.2f} GiB).",
    ]
    speed = re.search(r"([\d.]+) tokens/s", results.get("train_line", ""))
    if speed:
        lines.append(
            f"- LoRA training speed on this CPU, fp32: {speed.group(1)} tokens/s (a 1.5B model "
            "trains on a CPU only in small trials; train it on a GPU)."
        )
    lines.append(
        "- `slm export` merged in memory here (the base fits twice in this machine's memory); it "
        "switches to the shard-by-shard merge by itself when it would not."
    )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="qwen2.5-1.5b")
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--from-json", type=Path, help="rewrite the section from saved results")
    args = parser.parse_args()
    if args.from_json:
        results = json.loads(args.from_json.read_text())
    else:
        from slmkit.paths import models_cache_dir, tools_dir

        os.environ.setdefault("SLM_TOOLS_DIR", str(tools_dir()))  # shared, read-only
        os.environ.setdefault("SLM_MODEL_CACHE", str(models_cache_dir()))
        with tempfile.TemporaryDirectory(prefix="bench-families-") as tmp:
            os.environ["SLM_HOME"] = str(Path(tmp) / "home")  # runs and versions stay apart
            results = run(args.shape, args.steps, Path(tmp))
    finish("families", results, summarize)


if __name__ == "__main__":
    main()
