"""Named chat templates of the model families, and recognising which one a tokenizer carries.

A named template is the family's own Jinja text: TRL's copies (`trl/chat_templates/`) for
Llama-3.x, Qwen2.5/Qwen3, DeepSeek-R1-Distill, Gemma and Phi-3, our own copies for Mistral (TRL has
none), and three generic ones (chatml, llama2, alpaca). Where TRL ships a training variant (the same
template with `{% generation %}` markers and prefix-preserving fixes), it is used to locate the
assistant's tokens; the inference rendering always comes from the original.

A tokenizer's template is recognised by behaviour, not by exact text: real-world copies are often
reformatted (llama.cpp's R1-Distill copy differs in whitespace from the one on the hub), so both are
rendered on a handful of probe conversations and compared.
"""

from __future__ import annotations

import functools
import importlib.util
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from slmkit.errors import DataError

OWN_DIR = Path(__file__).resolve().parent / "chat_templates"

CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] "
    "+ '<|im_end|>' + '\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}"
    "{% endif %}"
)
LLAMA2 = (
    "{% if messages and messages[0]['role'] == 'system' %}{% set system = messages[0]['content'] %}"
    "{% set loop_messages = messages[1:] %}{% else %}{% set system = '' %}{% set loop_messages = messages %}"
    "{% endif %}{% for message in loop_messages %}{% if message['role'] == 'assistant' %}"
    "{{ ' ' + message['content'] + ' ' + (eos_token or '') }}{% else %}{{ (bos_token or '') + '[INST] ' }}"
    "{% if loop.first and system %}{{ '<<SYS>>\\n' + system + '\\n<</SYS>>\\n\\n' }}{% endif %}"
    "{% if message['role'] != 'user' %}{{ message['role'] + ': ' }}{% endif %}"
    "{{ message['content'] + ' [/INST]' }}{% endif %}{% endfor %}"
)
ALPACA = (
    "{% if not messages or messages[0]['role'] != 'system' %}{{ 'Below is an instruction that describes a "
    "task. Write a response that appropriately completes the request.\\n\\n' }}{% endif %}"
    "{% for message in messages %}{% if message['role'] == 'system' %}{{ message['content'] + '\\n\\n' }}"
    "{% elif message['role'] == 'user' %}{{ '### Instruction:\\n' + message['content'] + "
    "'\\n\\n### Response:\\n' }}{% elif message['role'] == 'assistant' %}"
    "{{ message['content'] + (eos_token or '') + '\\n\\n' }}{% else %}{{ '### Input:\\n' + "
    "message['content'] + '\\n\\n' }}{% endif %}{% endfor %}"
)
_INLINE = {"chatml": CHATML, "llama2": LLAMA2, "alpaca": ALPACA}


@dataclass(frozen=True)
class NamedTemplate:
    """A chat template by name: where its text comes from and who uses it."""

    name: str
    models: str  # the models that ship it (for --help and docs/models.md)
    source: str  # "inline:NAME", "trl:FILE.jinja" or "own:FILE.jinja"
    training: str | None = None  # its training variant, with `{% generation %}` markers

    @property
    def text(self) -> str:
        return _read(self.source)

    @property
    def training_text(self) -> str | None:
        return _read(self.training) if self.training else None


NAMED_TEMPLATES: dict[str, NamedTemplate] = {
    t.name: t
    for t in (
        NamedTemplate("chatml", "SmolLM2, OpenHermes and other ChatML models", "inline:chatml"),
        NamedTemplate("llama2", "Llama-2-chat", "inline:llama2"),
        NamedTemplate("alpaca", "base models (instruction / response)", "inline:alpaca"),
        NamedTemplate(
            "llama3", "Llama-3-8B-Instruct", "trl:llama3.jinja", "trl:llama3_training.jinja"
        ),
        NamedTemplate("llama3.1", "Llama-3.1 and 3.3 Instruct (date, tools)", "trl:llama3_1.jinja"),
        NamedTemplate("llama3.2", "Llama-3.2 Instruct (1B, 3B)", "trl:llama3_2.jinja"),
        NamedTemplate(
            "mistral",
            "Mistral-7B-Instruct-v0.1 / v0.2",
            "own:mistral.jinja",
            "own:mistral_training.jinja",
        ),
        NamedTemplate(
            "mistral-v3",
            "Mistral-7B-Instruct-v0.3, Mistral-Large-2407",
            "own:mistral_v3.jinja",
            "own:mistral_v3_training.jinja",
        ),
        NamedTemplate(
            "mistral-nemo",
            "Mistral-Nemo-Instruct-2407",
            "own:mistral_nemo.jinja",
            "own:mistral_nemo_training.jinja",
        ),
        NamedTemplate(
            "qwen2.5", "Qwen2.5 Instruct", "trl:qwen2_5.jinja", "trl:qwen2_5_training.jinja"
        ),
        NamedTemplate("qwen3", "Qwen3 (thinking)", "trl:qwen3.jinja", "trl:qwen3_training.jinja"),
        NamedTemplate(
            "deepseek-r1",
            "DeepSeek-R1-Distill-Qwen / -Llama",
            "trl:deepseek_r1_distill.jinja",
            "trl:deepseek_r1_distill_training.jinja",
        ),
        NamedTemplate(
            "gemma", "Gemma and Gemma-2 it", "trl:gemma.jinja", "trl:gemma_training.jinja"
        ),
        NamedTemplate("gemma3", "Gemma-3 it", "trl:gemma3.jinja", "trl:gemma3_training.jinja"),
        NamedTemplate("gemma4", "Gemma 4 it (thinking off unless asked)", "trl:gemma4_v5.jinja"),
        NamedTemplate("phi3", "Phi-3-mini instruct", "trl:phi3.jinja", "trl:phi3_training.jinja"),
        NamedTemplate(
            "phi3.5", "Phi-3.5-mini instruct", "trl:phi3_5.jinja", "trl:phi3_5_training.jinja"
        ),
    )
}
ALIASES = {"qwen": "qwen2.5", "qwen2": "qwen2.5", "deepseek-r1-distill": "deepseek-r1"}
TEMPLATE_NAMES = tuple(NAMED_TEMPLATES)


