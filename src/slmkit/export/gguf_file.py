"""HF folder -> GGUF with llama.cpp's own converter, and a check of the result's metadata.

The check compares the GGUF with the folder it came from: chat template (the training one),
EOS/BOS ids, context length, architecture and depth. Any mismatch is a `GgufCheckError` that
says how to fix it, because a GGUF that lost its template or EOS "works" but answers badly.
"""

from __future__ import annotations

import contextlib
import json
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from slmkit.errors import ToolMissingError
from slmkit.export.errors import ExportError, GgufCheckError
from slmkit.paths import tools_dir
from slmkit.tools import SETUP_HINT, run_converter

# HF model_type -> GGUF general.architecture, where they differ
ARCH_ALIASES = {
    "mistral": "llama",
    "gemma3_text": "gemma3",
    "gemma4_text": "gemma4",
    "qwen3_moe": "qwen3moe",
    "qwen2_moe": "qwen2moe",
}


def convert_to_gguf(hf_dir: Path, out_file: Path, outtype: str = "f16") -> Path:
    """Run `convert_hf_to_gguf.py` on `hf_dir`; returns `out_file`."""
    out_file.parent.mkdir(parents=True, exist_ok=True)
    with conversion_source(hf_dir) as source:
        proc = run_converter([str(source), "--outfile", str(out_file), "--outtype", outtype])
    if "No module named 'conversion'" in proc.stderr:
        raise ToolMissingError(
            f"llama.cpp's converter is installed without its conversion/ package ({tools_dir()})",
            hint=SETUP_HINT,
        )
    if proc.returncode != 0 or not out_file.is_file():
        tail = [ln for ln in (proc.stderr + proc.stdout).strip().splitlines() if ln.strip()][-3:]
        raise ExportError(
            f"convert_hf_to_gguf.py failed on {hf_dir}: {' | '.join(tail) or 'no output'}",
            hint="the architecture may be unsupported by the pinned llama.cpp; see `slm export --debug`",
        )
    return out_file


@contextlib.contextmanager
def conversion_source(hf_dir: Path) -> Iterator[Path]:
    """`hf_dir`, or a folder of links to it whose `tokenizer_config.json` says to add BOS exactly
    when the chat template writes one. Training renders the template and adds no special tokens,
    so a GGUF that adds BOS to a template without one (Phi-3.5's vocabulary says to) would serve
    other tokens than were trained; llama-server drops a template's own BOS text when it adds it."""
    config_path = hf_dir / "tokenizer_config.json"
    try:
        config = json.loads(config_path.read_text())
    except (OSError, ValueError):
        yield hf_dir
        return
    wanted = template_writes_bos(hf_dir, config)
    if wanted is None or config.get("add_bos_token") == wanted:
        yield hf_dir
        return
    with tempfile.TemporaryDirectory(prefix="slm-convert-") as tmp:
        folder = Path(tmp)
        for path in hf_dir.iterdir():
            (folder / path.name).symlink_to(path.resolve())
        (folder / "tokenizer_config.json").unlink()
        (folder / "tokenizer_config.json").write_text(
            json.dumps({**config, "add_bos_token": wanted, "add_eos_token": False}, indent=2)
        )
        yield folder


def template_writes_bos(hf_dir: Path, config: dict[str, Any]) -> bool | None:
    """Whether the folder's chat template starts its prompts with the BOS token (None: no template)."""
    from slmkit.models.templates import render_plain

    template = config.get("chat_template")
    if (hf_dir / "chat_template.jinja").is_file():
        template = (hf_dir / "chat_template.jinja").read_text()
    if not isinstance(template, str) or not template:
        return None
    bos = config.get("bos_token")
    bos = bos.get("content") if isinstance(bos, dict) else bos
    if not bos:
        return False
    try:
        text = render_plain(
            template,
            [{"role": "user", "content": "Hi"}],
            generation_prompt=True,
            special_tokens={"bos_token": bos, "eos_token": "</eos>"},
        )
    except Exception:
        return None
    return text.startswith(bos)


