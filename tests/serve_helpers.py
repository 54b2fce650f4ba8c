"""A `ServerProcess` harness for the real `slm serve`: free loopback port, `/health` polling that
notices a dead process, terminate -> kill on the way out. Plus small helpers for serve tests."""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from slmkit.child_process import free_port

REPO = Path(__file__).resolve().parents[1]


ON_CI = os.environ.get("CI", "").lower() in ("1", "true")


def tools_ready() -> bool:
    from slmkit.paths import tools_dir

    return (tools_dir() / "bin" / "llama-server").is_file()


# Serving tests skip where llama-server was never built (a partial local set-up), but under
# CI=true they run and fail: a broken build must not land green.
needs_llama_server = pytest.mark.skipif(
    not tools_ready() and not ON_CI, reason="llama-server is not built (scripts/setup.sh)"
)


def import_or_skip(name: str) -> Any:
    """`pytest.importorskip` locally; under CI=true a missing test dependency fails instead."""
    return importlib.import_module(name) if ON_CI else pytest.importorskip(name)


class ServerProcess:
    """`with ServerProcess(["default"], ...) as server: server.client().models.list()`."""

    def __init__(
        self,
        args: list[str],
        *,
        api_key: str | None = None,
        env: dict[str, str] | None = None,
        config: dict[str, Any] | None = None,
        start_timeout_s: float = 180.0,
    ) -> None:
        self.port = free_port()
        self.args = list(args)
        self.api_key = api_key
        self.env = {**os.environ, **(env or {})}
        self.start_timeout_s = start_timeout_s
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None
        self._log = tempfile.NamedTemporaryFile(  # noqa: SIM115
            prefix="slm-serve-", suffix=".log", delete=False
        )
        self._config_path: Path | None = None
        if config is not None:
            import yaml

            self._config_path = Path(self._log.name).with_suffix(".yaml")
            self._config_path.write_text(yaml.safe_dump(config))

    def command(self) -> list[str]:
        cmd = [sys.executable, "-m", "slmkit.cli", "serve", *self.args, "--port", str(self.port)]
        if self.api_key:
            cmd += ["--api-key", self.api_key]
        if self._config_path is not None:
            cmd += ["--config", str(self._config_path)]
        return cmd

    def __enter__(self) -> ServerProcess:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        self.proc = subprocess.Popen(
            self.command(), stdout=self._log, stderr=subprocess.STDOUT, env=self.env, cwd=REPO
        )
        deadline = time.monotonic() + self.start_timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"slm serve exited with {self.proc.returncode}:\n{self.log()}")
            try:
                if httpx.get(self.base_url + "/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"slm serve not healthy after {self.start_timeout_s} s:\n{self.log()}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)

    def log(self) -> str:
        return Path(self._log.name).read_text(errors="replace")[-5000:]

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    def client(self, **kwargs: Any) -> Any:
        import openai

        return openai.OpenAI(
            base_url=self.base_url + "/v1",
            api_key=self.api_key or "unused",
            max_retries=0,
            timeout=120,
            **kwargs,
        )

    def get(self, path: str, **kwargs: Any) -> httpx.Response:
        return httpx.get(self.base_url + path, headers=self.headers(), timeout=30, **kwargs)

    def post(
        self, path: str, body: Any = None, *, content: bytes | None = None, **kwargs: Any
    ) -> httpx.Response:
        headers = {**self.headers(), **kwargs.pop("headers", {})}
        if content is None:
            content = json.dumps(body).encode()
            headers.setdefault("Content-Type", "application/json")
        return httpx.post(
            self.base_url + path, content=content, headers=headers, timeout=120, **kwargs
        )

    def wait_ready(self, model: str, timeout_s: float = 120) -> None:
        """Until /health says `model`'s engine is ready again (after a test killed its child)."""
        deadline = time.monotonic() + timeout_s
        while True:
            engines = {e["id"]: e for e in self.get("/health").json()["engines"]}
            if engines.get(model, {}).get("state") == "ready":
                return
            assert time.monotonic() < deadline, f"{model} not ready again: {engines.get(model)}"
            time.sleep(0.2)

    def engine_children(self) -> list[Any]:
        """The engine subprocesses (llama-server) of this gateway."""
        import psutil

        assert self.proc is not None
        return [
            c
            for c in psutil.Process(self.proc.pid).children(recursive=True)
            if "llama-server" in c.name()
        ]

    def metric(self, name: str, **labels: str) -> float:
        """Sum of a Prometheus sample's values whose labels include `labels`."""
        total = 0.0
        for line in self.get("/metrics").text.splitlines():
            if not line.startswith(name):
                continue
            head, _, value = line.rpartition(" ")
            metric_name = head.split("{", 1)[0]
            if metric_name != name:
                continue
            if all(f'{k}="{v}"' in head for k, v in labels.items()):
                total += float(value)
        return total