def _trl_dir() -> Path:
    spec = importlib.util.find_spec("trl")
    if spec is None or not spec.submodule_search_locations:
        raise DataError("the TRL package is not installed; run `bash scripts/setup.sh`")
    return Path(next(iter(spec.submodule_search_locations))) / "chat_templates"


@functools.lru_cache(maxsize=64)
def _read(source: str) -> str:
    kind, _, name = source.partition(":")
    if kind == "inline":
        return _INLINE[name]
    folder = _trl_dir() if kind == "trl" else OWN_DIR
    return (folder / name).read_text(encoding="utf-8")


def named_template(name: str) -> NamedTemplate:
    """The named template, or a DataError listing the names."""
    key = ALIASES.get(name.lower(), name.lower())
    if key not in NAMED_TEMPLATES:
        raise DataError(
            f"unknown template {name!r} (expected one of {', '.join(TEMPLATE_NAMES)})",
            hint="leave data.template empty to use the model's own chat template",
        )
    return NAMED_TEMPLATES[key]


# --- recognising a template by what it renders --------------------------------------------------

_PROBE_TOKENS = {"bos_token": "<BOS>", "eos_token": "<EOS>", "pad_token": "<PAD>"}
_PROBES: tuple[tuple[tuple[tuple[str, str], ...], bool], ...] = (
    ((("user", "Hi there"),), True),
    ((("system", "Be brief."), ("user", "Hi there")), True),
    ((("user", "Hi"), ("assistant", "Hello! How can I help?"), ("user", "Ship to Oslo?")), True),
    ((("user", "Hi"), ("assistant", "Hello!")), False),
    (
        (
            ("system", "Be brief."),
            ("user", "Hi"),
            ("assistant", "<think>\nGreet back.\n</think>\n\nHello!"),
            ("user", "Bye"),
        ),
        True,
    ),
)


def render_plain(
    template: str,
    messages: list[dict[str, Any]],
    *,
    generation_prompt: bool,
    special_tokens: dict[str, Any] | None = None,
    **context: Any,
) -> str:
    """Render a template the way transformers does, without a tokenizer."""
    from transformers.utils.chat_template_utils import render_jinja_template

    result: Any = render_jinja_template(  # annotated `str`, returns (texts, spans)
        conversations=[messages],
        chat_template=template,
        add_generation_prompt=generation_prompt,
        **{**(special_tokens or _PROBE_TOKENS), **context},
    )
    return str(result[0][0])


def default_template_kwargs(template: str) -> dict[str, Any]:
    """The template variables that make a renderer with defaults of its own render what
    transformers renders by default. llama-server turns `enable_thinking` on for any template that
    reads it; Gemma 4's default (undefined) means off, Qwen3's means on."""
    if "enable_thinking" not in template:
        return {}
    probe = [{"role": "system", "content": "S"}, {"role": "user", "content": "Hi"}]
    try:
        default = render_plain(template, probe, generation_prompt=True)
        rendered = {
            value: render_plain(template, probe, generation_prompt=True, enable_thinking=value)
            for value in (False, True)
        }
    except Exception:  # a template that cannot render the probe shows its error elsewhere
        return {}
    if rendered[False] == rendered[True]:
        return {}
    return {"enable_thinking": rendered[True] == default}


def _fingerprint(template: str) -> tuple[str, ...]:
    out = []
    for turns, generation in _PROBES:
        messages = [{"role": role, "content": text} for role, text in turns]
        try:
            out.append(
                render_plain(
                    template, messages, generation_prompt=generation, date_string="1 Jan 2026"
                )
            )
        except Exception as exc:  # a template may refuse a probe (Gemma: no system role)
            out.append(f"<error {type(exc).__name__}>")
    return tuple(out)


@functools.lru_cache(maxsize=32)
def identify_template(template: str) -> NamedTemplate | None:
    """The named template that renders exactly like `template` on every probe, if any."""
    stripped = template.strip()
    for named in NAMED_TEMPLATES.values():
        if named.text.strip() == stripped:
            return named
    try:
        mine = _fingerprint(template)
    except Exception:  # a template that does not even compile is nobody's
        return None
    for named in NAMED_TEMPLATES.values():
        if _fingerprint(named.text) == mine:
            return named
    return None


def training_template_for(template: str) -> str | None:
    """TRL's training variant (with `{% generation %}` markers) of a known template, or the template
    itself when it already has markers; None when neither applies."""
    if has_generation_markers(template):
        return template
    named = identify_template(template)
    return named.training_text if named else None


def has_generation_markers(template: str) -> bool:
    import re

    return re.search(r"\{%-?\s*generation\s*-?%\}", template) is not None


def template_name(template: str | None) -> str | None:
    """The name of a template when it is one of ours (for the model card and `slm models`)."""
    if not template:
        return None
    named = identify_template(template)
    return named.name if named else None


# --- what differs between runs: the date, as llama-server fills it ------------------------------


def runtime_context(now: float | None = None) -> dict[str, str]:
    """The variables llama-server passes to every chat template (Llama-3.1's `Today Date:`), so a
    rendering in Python matches the server's on the same day."""
    stamp = time.localtime(now)
    return {
        "date_string": time.strftime("%d %b %Y", stamp),
        "datetime": time.strftime("%b %d %Y", stamp),
    }
