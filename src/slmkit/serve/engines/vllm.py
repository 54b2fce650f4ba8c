"""`VllmEngine`: a supervised `vllm serve` child on CUDA machines where vLLM is installed."""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

import httpx

from slmkit.errors import DeviceError, ServeError
from slmkit.serve.engines.settings import VllmSettings
from slmkit.serve.engines.upstream import UpstreamEngine

# vLLM's `--max-lora-rank` takes only these values (its default, 16, covers ranks up to 16).
VLLM_LORA_RANKS = (8, 16, 32, 64, 128, 256, 320, 512)
VLLM_DEFAULT_LORA_RANK = 16


def vllm_available() -> str | None:
    """None when vLLM can run here, else the reason it cannot. vLLM pins its own torch, so it
    usually lives in an environment of its own with its `vllm` command on the PATH."""
    if importlib.util.find_spec("vllm") is None and shutil.which("vllm") is None:
        return "vLLM is not installed (a `vllm` command on the PATH, or pip install vllm)"
    try:
        import torch

        if not torch.cuda.is_available():
            return "vLLM needs a CUDA GPU and none is available"
    except ImportError:
        return "torch is not installed"
    return None


def lora_rank(model_id: str, adapter: Path) -> int:
    """The adapter's rank, after refusing what vLLM cannot load (DoRA, modules_to_save, bias)."""
    config_path = adapter / "adapter_config.json"
    try:
        config = json.loads(config_path.read_text())
    except (OSError, ValueError) as exc:
        raise ServeError(f"{config_path}: unreadable adapter config ({exc})") from exc
    unsupported = [
        what
        for what, present in (
            ("DoRA (use_dora)", config.get("use_dora")),
            ("modules_to_save", config.get("modules_to_save")),
            (f"bias={config.get('bias')!r}", config.get("bias", "none") != "none"),
        )
        if present
    ]
    rank = int(config.get("r") or 0)
    if rank > VLLM_LORA_RANKS[-1]:
        unsupported.append(f"rank {rank} > {VLLM_LORA_RANKS[-1]}")
    if unsupported:
        raise ServeError(
            f"engine 'vllm' for model {model_id!r}: vLLM cannot load the adapter {adapter} "
            f"({', '.join(unsupported)})",
            hint=f"merge it first (`slm merge {adapter.parent}`) and serve the merged folder, "
            "or use --engine transformers",
        )
    return rank


class VllmEngine(UpstreamEngine):
    """Serves an HF folder (or merged run) through `vllm serve` on a private port.

    With a LoRA adapter, the base is served under `<id>--base` and the adapter under the model id
    (`--enable-lora --lora-modules <id>=<adapter>`), so requests for the id get base + adapter.
    """

    kind = "vllm"

    def __init__(
        self,
        model_id: str,
        model_path: Path | str,
        settings: VllmSettings,
        *,
        adapter: Path | None = None,
        on_restart: Callable[[str], None] | None = None,
    ) -> None:
        reason = vllm_available()
        if reason is not None:
            raise DeviceError(
                f"engine 'vllm' for model {model_id!r}: {reason}",
                hint="use --engine llamacpp (GGUF) or --engine transformers",
            )
        rank = lora_rank(model_id, adapter) if adapter is not None else None
        super().__init__(model_id, start_timeout_s=settings.start_timeout_s, on_restart=on_restart)
        self.model_path = model_path
        self.settings = settings
        self.adapter = adapter
        self.rank = rank

    @property
    def capacity(self) -> int:
        return 256

    def command(self) -> list[str]:
        exe = shutil.which("vllm")
        base = [exe] if exe else [sys.executable, "-m", "vllm.entrypoints.cli.main"]
        cmd = [
            *base,
            "serve",
            str(self.model_path),
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
        ]
        return cmd + self._model_args() + list(self.settings.extra_args)

    def _model_args(self) -> list[str]:
        if self.adapter is None:
            return ["--served-model-name", self.model_id]
        args = [
            "--served-model-name",
            f"{self.model_id}--base",
            "--enable-lora",
            "--lora-modules",
            f"{self.model_id}={self.adapter}",
        ]
        if (
            self.rank is not None
            and self.rank > VLLM_DEFAULT_LORA_RANK
            and "--max-lora-rank" not in self.settings.extra_args
        ):
            fitting = next(r for r in VLLM_LORA_RANKS if r >= self.rank)
            args += ["--max-lora-rank", str(fitting)]
        return args

    async def read_context_size(self) -> int | None:
        try:
            models = (await self.client.get("/v1/models", timeout=5.0)).json()["data"]
            # LoRA cards carry no max_model_len; the base model's card does.
            return next(int(m["max_model_len"]) for m in models if m.get("max_model_len"))
        except (httpx.HTTPError, KeyError, StopIteration, ValueError, TypeError):
            return None
