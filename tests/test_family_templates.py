"""Chat templates of the model families, on their real tokenizers: the fixtures' tokenizers equal
llama.cpp's reference tokenizations, our named templates equal the families' own, the loss mask
covers exactly what the model writes after the prompt inference renders (also for templates that
rewrite history: R1 drops earlier reasoning, Mistral v0.3/Nemo move the system prompt), and
reasoning is trained the way each template expects."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from families import FAMILIES, family_dir, models_dir, reference_tokenizations
from slmkit.data import Record
from slmkit.data.template import IGNORE_INDEX, tokenize_sft
from slmkit.models.reasoning import normalize_message
from slmkit.models.templates import (
    NAMED_TEMPLATES,
    identify_template,
    named_template,
    render_plain,
    training_template_for,
)

SYSTEM = "You are the Northwind help desk."
CONVERSATION = [
    {"role": "system", "content": SYSTEM},
    {"role": "user", "content": "Where is my order?"},
    {
        "role": "assistant",
        "reasoning_content": "The customer wants tracking.",
        "content": "It ships tomorrow.",
    },
    {"role": "user", "content": "Thanks!"},
    {"role": "assistant", "content": "You're welcome."},
]


@pytest.fixture(scope="module")
def tokenizers() -> dict[str, Any]:
    from transformers import AutoTokenizer

    return {name: AutoTokenizer.from_pretrained(family_dir(name)) for name in FAMILIES}


@pytest.mark.parametrize("name", list(FAMILIES))
def test_fixture_tokenizers_equal_llama_cpps_reference_tokenizations(
    name: str, tokenizers: dict[str, Any]
) -> None:
    tokenizer = tokenizers[name]
    cases = reference_tokenizations(FAMILIES[name])
    assert len(cases) >= 40
    wrong = [
        text for text, ids in cases if tokenizer(text, add_special_tokens=False).input_ids != ids
    ]
    assert wrong == []


@pytest.mark.parametrize(
    ("name", "original"),
    [
        ("llama3.1", "meta-llama-Llama-3.1-8B-Instruct.jinja"),
        ("llama3.2", "meta-llama-Llama-3.2-3B-Instruct.jinja"),
        ("qwen2.5", "Qwen-Qwen2.5-7B-Instruct.jinja"),
        ("qwen3", "Qwen-Qwen3-0.6B.jinja"),
        ("deepseek-r1", "deepseek-ai-DeepSeek-R1-Distill-Llama-8B.jinja"),  # reformatted copy
        ("mistral-nemo", "mistralai-Mistral-Nemo-Instruct-2407.jinja"),
        ("gemma", "google-gemma-2-2b-it.jinja"),
        ("phi3.5", "microsoft-Phi-3.5-mini-instruct.jinja"),
    ],
)
def test_named_templates_are_recognised_in_the_families_own_copies(
    name: str, original: str
) -> None:
    text = (models_dir() / "templates" / original).read_text()
    found = identify_template(text)
    assert found is not None and found.name == name


def test_mistral_templates_render_what_mistral_documents() -> None:
    """Expected strings from llama.cpp's template tests (mistralai's own templates, jinja output)."""
    chat = [
        {"role": "system", "content": "You are a helpful assistant"},
        {"role": "user", "content": "Hello"},
        {"role": "assistant", "content": "Hi there"},
        {"role": "user", "content": "Who are you"},
        {"role": "assistant", "content": "   I am an assistant   "},
        {"role": "user", "content": "Another question"},
    ]
    tokens = {"bos_token": "", "eos_token": "</s>"}

    def render(name: str) -> str:
        return render_plain(
            named_template(name).text, chat, generation_prompt=True, special_tokens=tokens
        )

    assert render("mistral") == (
        " [INST] You are a helpful assistant\n\nHello [/INST] Hi there</s> [INST] Who are you "
        "[/INST]    I am an assistant   </s> [INST] Another question [/INST]"
    )
    assert render("mistral-v3") == (
        "[INST] Hello[/INST] Hi there</s>[INST] Who are you[/INST] I am an assistant</s>"
        "[INST] You are a helpful assistant\n\nAnother question[/INST]"
    )
    assert render("mistral-nemo") == (
        "[INST]Hello[/INST]Hi there</s>[INST]Who are you[/INST]   I am an assistant   </s>"
        "[INST]You are a helpful assistant\n\nAnother question[/INST]"
    )


# TRL's fixes that change what earlier turns look like (prompts always come from the original)
REWRITES_HISTORY = {"deepseek-r1", "qwen3"}


@pytest.mark.parametrize("name", [n for n, t in NAMED_TEMPLATES.items() if t.training])
def test_training_variants_render_like_their_originals(name: str) -> None:
    """A training variant only adds `{% generation %}` markers around the reply; TRL's R1 and
    Qwen3 variants also keep earlier turns' reasoning blocks, which their originals drop."""
    named = NAMED_TEMPLATES[name]
    reply = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]
    chats = [(reply, False), (reply[:1], True)]
    if name not in REWRITES_HISTORY:
        chats.append(([*reply, {"role": "user", "content": "Bye"}], True))
    for chat, generation in chats:
        original = render_plain(named.text, chat, generation_prompt=generation)
        variant = render_plain(named.training_text or "", chat, generation_prompt=generation)
        assert variant == original, (name, chat, generation)
    assert training_template_for(named.text) == named.training_text


