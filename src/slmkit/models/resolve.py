"""Resolve any model reference a user can type into one `ResolvedModel`.

References: `default` / `smollm2-135m` (embedded), a local Hugging Face folder, a local
`.gguf` file, an export folder (GGUF files + `export.json`), a run folder of `slm train`
(base + adapter, or full weights), a registry version `@v3` or alias `@support`, or a
Hugging Face hub id (`org/name`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from slmkit.errors import ModelNotFoundError
from slmkit.models import embedded
from slmkit.models.hub import parse_hub_ref, resolve_hub

ModelKind = Literal["embedded", "hf", "gguf", "run", "hub", "onnx"]
RUN_MANIFEST = "manifest.json"
EXPORT_MANIFEST = "export.json"
ONNX_CONFIG = "genai_config.json"  # an ONNX Runtime GenAI folder (`slm export --format onnx`)


@dataclass
class ResolvedModel:
    """A model reference turned into local paths.

    `path` is what transformers loads (an HF folder, or the hub id for `hub`); for `gguf` it is
    the file. A run folder with an adapter has `base` (the resolved base) and `adapter`.
    """

    ref: str
    kind: ModelKind
    path: Path | str
    name: str
    base: ResolvedModel | None = None
    adapter: Path | None = None
    gguf: Path | None = None  # a GGUF that llama.cpp can serve directly, when one exists
    run_dir: Path | None = None
    extra: dict[str, object] = field(default_factory=dict)

    @property
    def hf_path(self) -> Path | str:
        """What `from_pretrained` takes for the weights (the base for an adapter run)."""
        if self.kind == "run" and self.base is not None:
            return self.base.hf_path
        return self.path


def available_models() -> list[tuple[str, str]]:
    """(name, description) of the names `resolve_model` knows without a path."""
    state = "cached" if embedded.is_cached() else "converted on first use"
    return [
        ("default", f"SmolLM2-135M-Instruct, embedded ({state})"),
        (embedded.EMBEDDED_NAME, "alias of default"),
    ]


def resolve_model(ref: str | Path, *, prepare: bool = True) -> ResolvedModel:
    """Turn a reference into a `ResolvedModel`; unknown references raise with what is available.

    With `prepare=False` the embedded model is not converted (its cache path is still returned).
    """
    text = str(ref).strip()
    if not text:
        raise ModelNotFoundError("empty model reference", hint=_known_hint())
    if text.lower() in embedded.EMBEDDED_ALIASES:
        return _resolve_embedded(prepare)
    if text.startswith("@"):
        return _resolve_registered(text, prepare)
    path = Path(text).expanduser()
    if path.exists():
        return _resolve_path(text, path, prepare)
    if _looks_like_path(text):
        raise ModelNotFoundError(f"model path {text!r} does not exist", hint=_known_hint())
    hub_ref = parse_hub_ref(text)
    if hub_ref is not None:
        folder = resolve_hub(hub_ref, prepare=prepare)
        name = hub_ref.repo_id.split("/")[-1].lower()
        extra: dict[str, object] = {"repo_id": hub_ref.repo_id, "revision": hub_ref.revision}
        return ResolvedModel(ref=text, kind="hub", path=folder, name=name, extra=extra)
    raise ModelNotFoundError(f"unknown model {text!r}", hint=_known_hint())


def _resolve_registered(text: str, prepare: bool) -> ResolvedModel:
    """`@v3` (a registry version) or `@support` (an alias): the version's path, resolved."""
    from slmkit.registry.store import Registry

    version = Registry().resolve(text)
    if not Path(version.path).exists():
        raise ModelNotFoundError(
            f"{text} is version {version.id}, whose path {version.path} no longer exists"
        )
    resolved = _resolve_path(version.path, Path(version.path), prepare)
    resolved.ref = text
    resolved.extra["registry_version"] = version.id
    return resolved


def _known_hint() -> str:
    names = ", ".join(name for name, _ in available_models())
    return f"available: {names}; or a local HF folder, a .gguf file, a run or export folder, @VERSION or @ALIAS of `slm models versions`, or a hub id org/name"


