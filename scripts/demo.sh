#!/usr/bin/env bash
# make demo: the whole journey on the embedded model and the bundled demo data.
#   validate -> LoRA SFT -> DPO -> export (GGUF, q8_0/q4_k_m, quant eval) -> eval -> report
# DEMO_ARGS="--quick" make demo   runs the ~3-minute version; extra args go to `slm run`.
set -euo pipefail
cd "$(dirname "$0")/.."
start=$(date +%s)
# shellcheck disable=SC2086
.venv/bin/slm run recipes/demo.yaml ${DEMO_ARGS:-}
echo "[demo] finished in $(( $(date +%s) - start ))s"
