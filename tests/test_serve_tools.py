"""Tool calls through `slm serve default` (llama.cpp engine, SmolLM2's template), with the official
openai client: `tools` reach llama-server, rendered the way training renders them (the template
knows nothing of tools, so they go in the system prompt: served and trained prompts are the same
tokens); answers parse streamed and not; malformed `tools` / `tool_choice` are an OpenAI-shaped 400
before any stream header. The 135M model rarely calls a tool, so the `tool_calls` wire format is
checked on the gateway's own pieces (delta merging, chunks, response body)."""

from __future__ import annotations

import json
from typing import Any

import httpx
import openai
import pytest

from serve_helpers import ServerProcess, needs_llama_server

CONFIG = {
    "llamacpp": {"ctx_size": 2048, "parallel": 1, "threads": 1},
    "limits": {"request_timeout_s": 300},
    "cache": {"enabled": False},
}
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_order_status",
            "description": "Look up the shipping status of an order by its order number.",
            "parameters": {
                "type": "object",
                "properties": {"order_id": {"type": "string", "description": "e.g. A-12345"}},
                "required": ["order_id"],
            },
        },
    }
]
ASK = [{"role": "user", "content": "Where is my order A-12345?"}]
CALLED = [
    *ASK,
    {
        "role": "assistant",
        "tool_calls": [
            {
                "id": "call_1",
                "type": "function",
                "function": {"name": "get_order_status", "arguments": '{"order_id": "A-12345"}'},
            }
        ],
    },
    {"role": "tool", "tool_call_id": "call_1", "content": '{"status": "shipped"}'},
]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    home = tmp_path_factory.mktemp("serve-tools-home")
    with ServerProcess(["default"], config=CONFIG, env={"SLM_HOME": str(home)}) as srv:
        yield srv


@pytest.fixture(scope="module")
def trained_length(embedded_model_dir):
    """Prompt tokens of a conversation as `slm train` renders it (tools and all)."""
    from transformers import AutoTokenizer

    from slmkit.data.template import ChatRenderer, resolve_chat_template

    tokenizer = AutoTokenizer.from_pretrained(embedded_model_dir)
    renderer = ChatRenderer(tokenizer, resolve_chat_template(tokenizer))

    def length(messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None) -> int:
        return renderer.length(messages, tools, generation_prompt=True)

    return length


def engine_url(server: ServerProcess) -> str:
    (child,) = server.engine_children()
    cmd = child.cmdline()
    return f"http://127.0.0.1:{cmd[cmd.index('--port') + 1]}"


def check_tool_calls(calls: list[Any]) -> None:
    names = {t["function"]["name"] for t in TOOLS}
    for call in calls:
        assert call.type == "function" and call.id and call.function.name in names
        assert isinstance(json.loads(call.function.arguments), dict)


@needs_llama_server
@pytest.mark.parametrize("messages", [ASK, CALLED], ids=["ask", "after-a-call"])
def test_served_prompt_is_the_trained_prompt(
    server: ServerProcess, trained_length, messages: list[dict[str, Any]]
) -> None:
    client = server.client()
    params = {"model": "default", "messages": messages, "max_tokens": 1, "temperature": 0}
    with_tools = client.chat.completions.create(**params, tools=TOOLS)
    without = client.chat.completions.create(**params)
    # llama-server counted the tokens it was given: the tool schema is in the prompt, exactly
    # as training renders it
    assert with_tools.usage.prompt_tokens == trained_length(messages, TOOLS)
    assert without.usage.prompt_tokens == trained_length(messages, None)
    assert with_tools.usage.prompt_tokens > without.usage.prompt_tokens + 30


@needs_llama_server
def test_rendered_prompt_holds_the_tool_description(server: ServerProcess) -> None:
    from slmkit.models.messages import prepare_messages

    engine = engine_url(server)
    template = httpx.get(engine + "/props").json()["chat_template"]
    plain = httpx.post(engine + "/apply-template", json={"messages": ASK, "tools": TOOLS})
    assert "get_order_status" not in plain.json()["prompt"]  # why the gateway renders them
    served = prepare_messages(ASK, template, TOOLS)
    prompt = httpx.post(engine + "/apply-template", json={"messages": served}).json()["prompt"]
    assert TOOLS[0]["function"]["description"] in prompt and '"order_id"' in prompt


@needs_llama_server
@pytest.mark.parametrize("tool_choice", ["auto", "required", "none"])
def test_streamed_and_plain_answers_parse_and_agree(server: ServerProcess, tool_choice) -> None:
    client = server.client()
    params = {
        "model": "default",
        "messages": ASK,
        "tools": TOOLS,
        "tool_choice": tool_choice,
        "max_tokens": 24,
        "temperature": 0,
    }
    reply = client.chat.completions.create(**params)
    message = reply.choices[0].message
    assert message.role == "assistant"
    assert reply.choices[0].finish_reason in ("stop", "length", "tool_calls")
    if message.tool_calls:
        check_tool_calls(message.tool_calls)
    else:
        assert isinstance(message.content, str) and message.content
    chunks = list(client.chat.completions.create(**params, stream=True))
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == (message.content or "")
    streamed_calls = [c for c in chunks if c.choices and c.choices[0].delta.tool_calls]
    assert bool(streamed_calls) == bool(message.tool_calls)
    assert chunks[-1].choices[0].finish_reason == reply.choices[0].finish_reason