def _looks_like_path(text: str) -> bool:
    return (
        text.startswith((".", "/", "~"))
        or text.endswith((".gguf", ".safetensors"))
        or text.split("@", 1)[0].count("/") > 1
    )


def _resolve_embedded(prepare: bool) -> ResolvedModel:
    folder = embedded.ensure_embedded_model() if prepare else embedded.embedded_cache_path()
    try:
        gguf: Path | None = embedded.embedded_gguf_path()
    except ModelNotFoundError:
        gguf = None
    return ResolvedModel(ref="default", kind="embedded", path=folder, name="default", gguf=gguf)


def _resolve_path(text: str, path: Path, prepare: bool) -> ResolvedModel:
    path = path.resolve()
    if path.is_file():
        if path.suffix != ".gguf":
            raise ModelNotFoundError(
                f"{text}: a model file must be a .gguf; for safetensors give the folder"
            )
        return ResolvedModel(ref=text, kind="gguf", path=path, name=path.stem.lower(), gguf=path)
    if (path / RUN_MANIFEST).is_file():
        return _resolve_run(text, path, prepare)
    if (path / ONNX_CONFIG).is_file():
        return ResolvedModel(ref=text, kind="onnx", path=path, name=path.name.lower())
    if (path / EXPORT_MANIFEST).is_file() or (
        list(path.glob("*.gguf")) and not (path / "config.json").exists()
    ):
        return _resolve_export(text, path)
    if (path / "config.json").is_file():
        return ResolvedModel(ref=text, kind="hf", path=path, name=path.name.lower())
    raise ModelNotFoundError(
        f"{text}: folder is not a model (no config.json, {RUN_MANIFEST}, {EXPORT_MANIFEST} or .gguf inside)"
    )


def _resolve_run(text: str, path: Path, prepare: bool) -> ResolvedModel:
    try:
        manifest = json.loads((path / RUN_MANIFEST).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelNotFoundError(f"{path / RUN_MANIFEST}: unreadable run manifest ({exc})") from exc
    name = path.name.lower()
    if (path / "model" / "config.json").is_file():  # full fine-tune: plain weights
        return ResolvedModel(
            ref=text,
            kind="run",
            path=path / "model",
            name=name,
            run_dir=path,
            extra={"manifest": manifest},
        )
    adapter = path / "adapter"
    if not (adapter / "adapter_config.json").is_file():
        raise ModelNotFoundError(
            f"{text}: run folder has neither adapter/ nor model/ (training not finished?)"
        )
    base_ref = manifest.get("base_model")
    if not isinstance(base_ref, str):
        raise ModelNotFoundError(f"{path / RUN_MANIFEST}: field 'base_model' is missing")
    base = resolve_model(base_ref, prepare=prepare)
    return ResolvedModel(
        ref=text,
        kind="run",
        path=path,
        name=name,
        base=base,
        adapter=adapter,
        run_dir=path,
        extra={"manifest": manifest},
    )


def _resolve_export(text: str, path: Path) -> ResolvedModel:
    chosen: Path | None = None
    manifest_path = path / EXPORT_MANIFEST
    if manifest_path.is_file():
        try:
            rec = json.loads(manifest_path.read_text()).get("recommended")
        except (OSError, json.JSONDecodeError) as exc:
            raise ModelNotFoundError(
                f"{manifest_path}: unreadable export manifest ({exc})"
            ) from exc
        if isinstance(rec, str) and (path / rec / ONNX_CONFIG).is_file():
            return ResolvedModel(ref=text, kind="onnx", path=path / rec, name=path.name.lower())
        if isinstance(rec, str) and (path / rec).is_file():
            chosen = path / rec
    if chosen is None:
        ggufs = sorted(path.glob("*.gguf"))
        if len(ggufs) != 1:
            raise ModelNotFoundError(
                f"{text}: export folder has {len(ggufs)} .gguf files and no recommendation; name the file"
            )
        chosen = ggufs[0]
    return ResolvedModel(ref=text, kind="gguf", path=chosen, name=path.name.lower(), gguf=chosen)
