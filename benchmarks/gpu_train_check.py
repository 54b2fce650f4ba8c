"""GPU check of the training paths on a SmolLM2-135M-shaped model (random weights: speed and
memory only, not quality): LoRA fp32, LoRA bf16 (`precision: auto` on CUDA) and QLoRA (4-bit
nf4 base, bf16 compute), same data, steps and batch. Prints a markdown table.

    python benchmarks/gpu_train_check.py --config CONFIG.json --tokenizer DIR [--steps 30]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from slmkit.recipe import Recipe
    from slmkit.train.run import train

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--tokenizer", type=Path, required=True)
    parser.add_argument("--steps", type=int, default=30)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = Path(tmp) / "model"
        config = LlamaConfig(**json.loads(args.config.read_text()))
        torch.manual_seed(0)
        LlamaForCausalLM(config).save_pretrained(model_dir)
        AutoTokenizer.from_pretrained(args.tokenizer).save_pretrained(model_dir)
        for name, finetuning, precision in (
            ("LoRA fp32", "lora", "fp32"),
            ("LoRA bf16 (auto)", "lora", "auto"),
            ("QLoRA nf4 + bf16", "qlora", "auto"),
        ):
            recipe = Recipe.model_validate(
                {
                    "model": str(model_dir),
                    "finetuning": finetuning,
                    "output_dir": f"{tmp}/{finetuning}-{precision}",
                    "data": {
                        "train": [str(REPO / "examples/data/support_sft.jsonl")],
                        "cutoff_len": 256,
                    },
                    "train": {
                        "max_steps": args.steps,
                        "batch_size": 8,
                        "precision": precision,
                        "save_steps": 1000,
                        "report_to": [],
                        "logging_steps": 5,
                    },
                }
            )
            torch.cuda.reset_peak_memory_stats()
            start = time.perf_counter()
            result = train(recipe, REPO)
            seconds = time.perf_counter() - start
            rows.append(
                (
                    name,
                    result.tokens_per_second or 0.0,
                    torch.cuda.max_memory_allocated() / 2**20,
                    seconds,
                    result.final_loss,
                )
            )
    print(
        f"GPU: {torch.cuda.get_device_name()}, torch {torch.__version__}; {args.steps} steps x batch 8, "
        "SmolLM2-135M shape, random weights, demo SFT data"
    )
    print("| setup | tokens/s | vs LoRA fp32 | peak GPU memory | wall s | final loss |")
    print("|---|---|---|---|---|---|")
    for name, tps, mem, secs, loss in rows:
        print(
            f"| {name} | {tps:,.0f} | {tps / rows[0][1]:.2f}x | {mem:,.0f} MiB | {secs:.1f} | {loss:.3f} |"
        )


if __name__ == "__main__":
    main()
