# GPU image: the CPU image (Dockerfile) plus vLLM, whose wheels bring their own CUDA torch; the
# `vllm` engine of `slm serve` launches `vllm serve` as a supervised child.
#   docker build -t slmkit:cpu . && docker build -f deploy/gpu.Dockerfile -t slmkit:gpu .
ARG BASE_IMAGE=slmkit:cpu
FROM ${BASE_IMAGE}
ARG VLLM_VERSION=
ARG PIP_INDEX_URL
ARG PIP_EXTRA_INDEX_URL
USER root
RUN /opt/slmkit/.venv/bin/pip install --no-cache-dir "vllm${VLLM_VERSION:+==${VLLM_VERSION}}"
USER slm
