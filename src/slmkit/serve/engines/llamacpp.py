"""`LlamaServerEngine`: one supervised `llama-server` per GGUF (parallel slots, continuous batching)."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from slmkit import child_process
from slmkit.errors import ServeError
from slmkit.export.llama_server import template_args, template_kwargs
from slmkit.models.messages import prepare_messages
from slmkit.serve.engines.request import GenerationRequest
from slmkit.serve.engines.settings import LlamaCppSettings
from slmkit.serve.engines.upstream import UpstreamEngine
from slmkit.tools import llama_tool, threads_setting


class LlamaServerEngine(UpstreamEngine):
    """Serves one GGUF file through a private llama-server child."""

    kind = "llamacpp"

    def __init__(
        self,
        model_id: str,
        gguf: Path,
        settings: LlamaCppSettings,
        *,
        draft_model: Path | None = None,
        on_restart: Callable[[str], None] | None = None,
    ) -> None:
        super().__init__(
            model_id,
            start_timeout_s=settings.start_timeout_s,
            health_interval_s=settings.health_interval_s,
            max_restarts=settings.max_restarts,
            on_restart=on_restart,
        )
        self.gguf = gguf
        self.settings = settings
        self.draft_model = draft_model
        self.binary = llama_tool("llama-server")  # fails now, with the set-up hint, if not built
        self.chat_template: str | None = None  # the GGUF's, read from /props once started

    @property
    def capacity(self) -> int:
        return self.settings.parallel

    def command(self) -> list[str]:
        s = self.settings
        cmd = [
            str(self.binary),
            "-m",
            str(self.gguf),
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "-c",
            str(s.ctx_size),
            "-np",
            str(s.parallel),
            "-t",
            str(s.threads or threads_setting() or os.cpu_count() or 1),
            "--jinja",
            *template_args(template_kwargs(self.gguf)),  # render as training rendered
            "--reasoning-format",
            "none",  # the text as generated: the gateway splits reasoning for every engine alike
            "--no-webui",
            "--slots",
            "--metrics",
            "-a",
            self.model_id,
        ]
        if s.gpu_layers is not None:
            cmd += ["-ngl", str(s.gpu_layers)]
        if self.draft_model is not None:
            cmd += ["-md", str(self.draft_model)]
        return cmd + list(s.extra_args)

    async def warm_up(self) -> None:
        """Decode one token: a build whose kernels this CPU refuses (AMX on a VM that advertises it)
        starts and answers /health, then dies on its first decode."""
        try:
            await self.client.post("/completion", json={"prompt": "Hi", "n_predict": 1}, timeout=60)
            return
        except httpx.HTTPError:  # the connection broke: see whether the server died with it
            code = (
                await asyncio.to_thread(child_process.wait_exit, self.proc) if self.proc else None
            )
        if code is None:
            return  # alive: the first request will tell
        await self._terminate()
        raise ServeError(
            child_process.with_log(
                f"llama-server for model {self.model_id!r} {child_process.describe_exit(code)} "
                "on its first decode",
                self.log_tail(),
            ),
            hint=child_process.crash_hint(code) or None,
        )

    async def start(self) -> None:
        await super().start()
        try:
            template = (await self.client.get("/props", timeout=5.0)).json().get("chat_template")
        except (httpx.HTTPError, ValueError, AttributeError):
            template = None
        self.chat_template = template if isinstance(template, str) and template else None

    def prompt_messages(self, request: GenerationRequest) -> list[dict[str, Any]] | None:
        """Chat messages as the GGUF's template can render them, the way training renders them:
        with a template that ignores `tools`, the tool schemas go in the system prompt and earlier
        tool calls become JSON text (else llama-server drops the tools without a word)."""
        if request.messages is None or self.chat_template is None:
            return request.messages
        return prepare_messages(
            request.messages, self.chat_template, request.passthrough.get("tools")
        )

    async def read_context_size(self) -> int | None:
        """Context per slot (llama-server splits `-c` between the `-np` slots)."""
        try:
            props = (await self.client.get("/props", timeout=5.0)).json()
            return int(props["default_generation_settings"]["n_ctx"])
        except (httpx.HTTPError, KeyError, ValueError, TypeError):
            return self.settings.ctx_size // self.settings.parallel

    def upstream_payload(self, request: GenerationRequest) -> dict[str, Any]:
        payload = super().upstream_payload(request)
        payload["cache_prompt"] = True
        if request.messages is not None:
            payload["messages"] = self.prompt_messages(request)
        if request.repeat_penalty is not None:
            payload["repeat_penalty"] = request.repeat_penalty
        return payload

    async def count_prompt_tokens(self, request: GenerationRequest) -> int | None:
        """Render the chat template and tokenize, both inside llama-server (its own template)."""
        self._require_ready()
        try:
            if request.messages is not None:
                body = {"messages": self.prompt_messages(request)}
                if request.passthrough.get("tools"):
                    body["tools"] = request.passthrough["tools"]
                prompt = (await self.client.post("/apply-template", json=body)).json()["prompt"]
            else:
                prompt = request.prompt
            tokens = await self.client.post(
                "/tokenize", json={"content": prompt, "add_special": True}
            )
            return len(tokens.json()["tokens"])
        except (httpx.HTTPError, KeyError, ValueError):
            return None

    async def busy_slots(self) -> int | None:
        try:
            slots = (await self.client.get("/slots", timeout=2.0)).json()
            return sum(1 for slot in slots if slot.get("is_processing"))
        except (httpx.HTTPError, ValueError, TypeError, AttributeError):
            return None

    async def health(self) -> dict[str, Any]:
        report = await super().health()
        report.update(
            slots=self.settings.parallel,
            slots_busy=await self.busy_slots() if self.alive() else None,
        )
        return report
