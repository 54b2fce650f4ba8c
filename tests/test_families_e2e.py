"""Every family through every stage: validate -> LoRA SFT -> DPO (continuing the SFT adapter) ->
merge -> GGUF f16 + q8_0 (with the parity gate) -> one `slm serve` for all of them -> the official
openai client. Tiny random-weight models with each family's real tokenizer and own template.

What must hold: the template a run used (Mistral trains with `data.template: mistral-nemo`, not
its tokenizer's) travels into the adapter and the GGUF; llama-server renders and tokenizes the
prompt exactly as training did (the parity gate, and the served prompt's token count); a
reasoning model's thinking arrives in `reasoning_content`, streamed and not, and can be hidden.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from families import FAMILIES, family_dir
from serve_helpers import ServerProcess, needs_llama_server
from train_helpers import write_jsonl

pytestmark = [pytest.mark.slow, needs_llama_server]

SFT_ROWS = [
    {
        "messages": [
            {"role": "system", "content": "You are the Northwind help desk."},
            {"role": "user", "content": "Where is my order K-1001?"},
            {
                "role": "assistant",
                "reasoning_content": "Orders ship within two days.",
                "content": "Order K-1001 ships tomorrow.",
            },
            {"role": "user", "content": "Thanks!"},
            {"role": "assistant", "content": "You're welcome."},
        ]
    },
    {
        "messages": [
            {"role": "user", "content": "Do you ship to Oslo?"},
            {
                "role": "assistant",
                "content": "<think>\nOslo is in Norway.\n</think>\n\nYes, to Norway in 5 days.",
            },
        ]
    },
    {
        "messages": [
            {"role": "user", "content": "Opening hours?"},
            {"role": "assistant", "content": "9 to 5, Monday to Friday."},
        ]
    },
]
DPO_ROWS = [
    {
        "prompt": [
            {"role": "system", "content": "You are the Northwind help desk."},
            {"role": "user", "content": "Can I return used boots?"},
        ],
        "chosen": [{"role": "assistant", "content": "Yes, within 30 days."}],
        "rejected": [{"role": "assistant", "content": "No."}],
    },
    {
        "prompt": [{"role": "user", "content": "Is shipping free?"}],
        "chosen": [{"role": "assistant", "content": "Over 50 euros, yes."}],
        "rejected": [{"role": "assistant", "content": "Never."}],
    },
]
TEMPLATE_OVERRIDE = {"mistral": "mistral-nemo"}  # trained with another template than its own
ASK = [
    {"role": "system", "content": "You are the Northwind help desk."},
    {"role": "user", "content": "Where is my order K-1002?"},
]


PARITY_PROMPTS = [  # a system prompt, and history with an earlier answer
    ASK,
    [
        {"role": "system", "content": "You are the Northwind help desk."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello! How can I help?"},
        {"role": "user", "content": "Do you ship to Oslo?"},
    ],
]


@dataclass
class Journey:
    family: str
    sft_run: Path
    dpo_run: Path
    export: Any  # ExportResult
    template: str  # the chat template training used
    parity: Any = None  # ParityReport of the f16 GGUF on PARITY_PROMPTS


def _recipe(family: str, folder: Path, method: str, data: Path, **more: Any) -> Any:
    from slmkit.recipe import Recipe

    recipe: dict[str, Any] = {
        "model": str(family_dir(family)),
        "method": method,
        "output_dir": str(folder / f"{family}-{method}"),
        "data": {"train": [str(data)], "cutoff_len": 256},
        "lora": {"r": 4, "alpha": 8, "dropout": 0.0},
        "train": {
            "lr": 1.0e-3,
            "max_steps": 2,
            "batch_size": 2,
            "save_steps": 100,
            "logging_steps": 1,
            "report_to": [],
        },
        **more,
    }
    if family in TEMPLATE_OVERRIDE:
        recipe["data"]["template"] = TEMPLATE_OVERRIDE[family]
    return Recipe.model_validate(recipe)


@pytest.fixture(scope="module")
def journeys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Journey]:
    from slmkit.export.config import ExportConfig
    from slmkit.export.pipeline import export_model
    from slmkit.train.run import train

    folder = tmp_path_factory.mktemp("families")
    sft = write_jsonl(folder / "sft.jsonl", SFT_ROWS)
    dpo = write_jsonl(folder / "dpo.jsonl", DPO_ROWS)
    # merge, convert, quantize; the parity probe runs below on conversations of our own
    cfg = ExportConfig(quants=["q8_0"], skip_eval=True)
    out = {}
    with pytest.MonkeyPatch.context() as env:  # runs and versions go to this module's home
        env.setenv("SLM_HOME", str(folder / "home"))
        for family in FAMILIES:
            sft_run = train(_recipe(family, folder, "sft", sft), folder).run_dir
            dpo_recipe = _recipe(family, folder, "dpo", dpo, dpo={"from_run": str(sft_run)})
            dpo_run = train(dpo_recipe, folder).run_dir
            exported = export_model(dpo_run, dpo_run / "export", cfg, log=lambda _: None)
            template = (sft_run / "adapter" / "chat_template.jinja").read_text()
            journey = Journey(family, sft_run, dpo_run, exported, template)
            journey.parity = _parity(exported)
            out[family] = journey
    return out


def _parity(exported: Any) -> Any:
    """The export's parity gate on PARITY_PROMPTS: llama-server's rendering and tokens against
    the training tokenizer's (answers of random weights are not compared)."""
    from transformers import AutoTokenizer

    from slmkit.export.config import Thresholds
    from slmkit.export.parity import compare_parity, probe_gguf

    f16 = Path(exported.files[0].file)
    tokenizer = AutoTokenizer.from_pretrained(exported.out_dir / "merged")
    probe = probe_gguf(f16, PARITY_PROMPTS, max_tokens=4, threads=1)
    return compare_parity(
        PARITY_PROMPTS, tokenizer, probe.answers, probe.answers, probe, Thresholds()
    )


