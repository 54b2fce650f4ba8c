"""Deploy artefacts from one template: Ollama `Modelfile`, the llama-server command line, the model card.

The training chat template (the tokenizer's Jinja template, also embedded in the GGUF) is the
single source. For Ollama it is translated into a Go template by rendering it with marker
messages and cutting out each role's prefix/suffix; the translation is then checked by rendering
both on several conversations and comparing the text exactly.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from slmkit.export.llama_server import server_args

_MARK = {
    "system": "\u2063SYS\u2063",
    "user": "\u2063USR\u2063",
    "assistant": "\u2063AST\u2063",
    "user2": "\u2063US2\u2063",
}
CHECK_CONVERSATIONS = (
    [{"role": "user", "content": "Hello there"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
    [
        {"role": "user", "content": "One"},
        {"role": "assistant", "content": "Two"},
        {"role": "user", "content": "Three"},
    ],
    [
        {"role": "system", "content": "S"},
        {"role": "user", "content": "Q1"},
        {"role": "assistant", "content": "A1"},
        {"role": "user", "content": "Q2"},
    ],
)


@dataclass
class TemplateParts:
    """Per-role text around each message, the generation prompt and the implicit default system message."""

    prefix: dict[str, str]
    suffix: dict[str, str]
    generation_prompt: str
    default_system: str | None = None
    stop: list[str] = field(default_factory=list)
    verified: bool = False

    def render(self, messages: list[dict[str, str]]) -> str:
        """What the Ollama template produces for `messages` (used to verify the translation)."""
        if self.default_system is not None and (not messages or messages[0]["role"] != "system"):
            messages = [{"role": "system", "content": self.default_system}, *messages]
        body = "".join(
            self.prefix[m["role"]] + m["content"] + self.suffix[m["role"]] for m in messages
        )
        return body + self.generation_prompt

    def go_template(self) -> str:
        branches = "".join(
            f'{{{{ {"if" if i == 0 else "else if"} eq .Role "{role}" }}}}{self.prefix[role]}{{{{ .Content }}}}{self.suffix[role]}'
            for i, role in enumerate(("system", "user", "assistant"))
        )
        return (
            f"{{{{ range .Messages }}}}{branches}{{{{ end }}}}{{{{ end }}}}{self.generation_prompt}"
        )


def _render(tokenizer: Any, messages: list[dict[str, str]], generation: bool) -> str:
    return str(
        tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation)
    )


def split_template(tokenizer: Any) -> TemplateParts | None:
    """Cut the chat template into role prefixes/suffixes; None when it does not fit that shape."""
    conv = [{"role": r.rstrip("2"), "content": m} for r, m in _MARK.items()]
    try:
        text = _render(tokenizer, conv, False)
        with_gen = _render(tokenizer, conv[:2], True)
        without_gen = _render(tokenizer, conv[:2], False)
    except Exception:  # a template that rejects this conversation shape cannot be translated
        return None
    positions = [text.find(m) for m in _MARK.values()]
    if min(positions) < 0 or positions != sorted(positions) or not with_gen.startswith(without_gen):
        return None
    marks = list(_MARK.values())
    seg = [text[: positions[0]]] + [
        text[positions[i] + len(marks[i]) : positions[i + 1]] for i in range(3)
    ]
    seg.append(text[positions[3] + len(marks[3]) :])
    user_suffix = seg[4]
    if not seg[2].startswith(user_suffix) or not seg[3].startswith(user_suffix):
        return None
    user_prefix = seg[3][
        len(user_suffix) :
    ]  # assistant suffix assumed equal to the user suffix (checked below)
    if not seg[1].endswith(user_prefix):
        return None
    parts = TemplateParts(
        prefix={"system": seg[0], "user": user_prefix, "assistant": seg[2][len(user_suffix) :]},
        suffix={
            "system": seg[1][: len(seg[1]) - len(user_prefix)],
            "user": user_suffix,
            "assistant": user_suffix,
        },
        generation_prompt=with_gen[len(without_gen) :],
    )
    parts.default_system = _default_system(tokenizer, parts)
    parts.verified = all(
        parts.render(c) == _render(tokenizer, c, True) for c in CHECK_CONVERSATIONS
    )
    return parts


def _default_system(tokenizer: Any, parts: TemplateParts) -> str | None:
    """The system message a template inserts when the conversation has none (SmolLM2 does)."""
    text = _render(tokenizer, [{"role": "user", "content": _MARK["user"]}], True)
    head = text[: text.find(parts.prefix["user"] + _MARK["user"])]
    sys_prefix, sys_suffix = parts.prefix["system"], parts.suffix["system"]
    if (
        head.startswith(sys_prefix)
        and head.endswith(sys_suffix)
        and len(head) > len(sys_prefix) + len(sys_suffix)
    ):
        return head[len(sys_prefix) : len(head) - len(sys_suffix)]
    return None


def stop_tokens(tokenizer: Any, parts: TemplateParts | None) -> list[str]:
    """Strings that end a turn: the EOS token and the special tokens that close or open a turn."""
    stops: list[str] = []
    specials = set(getattr(tokenizer, "all_special_tokens", []) or [])
    eos = getattr(tokenizer, "eos_token", None)
    if eos:
        stops.append(str(eos))
    if parts is not None:
        for text in (parts.suffix["assistant"], parts.prefix["user"]):
            stops += [tok for tok in specials if tok in text]
    return list(dict.fromkeys(s for s in stops if s.strip()))


def modelfile(gguf_name: str, parts: TemplateParts | None, stops: list[str], ctx: int) -> str:
    """An Ollama Modelfile for `gguf_name` (in the same folder) with the training template and stop tokens."""
    lines = [
        "# Ollama: `ollama create NAME -f Modelfile` in this folder, then `ollama run NAME`",
        f"FROM ./{gguf_name}",
    ]
    if parts is not None:
        lines.append(f'TEMPLATE """{parts.go_template()}"""')
        if parts.default_system is not None:
            lines.append(f'SYSTEM """{parts.default_system}"""')
    else:
        lines.append(
            "# TEMPLATE: this chat template could not be translated for Ollama; prefer llama-server (serve.sh)"
        )
    lines += [f'PARAMETER stop "{s}"' for s in stops]
    lines += ["PARAMETER temperature 0.2", f"PARAMETER num_ctx {ctx}"]
    return "\n".join(lines) + "\n"


def server_command(
    gguf_name: str, ctx: int, port: int = 8080, kwargs: dict[str, Any] | None = None
) -> str:
    """The llama-server command line (run in the export folder); --jinja uses the GGUF's embedded
    template, with `kwargs` (see `llama_server.template_kwargs`)."""
    args = server_args(
        Path(gguf_name), port=port, ctx=ctx, threads=4, host="0.0.0.0", kwargs=kwargs
    )
    args.remove("--no-webui")
    return "llama-server " + " ".join(shlex.quote(a) for a in args)


def model_card(
    name: str, source: str, table_md: str, recommended: str, server_cmd: str, notes: list[str]
) -> str:
    lines = [
        f"# {name} (GGUF)",
        "",
        f"Exported by `slm export` from `{source}`. Recommended file: **`{recommended}`**.",
        "",
        "## Quantization quality (against the f16 GGUF)",
        "",
        table_md,
        "",
        "KLD = mean KL divergence per token on held-out text; top-1 = share of tokens whose most likely",
        "next token equals f16's; answers = temperature-0 answers on the eval prompts (exact / similar / different).",
        "",
        "## Run it",
        "",
        "```bash",
        server_cmd,
        "# or: ollama create mymodel -f Modelfile && ollama run mymodel",
        "```",
        "",
        "The chat template and stop tokens come from the training tokenizer; they are embedded in every GGUF",
        "(checked after conversion) and written into the Modelfile (`chat_template.jinja` holds the original).",
    ]
    if notes:
        lines += ["", "## Notes", "", *[f"- {n}" for n in notes]]
    return "\n".join(lines) + "\n"
