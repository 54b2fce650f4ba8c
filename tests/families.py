"""Tiny random-weight models of the families users bring (Llama-3, Qwen2.5, DeepSeek-R1-Distill-Qwen,
Mistral, Phi-3, Gemma 4), each with its family's real tokenizer and its own chat template. Nothing is downloaded:
the vocabularies come from the vocab-only GGUFs in the pinned llama.cpp source (set-up installs them
under the tools folder) and the templates from its `models/templates/` or our named ones.

Tokenizers are rebuilt from the GGUF the way the hub files are made (byte-level BPE with the family's
pre-tokenizer regex; SentencePiece BPE with a `tokenizer.model` for the SPM families; Gemma's
BPE over `▁`-joined text with byte fallback) and checked
against llama.cpp's own reference tokenizations (`ggml-vocab-*.gguf.inp/.out`). A family folder is
built once per machine into the model cache (under a file lock, so parallel workers share it).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

FIXTURE_VERSION = "10"
LLAMA3_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
QWEN2_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
R1_SPECIALS = {  # DeepSeek-R1-Distill-Qwen's own tokens at the end of Qwen2's vocabulary
    151643: ("<｜end▁of▁sentence｜>", True),
    151644: ("<｜User｜>", True),
    151645: ("<｜Assistant｜>", True),
    151646: ("<｜begin▁of▁sentence｜>", True),
    151647: ("<|EOT|>", True),
    151648: ("<think>", False),
    151649: ("</think>", False),
}


@dataclass(frozen=True)
class Family:
    """How to build one family's fixture."""

    name: str
    vocab: str  # ggml-vocab-<vocab>.gguf
    architecture: str  # transformers model_type
    template: str  # "llama.cpp:<file>" or "named:<name>"
    eos: str
    bos: str | None = None
    pad: str | None = None
    regex: str | None = None  # byte-level BPE families
    ignore_merges: bool = False
    nfc: bool = False
    specials: dict[int, tuple[str, bool]] = field(default_factory=dict)  # id -> (text, special)
    extra_eos: tuple[str, ...] = ()  # more ids that end generation (generation_config)
    tie_embeddings: bool = False
    add_bos: bool = False
    config: tuple[tuple[str, Any], ...] = ()  # architecture-specific model config

    @property
    def spm(self) -> bool:
        return self.regex is None and not self.gemma

    @property
    def gemma(self) -> bool:
        return self.vocab.startswith("gemma")


FAMILIES: dict[str, Family] = {
    f.name: f
    for f in (
        Family(
            "llama3",
            "llama-bpe",
            "llama",
            "llama.cpp:meta-llama-Llama-3.1-8B-Instruct.jinja",
            eos="<|eot_id|>",
            bos="<|begin_of_text|>",
            regex=LLAMA3_REGEX,
            ignore_merges=True,
            extra_eos=("<|end_of_text|>",),
            add_bos=True,
        ),
        Family(
            "qwen2.5",
            "qwen2",
            "qwen2",
            "llama.cpp:Qwen-Qwen2.5-7B-Instruct.jinja",
            eos="<|im_end|>",
            pad="<|endoftext|>",
            regex=QWEN2_REGEX,
            nfc=True,
            extra_eos=("<|endoftext|>",),
            tie_embeddings=True,
        ),
        Family(
            "deepseek-r1",
            "qwen2",
            "qwen2",
            "llama.cpp:deepseek-ai-DeepSeek-R1-Distill-Llama-8B.jinja",  # a reformatted copy
            eos="<｜end▁of▁sentence｜>",
            bos="<｜begin▁of▁sentence｜>",
            pad="<｜end▁of▁sentence｜>",
            regex=QWEN2_REGEX,
            nfc=True,
            specials=R1_SPECIALS,
            tie_embeddings=True,
            add_bos=True,
        ),
        Family(
            "mistral", "llama-spm", "mistral", "named:mistral", eos="</s>", bos="<s>", add_bos=True
        ),
        Family(
            "phi3",
            "phi-3",
            "phi3",
            "llama.cpp:microsoft-Phi-3.5-mini-instruct.jinja",
            eos="<|endoftext|>",
            bos="<s>",
            pad="<|endoftext|>",
            extra_eos=("<|end|>", "<|assistant|>"),
            add_bos=False,
        ),
        Family(
            "gemma4",
            "gemma-4",
            "gemma4_text",
            "named:gemma4",  # the E2B/E4B template
            eos="<turn|>",
            bos="<bos>",
            pad="<pad>",
            extra_eos=("<eos>",),
            tie_embeddings=True,
            add_bos=True,
            config=(
                ("head_dim", 16),
                ("global_head_dim", 32),  # full-attention layers are wider, as in Gemma 4
                ("layer_types", ["sliding_attention", "full_attention"]),
                ("sliding_window", 512),
                ("hidden_size_per_layer_input", 0),
                ("final_logit_softcapping", 30.0),
            ),
        ),
    )
}


