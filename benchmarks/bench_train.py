"""Training throughput: `slm train` SFT vs the naive seed script, and the effect of each choice.

Baseline (the seed article's way): HF Trainer, every sample padded to 512 tokens
(`padding="max_length"`), fp32, no packing. slmkit: assistant-only labels, length-grouped dynamic
padding, precision `auto`. Both train a LoRA (r=16, all-linear) on the embedded model with the demo
data for the same number of steps and batch size, each in its own process (peak RSS measured).
Throughput counts non-padding tokens only. Then one switch at a time: logits at every position
instead of only at the answer tokens, packing, bf16 autocast, gradient checkpointing.

    .venv/bin/python benchmarks/bench_train.py [--steps 8] [--batch 8]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from report import machine_line, write_section

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "examples" / "data" / "support_sft.jsonl"
VARIANTS = {
    "slm train (default: dynamic padding, length-grouped, precision auto)": [],
    "- answer-only logits (logits at every position)": ["train.answer_logits_only=false"],
    "+ packing": ["data.packing=true"],
    "+ bf16 autocast": ["train.precision=bf16"],
    "+ gradient checkpointing": ["train.gradient_checkpointing=true"],
}


def baseline_child(steps: int, batch: int) -> None:
    """The naive seed script, run in its own process; prints tokens/s as JSON."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig, get_peft_model
    from transformers import (
        AutoModelForCausalLM,
        AutoTokenizer,
        Trainer,
        TrainingArguments,
        set_seed,
    )

    from slmkit.models.embedded import ensure_embedded_model

    set_seed(0)
    path = ensure_embedded_model()
    tokenizer = AutoTokenizer.from_pretrained(path)
    rows = [json.loads(line) for line in DATA.read_text().splitlines() if line.strip()]
    texts = [tokenizer.apply_chat_template(r["messages"], tokenize=False) for r in rows][
        : steps * batch
    ]
    enc = tokenizer(texts, padding="max_length", truncation=True, max_length=512)
    labels = [
        [t if m else -100 for t, m in zip(ids, mask, strict=True)]
        for ids, mask in zip(enc["input_ids"], enc["attention_mask"], strict=True)
    ]
    dataset = Dataset.from_dict({**enc, "labels": labels})
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    model = get_peft_model(
        model,
        LoraConfig(
            r=16,
            lora_alpha=32,
            lora_dropout=0.05,
            target_modules="all-linear",
            task_type="CAUSAL_LM",
        ),
    )
    args = TrainingArguments(
        output_dir=tempfile.mkdtemp(),
        per_device_train_batch_size=batch,
        max_steps=steps,
        learning_rate=2e-4,
        use_cpu=True,
        report_to="none",
        save_strategy="no",
        logging_steps=steps,
        disable_tqdm=True,
    )
    trainer = Trainer(model=model, args=args, train_dataset=dataset)
    started = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - started
    real_tokens = sum(sum(m) for m in enc["attention_mask"][: steps * batch])
    print(json.dumps({"tokens_per_second": real_tokens / seconds, "seconds": seconds}))


