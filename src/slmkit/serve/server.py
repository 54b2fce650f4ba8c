"""`serve(config)`: resolve the models, build their engines, start them, run uvicorn until stopped."""

from __future__ import annotations

import asyncio
import contextlib
import math
import signal
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from slmkit.child_process import port_problem
from slmkit.console import info
from slmkit.errors import ServeError
from slmkit.models import ResolvedModel, resolve_model
from slmkit.serve.config import ServeConfig
from slmkit.serve.engines.base import Engine
from slmkit.serve.engines.settings import UpstreamSettings
from slmkit.serve.model_config import Deployment, ModelEntry

if TYPE_CHECKING:
    from slmkit.serve.gateway import Companion


def model_entry(text: str) -> ModelEntry:
    """`NAME=REF` or a bare `REF` (its id: `default`, or the file/folder name)."""
    if "=" in text:
        model_id, _, ref = text.partition("=")
        return ModelEntry(id=model_id.strip(), ref=ref.strip())
    if text.startswith("@"):  # a registry version or alias: served under its name
        return ModelEntry(id=text[1:], ref=text)
    resolved = resolve_model(text, prepare=False)
    return ModelEntry(id=resolved.name, ref=text)


def choose_engine(entry: ModelEntry | Deployment, resolved: ResolvedModel, default: str) -> str:
    """`auto`: llama.cpp for anything with a GGUF, onnx for an ONNX export folder, transformers
    otherwise (adapters, HF folders). A reward model (it scores, it does not write) is refused."""
    from slmkit.models.load import refuse_reward_model

    refuse_reward_model(resolved)
    engine = entry.engine if entry.engine != "auto" else default
    if (engine == "onnx") != (resolved.kind == "onnx") and engine != "auto":
        raise ServeError(
            f"model {resolved.ref!r} is {'an ONNX folder' if resolved.kind == 'onnx' else 'not an ONNX folder'}"
            f" and cannot be served by the {engine} engine",
            hint="use --engine onnx for `slm export --format onnx` folders (or --engine auto)",
        )
    if engine != "auto":
        return engine
    if resolved.kind == "onnx":
        return "onnx"
    return "llamacpp" if resolved.gguf is not None and resolved.adapter is None else "transformers"


def build_engines(config: ServeConfig) -> dict[str, Engine]:
    """One engine per GGUF model (llama-server child); one transformers engine per base model;
    a `RemoteEngine` per upstream; a `ReplicaPool` per model with replicas or deployments."""
    if not config.models:
        raise ServeError(
            "no model to serve", hint="give a model: `slm serve default` or `--model NAME=REF`"
        )
    engines: dict[str, Engine] = {}
    transformers_groups: dict[str, tuple[ResolvedModel, dict[str, Path | None]]] = {}
    for index, entry in enumerate(config.models):
        if entry.upstream is not None:
            engines[entry.id] = _remote_engine(entry.id, entry.upstream, f"models.{index}.upstream")
            continue
        if entry.pooled:
            engines[entry.id] = _replica_pool(entry, index, config)
            continue
        if entry.follows_alias:
            engines[entry.id] = _alias_engine(entry, config)
            continue
        if entry.ab is not None:
            engines[entry.id] = _ab_split(entry, index, config)
            continue
        assert entry.ref is not None  # ModelEntry's validator: ref, upstream or deployments
        resolved = resolve_model(entry.ref, prepare=False)
        kind = choose_engine(entry, resolved, config.engine)
        if kind == "llamacpp":
            engines[entry.id] = _llamacpp_engine(entry, resolved, config)
        elif kind == "onnx":
            engines[entry.id] = _onnx_engine(entry.id, resolved)
        elif kind == "vllm":
            engines[entry.id] = _vllm_engine(entry.id, entry.ref, config)
        else:
            base = (
                resolved.base
                if resolved.adapter is not None and resolved.base is not None
                else resolved
            )
            key = str(base.ref) + "|" + str(base.path)
            group = transformers_groups.setdefault(key, (base, {}))
            group[1][entry.id] = resolved.adapter
    if transformers_groups:
        from slmkit.serve.engines.transformers_engine import TransformersEngine

        for base, adapters in transformers_groups.values():
            if base.kind == "embedded" or isinstance(base.path, str):
                # the embedded GGUF becomes an HF folder once; a hub model not yet cached is
                # downloaded now (or, offline, refused in one line)
                base = resolve_model(base.ref)
            engine = TransformersEngine(base, adapters, config.transformers)
            for model_id in adapters:
                engines[model_id] = engine
    return engines