def _trained_texts(sample: Any, tokenizer: Any) -> tuple[str, list[str]]:
    """(the sample's text, the runs of text that carry loss)."""
    runs: list[list[int]] = []
    previous = False
    for token, label in zip(sample.input_ids, sample.labels, strict=True):
        trained = label != IGNORE_INDEX
        if trained and not previous:
            runs.append([])
        if trained:
            runs[-1].append(token)
        previous = trained
    return tokenizer.decode(sample.input_ids), [tokenizer.decode(r) for r in runs]


# What each family's model writes for the two replies: the first carries its reasoning inline (the
# templates here but Gemma 4's do not read `reasoning_content`), the second has none. R1's generation prompt
# already opens `<think>\n`, so its replies start inside the block (an answer without reasoning is
# an empty block); Qwen2.5's and Phi-3's end-of-turn includes the newline their templates write.
THINK = "<think>\nThe customer wants tracking.\n</think>\n\n"
EXPECTED = {
    "llama3": [f"{THINK}It ships tomorrow.<|eot_id|>", "You're welcome.<|eot_id|>"],
    "qwen2.5": [f"{THINK}It ships tomorrow.<|im_end|>\n", "You're welcome.<|im_end|>\n"],
    "deepseek-r1": [
        "The customer wants tracking.\n</think>\n\nIt ships tomorrow.<｜end▁of▁sentence｜>",
        "\n</think>\n\nYou're welcome.<｜end▁of▁sentence｜>",
    ],
    "mistral": [f"{THINK}It ships tomorrow.</s>", "You're welcome.</s>"],
    "phi3": [f"{THINK}It ships tomorrow.<|end|>\n", "You're welcome.<|end|>\n"],
    # Gemma 4 reads `reasoning_content` and writes it in its own thinking channel
    "gemma4": [
        "<|channel>thought\nThe customer wants tracking.\n<channel|>It ships tomorrow.<turn|>",
        "You're welcome.<turn|>",
    ],
}


@pytest.mark.parametrize("name", list(FAMILIES))
def test_each_reply_is_trained_after_the_prompt_inference_renders_for_it(
    name: str, tokenizers: dict[str, Any]
) -> None:
    tokenizer = tokenizers[name]
    record = Record([normalize_message(m) for m in CONVERSATION], "chat.jsonl:1")
    result = tokenize_sft([record], tokenizer)
    assert result.problems == []
    replies = []
    for sample in result.samples:
        replies += _trained_texts(sample, tokenizer)[1]
    # SentencePiece decoding shows the space after a special token; the text is the same
    assert [r.replace("<|end|> \n", "<|end|>\n") for r in replies] == EXPECTED[name]
    # the prompt of the last reply is exactly what inference renders (earlier reasoning left out)
    last = result.samples[-1]
    first_trained = next(i for i, lab in enumerate(last.labels) if lab != IGNORE_INDEX)
    history = [{k: v for k, v in m.items() if k != "reasoning_content"} for m in CONVERSATION[:4]]
    prompt = tokenizer.apply_chat_template(history, tokenize=False, add_generation_prompt=True)
    assert last.input_ids[:first_trained] == tokenizer(prompt, add_special_tokens=False).input_ids