def read_metadata(gguf_path: Path, *, arrays: bool = False) -> dict[str, Any]:
    """All key/value metadata of a GGUF file. Arrays (the vocabulary, merges, scores) are given as
    their length unless `arrays` is set. Parsed directly: gguf-py's reader builds an object per
    array item, ~20 s for a 150k-token vocabulary."""
    import mmap
    import struct

    scalar = {
        0: "B",
        1: "b",
        2: "H",
        3: "h",
        4: "I",
        5: "i",
        6: "f",
        7: "?",
        10: "Q",
        11: "q",
        12: "d",
    }
    with open(gguf_path, "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as buf:
        if buf[:4] != b"GGUF":
            raise ExportError(f"{gguf_path}: not a GGUF file (bad magic)")
        _version, _tensors, count = struct.unpack_from("<IQQ", buf, 4)
        pos = 24

        def string(at: int) -> tuple[str, int]:
            (length,) = struct.unpack_from("<Q", buf, at)
            return bytes(buf[at + 8 : at + 8 + length]).decode("utf-8", "replace"), at + 8 + length

        def value(kind: int, at: int, keep: bool) -> tuple[Any, int]:
            if kind == 8:
                return string(at)
            if kind in scalar:
                fmt = "<" + scalar[kind]
                return struct.unpack_from(fmt, buf, at)[0], at + struct.calcsize(fmt)
            if kind != 9:
                raise ExportError(f"{gguf_path}: unknown GGUF value type {kind}")
            item, n = struct.unpack_from("<IQ", buf, at)
            at += 12
            if item in scalar and not keep:
                return n, at + n * struct.calcsize("<" + scalar[item])
            items = []
            for _ in range(n):
                got, at = value(item, at, keep)
                items.append(got)
            return (items if keep else n), at

        meta: dict[str, Any] = {}
        for _ in range(count):
            key, pos = string(pos)
            (kind,) = struct.unpack_from("<I", buf, pos)
            meta[key], pos = value(kind, pos + 4, arrays)
        return meta


@dataclass
class GgufExpectations:
    """What the GGUF must say, taken from the HF folder (config + tokenizer) it was converted from."""

    chat_template: str | None
    eos_token_id: int | None
    bos_token_id: int | None
    context_length: int | None
    model_type: str | None
    block_count: int | None

    @classmethod
    def from_hf_dir(cls, hf_dir: Path) -> GgufExpectations:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(hf_dir)
        cfg = json.loads((hf_dir / "config.json").read_text())
        text_cfg = cfg.get("text_config") if isinstance(cfg.get("text_config"), dict) else cfg
        return cls(
            chat_template=tokenizer.chat_template
            if isinstance(tokenizer.chat_template, str)
            else None,
            eos_token_id=tokenizer.eos_token_id,
            bos_token_id=tokenizer.bos_token_id,
            context_length=text_cfg.get("max_position_embeddings"),
            model_type=text_cfg.get("model_type") or cfg.get("model_type"),
            block_count=text_cfg.get("num_hidden_layers"),
        )


def check_gguf(gguf_path: Path, expected: GgufExpectations) -> dict[str, Any]:
    """Raise `GgufCheckError` naming the first mismatch and its fix; return the checked values."""
    meta = read_metadata(gguf_path)
    arch = str(meta.get("general.architecture", ""))
    if not arch:
        raise GgufCheckError(
            f"{gguf_path}: no general.architecture in the metadata (not a model GGUF?)",
            hint="re-run the export; the file may be truncated",
        )
    _check_architecture(gguf_path, arch, meta, expected)
    _check_template(gguf_path, meta, expected)
    _check_special_ids(gguf_path, meta, expected)
    return {
        "architecture": arch,
        "context_length": meta.get(f"{arch}.context_length"),
        "block_count": meta.get(f"{arch}.block_count"),
        "eos_token_id": meta.get("tokenizer.ggml.eos_token_id"),
        "bos_token_id": meta.get("tokenizer.ggml.bos_token_id"),
        "chat_template": "present, equal to the tokenizer's" if expected.chat_template else "none",
        "file_type": meta.get("general.file_type"),
    }


def _check_architecture(
    path: Path, arch: str, meta: dict[str, Any], expected: GgufExpectations
) -> None:
    model_type = (expected.model_type or "").lower()
    wanted = ARCH_ALIASES.get(model_type, model_type)
    if wanted and wanted != arch and model_type.replace("_", "") != arch:
        raise GgufCheckError(
            f"{path}: architecture {arch!r} but the model is {model_type!r}",
            hint="the converter mapped the model to another architecture; check config.json model_type",
        )
    for key, want in (
        (f"{arch}.context_length", expected.context_length),
        (f"{arch}.block_count", expected.block_count),
    ):
        have = meta.get(key)
        if want is not None and have != want:
            raise GgufCheckError(
                f"{path}: {key} is {have} but config.json says {want}",
                hint="re-convert from the merged folder; do not edit config.json after merging",
            )


def _check_template(path: Path, meta: dict[str, Any], expected: GgufExpectations) -> None:
    have = meta.get("tokenizer.chat_template")
    if expected.chat_template is None:
        return
    if not have:
        raise GgufCheckError(
            f"{path}: no chat template in the GGUF metadata (tokenizer.chat_template is missing)",
            hint="the folder converted had no chat_template.jinja / tokenizer_config chat_template; "
            "export from the run folder so the training template is written, or add it and re-convert",
        )
    if str(have).strip() != expected.chat_template.strip():
        raise GgufCheckError(
            f"{path}: the chat template in the GGUF differs from the training template "
            f"(first difference at character {_first_difference(str(have), expected.chat_template)})",
            hint="re-export from the run folder: its tokenizer's chat template is the one the model was trained with",
        )


def _check_special_ids(path: Path, meta: dict[str, Any], expected: GgufExpectations) -> None:
    for name, want in (("eos", expected.eos_token_id), ("bos", expected.bos_token_id)):
        have = meta.get(f"tokenizer.ggml.{name}_token_id")
        if want is not None and have != want:
            raise GgufCheckError(
                f"{path}: {name.upper()} token id is {have} in the GGUF but {want} in the tokenizer",
                hint=f"generation would not stop (or start) where training did; set {name}_token in "
                "tokenizer_config.json / generation_config.json of the merged folder consistently and re-convert",
            )


def _first_difference(a: str, b: str) -> int:
    for i, (x, y) in enumerate(zip(a, b, strict=False)):
        if x != y:
            return i
    return min(len(a), len(b))
