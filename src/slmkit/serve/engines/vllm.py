"""`VllmEngine`: a supervised `vllm serve` child on CUDA machines where vLLM is installed."""

from __future__ import annotations

import importlib.util
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

import httpx

from slmkit.errors import DeviceError
from slmkit.serve.config import VllmSettings
from slmkit.serve.engines.upstream import UpstreamEngine


def vllm_available() -> str | None:
    """None when vLLM can run here, else the reason it cannot."""
    if importlib.util.find_spec("vllm") is None:
        return "vLLM is not installed (pip install vllm on a CUDA machine)"
    try:
        import torch

        if not torch.cuda.is_available():
            return "vLLM needs a CUDA GPU and none is available"
    except ImportError:
        return "torch is not installed"
    return None


class VllmEngine(UpstreamEngine):
    """Serves an HF folder (or merged run) through `vllm serve` on a private port."""

    kind = "vllm"

    def __init__(
        self,
        model_id: str,
        model_path: Path | str,
        settings: VllmSettings,
        on_restart: Callable[[str], None] | None = None,
    ) -> None:
        reason = vllm_available()
        if reason is not None:
            raise DeviceError(
                f"engine 'vllm' for model {model_id!r}: {reason}",
                hint="use --engine llamacpp (GGUF) or --engine transformers",
            )
        super().__init__(model_id, start_timeout_s=settings.start_timeout_s, on_restart=on_restart)
        self.model_path = model_path
        self.settings = settings

    @property
    def capacity(self) -> int:
        return 256

    def command(self) -> list[str]:
        exe = shutil.which("vllm")
        base = [exe] if exe else [sys.executable, "-m", "vllm.entrypoints.cli.main"]
        return [
            *base,
            "serve",
            str(self.model_path),
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--served-model-name",
            self.model_id,
            *self.settings.extra_args,
        ]

    async def read_context_size(self) -> int | None:
        try:
            models = (await self.client.get("/v1/models", timeout=5.0)).json()
            return int(models["data"][0]["max_model_len"])
        except (httpx.HTTPError, KeyError, IndexError, ValueError, TypeError):
            return None