def models_dir() -> Path:
    from slmkit.tools import llama_models_dir

    return llama_models_dir()


def family_template(family: Family) -> str:
    kind, _, name = family.template.partition(":")
    if kind == "named":
        from slmkit.models.templates import named_template

        return named_template(name).text
    return (models_dir() / "templates" / name).read_text(encoding="utf-8")


def family_dir(name: str) -> Path:
    """The family's cached folder (tokenizer, template, tiny random model), built once per machine."""
    family = FAMILIES[name]
    vocab = models_dir() / f"ggml-vocab-{family.vocab}.gguf"
    key = hashlib.sha256(f"{FIXTURE_VERSION}:{family}:{vocab.stat().st_size}".encode()).hexdigest()[
        :12
    ]
    cache = Path(os.environ.get("SLM_MODEL_CACHE") or Path.home() / ".cache/slmkit/models")
    folder = cache / "families" / f"{name}-{key}"
    if (folder / "DONE").is_file():
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    with open(folder.parent / f".{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (folder / "DONE").is_file():
            tmp = folder.with_name(folder.name + ".tmp")
            shutil.rmtree(tmp, ignore_errors=True)
            build_family(family, tmp)
            (tmp / "DONE").write_text("ok\n")
            shutil.rmtree(folder, ignore_errors=True)
            tmp.rename(folder)
    return folder


# --- reading a vocab-only GGUF -------------------------------------------------------------------


@dataclass
class GgufVocab:
    tokens: list[str]
    types: list[int]  # 1 normal, 2 unknown, 3 control, 4 user-defined, 5 unused, 6 byte
    scores: list[float]
    merges: list[tuple[str, str]]


def read_vocab(path: Path) -> GgufVocab:
    from slmkit.export.gguf_file import read_metadata

    meta = read_metadata(path, arrays=True)
    return GgufVocab(
        list(meta["tokenizer.ggml.tokens"]),
        [int(t) for t in meta["tokenizer.ggml.token_type"]],
        [float(s) for s in meta.get("tokenizer.ggml.scores", [])],
        [tuple(m.split(" ", 1)) for m in meta.get("tokenizer.ggml.merges", [])],  # type: ignore[misc]
    )


# --- building the tokenizers ---------------------------------------------------------------------


def build_tokenizer(family: Family, vocab: GgufVocab, out: Path) -> Any:
    """The family's fast tokenizer, saved in `out` (with `tokenizer.model` for SPM families)."""
    from tokenizers import AddedToken
    from transformers import PreTrainedTokenizerFast

    if family.gemma:
        backend, added = _gemma_backend(vocab)
    elif family.spm:
        backend, added = _spm_backend(vocab, out)
    else:
        backend, added = _bpe_backend(family, vocab)
    for index, (text, special) in family.specials.items():
        added[index] = (text, special)
    backend.add_tokens(
        [
            AddedToken(text, special=special, normalized=False)
            for _, (text, special) in sorted(added.items())
        ]
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=family.bos,
        eos_token=family.eos,
        pad_token=family.pad,
        unk_token="<unk>" if family.spm or family.gemma else None,
        add_bos_token=family.add_bos,
        add_eos_token=False,
        # Gemma's control tokens sit inside the base vocabulary: llama.cpp's converter marks them
        # control only when the tokenizer names them special, as the hub's tokenizer_config does
        extra_special_tokens=[
            text
            for _, (text, special) in sorted(added.items())
            if special
            and family.gemma
            and text not in (family.bos, family.eos, family.pad, "<unk>")
        ],
    )
    for index, (text, _) in added.items():
        got = tokenizer.convert_tokens_to_ids(text)
        assert got == index, f"{family.name}: {text!r} got id {got}, expected {index}"
    tokenizer.chat_template = family_template(family)
    tokenizer.save_pretrained(out)
    return tokenizer


def _bpe_backend(family: Family, vocab: GgufVocab) -> tuple[Any, dict[int, tuple[str, bool]]]:
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers

    normal = {t: i for i, t in enumerate(vocab.tokens) if vocab.types[i] == 1}
    tk = Tokenizer(
        models.BPE(normal, vocab.merges, ignore_merges=family.ignore_merges, fuse_unk=False)
    )
    if family.nfc:
        tk.normalizer = normalizers.NFC()
    tk.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(family.regex or ""), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False),
        ]
    )
    tk.decoder = decoders.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)
    added = {i: (t, True) for i, t in enumerate(vocab.tokens) if vocab.types[i] == 3}
    return tk, added


