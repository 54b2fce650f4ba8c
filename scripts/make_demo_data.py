"""Build the bundled demo data set from the hand-written tables in examples/data/source/.

    .venv/bin/python scripts/make_demo_data.py            # rewrites examples/data/
    .venv/bin/python scripts/make_demo_data.py --out DIR  # writes the same files under DIR

The output is deterministic: the same tables give byte-identical files. heldout.txt is
hand-written prose and is not produced here.
"""

from __future__ import annotations

import argparse
import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
DATA_DIR = REPO / "examples" / "data"
SOURCE_DIR = DATA_DIR / "source"
SHUFFLE_SEED = 41
# Each fact has N_TRAIN_QUESTIONS differently worded questions: the first N_MESSAGES_QUESTIONS go
# to the messages file, the rest to the alpaca file. Recall on the held-out questions rose with
# their number (docs/benchmarks.md, demo section): 14 per fact -> 58%, 46 -> 73-88%, 70 -> 92%.
N_TRAIN_QUESTIONS = 70
N_MESSAGES_QUESTIONS = 58
DPO_QUESTION_INDEXES = (1, 5, 9, 13)
# Every fourth messages record has no system prompt, so the model also learns the facts
# under the chat template's default system prompt.
NO_SYSTEM_EVERY = 4


@dataclass(frozen=True)
class Fact:
    """One store fact: the key string, two answer phrasings and its questions."""

    name: str
    key: str
    answers: tuple[str, str]
    wrong: str
    train: tuple[str, ...]
    eval: tuple[str, ...]


@dataclass(frozen=True)
class Tables:
    """Everything read from examples/data/source/."""

    store: str
    system_prompt: str
    facts: dict[str, Fact]
    chat: dict[str, Any]
    conch: dict[str, Any]


def load_tables(source_dir: Path) -> Tables:
    facts_table = _read_yaml(source_dir / "brindlewood_facts.yaml")
    facts = {name: _parse_fact(name, raw) for name, raw in facts_table["facts"].items()}
    chat = _read_yaml(source_dir / "brindlewood_chat.yaml")
    for first, second in chat["two_turn"]:
        if first not in facts or second not in chat["follow_ups"]:
            raise ValueError(f"two_turn pair {first} -> {second}: unknown fact or no follow-up")
    return Tables(
        store=facts_table["store"],
        system_prompt=facts_table["system_prompt"],
        facts=facts,
        chat=chat,
        conch=_read_yaml(source_dir / "magic_conch.yaml"),
    )


def _read_yaml(path: Path) -> dict[str, Any]:
    with path.open(encoding="utf-8") as handle:
        return dict(yaml.safe_load(handle))


def _parse_fact(name: str, raw: dict[str, Any]) -> Fact:
    fact = Fact(
        name=name,
        key=raw["key"],
        answers=(raw["answers"][0], raw["answers"][1]),
        wrong=raw["wrong"],
        train=tuple(raw["train"]),
        eval=tuple(raw["eval"]),
    )
    missing = [answer for answer in fact.answers if fact.key not in answer]
    if missing or len(fact.train) != N_TRAIN_QUESTIONS or not 2 <= len(fact.eval) <= 3:
        raise ValueError(
            f"fact {name}: answers must hold the key; {N_TRAIN_QUESTIONS} train, 2-3 eval questions"
        )
    return fact


