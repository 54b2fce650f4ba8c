"""`OnnxEngine`: in-process ONNX Runtime GenAI generation for a `slm export --format onnx` folder.

One worker thread runs one generator at a time (the KV cache lives inside onnxruntime-genai's
`Generator`); further requests wait in the engine's queue, so `capacity` is 1. On a small CPU
box one stream already uses the cores; concurrent streams share them rather than add throughput
(see docs/benchmarks.md). The event loop only moves deltas.
"""

from __future__ import annotations

import asyncio
import json
import queue
import threading
from collections.abc import AsyncGenerator
from pathlib import Path
from typing import Any

from slmkit.serve.engines.base import Delta, EngineState
from slmkit.serve.engines.in_process import Job, SharedTokenizer, opened_text, relay
from slmkit.serve.engines.request import GenerationRequest


class OnnxEngine:
    """Serves one ONNX Runtime GenAI folder under one model id."""

    kind = "onnx"

    def __init__(self, model_id: str, folder: Path) -> None:
        self.model_id = model_id
        self.model_ids = [model_id]
        self.folder = folder
        self._state: EngineState = "stopped"
        self._jobs: queue.Queue[Job | None] = queue.Queue()
        self._worker: threading.Thread | None = None
        self.model: Any = None
        self.tokenizer: Any = None
        self.tokens: SharedTokenizer  # the tokenizer in turns (set on load)
        self._n_ctx: int | None = None
        self.generations = 0

    @property
    def state(self) -> EngineState:
        return self._state

    @property
    def capacity(self) -> int:
        return 1

    @property
    def restarts(self) -> int:
        return 0

    def context_size(self) -> int | None:
        return self._n_ctx

    async def start(self) -> None:
        self._state = "starting"
        await asyncio.to_thread(self._load)
        self._worker = threading.Thread(target=self._work, name="onnx-engine", daemon=True)
        self._worker.start()
        self._state = "ready"

    def _load(self) -> None:
        from transformers import AutoTokenizer

        from slmkit.export.onnx_eval import load_genai

        self.model = load_genai(self.folder)
        self.tokenizer = AutoTokenizer.from_pretrained(self.folder)
        self.tokens = SharedTokenizer(self.tokenizer)
        genai = json.loads((self.folder / "genai_config.json").read_text())
        self._n_ctx = int(genai["model"].get("context_length") or 2048)

    async def stop(self) -> None:
        if self._worker is not None:
            self._jobs.put(None)
            await asyncio.to_thread(self._worker.join, 30)
        self._state = "stopped"

    async def health(self) -> dict[str, Any]:
        return {
            "id": self.model_id,
            "engine": self.kind,
            "state": self._state,
            "restarts": 0,
            "n_ctx": self._n_ctx,
            "queued": self._jobs.qsize(),
            "generations": self.generations,
        }

    async def count_prompt_tokens(self, request: GenerationRequest) -> int | None:
        return await self.tokens.count(request)

    async def generate(self, request: GenerationRequest) -> AsyncGenerator[Delta, None]:
        input_ids = await self.tokens.admit(request, self._state, self._n_ctx)
        job = Job(request, input_ids, asyncio.get_running_loop(), asyncio.Queue())
        self._jobs.put(job)
        async for delta in relay(job, opened_text(self.tokenizer, request)):
            yield delta

    # -- worker thread ------------------------------------------------------------------------
    def _work(self) -> None:
        while (job := self._jobs.get()) is not None:
            if job.cancelled:
                continue
            self.generations += 1
            try:
                reason = self._run(job)
            except Exception as exc:
                job.fail(exc)
                continue
            job.finish(reason)

    def _run(self, job: Job) -> str:
        """Generate until EOS, a stop string, max_tokens or cancellation; returns the finish reason."""
        from slmkit.export.onnx_eval import stream_tokens

        r = job.request
        room = (self._n_ctx or 2048) - len(job.input_ids)
        limit = min(r.max_tokens, room)
        eos = {self.tokenizer.eos_token_id}  # the GenAI folder's config holds only this one
        tokens = stream_tokens(
            self.model,
            job.input_ids,
            limit,
            temperature=r.temperature or 0.0,
            top_p=r.top_p or 1.0,
            seed=r.seed,
        )
        for token in tokens:
            if job.cancelled:
                return "stop"
            reason = job.take(token, self.tokens, eos)
            if reason is not None:
                return reason
        job.flush(self.tokens)  # out of context room
        return "length"
