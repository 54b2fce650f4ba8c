# CPU image of the slmkit gateway: `slm serve` with llama.cpp's tools built from the pinned source
# and the embedded model baked in, so `default` is served with no network at run time.
#
#   docker build -t slmkit:cpu .
#   docker run -p 127.0.0.1:8000:8000 -e SLM_APP_KEY=sk-app -e SLM_METRICS_TOKEN=tok-metrics slmkit:cpu
#
# The set-up is scripts/setup.sh, the same script a checkout runs (one set-up path). It builds
# llama.cpp decode-checked (src/slmkit/tools_build.py); SLM_LLAMA_PORTABLE=1 makes that the
# portable AVX2 build (SSE4.2 as the fallback), so the image runs on other x86-64 nodes than the
# one that built it (--build-arg SLM_LLAMA_PORTABLE=0: tuned to the build CPU). torch is set-up's
# SLM_TORCH switch: `cpu` here (the image's engines are CPU ones; `--build-arg SLM_TORCH=cuda` for
# the GPU image's base), its wheel taken from SLM_TORCH_INDEX. Build arguments PIP_INDEX_URL /
# PIP_EXTRA_INDEX_URL / PIP_FIND_LINKS point pip at a mirror, PIP_CERT at a CA bundle for a TLS
# proxy (see docs/deploy.md).
ARG BASE_IMAGE=debian:bookworm-slim

FROM ${BASE_IMAGE} AS build
RUN apt-get update \
    && apt-get install -y --no-install-recommends \
        python3 python3-venv python3-dev build-essential cmake ca-certificates \
    && rm -rf /var/lib/apt/lists/*
RUN useradd --create-home --uid 10001 slm \
    && mkdir -p /opt/slmkit /opt/slm /var/lib/slm \
    && chown slm:slm /opt/slmkit /opt/slm /var/lib/slm
# Tools and model cache outside SLM_HOME: SLM_HOME is the writable volume (audit DB) at run time.
ENV SLM_HOME=/var/lib/slm \
    SLM_TOOLS_DIR=/opt/slm/tools \
    SLM_MODEL_CACHE=/opt/slm/models
USER slm
WORKDIR /opt/slmkit
COPY --chown=slm:slm pyproject.toml README.md ./
COPY --chown=slm:slm scripts ./scripts
COPY --chown=slm:slm src ./src
ARG PIP_INDEX_URL
ARG PIP_EXTRA_INDEX_URL
ARG PIP_FIND_LINKS
ARG PIP_CERT
ARG SLM_LLAMA_PORTABLE=1
ARG SLM_TORCH=cpu
ARG SLM_TORCH_INDEX
# As the non-root user: the set-up's optional chromium step (browser tests) is skipped.
RUN bash scripts/setup.sh

FROM ${BASE_IMAGE}
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 libgomp1 ca-certificates \
    && rm -rf /var/lib/apt/lists/*
RUN useradd --create-home --uid 10001 slm \
    && mkdir -p /var/lib/slm /etc/slm \
    && chown slm:slm /var/lib/slm
COPY --from=build /opt/slmkit /opt/slmkit
COPY --from=build /opt/slm /opt/slm
COPY deploy/serve.yaml /etc/slm/serve.yaml
# The tools' RUNPATH names the build folder of the build stage, which is not copied: the shared
# libraries they need lie beside them in bin/.
ENV PATH=/opt/slmkit/.venv/bin:$PATH \
    LD_LIBRARY_PATH=/opt/slm/tools/bin \
    SLM_HOME=/var/lib/slm \
    SLM_TOOLS_DIR=/opt/slm/tools \
    SLM_MODEL_CACHE=/opt/slm/models \
    HF_HUB_OFFLINE=1
USER slm
WORKDIR /var/lib/slm
VOLUME ["/var/lib/slm"]
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python3", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/health', timeout=4).status != 200)"]
ENTRYPOINT ["slm"]
CMD ["serve", "--config", "/etc/slm/serve.yaml"]
