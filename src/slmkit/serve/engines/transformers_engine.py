"""`TransformersEngine`: in-process generation for unmerged adapters and HF folders.

One base model in memory, any number of LoRA adapters on it (chosen by model id). Requests go
into a queue; a worker thread takes up to `max_batch_size` compatible requests (same adapter and
sampling settings) and generates them together, streaming each row's tokens back.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from slmkit.serve.engines.base import Delta, EngineState
from slmkit.serve.engines.in_process import Job, SharedTokenizer, eos_ids, opened_text, relay
from slmkit.serve.engines.request import GenerationRequest
from slmkit.serve.engines.settings import TransformersSettings

BASE = "__base__"


@dataclass
class BatchCounts:
    """How many `generate` calls the worker made and how many requests they carried together."""

    runs: int = 0
    rows: int = 0
    largest: int = 0

    def add(self, size: int) -> None:
        self.runs, self.rows, self.largest = (
            self.runs + 1,
            self.rows + size,
            max(self.largest, size),
        )

    def to_json(self) -> dict[str, int]:
        return {"runs": self.runs, "rows": self.rows, "largest": self.largest}


@dataclass
class _Job(Job):
    adapter: str = BASE  # the adapter's model id, or BASE

    def signature(self) -> tuple[Any, ...]:
        r = self.request
        sampled = bool(r.temperature)
        seed = r.seed if r.seed is not None else None
        return (
            self.adapter,
            sampled,
            r.temperature if sampled else None,
            r.top_p if sampled else None,
            r.repeat_penalty,
            seed,
            id(self) if seed is not None else None,
        )


class TransformersEngine:
    """Serves one base model and its adapters; model ids map to an adapter or to the base."""

    kind = "transformers"

    def __init__(
        self, base_ref: Any, adapters: dict[str, Path | None], settings: TransformersSettings
    ) -> None:
        self.base_ref = base_ref
        self.adapters = adapters
        self.model_ids = list(adapters)
        self.settings = settings
        self._state: EngineState = "stopped"
        self._jobs: queue.Queue[_Job | None] = queue.Queue()
        self._worker: threading.Thread | None = None
        self.model: Any = None
        self.tokenizer: Any = None
        self.tokens: SharedTokenizer  # the tokenizer in turns (set on load)
        self._n_ctx: int | None = None
        self.batches = BatchCounts()

    @property
    def state(self) -> EngineState:
        return self._state

    @property
    def capacity(self) -> int:
        return self.settings.max_batch_size

    @property
    def restarts(self) -> int:
        return 0

    def context_size(self) -> int | None:
        return self._n_ctx

    async def start(self) -> None:
        self._state = "starting"
        await asyncio.to_thread(self._load)
        self._worker = threading.Thread(target=self._work, name="transformers-engine", daemon=True)
        self._worker.start()
        self._state = "ready"

    def _load(self) -> None:
        import torch

        from slmkit.models.load import load_model
        from slmkit.models.precision import generation_dtype

        device = self.settings.device
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        model, tokenizer = load_model(self.base_ref, dtype=self.settings.dtype, device=device)
        named = [(mid, path) for mid, path in self.adapters.items() if path is not None]
        if named:
            from peft import PeftModel

            first_id, first_path = named[0]
            model = PeftModel.from_pretrained(model, str(first_path), adapter_name=first_id)
            for mid, path in named[1:]:
                model.load_adapter(str(path), adapter_name=mid)
            if len(named) == len(self.adapters) and len({p for _, p in named}) == 1:
                # one adapter and no id asking for the bare base: fold it into the weights (in
                # the precision they loaded in), so a decoding step is the base's matmuls alone
                model = model.merge_and_unload()
            model.eval()
        loaded = str(model.dtype).removeprefix("torch.")
        wanted = generation_dtype(self.settings.dtype, loaded, str(model.device))
        if wanted != loaded:
            model = model.to(getattr(torch, wanted))
        tokenizer.padding_side = "left"
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        self.model, self.tokenizer = model, tokenizer
        self.tokens = SharedTokenizer(tokenizer)
        self._n_ctx = int(
            getattr(getattr(model, "config", None), "max_position_embeddings", 0) or 2048
        )

    async def stop(self) -> None:
        if self._worker is not None:
            self._jobs.put(None)
            await asyncio.to_thread(self._worker.join, 30)
        self._state = "stopped"

    async def health(self) -> dict[str, Any]:
        return {
            "id": ",".join(self.model_ids),
            "engine": self.kind,
            "state": self._state,
            "restarts": 0,
            "n_ctx": self._n_ctx,
            "dtype": None if self.model is None else str(self.model.dtype).removeprefix("torch."),
            "queued": self._jobs.qsize(),
            "batches": self.batches.to_json(),
        }

    async def count_prompt_tokens(self, request: GenerationRequest) -> int | None:
        return await self.tokens.count(request)

    async def generate(self, request: GenerationRequest) -> AsyncGenerator[Delta, None]:
        input_ids = await self.tokens.admit(request, self._state, self._n_ctx)
        adapter = request.model_id if self.adapters.get(request.model_id) is not None else BASE
        job = _Job(request, input_ids, asyncio.get_running_loop(), asyncio.Queue(), adapter=adapter)
        self._jobs.put(job)
        async for delta in relay(job, opened_text(self.tokenizer, request)):
            yield delta

    # -- worker thread ------------------------------------------------------------------------
    def _work(self) -> None:
        while (job := self._jobs.get()) is not None:
            batch = [job]
            pending: list[_Job] = []
            while len(batch) < self.settings.max_batch_size:
                try:
                    more = self._jobs.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    self._jobs.put(None)
                    break
                (batch if more.signature() == job.signature() else pending).append(more)
            for other in pending:
                self._jobs.put(other)
            live = [j for j in batch if not j.cancelled]
            if live:
                self.batches.add(len(live))
                self._run_batch(live)

    def _run_batch(self, batch: list[_Job]) -> None:
        try:
            self._generate_batch(batch)
        except Exception as exc:
            for job in batch:
                if not job.done:
                    job.fail(exc)

    def _generate_batch(self, batch: list[_Job]) -> None:
        import torch

        tok = self.tokenizer
        width = max(len(j.input_ids) for j in batch)
        pad = tok.pad_token_id
        ids = torch.tensor([[pad] * (width - len(j.input_ids)) + j.input_ids for j in batch])
        mask = torch.tensor(
            [[0] * (width - len(j.input_ids)) + [1] * len(j.input_ids) for j in batch]
        )
        first = batch[0].request
        kwargs: dict[str, Any] = {
            "max_new_tokens": max(j.request.max_tokens for j in batch),
            "pad_token_id": pad,
        }
        if first.temperature:
            kwargs.update(do_sample=True, temperature=first.temperature, top_p=first.top_p or 1.0)
        else:
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        if first.repeat_penalty:
            kwargs["repetition_penalty"] = first.repeat_penalty
        if first.seed is not None:
            torch.manual_seed(first.seed)
        streamer = _RowStreamer(batch, self.tokens, eos_ids(tok, self.model))
        from transformers import StoppingCriteriaList

        with torch.inference_mode(), self._adapter(batch[0].adapter):
            self.model.generate(
                input_ids=ids.to(self.model.device),
                attention_mask=mask.to(self.model.device),
                streamer=streamer,
                stopping_criteria=StoppingCriteriaList([streamer]),
                **kwargs,
            )
        streamer.finish_all()

    def _adapter(self, name: str) -> contextlib.AbstractContextManager[Any]:
        # a plain transformers model has set_adapter (its PEFT integration) but no disable_adapter:
        # only a PeftModel carries adapters to switch between
        if not hasattr(self.model, "disable_adapter"):
            return contextlib.nullcontext()
        if name == BASE:
            return self.model.disable_adapter()
        self.model.set_adapter(name)
        return contextlib.nullcontext()


class _RowStreamer:
    """A transformers streamer + stopping criterion that routes each batch row's tokens to its job."""

    def __init__(self, batch: list[_Job], tokens: SharedTokenizer, eos: set[int]) -> None:
        self.batch = batch
        self.tokens = tokens
        self.eos = eos
        self.prompt_seen = False

    def put(self, value: Any) -> None:
        if not self.prompt_seen:  # the first call carries the prompt
            self.prompt_seen = True
            return
        tokens = value.view(-1).tolist()
        for job, token in zip(self.batch, tokens, strict=False):
            if not job.done:
                self._advance(job, int(token))

    def _advance(self, job: _Job, token: int) -> None:
        if job.cancelled:
            job.done = True
            return
        reason = job.take(token, self.tokens, self.eos)
        if reason is not None:
            job.finish(reason)

    def finish_all(self) -> None:
        for job in self.batch:
            if not job.done:
                job.flush(self.tokens)
                job.finish("length")
            elif job.cancelled:
                job.emit(None)

    def end(self) -> None:
        pass

    def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
        import torch

        return torch.tensor(
            [job.done or job.cancelled for job in self.batch], device=input_ids.device
        )
