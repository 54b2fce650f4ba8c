"""`POST /v1/embeddings` with `embeddings.enabled: true`, driven by the official openai client: the
vectors equal all-MiniLM-L6-v2's computed here directly (one text at a time, mean pooling as the
model's own pooling config says), in both wire formats, for single and batch input; bad input is an
OpenAI-shaped 400."""

from __future__ import annotations

import base64
import json
import math
import struct
from typing import Any

import openai
import pytest

from serve_helpers import ServerProcess, needs_llama_server

pytestmark = needs_llama_server

EMBEDDER = "all-minilm-l6-v2"
CONFIG = {
    "llamacpp": {"ctx_size": 512, "parallel": 1, "threads": 1},
    "embeddings": {"enabled": True},
}
TEXTS = [
    "How long do I have to return an item?",
    "Returns are accepted within 41 days of delivery, unused and in the original box.",
    "The cat sat on the mat.",
]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    home = tmp_path_factory.mktemp("serve-embeddings-home")
    with ServerProcess(["default"], config=CONFIG, env={"SLM_HOME": str(home)}) as srv:
        yield srv


@pytest.fixture(scope="module")
def minilm() -> tuple[list[list[float]], list[int]]:
    """Reference vectors and token counts of TEXTS: the packaged model, one text per forward pass
    (no padding), pooled the way its sentence-transformers config says."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    from slmkit.models.embedder import minilm_path

    path = minilm_path()
    pooling = json.loads((path / "1_Pooling" / "config.json").read_text())
    assert pooling["pooling_mode_mean_tokens"] and not pooling["pooling_mode_cls_token"]
    tokenizer, model = AutoTokenizer.from_pretrained(path), AutoModel.from_pretrained(path).eval()
    vectors, counts = [], []
    with torch.inference_mode():
        for text in TEXTS:
            ids = tokenizer(text, return_tensors="pt")
            pooled = model(**ids).last_hidden_state[0].mean(dim=0)
            vectors.append((pooled / pooled.norm()).tolist())
            counts.append(int(ids["input_ids"].shape[1]))
    return vectors, counts


def cosine(a: list[float], b: list[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    return dot / math.sqrt(sum(x * x for x in a) * sum(y * y for y in b))


def test_the_embedder_is_listed_as_a_model(server: ServerProcess) -> None:
    models = {m.id: m.owned_by for m in server.client().models.list().data}
    assert models == {"default": "slmkit:llamacpp", EMBEDDER: "slmkit:embeddings"}


@pytest.mark.parametrize("encoding_format", [None, "float", "base64"])
def test_single_input_equals_minilm(server: ServerProcess, minilm, encoding_format) -> None:
    # unless told otherwise the client asks for base64 and decodes it itself; asked for base64
    # explicitly, it hands over the string: little-endian float32s
    extra = {"encoding_format": encoding_format} if encoding_format else {}
    reply = server.client().embeddings.create(model=EMBEDDER, input=TEXTS[0], **extra)
    assert reply.model == EMBEDDER and len(reply.data) == 1
    vector: Any = reply.data[0].embedding
    if encoding_format == "base64":
        raw = base64.b64decode(vector)
        vector = list(struct.unpack(f"<{len(raw) // 4}f", raw))
    assert len(vector) == 384
    assert math.isclose(sum(x * x for x in vector), 1.0, rel_tol=1e-4)
    assert cosine(vector, minilm[0][0]) > 0.999
    assert reply.usage.prompt_tokens == reply.usage.total_tokens == minilm[1][0]


def test_batch_input_keeps_order_and_matches_each_text(server: ServerProcess, minilm) -> None:
    reference, counts = minilm
    reply = server.client().embeddings.create(model=EMBEDDER, input=TEXTS)
    assert [d.index for d in reply.data] == [0, 1, 2]
    vectors = [d.embedding for d in reply.data]
    assert all(len(v) == 384 for v in vectors)
    for got, want in zip(vectors, reference, strict=True):
        assert cosine(got, want) > 0.999  # padding in the batch changes nothing
    assert cosine(vectors[0], vectors[2]) < 0.9  # different texts differ: the check has teeth
    assert cosine(vectors[0], vectors[1]) > cosine(
        vectors[0], vectors[2]
    )  # related texts are closer
    assert reply.usage.prompt_tokens == sum(counts)


# (body, status, code, param)
BAD_INPUTS = [
    ({"model": EMBEDDER}, 400, "missing_required_parameter", "input"),
    ({"model": EMBEDDER, "input": []}, 400, "invalid_value", "input"),
    ({"model": EMBEDDER, "input": ""}, 400, "invalid_value", "input"),
    ({"model": EMBEDDER, "input": ["hi", ""]}, 400, "invalid_value", "input"),
    ({"model": EMBEDDER, "input": 42}, 400, "invalid_value", None),
    ({"model": EMBEDDER, "input": "hi", "encoding_format": "int8"}, 400, "invalid_value", None),
    ({"model": EMBEDDER, "input": "hi", "dimensions": 128}, 400, "invalid_value", "dimensions"),
    ({"model": "default", "input": "hi"}, 404, "model_not_found", "model"),
]


@pytest.mark.parametrize(("body", "status", "code", "param"), BAD_INPUTS)
def test_bad_input_gives_an_openai_shaped_error(
    server: ServerProcess, body, status, code, param
) -> None:
    response = server.post("/v1/embeddings", body)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error" and error["code"] == code and error["message"]
    if param is not None:
        assert error["param"] == param
    else:
        assert error["param"] is None or error["param"].split(".")[0] in body


def test_openai_client_raises_bad_request(server: ServerProcess) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        server.client().embeddings.create(model=EMBEDDER, input=[], encoding_format="float")
    assert err.value.status_code == 400 and err.value.param == "input"


def test_embeddings_off_is_a_404() -> None:
    from fastapi.testclient import TestClient

    from slmkit.serve.app import create_app
    from slmkit.serve.config import ServeConfig
    from slmkit.serve.gateway import Gateway

    app = create_app(Gateway(ServeConfig(), {}))  # the default config loads no embedder
    with TestClient(app) as client:
        response = client.post("/v1/embeddings", json={"model": EMBEDDER, "input": "hi"})
    assert response.status_code == 404 and response.json()["error"]["code"] == "model_not_found"