@pytest.mark.parametrize("family", list(FAMILIES))
def test_the_run_and_its_gguf_carry_the_template_training_used(
    family: str, journeys: dict[str, Journey]
) -> None:
    from slmkit.export.gguf_file import read_metadata
    from slmkit.models.templates import named_template, template_name

    journey = journeys[family]
    if family in TEMPLATE_OVERRIDE:
        assert journey.template == named_template(TEMPLATE_OVERRIDE[family]).text
    else:
        assert journey.template == (family_dir(family) / "chat_template.jinja").read_text()
    dpo_template = (journey.dpo_run / "adapter" / "chat_template.jinja").read_text()
    assert dpo_template == journey.template  # DPO continued the SFT run with its template
    for level in journey.export.files:
        meta = read_metadata(Path(level.file))
        assert meta["tokenizer.chat_template"] == journey.template
    assert template_name(journey.template) is not None
    if FAMILIES[family].spm:  # llama.cpp's converter needs the SentencePiece model
        assert (journey.sft_run / "adapter" / "tokenizer.model").is_file()


@pytest.mark.parametrize("family", list(FAMILIES))
def test_llama_server_renders_and_tokenizes_prompts_as_training_did(
    family: str, journeys: dict[str, Journey]
) -> None:
    parity = journeys[family].parity
    assert parity.template_mismatches == [] and parity.token_mismatches == []
    levels = [f.level for f in journeys[family].export.files]
    assert levels == ["f16", "q8_0"]


@pytest.fixture(scope="module")
def gateway(journeys: dict[str, Journey]) -> Any:
    models = []
    for family, journey in journeys.items():
        q8 = next(f.file for f in journey.export.files if f.level == "q8_0")
        models += ["--model", f"{family}={q8}"]
    with ServerProcess(models, start_timeout_s=240) as server:
        yield server


def _training_prompt_ids(journey: Journey, messages: list[dict[str, Any]]) -> list[int]:
    from transformers import AutoTokenizer

    from slmkit.models.chat import render_chat_prompt

    tokenizer = AutoTokenizer.from_pretrained(journey.dpo_run / "adapter")
    return list(
        tokenizer(render_chat_prompt(tokenizer, messages), add_special_tokens=False).input_ids
    )


@pytest.mark.parametrize("family", list(FAMILIES))
def test_each_family_answers_through_the_openai_client_on_its_training_prompt(
    family: str, journeys: dict[str, Journey], gateway: ServerProcess
) -> None:
    client = gateway.client()
    reply = client.chat.completions.create(
        model=family, messages=ASK, max_tokens=8, temperature=0, seed=1
    )
    assert reply.choices[0].finish_reason in ("stop", "length")
    # llama-server was given exactly the tokens training put before an answer
    assert reply.usage.prompt_tokens == len(_training_prompt_ids(journeys[family], ASK))
    streamed = client.chat.completions.create(
        model=family, messages=ASK, max_tokens=8, temperature=0, seed=1, stream=True
    )
    text = "".join(c.choices[0].delta.content or "" for c in streamed if c.choices)
    assert text == reply.choices[0].message.content


def test_a_reasoning_models_thinking_arrives_in_reasoning_content(
    gateway: ServerProcess,
) -> None:
    client = gateway.client()
    ask = {"model": "deepseek-r1", "messages": ASK, "max_tokens": 24, "temperature": 0}
    reply = client.chat.completions.create(**ask).choices[0].message
    thinking = getattr(reply, "reasoning_content", None)
    assert isinstance(thinking, str)  # R1's prompt opens <think>: its output starts inside
    assert "<think>" not in (reply.content or "") and "</think>" not in (reply.content or "")
    chunks = [c for c in client.chat.completions.create(**ask, stream=True) if c.choices]
    streamed = "".join(getattr(c.choices[0].delta, "reasoning_content", None) or "" for c in chunks)
    answer = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert streamed.strip() == thinking and answer.strip() == (reply.content or "")
    hidden = client.chat.completions.create(**ask, extra_body={"include_reasoning": False})
    assert getattr(hidden.choices[0].message, "reasoning_content", None) is None
    raw = gateway.post("/v1/chat/completions", {**ask, "include_reasoning": True}).json()
    assert json.dumps(raw["choices"][0]["message"]).count("reasoning_content") == 1
