# GPU image: the image of the Dockerfile built with torch's CUDA build (set-up's SLM_TORCH switch,
# the same one scripts/setup.sh reads), plus vLLM in an environment of its own; the `vllm` engine
# of `slm serve` launches `vllm serve` as a supervised child.
#   docker build --build-arg SLM_TORCH=cuda -t slmkit:cuda .
#   docker build -f deploy/gpu.Dockerfile -t slmkit:gpu .
# vLLM pins its own torch and transformers (docs/models.md), so it cannot share slmkit's venv: it
# lives in /opt/vllm with its `vllm` command on the PATH. VLLM_VERSION is pinned: a new vLLM is a
# deliberate upgrade (--build-arg VLLM_VERSION=...), never whatever was newest at build time.
ARG BASE_IMAGE=slmkit:cuda
FROM ${BASE_IMAGE}
ARG VLLM_VERSION=0.33.0
ARG PIP_INDEX_URL
ARG PIP_EXTRA_INDEX_URL
ARG PIP_FIND_LINKS
ARG PIP_CERT
USER root
# Triton (under vLLM and torch.compile) compiles its launchers with a C compiler at run time,
# against Python's headers; python3-venv for vLLM's own environment.
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc libc6-dev python3-dev python3-venv \
    && rm -rf /var/lib/apt/lists/*
RUN python3 -m venv /opt/vllm \
    && /opt/vllm/bin/pip install --no-cache-dir "vllm==${VLLM_VERSION}" \
    && ln -s /opt/vllm/bin/vllm /usr/local/bin/vllm \
    && /opt/vllm/bin/python -c "import importlib.metadata as m; print('vllm', m.version('vllm'))"
ENV VLLM_NO_USAGE_STATS=1
USER slm