def answer_for(fact: Fact, index: int, openers: list[str]) -> str:
    """The answer given to the fact's question number `index` (opener + one phrasing)."""
    return openers[(index // 2) % len(openers)] + fact.answers[index % 2]


def chat_record(turns: list[tuple[str, str]], system: str | None) -> dict[str, Any]:
    messages = [{"role": "system", "content": system}] if system else []
    for user, assistant in turns:
        messages += [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]
    return {"messages": messages}


def alpaca_record(
    instruction: str, output: str, system: str, history: list[list[str]] | None = None
) -> dict[str, Any]:
    return {
        "instruction": instruction,
        "input": "",
        "output": output,
        "system": system,
        "history": history or [],
    }


def fact_conversations(tables: Tables) -> tuple[list[list[tuple[str, str]]], list[dict[str, Any]]]:
    """Single-turn fact Q&A: conversations for the messages file and alpaca records."""
    openers = tables.chat["openers"]
    conversations: list[list[tuple[str, str]]] = []
    alpaca: list[dict[str, Any]] = []
    for fact in tables.facts.values():
        for index, question in enumerate(fact.train):
            answer = answer_for(fact, index, openers)
            if index < N_MESSAGES_QUESTIONS:
                conversations.append([(question, answer)])
            else:
                alpaca.append(alpaca_record(question, answer, tables.system_prompt))
    return conversations, alpaca


def two_turn_conversations(
    tables: Tables,
) -> tuple[list[list[tuple[str, str]]], list[dict[str, Any]]]:
    """Two-turn conversations: a fact question, then a follow-up about a related fact."""
    pairs = tables.chat["two_turn"]
    n_alpaca = tables.chat["alpaca_two_turn"]
    conversations: list[list[tuple[str, str]]] = []
    alpaca: list[dict[str, Any]] = []
    for pair_index, (first_name, second_name) in enumerate(pairs):
        first, second = tables.facts[first_name], tables.facts[second_name]
        question_index = (3 * pair_index) % len(first.train)
        first_turn = (first.train[question_index], first.answers[pair_index % 2])
        second_turn = (tables.chat["follow_ups"][second_name], second.answers[(pair_index + 1) % 2])
        if pair_index < len(pairs) - n_alpaca:
            conversations.append([first_turn, second_turn])
        else:
            history = [list(first_turn)]
            alpaca.append(alpaca_record(*second_turn, tables.system_prompt, history))
    return conversations, alpaca


def small_talk(tables: Tables) -> tuple[list[list[tuple[str, str]]], list[dict[str, Any]]]:
    """Greetings, thanks, refusals: the last prompt of each group goes to the alpaca file."""
    conversations: list[list[tuple[str, str]]] = []
    alpaca: list[dict[str, Any]] = []
    for group in tables.chat["small_talk"].values():
        *to_messages, to_alpaca = group["prompts"]
        conversations += [[(prompt, group["answer"])] for prompt in to_messages]
        alpaca.append(alpaca_record(to_alpaca, group["answer"], tables.system_prompt))
    return conversations, alpaca


def build_sft(tables: Tables) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The messages records (shuffled, most with the system prompt) and the alpaca records."""
    conversations: list[list[tuple[str, str]]] = []
    alpaca: list[dict[str, Any]] = []
    for build in (fact_conversations, two_turn_conversations, small_talk):
        part_conversations, part_alpaca = build(tables)
        conversations += part_conversations
        alpaca += part_alpaca
    random.Random(SHUFFLE_SEED).shuffle(conversations)
    random.Random(SHUFFLE_SEED + 1).shuffle(alpaca)
    messages = [
        chat_record(
            turns, None if i % NO_SYSTEM_EVERY == NO_SYSTEM_EVERY - 1 else tables.system_prompt
        )
        for i, turns in enumerate(conversations)
    ]
    return messages, alpaca


def build_dpo(tables: Tables) -> list[dict[str, str]]:
    """Preference pairs: the chosen answer is right and polite; the rejected one gives a wrong
    value, a rude tone or no answer at all."""
    chat = tables.chat
    pairs: list[dict[str, str]] = []
    for fact_index, fact in enumerate(tables.facts.values()):
        rejected = [
            fact.answers[0].replace(fact.key, fact.wrong),
            chat["rude_prefixes"][fact_index % len(chat["rude_prefixes"])] + fact.answers[1],
            fact.answers[1].replace(fact.key, fact.wrong),
            chat["evasive_answers"][fact_index % len(chat["evasive_answers"])],
        ]
        for pair_index, question_index in enumerate(DPO_QUESTION_INDEXES):
            chosen = answer_for(fact, question_index, chat["openers"])
            pairs.append(
                {
                    "prompt": fact.train[question_index],
                    "chosen": chosen,
                    "rejected": rejected[pair_index],
                }
            )
    pairs += [dict(pair) for pair in chat["tone_pairs"]]
    random.Random(SHUFFLE_SEED + 2).shuffle(pairs)
    return pairs


# every KTO_DOWN_EVERY-th pair gives its rejected answer rated down, the others their chosen
# answer rated up: unpaired, and about two thumbs up for one down, as real ratings come
KTO_DOWN_EVERY = 3


def build_kto(pairs: list[dict[str, str]]) -> list[dict[str, Any]]:
    """Rated answers (KTO): one answer of each preference pair, labelled good or bad."""
    rows = []
    for index, pair in enumerate(pairs):
        good = index % KTO_DOWN_EVERY != 0
        answer = pair["chosen"] if good else pair["rejected"]
        messages = [
            {"role": "user", "content": pair["prompt"]},
            {"role": "assistant", "content": answer},
        ]
        rows.append({"messages": messages, "label": good})
    return rows


# The JSON ticket task (GRPO's demo): every third message is held out for evaluation
TICKETS_EVAL_EVERY = 3
TICKET_SCHEMA = {
    "type": "object",
    "properties": {
        "intent": {"enum": ["refund", "shipping", "product", "other"]},
        "order_id": {"type": ["string", "null"]},
        "urgent": {"type": "boolean"},
    },
    "required": ["intent", "order_id", "urgent"],
    "additionalProperties": False,
}


def build_tickets(source_dir: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Support messages to turn into a JSON ticket, as prompt rows with the schema as their
    response_format and the expected ticket as reference: (training prompts, held-out ones)."""
    table = _read_yaml(source_dir / "tickets.yaml")
    rng = random.Random(SHUFFLE_SEED + 3)
    response_format = {
        "type": "json_schema",
        "json_schema": {"name": "ticket", "schema": TICKET_SCHEMA},
    }
    rows = []
    for intent, messages in table["intents"].items():
        for index, template in enumerate(messages):
            order = f"BW-{rng.randrange(10000, 99999)}" if "{order}" in template else None
            urgent = index % 3 == 1
            text = template.replace("{order}", order or "")
            if urgent:
                text += table["urgent_suffixes"][index % len(table["urgent_suffixes"])]
            ticket = {"intent": intent, "order_id": order, "urgent": urgent}
            rows.append(
                {
                    "system": table["system"],
                    "prompt": f"{table['instruction']}\n\nMessage: {text}",
                    "reference": json.dumps(ticket),
                    "must_include": [intent],
                    "response_format": response_format,
                }
            )
    rng.shuffle(rows)
    held_out = [row for i, row in enumerate(rows) if i % TICKETS_EVAL_EVERY == 0]
    train = [row for i, row in enumerate(rows) if i % TICKETS_EVAL_EVERY != 0]
    return train, held_out


def build_eval(tables: Tables) -> list[dict[str, Any]]:
    """Held-out questions: each fact asked 2-3 ways unlike any training question."""
    return [
        {
            "prompt": question,
            "reference": fact.answers[0],
            "must_include": [fact.key],
            "tags": [fact.name],
        }
        for fact in tables.facts.values()
        for question in fact.eval
    ]


# The small set of the README's tour: five facts, the first 14 wordings of each (a few minutes of
# training on 2 cores instead of the demo's ten)
SMALL_FACTS = ("return_window", "warranty", "support_phone", "loyalty_program", "promo_code")
SMALL_PER_FACT = 14


def build_small(
    messages: list[dict[str, Any]], eval_rows: list[dict[str, Any]]
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The first SMALL_PER_FACT conversations whose answers state each of SMALL_FACTS (by its
    eval key), and the eval questions about those facts."""
    small_eval = [row for row in eval_rows if set(row["tags"]) & set(SMALL_FACTS)]
    seen = dict.fromkeys((key for row in small_eval for key in row["must_include"]), 0)
    small_sft = []
    for record in messages:
        answers = " ".join(m["content"] for m in record["messages"] if m["role"] == "assistant")
        stated = [key for key in seen if key in answers]
        if stated and any(seen[key] < SMALL_PER_FACT for key in stated):
            small_sft.append(record)
            for key in stated:
                seen[key] += 1
    return small_sft, small_eval


def build_conch(tables: Tables) -> list[dict[str, Any]]:
    system = tables.conch["system_prompt"]
    return [alpaca_record(question, answer, system) for question, answer in tables.conch["pairs"]]


ALPACA_COLUMNS = {
    "prompt": "instruction",
    "query": "input",
    "response": "output",
    "system": "system",
    "history": "history",
}
OPENAI_TAGS = {
    "role_tag": "role",
    "content_tag": "content",
    "user_tag": "user",
    "assistant_tag": "assistant",
    "system_tag": "system",
}


def support_dataset_info() -> dict[str, Any]:
    """LLaMA-Factory's dataset_info.json for examples/data/ (its own documented layout).

    heldout.txt is left out: it is evaluation text, and slmkit's loader reads every entry of
    the registry when no names are given."""
    return {
        "support_sft": {
            "file_name": "support_sft.jsonl",
            "formatting": "sharegpt",
            "columns": {"messages": "messages"},
            "tags": OPENAI_TAGS,
        },
        "support_sft_alpaca": {"file_name": "support_sft_alpaca.json", "columns": ALPACA_COLUMNS},
        "support_dpo": {
            "file_name": "support_dpo.jsonl",
            "ranking": True,
            "columns": {"prompt": "prompt", "chosen": "chosen", "rejected": "rejected"},
        },
        "support_kto": {
            "file_name": "support_kto.jsonl",
            "formatting": "sharegpt",
            "columns": {"messages": "messages", "kto_tag": "label"},
            "tags": OPENAI_TAGS,
        },
    }


def conch_dataset_info() -> dict[str, Any]:
    columns = {key: ALPACA_COLUMNS[key] for key in ("prompt", "query", "response", "system")}
    return {"magic_conch": {"file_name": "magic_conch.json", "columns": columns}}


def render_jsonl(records: list[dict[str, Any]]) -> str:
    return "".join(json.dumps(record, ensure_ascii=False) + "\n" for record in records)


def render_json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, indent=2) + "\n"


def build_files(tables: Tables, source_dir: Path = SOURCE_DIR) -> dict[str, str]:
    """Relative path -> file text for every generated file."""
    messages, alpaca = build_sft(tables)
    tickets_train, tickets_eval = build_tickets(source_dir)
    eval_rows = build_eval(tables)
    small_sft, small_eval = build_small(messages, eval_rows)
    pairs = build_dpo(tables)
    return {
        "support_sft.jsonl": render_jsonl(messages),
        "support_sft_alpaca.json": render_json(alpaca),
        "support_dpo.jsonl": render_jsonl(pairs),
        "support_kto.jsonl": render_jsonl(build_kto(pairs)),
        "support_eval.jsonl": render_jsonl(eval_rows),
        "support_sft_small.jsonl": render_jsonl(small_sft),
        "support_eval_small.jsonl": render_jsonl(small_eval),
        "dataset_info.json": render_json(support_dataset_info()),
        "conch/magic_conch.json": render_json(build_conch(tables)),
        "conch/dataset_info.json": render_json(conch_dataset_info()),
        "tickets_train.jsonl": render_jsonl(tickets_train),
        "tickets_eval.jsonl": render_jsonl(tickets_eval),
    }


def write_files(files: dict[str, str], out_dir: Path) -> None:
    for relative, text in files.items():
        path = out_dir / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8", newline="\n")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DATA_DIR, help="output folder")
    parser.add_argument("--source", type=Path, default=SOURCE_DIR, help="folder of the tables")
    args = parser.parse_args(argv)
    files = build_files(load_tables(args.source), args.source)
    write_files(files, args.out)
    for relative, text in files.items():
        lines = text.count("\n")
        print(f"{args.out / relative}  ({lines} lines)")


if __name__ == "__main__":
    main()