def _alias_engine(entry: ModelEntry, config: ServeConfig) -> Engine:
    """`ref: "@support"`: an engine that follows the alias, building each version's engine."""
    from slmkit.registry.store import Registry, Version
    from slmkit.serve.engines.alias import AliasEngine

    def build(version: Version) -> Engine:  # each version's engine is built like an A/B arm's
        local = ModelEntry(
            id=entry.id, ref=version.path, engine=entry.engine, draft_model=entry.draft_model
        )
        return _arm_engine(local, config)

    assert entry.ref is not None  # follows_alias: ref is `@NAME`
    retire_after_s = 2 * config.limits.request_timeout_s  # every request on it has timed out
    shared = config.state.database_url()  # gateways on one database follow the same aliases
    return AliasEngine(
        entry.id,
        entry.ref,
        build,
        registry=Registry(shared) if shared else None,
        reload_s=entry.reload_s,
        retire_after_s=retire_after_s,
    )


def _remote_engine(model_id: str, settings: UpstreamSettings, field: str) -> Engine:
    from slmkit.serve.engines.remote import RemoteEngine, read_api_key

    return RemoteEngine(model_id, settings, read_api_key(settings, field))


def _replica_pool(entry: ModelEntry, index: int, config: ServeConfig) -> Engine:
    """`replicas` copies of a local `ref`, or the listed `deployments`, behind one balancer."""
    from slmkit.serve.engines.replicas import ReplicaPool

    field = f"models.{index}"
    deployments = entry.deployments or [
        Deployment(ref=entry.ref, engine=entry.engine) for _ in range(entry.replicas)
    ]
    engines: list[tuple[str, Engine]] = []
    for number, deployment in enumerate(deployments):
        where = f"{field}.deployments.{number}" if entry.deployments else f"{field}.ref"
        if deployment.upstream is not None:
            engine = _remote_engine(entry.id, deployment.upstream, where + ".upstream")
        else:
            engine = _replica_engine(entry, deployment, where, config)
        engines.append((f"{engine.kind}-{number}", engine))
    return ReplicaPool(
        entry.id,
        engines,
        strategy=entry.strategy,
        cooldown_s=entry.cooldown_s,
        allowed_fails=entry.allowed_fails,
        retries=entry.retries,
    )


def _ab_split(entry: ModelEntry, index: int, config: ServeConfig) -> Engine:
    """An A/B split: each arm is built like a local model of its own, under the split's id. An arm
    without a `name` is named by its registry version (`@support` -> `v3`), else its reference."""
    from slmkit.serve.engines.ab import ABEngine, Arm

    assert entry.ab is not None
    arms: list[Arm] = []
    for arm in entry.ab:
        local = ModelEntry(
            id=entry.id, ref=arm.ref, engine=entry.engine, draft_model=entry.draft_model
        )
        resolved = resolve_model(arm.ref, prepare=False)
        name = arm.name or str(resolved.extra.get("registry_version") or arm.version)
        twin = next((a for a in arms if a.name == name), None)
        if twin is not None:
            raise ServeError(
                f"models.{index}.ab: arms {twin.ref!r} and {arm.ref!r} are both version {name}",
                hint="split between different versions, or give each arm its own `name`",
            )
        arms.append(Arm(name, arm.weight, _arm_engine(local, config, resolved), arm.ref))
    return ABEngine(entry.id, arms, sticky=entry.sticky)


def _arm_engine(
    local: ModelEntry, config: ServeConfig, resolved: ResolvedModel | None = None
) -> Engine:
    """One arm's own engine: a llama-server or vLLM child, or an in-process transformers model."""
    assert local.ref is not None
    resolved = resolved or resolve_model(local.ref, prepare=False)
    kind = choose_engine(local, resolved, config.engine)
    if kind == "llamacpp":
        return _llamacpp_engine(local, resolved, config)
    if kind == "onnx":
        return _onnx_engine(local.id, resolved)
    if kind == "vllm":
        return _vllm_engine(local.id, local.ref, config)
    from slmkit.serve.engines.transformers_engine import TransformersEngine

    base = resolved.base if resolved.adapter is not None and resolved.base is not None else resolved
    if base.kind == "embedded":
        base = resolve_model(base.ref)  # convert the embedded GGUF to an HF folder once
    return TransformersEngine(base, {local.id: resolved.adapter}, config.transformers)


def _replica_engine(
    entry: ModelEntry, deployment: Deployment, where: str, config: ServeConfig
) -> Engine:
    """A local replica: its own llama-server (or vLLM) child; the in-process engine cannot be one."""
    assert deployment.ref is not None  # Deployment's validator: ref or upstream
    resolved = resolve_model(deployment.ref, prepare=False)
    kind = choose_engine(deployment, resolved, config.engine)
    if kind == "llamacpp":
        return _llamacpp_engine(entry, resolved, config, deployment.ref)
    if kind == "vllm":
        return _vllm_engine(entry.id, deployment.ref, config)
    raise ServeError(
        f"{where}: a replica runs as its own llama-server or vLLM process; {deployment.ref!r} "
        "would be served in-process by transformers",
        hint="export it to GGUF first (`slm export`), or set `engine: vllm` on a CUDA machine",
    )