@pytest.mark.parametrize("template", ["mistral-v3", "mistral-nemo"])
def test_templates_that_move_the_system_prompt_train_one_sample_per_turn(
    template: str, tokenizers: dict[str, Any]
) -> None:
    tokenizer = tokenizers["mistral"]
    plain = [{k: v for k, v in m.items() if k != "reasoning_content"} for m in CONVERSATION]
    result = tokenize_sft([Record(plain, "chat.jsonl:1")], tokenizer, template=template)
    assert result.problems == [] and len(result.samples) == 2
    for sample, turn in zip(result.samples, (2, 4), strict=True):
        text, trained = _trained_texts(sample, tokenizer)
        expected_prompt = render_plain(
            named_template(template).text,
            plain[:turn],
            generation_prompt=True,
            special_tokens={"bos_token": "<s>", "eos_token": "</s>"},
        )
        assert SYSTEM in expected_prompt.rsplit("[INST]", 1)[1]  # in the last user turn
        assert text.replace(" [", "[").startswith(expected_prompt.replace(" [", "["))
        assert trained[0].strip() == plain[turn]["content"] + "</s>"


def test_a_generation_prompt_that_closes_an_empty_thinking_channel_is_trained_after(
    tokenizers: dict[str, Any],
) -> None:
    """Gemma 4 31B's template ends the generation prompt with an empty thought channel that its
    rendered history leaves out: each reply is one sample, trained after exactly that prompt."""
    import copy

    tokenizer = copy.deepcopy(tokenizers["gemma4"])
    template = models_dir() / "templates" / "google-gemma-4-31B-it.jinja"
    tokenizer.chat_template = template.read_text()
    plain = [{k: v for k, v in m.items() if k != "reasoning_content"} for m in CONVERSATION]
    result = tokenize_sft([Record(plain, "chat.jsonl:1")], tokenizer)
    assert result.problems == [] and len(result.samples) == 2
    for sample, turn in zip(result.samples, (2, 4), strict=True):
        text, trained = _trained_texts(sample, tokenizer)
        prompt = tokenizer.apply_chat_template(
            plain[:turn], tokenize=False, add_generation_prompt=True
        )
        assert prompt.endswith("<|turn>model\n<|channel>thought\n<channel|>")
        assert text == prompt + trained[0] and trained == [plain[turn]["content"] + "<turn|>"]


def test_a_template_chosen_by_name_is_saved_with_the_run_and_used_for_its_masks(
    tokenizers: dict[str, Any], tmp_path: Path
) -> None:
    from slmkit.data.template import resolve_chat_template

    tokenizer = tokenizers["mistral"]
    assert "[INST]" in resolve_chat_template(tokenizer, "mistral-nemo")
    with pytest.raises(Exception, match="unknown template 'mistral-9'.*mistral-nemo"):
        resolve_chat_template(tokenizer, "mistral-9")


def test_a_template_without_a_system_role_gets_it_in_the_first_turn(
    tokenizers: dict[str, Any],
) -> None:
    """Gemma refuses a system message; llama-server then puts it before the first user turn."""
    tokenizer = tokenizers["qwen2.5"]
    plain = [{k: v for k, v in m.items() if k != "reasoning_content"} for m in CONVERSATION]
    result = tokenize_sft([Record(plain, "chat.jsonl:1")], tokenizer, template="gemma")
    assert result.problems == []
    text, trained = _trained_texts(result.samples[0], tokenizer)
    assert f"<start_of_turn>user\n{SYSTEM}\nWhere is my order?" in text
    assert trained == ["It ships tomorrow.<end_of_turn>\n", "You're welcome.<end_of_turn>\n"]


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ("named:gemma4", {"enable_thinking": False}),  # undefined means off
        ("llama.cpp:google-gemma-4-31B-it.jinja", {"enable_thinking": False}),
        ("named:qwen3", {"enable_thinking": True}),  # undefined means on
        ("named:llama3.1", {}),  # does not read it
    ],
)
def test_llama_server_is_told_the_thinking_default_transformers_renders(
    template: str, expected: dict[str, Any], tmp_path: Path
) -> None:
    """llama-server turns `enable_thinking` on for every template that reads it; training renders
    transformers' default, so the served prompt must be rendered with that default too."""
    from slmkit.export.llama_server import server_args
    from slmkit.models.templates import default_template_kwargs

    kind, _, name = template.partition(":")
    text = (
        named_template(name).text
        if kind == "named"
        else (models_dir() / "templates" / name).read_text()
    )
    kwargs = default_template_kwargs(text)
    assert kwargs == expected
    probe = [{"role": "user", "content": "Hi"}]
    assert render_plain(text, probe, generation_prompt=True, **kwargs) == render_plain(
        text, probe, generation_prompt=True
    )
    args = server_args(tmp_path / "m.gguf", port=8080, kwargs=kwargs)
    if kwargs:
        assert args[args.index("--chat-template-kwargs") + 1] == json.dumps(kwargs)
    else:
        assert "--chat-template-kwargs" not in args