def measure_isolated(args: list[str]) -> tuple[str, float]:
    """Run a child through a tiny wrapper so its own peak RSS is reported (not the max over all children)."""
    wrapper = (
        "import resource,subprocess,sys,json;p=subprocess.run(sys.argv[1:],capture_output=True,text=True);"
        "sys.stderr.write(p.stderr);print(p.stdout,end='');"
        "print(json.dumps({'peak_kib':resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}));"
        "sys.exit(p.returncode)"
    )
    proc = subprocess.run(
        [sys.executable, "-c", wrapper, *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        check=False,
    )
    if proc.returncode != 0:
        raise SystemExit(f"failed: {' '.join(args)}\n{proc.stderr[-3000:]}")
    *lines, last = proc.stdout.strip().splitlines()
    return "\n".join(lines), json.loads(last)["peak_kib"] / 1024**2


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--baseline-child", action="store_true", help=argparse.SUPPRESS)
    opts = parser.parse_args()
    if opts.baseline_child:
        baseline_child(opts.steps, opts.batch)
        return
    stdout, base_peak = measure_isolated(
        [
            sys.executable,
            __file__,
            "--baseline-child",
            "--steps",
            str(opts.steps),
            "--batch",
            str(opts.batch),
        ]
    )
    base = json.loads(stdout.strip().splitlines()[-1])
    print(
        f"baseline (pad to 512, fp32): {base['tokens_per_second']:.1f} tok/s, peak {base_peak:.2f} GiB",
        flush=True,
    )
    rows = [
        (
            "seed baseline: HF Trainer, padding=max_length 512, fp32, no packing",
            base["tokens_per_second"],
            base_peak,
        )
    ]
    with tempfile.TemporaryDirectory() as tmp:
        for index, (name, overrides) in enumerate(VARIANTS.items()):
            folder = Path(tmp) / f"v{index}"
            folder.mkdir()
            result = slm_variant_isolated(folder, overrides, opts.steps, opts.batch)
            print(
                f"{name}: {result['tokens_per_second']:.1f} tok/s, peak {result['peak_gib']:.2f} GiB",
                flush=True,
            )
            rows.append((name, result["tokens_per_second"], result["peak_gib"]))
    write_section("train", render(rows, opts.steps, opts.batch))


def slm_variant_isolated(
    folder: Path, overrides: list[str], steps: int, batch: int
) -> dict[str, float]:
    recipe = {
        "model": "default",
        "output_dir": str(folder / "run"),
        "data": {"train": [str(DATA)], "cutoff_len": 512},
        "lora": {"r": 16, "alpha": 32, "dropout": 0.05},
        "train": {
            "max_steps": steps,
            "batch_size": batch,
            "lr": 2e-4,
            "save_steps": 10_000,
            "logging_steps": steps,
            "report_to": [],
        },
    }
    path = folder / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    args = [sys.executable, "-m", "slmkit.cli", "train", str(path)]
    for text in overrides:
        args += ["--set", text]
    _, peak = measure_isolated(args)
    run = json.loads((folder / "run" / "diagnosis.json").read_text())["run"]
    return {"tokens_per_second": run["tokens_per_second"], "peak_gib": peak}


def render(rows: list[tuple[str, float, float]], steps: int, batch: int) -> str:
    base = rows[0][1]
    lines = [
        "## Training throughput (`benchmarks/bench_train.py`)",
        "",
        f"Machine: {machine_line()}. LoRA r=16 (all-linear) on the embedded SmolLM2-135M, demo SFT data, "
        f"{steps} steps x batch {batch}, each run in its own process. Tokens/s counts non-padding tokens.",
        "",
        "| setup | tokens/s | vs baseline | peak RSS |",
        "|---|---|---|---|",
    ]
    for name, rate, peak in rows:
        lines.append(f"| {name} | {rate:,.1f} | {rate / base:.2f}x | {peak:.2f} GiB |")
    lines += [
        "",
        "Each `+`/`-` row changes one setting of the `slm train` default. The default wins over the baseline by not",
        "computing padding (the demo samples average ~66 tokens; the baseline pads every one to 512), and by",
        "projecting onto the 49,152-token vocabulary only at the answer tokens, where the loss is (the `-` row",
        "computes logits at every position, as transformers does by default).",
        "On a CPU, packing loses: without flash-attention's variable-length kernels a packed batch is one",
        "long row whose attention is computed over its whole length with a block-diagonal mask, so it",
        "costs more compute and memory than the padding it saves (that is why it is off by default; on a",
        "GPU with flash-attention varlen kernels this cost goes away; not measured here). bf16 autocast on a CPU without native bf16",
        "matrix units is slower than fp32; gradient checkpointing trades speed for memory.",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
