# GPU image: the image of the Dockerfile built with torch's CUDA build, plus vLLM; the `vllm`
# engine of `slm serve` launches `vllm serve` as a supervised child.
#   docker build --build-arg SLM_TORCH=cuda -t slmkit:cuda .
#   docker build -f deploy/gpu.Dockerfile -t slmkit:gpu .
ARG BASE_IMAGE=slmkit:cuda
FROM ${BASE_IMAGE}
ARG VLLM_VERSION=
ARG PIP_INDEX_URL
ARG PIP_EXTRA_INDEX_URL
USER root
RUN /opt/slmkit/.venv/bin/pip install --no-cache-dir "vllm${VLLM_VERSION:+==${VLLM_VERSION}}"
USER slm