def write_adapter_run(base_dir: Path, out: Path, *, seed: int = 0, r: int = 4) -> Path:
    """A run folder by the run-folder contract: manifest.json with base_model + adapter/ (random LoRA)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    # train_helpers imports conftest: not at module level, benchmarks import this module
    from train_helpers import write_run_manifest

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base_dir)
    peft_model = get_peft_model(
        model,
        LoraConfig(r=r, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False),
    )
    out.mkdir(parents=True, exist_ok=True)
    peft_model.save_pretrained(out / "adapter")
    AutoTokenizer.from_pretrained(base_dir).save_pretrained(out / "adapter")
    write_run_manifest(out, str(base_dir))
    return out


class MemoryEngine:
    """The parts of an `Engine` that an in-memory test engine does not vary: always ready, no
    tokenizer, no context limit; subclasses write `generate` (and count `calls`)."""

    kind = "fake"

    def __init__(self, model_id: str = "m", capacity: int = 2) -> None:
        self.model_ids = [model_id]
        self.state = "ready"
        self.capacity = capacity
        self.restarts = 0
        self.calls = 0

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def health(self) -> dict[str, Any]:
        return {"id": self.model_ids[0], "engine": self.kind, "state": self.state}

    async def count_prompt_tokens(self, request: Any) -> int | None:
        return None

    def context_size(self) -> int | None:
        return None


class ScriptedEngine(MemoryEngine):
    """An in-memory engine that says `words` one delta each, waiting `delay_s` before each, and
    raises `error` instead of the word at index `fail_at` (0: before anything is said)."""

    def __init__(
        self,
        model_id: str = "m",
        words: tuple[str, ...] = ("Hello", " there"),
        *,
        fail_at: int | None = None,
        error: Exception | None = None,
        delay_s: float = 0.0,
        capacity: int = 2,
    ) -> None:
        super().__init__(model_id, capacity)
        self.words, self.fail_at, self.error, self.delay_s = words, fail_at, error, delay_s

    async def generate(self, request: Any) -> Any:
        import asyncio

        from slmkit.serve.engines.base import Delta

        self.calls += 1
        for i, word in enumerate(self.words):
            if i == self.fail_at and self.error is not None:
                raise self.error
            if self.delay_s:
                await asyncio.sleep(self.delay_s)
            yield Delta(text=word)
        yield Delta(finish_reason="stop", prompt_tokens=3, completion_tokens=len(self.words))


def decoding(child: Any) -> bool:
    """Whether a llama-server child has a slot that has already generated tokens (its /slots)."""
    import httpx

    cmd = child.cmdline()
    port = cmd[cmd.index("--port") + 1]
    try:
        slots = httpx.get(f"http://127.0.0.1:{port}/slots", timeout=2).json()
    except (httpx.HTTPError, ValueError):
        return False
    return any(
        s.get("is_processing") and any(t.get("n_decoded", 0) > 0 for t in s.get("next_token", []))
        for s in slots
    )