def _gemma_backend(vocab: GgufVocab) -> tuple[Any, dict[int, tuple[str, bool]]]:
    """Gemma's tokenizer.json: spaces become `▁`, then BPE merges run over the whole text, with
    `<0xXX>` byte fallback; no pre-tokenizer. The tokens llama.cpp marks user-defined (the tool-call
    and thinking-channel markers) are added as visible, non-special tokens."""
    from tokenizers import Tokenizer, decoders, models, normalizers

    pieces = {t: i for i, t in enumerate(vocab.tokens)}  # the added ones keep their ids
    tk = Tokenizer(models.BPE(pieces, vocab.merges, byte_fallback=True, fuse_unk=False))
    tk.normalizer = normalizers.Replace(" ", "▁")
    tk.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()]
    )
    added = {
        i: (t, vocab.types[i] == 3) for i, t in enumerate(vocab.tokens) if vocab.types[i] in (3, 4)
    }
    return tk, added


def _spm_backend(vocab: GgufVocab, out: Path) -> tuple[Any, dict[int, tuple[str, bool]]]:
    """SentencePiece BPE as the hub's Llama-2 / Mistral / Phi-3 files have it: `tokenizer.model`
    (the first 32000 pieces; later ones are added tokens) and the equivalent `tokenizer.json`."""
    from sentencepiece import sentencepiece_model_pb2 as pb
    from tokenizers import Tokenizer, decoders, models, normalizers
    from transformers.tokenization_utils_base import generate_merges

    base = 32000
    types = list(vocab.types[:base])
    types[0], types[1], types[2] = 2, 3, 3  # <unk>, <s>, </s>
    proto = pb.ModelProto()
    for text, score, kind in zip(vocab.tokens[:base], vocab.scores[:base], types, strict=True):
        piece = proto.pieces.add()
        piece.piece, piece.score, piece.type = text, score, kind
    spec = proto.trainer_spec
    spec.model_type, spec.vocab_size, spec.byte_fallback = pb.TrainerSpec.BPE, base, True
    spec.unk_id, spec.bos_id, spec.eos_id, spec.pad_id = 0, 1, 2, -1
    norm = proto.normalizer_spec
    norm.name, norm.add_dummy_prefix, norm.remove_extra_whitespaces = "identity", True, False
    norm.escape_whitespaces = True
    out.mkdir(parents=True, exist_ok=True)
    (out / "tokenizer.model").write_bytes(proto.SerializeToString())

    pieces = {t: i for i, t in enumerate(vocab.tokens[:base])}
    scores = {
        t: s
        for t, s, k in zip(vocab.tokens[:base], vocab.scores[:base], types, strict=True)
        if k == 1
    }
    tk = Tokenizer(
        models.BPE(
            pieces,
            generate_merges(pieces, scores),
            unk_token="<unk>",
            fuse_unk=True,
            byte_fallback=True,
        )
    )
    tk.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tk.decoder = decoders.Sequence(
        [
            decoders.Replace("▁", " "),
            decoders.ByteFallback(),
            decoders.Fuse(),
            decoders.Strip(" ", 1, 0),
        ]
    )
    added = {0: ("<unk>", True), 1: ("<s>", True), 2: ("</s>", True)}
    added.update(
        {i: (t, True) for i, t in enumerate(vocab.tokens) if i >= base and vocab.types[i] == 3}
    )
    return tk, added


def reference_tokenizations(family: Family) -> list[tuple[str, list[int]]]:
    """llama.cpp's own test strings for this vocabulary and the ids it expects."""
    path = models_dir() / f"ggml-vocab-{family.vocab}.gguf"
    inputs = Path(f"{path}.inp").read_text(encoding="utf-8").split("\n__ggml_vocab_test__\n")
    outputs = Path(f"{path}.out").read_text(encoding="utf-8").split("\n")
    return [
        (text, [int(x) for x in ids.split()]) for text, ids in zip(inputs, outputs, strict=False)
    ]


# --- the tiny model --------------------------------------------------------------------------


def build_family(family: Family, out: Path) -> None:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, GenerationConfig

    vocab = read_vocab(models_dir() / f"ggml-vocab-{family.vocab}.gguf")
    tokenizer = build_tokenizer(family, vocab, out)
    ids = lambda text: tokenizer.convert_tokens_to_ids(text)  # noqa: E731
    eos_ids = [ids(family.eos), *(ids(t) for t in family.extra_eos)]
    config = AutoConfig.for_model(
        family.architecture,
        vocab_size=len(vocab.tokens),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        bos_token_id=ids(family.bos) if family.bos else None,
        eos_token_id=eos_ids[0],
        pad_token_id=ids(family.pad) if family.pad else None,
        tie_word_embeddings=family.tie_embeddings,
        **dict(family.config),
    )
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.generation_config = GenerationConfig(
        bos_token_id=config.bos_token_id,
        eos_token_id=eos_ids if len(eos_ids) > 1 else eos_ids[0],
        pad_token_id=config.pad_token_id,
    )
    model.save_pretrained(out)
    (out / "slmkit-family.json").write_text(json.dumps({"family": family.name}))