def _llamacpp_engine(
    entry: ModelEntry, resolved: ResolvedModel, config: ServeConfig, ref: str | None = None
) -> Engine:
    from slmkit.serve.engines.llamacpp import LlamaServerEngine

    if resolved.gguf is None:
        raise ServeError(
            f"model {entry.id!r} ({ref or entry.ref}) has no GGUF file for the llama.cpp engine",
            hint="export it first with `slm export`, or use --engine transformers",
        )
    draft = None
    if entry.draft_model:
        draft = resolve_model(entry.draft_model, prepare=False).gguf
        if draft is None:
            raise ServeError(f"draft model {entry.draft_model!r} for {entry.id!r} is not a GGUF")
    return LlamaServerEngine(entry.id, resolved.gguf, config.llamacpp, draft_model=draft)


def _onnx_engine(model_id: str, resolved: ResolvedModel) -> Engine:
    from slmkit.serve.engines.onnx import OnnxEngine

    return OnnxEngine(model_id, Path(resolved.path))


def _vllm_engine(model_id: str, ref: str, config: ServeConfig) -> Engine:
    """A run with a LoRA adapter is served as base + adapter (vLLM's LoRA support), never bare."""
    from slmkit.serve.engines.vllm import VllmEngine

    resolved = resolve_model(ref)
    return VllmEngine(model_id, resolved.hf_path, config.vllm, adapter=resolved.adapter)


def check_port_free(host: str, port: int) -> None:
    problem = port_problem(host, port) if port else None
    if problem:
        raise ServeError(
            f"cannot listen on {host}:{port}: {problem}",
            hint="choose another --port or stop the program using it",
        )


def load_embedder(config: ServeConfig) -> Any:
    if not config.embeddings.enabled:
        return None
    from slmkit.models.embedder import MiniLMEmbedder

    return MiniLMEmbedder.load()


def serve(
    config: ServeConfig,
    on_ready: Callable[[str], None] | None = None,
    companions: Sequence[Companion] = (),
) -> None:
    """Run the gateway until SIGINT/SIGTERM; engines are stopped (terminate, then kill) on the way
    out. `companions` start and stop with it."""
    check_port_free(config.host, config.port)
    from slmkit.serve.gateway import Gateway

    embedder = load_embedder(config)
    gateway = Gateway(config, build_engines(config), embedder=embedder, companions=companions)
    asyncio.run(_run(gateway, on_ready))


def _uvicorn_server(config: Any) -> Any:
    import uvicorn

    class GatewayServer(uvicorn.Server):
        """uvicorn re-raises SIGTERM/SIGINT after its shutdown, which would kill us before the
        engines are stopped; here the signal only asks for shutdown and `serve()` cleans up."""

        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            if threading.current_thread() is not threading.main_thread():
                yield
                return
            previous = {
                sig: signal.signal(sig, self.handle_exit) for sig in (signal.SIGINT, signal.SIGTERM)
            }
            try:
                yield
            finally:
                for sig, handler in previous.items():
                    signal.signal(sig, handler)

    return GatewayServer(config)


def graceful_shutdown_s(config: ServeConfig) -> int:
    """Seconds uvicorn lets in-flight requests finish after SIGTERM: each request has its own
    deadline, so after `limits.request_timeout_s` none is left (docs/deploy.md adds the engines'
    10 s terminate-then-kill and a pod's preStop to this for `terminationGracePeriodSeconds`)."""
    return math.ceil(config.limits.request_timeout_s)


async def _run(gateway: Any, on_ready: Callable[[str], None] | None) -> None:
    import uvicorn

    from slmkit.serve.app import create_app

    config = gateway.config
    app = create_app(gateway, manage_engines=False)  # a missing scrape token fails before loading
    await gateway.start()
    try:
        server = _uvicorn_server(
            uvicorn.Config(
                app,
                host=config.host,
                port=config.port,
                log_level="warning",
                access_log=False,
                lifespan="off",
                timeout_graceful_shutdown=graceful_shutdown_s(config),
            )
        )
        url = f"http://{config.host}:{config.port}/v1"
        models = ", ".join(f"{mid} ({engine.kind})" for mid, engine in gateway.engines.items())
        info(f"serving {models} on {url}")
        if on_ready is not None:
            on_ready(url)
        await server.serve()
    finally:
        await gateway.stop()
