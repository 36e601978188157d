"""/v1 on the native features: `response_format` through the structured-output grammar and
`/v1/embeddings` through the embedding core, with the official `openai` SDK (tools and
reasoning on /v1 are in test_tools_thinking.py)."""

from __future__ import annotations

import base64
import json
import struct

import jsonschema
import openai
import pytest

from tests.conftest import MODEL

GREEDY = {"temperature": 0, "seed": 42}
PERSON = {"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
          "required": ["name", "age"]}
ASK_PERSON = [{"role": "user", "content": "Describe a person as JSON with a name and an age."}]


@pytest.fixture(scope="module")
def client(base_url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{base_url}/v1", api_key="ollama", max_retries=0,
                         timeout=120)


def test_json_object_mode_returns_json(client: openai.OpenAI) -> None:
    resp = client.chat.completions.create(model=MODEL, messages=ASK_PERSON, max_tokens=80,
                                          response_format={"type": "json_object"}, **GREEDY)
    assert resp.choices[0].finish_reason == "stop"
    assert isinstance(json.loads(resp.choices[0].message.content), dict)


def test_json_schema_is_followed_streamed_or_not(client: openai.OpenAI) -> None:
    fmt = {"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON}}
    resp = client.chat.completions.create(model=MODEL, messages=ASK_PERSON, max_tokens=80,
                                          response_format=fmt, **GREEDY)
    jsonschema.validate(json.loads(resp.choices[0].message.content), PERSON)
    chunks = client.chat.completions.create(model=MODEL, messages=ASK_PERSON, max_tokens=80,
                                            response_format=fmt, stream=True, **GREEDY)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == resp.choices[0].message.content


def test_embeddings_float_base64_and_dimensions(client: openai.OpenAI) -> None:
    resp = client.embeddings.create(model=MODEL, input=["hello", "world"],
                                    encoding_format="float")
    assert resp.object == "list" and resp.model == MODEL
    assert [d.index for d in resp.data] == [0, 1]
    vector = resp.data[0].embedding
    assert len(vector) == 576 and all(isinstance(x, float) for x in vector)
    assert resp.usage.prompt_tokens == resp.usage.total_tokens > 0

    raw = client.embeddings.with_raw_response.create(model=MODEL, input="hello",
                                                     encoding_format="base64").http_response
    encoded = raw.json()["data"][0]["embedding"]
    decoded = struct.unpack(f"<{len(vector)}f", base64.b64decode(encoded))
    assert decoded == pytest.approx(vector, abs=1e-6)

    short = client.embeddings.create(model=MODEL, input="hello", dimensions=8)
    assert len(short.data[0].embedding) == 8
