"""Export benchmark: time of each `slm export` step on the embedded 135M model, and its quant-eval table.

Source: a run folder with a freshly initialised LoRA (B = 0, so the merged model equals the base
and the quant table is the embedded model's own). Baselines measured in the same run: the f16
GGUF (size and quality reference) and the 2-minute target for the whole export.

    python benchmarks/bench_export.py [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_serve import server_env
from report import machine_line, write_section

TARGET_S = 120.0


def make_identity_lora_run(base_dir: Path, run_dir: Path) -> Path:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32),
        LoraConfig(r=16, lora_alpha=32, target_modules="all-linear"),
    )
    model.save_pretrained(run_dir / "adapter")
    AutoTokenizer.from_pretrained(base_dir).save_pretrained(run_dir / "adapter")
    (run_dir / "manifest.json").write_text(
        json.dumps({"base_model": "default", "method": "sft", "finetuning_type": "lora"})
    )
    return run_dir


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="Fewer prompts and held-out chunks.")
    args = parser.parse_args()
    from slmkit.export.config import ExportConfig
    from slmkit.export.pipeline import export_model
    from slmkit.export.report import quant_table_markdown
    from slmkit.models.embedded import ensure_embedded_model
    from slmkit.tools import tool_version

    eval_prompts = Path(__file__).resolve().parents[1] / "examples" / "data" / "support_eval.jsonl"
    prompts = eval_prompts if eval_prompts.is_file() else None
    # 1) the target: the default export (3 levels, default quant eval) against 2 minutes
    timed_cfg = ExportConfig(prompts=prompts, force=True)
    # 2) the quality table over more levels, "lower on request" included
    table_cfg = ExportConfig(
        quants=["q8_0", "q6_k", "q5_k_m", "q4_k_m", "q3_k_m", "q2_k"]
        if not args.quick
        else ["q8_0", "q4_k_m"],
        prompts=prompts,
        max_prompts=6 if args.quick else 12,
        ppl_chunks=4 if args.quick else ExportConfig().ppl_chunks,
        force=True,
    )
    with tempfile.TemporaryDirectory(prefix="bench-export-") as tmp:
        os.environ.update(server_env(Path(tmp) / "home"))  # versions go to a private registry
        run = make_identity_lora_run(ensure_embedded_model(), Path(tmp) / "smollm2-lora")
        start = time.perf_counter()
        timed = export_model(run, Path(tmp) / "export-default", timed_cfg)
        total = time.perf_counter() - start
        result = export_model(run, Path(tmp) / "export-levels", table_cfg)
    assert result.quant_eval is not None and timed.quant_eval is not None
    steps = "\n".join(
        f"| {name} | {secs:.1f} | {secs / total:.0%} | {secs / TARGET_S:.2f}× |"
        for name, secs in timed.timings_s.items()
    )
    levels = ", ".join(table_cfg.quants)
    markdown = f"""## Export (`slm export`, embedded SmolLM2-135M + LoRA)

Machine: {machine_line()}; llama.cpp {tool_version("llama-quantize")}.

### Time of the default export (the 2-minute target)

`slm export RUN` with its defaults: merge, convert to f16, quantize to
{", ".join(timed_cfg.quants)}, parity gate, quant eval ({len(timed.quant_eval.prompts)} eval prompts,
{timed_cfg.ppl_chunks} chunks of {timed_cfg.ppl_ctx} tokens of held-out text), {timed_cfg.threads} llama.cpp thread(s).
The merged model's parity answers are checked with one forward pass per prompt against the
base+adapter answers (decoded again only where they differ).

| step | seconds | share of the export | of the 2-minute target |
|---|---|---|---|
{steps}
| **whole export** | **{total:.1f}** | 100% | **{total / TARGET_S:.2f}×** |

### Quant eval of the embedded model (against its f16 GGUF)

Levels: {levels}; {len(result.quant_eval.prompts)} eval prompts, {result.quant_eval.ppl_ctx}-token chunks of
`{Path(result.quant_eval.heldout).name}` (up to {table_cfg.ppl_chunks} chunks).

{quant_table_markdown(result.quant_eval)}

Recommended: `{result.recommended}`. Notes from the tool:

{chr(10).join(f"- {n}" for n in result.quant_eval.notes)}

A 135M model is expected to break at aggressive levels (Q3_K and below, often Q4_K_M too): every
weight carries more of the model's knowledge than in a 7-8B model, and SmolLM2's 576-wide rows are
not multiples of the 256-value K-quant blocks, so some tensors fall back to other types. The
table above is the tool saying so rather than hiding it; pick the recommended level, not the smallest.
"""
    print(markdown)
    write_section("export", markdown)


if __name__ == "__main__":
    main()