# (patch of the request body, param the error names)
MALFORMED = [
    ({"tools": [{"type": "function"}]}, "tools.0.function"),
    ({"tools": [{"type": "retrieval", "function": TOOLS[0]["function"]}]}, "tools.0.type"),
    ({"tools": [{"type": "function", "function": {"name": "has space"}}]}, "tools.0.function.name"),
    ({"tools": [{"type": "function", "function": {"description": "no name"}}]}, "tools.0.function.name"),
    ({"tools": []}, "tools"),
    ({"tools": {"type": "function"}}, "tools"),
    ({"tools": TOOLS, "tool_choice": "always"}, "tool_choice"),
    ({"tool_choice": "required"}, "tool_choice"),
    (
        {"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "other"}}},
        "tool_choice",
    ),
]  # fmt: skip


@needs_llama_server
@pytest.mark.parametrize(("patch", "param"), MALFORMED)
@pytest.mark.parametrize("stream", [False, True])
def test_malformed_tools_are_a_400_before_any_stream_header(
    server: ServerProcess, patch: dict[str, Any], param: str, stream: bool
) -> None:
    body = {"model": "default", "messages": ASK, "max_tokens": 4, "stream": stream, **patch}
    with httpx.stream(
        "POST", server.base_url + "/v1/chat/completions", json=body, timeout=60
    ) as response:
        raw = response.read()
    assert response.status_code == 400, raw
    assert response.headers["content-type"].startswith("application/json")
    error = json.loads(raw)["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error" and error["param"] == param, error
    assert error["code"] in ("invalid_value", "missing_required_parameter")


@needs_llama_server
def test_openai_client_sees_bad_request(server: ServerProcess) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        server.client().chat.completions.create(
            model="default",
            messages=ASK,  # type: ignore[arg-type]
            tools=[{"type": "function", "function": {"name": "x y"}}],  # type: ignore[list-item]
            max_tokens=4,
        )
    assert err.value.status_code == 400 and err.value.param == "tools.0.function.name"


def test_tool_call_deltas_are_merged_and_sent_in_openai_shape() -> None:
    """The gateway's wire pieces, fed the deltas llama-server streams for a tool call."""
    from slmkit.serve.engines.base import Delta
    from slmkit.serve.generation import Outcome
    from slmkit.serve.openai_wire import ChunkWriter, completion_body
    from slmkit.serve.protocol import ChatCompletionRequest, generation_request

    parts = [
        {"index": 0, "id": "call_9", "type": "function", "function": {"name": "get_order_status"}},
        {"index": 0, "function": {"arguments": '{"order_'}},
        {"index": 0, "function": {"arguments": 'id": "A-1"}'}},
    ]
    outcome = Outcome()
    for part in parts:
        outcome.absorb(Delta(extra={"tool_calls": [part]}), started=0.0)
    outcome.absorb(Delta(finish_reason="tool_calls", prompt_tokens=9, completion_tokens=7), 0.0)
    body = ChatCompletionRequest.model_validate(
        {"model": "default", "messages": ASK, "tools": TOOLS, "tool_choice": "required"}
    )
    gen = generation_request(body, "default", 16)
    assert gen.passthrough == {"tools": TOOLS, "tool_choice": "required"}
    reply = openai.types.chat.ChatCompletion.model_validate(
        completion_body("chatcmpl-1", gen, "", outcome, 0)
    )
    assert reply.choices[0].finish_reason == "tool_calls"
    (call,) = reply.choices[0].message.tool_calls or []
    check_tool_calls([call])
    assert json.loads(call.function.arguments) == {"order_id": "A-1"}
    chunk = ChunkWriter("chatcmpl-1", gen, 0).content("", {"tool_calls": parts[:1]})
    parsed = openai.types.chat.ChatCompletionChunk.model_validate_json(chunk[len(b"data: ") :])
    assert parsed.choices[0].delta.tool_calls[0].function.name == "get_order_status"  # type: ignore[index, union-attr]


def test_tool_calls_after_multi_part_content_become_a_text_part() -> None:
    # found by the schemathesis fuzz: a developer message with content parts and tool_calls
    # made `list + str` a 500; the calls' JSON is added as one more text part
    from slmkit.models.messages import TOOLS_PREAMBLE, prepare_messages

    call = {"type": "function", "function": {"name": "lookup", "arguments": "{}"}}
    message = {
        "role": "assistant",
        "content": [{"type": "text", "text": "a"}],
        "tool_calls": [call],
    }
    (prepared,) = prepare_messages([message], "{{ messages }}", None)
    assert prepared["content"][0] == {"type": "text", "text": "a"}
    assert prepared["content"][1]["type"] == "text"
    assert '"name": "lookup"' in prepared["content"][1]["text"]
    system = {"role": "system", "content": [{"type": "text", "text": "be brief"}]}
    (with_tools, _) = prepare_messages([system, message], "{{ messages }}", TOOLS)
    assert with_tools["content"][0]["text"] == "be brief"
    assert TOOLS_PREAMBLE in with_tools["content"][-1]["text"]
    assert "get_order_status" in with_tools["content"][-1]["text"]
