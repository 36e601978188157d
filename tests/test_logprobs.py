"""Logprobs on every text route that has them, as each protocol spells them, over a live server:
Ollama's `/api/generate` and `/api/chat` (raw HTTP and the `ollama` client), OpenAI's chat and
legacy completions (the `openai` SDK)."""

from __future__ import annotations

import json
import math
from typing import Any

import httpx
import ollama
import openai
import pytest

from tests.conftest import MODEL

GREEDY = {"temperature": 0, "num_predict": 12}
ASK = [{"role": "user", "content": "Name three colours."}]


@pytest.fixture(scope="module")
def http(base_url: str) -> httpx.Client:
    with httpx.Client(base_url=base_url, timeout=120) as client:
        yield client


@pytest.fixture(scope="module")
def oai(base_url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{base_url}/v1", api_key="ollama", max_retries=0,
                         timeout=120)


def assert_token_object(item: dict[str, Any], top: int | None) -> None:
    """Ollama's and OpenAI chat's per-token object; `top` None: no `top_logprobs` key."""
    assert isinstance(item["token"], str) and item["logprob"] <= 0
    assert item["bytes"] == list(item["token"].encode()) or "\ufffd" in item["token"]
    if top is None:
        assert "top_logprobs" not in item
        return
    alternatives = item["top_logprobs"]
    assert len(alternatives) == top
    values = [alt["logprob"] for alt in alternatives]
    assert values == sorted(values, reverse=True)
    if top:  # greedy: the chosen token is the likeliest
        assert alternatives[0] == {k: item[k] for k in ("token", "logprob", "bytes")}


def joined(items: list[dict[str, Any]]) -> str:
    return bytes(b for item in items for b in item["bytes"]).decode()


def test_generate_streams_each_chunks_logprobs_and_joins_them_when_not_streamed(
        http: httpx.Client) -> None:
    body = {"model": MODEL, "prompt": "Name three colours.", "options": GREEDY,
            "logprobs": True, "top_logprobs": 3}
    with http.stream("POST", "/api/generate", json=body) as resp:
        lines = [json.loads(line) for line in resp.iter_lines()]
    *chunks, final = lines
    assert all(list(c)[-1] == "logprobs" for c in chunks)  # last, as Ollama orders it
    streamed = [item for c in chunks for item in c["logprobs"]]
    assert len(streamed) == final["eval_count"] == 12 and "logprobs" not in final
    for item in streamed:
        assert_token_object(item, top=3)
    assert joined(streamed) == "".join(c["response"] for c in chunks)
    single = http.post("/api/generate", json={**body, "stream": False}).json()
    assert single["logprobs"] == streamed and list(single)[-1] == "logprobs"


def test_chat_logprobs_without_alternatives_through_the_ollama_client(base_url: str) -> None:
    client = ollama.Client(host=base_url, timeout=120)
    resp = client.chat(model=MODEL, messages=ASK, options=GREEDY, logprobs=True)
    assert resp.done_reason == "length" and len(resp.logprobs) == resp.eval_count == 12
    assert "".join(lp.token for lp in resp.logprobs) == resp.message.content
    assert all(lp.logprob <= 0 and not lp.top_logprobs for lp in resp.logprobs)
    raw = httpx.post(f"{base_url}/api/chat", timeout=120, json={
        "model": MODEL, "messages": ASK, "options": GREEDY, "logprobs": True,
        "stream": False}).json()
    for item in raw["logprobs"]:
        assert_token_object(item, top=None)


def test_no_logprobs_unless_asked(http: httpx.Client) -> None:
    body = {"model": MODEL, "prompt": "Hi", "options": GREEDY, "stream": False}
    assert "logprobs" not in http.post("/api/generate", json=body).json()


def test_top_logprobs_out_of_range_is_refused(http: httpx.Client) -> None:
    resp = http.post("/api/chat", json={"model": MODEL, "messages": ASK, "top_logprobs": 21})
    assert resp.status_code == 400 and "top_logprobs" in resp.json()["error"]


def test_openai_chat_logprobs_streamed_and_not(oai: openai.OpenAI) -> None:
    kw = dict(model=MODEL, messages=ASK, max_tokens=12, temperature=0, logprobs=True,
              top_logprobs=2)
    resp = oai.chat.completions.create(**kw)
    content = resp.choices[0].logprobs.content
    assert len(content) == resp.usage.completion_tokens == 12
    assert "".join(t.token for t in content) == resp.choices[0].message.content
    for token in content:
        assert_token_object(token.model_dump(exclude_none=True), top=2)
        assert math.isclose(token.top_logprobs[0].logprob, token.logprob)
    streamed = [t for chunk in oai.chat.completions.create(**kw, stream=True)
                for choice in chunk.choices if choice.logprobs
                for t in choice.logprobs.content]
    assert [t.model_dump() for t in streamed] == [t.model_dump() for t in content]
    plain = oai.chat.completions.create(**{**kw, "logprobs": False, "top_logprobs": None})
    assert plain.choices[0].logprobs is None


def test_openai_legacy_completion_logprobs_are_parallel_lists(oai: openai.OpenAI) -> None:
    resp = oai.completions.create(model=MODEL, prompt="Name three colours.", max_tokens=12,
                                  temperature=0, logprobs=2)
    lp = resp.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == 12
    assert "".join(lp.tokens) == resp.choices[0].text
    assert lp.text_offset == [sum(len(t) for t in lp.tokens[:i]) for i in range(12)]
    for token, value, top in zip(lp.tokens, lp.token_logprobs, lp.top_logprobs):
        assert value <= 0 and len(top) == 2 and top[token] == value
    chunks = list(oai.completions.create(model=MODEL, prompt="Name three colours.",
                                         max_tokens=12, temperature=0, logprobs=2, stream=True))
    offsets = [o for c in chunks if c.choices[0].logprobs
               for o in c.choices[0].logprobs.text_offset]
    assert offsets == lp.text_offset


def test_responses_logprobs_when_included(oai: openai.OpenAI) -> None:
    kw = dict(model=MODEL, input="Name three colours.", max_output_tokens=12, temperature=0,
              include=["message.output_text.logprobs"], top_logprobs=2)
    resp = oai.responses.create(**kw)
    part = resp.output[0].content[0]
    assert len(part.logprobs) == resp.usage.output_tokens == 12
    assert "".join(t.token for t in part.logprobs) == part.text == resp.output_text
    for token in part.logprobs:
        assert_token_object(token.model_dump(exclude_none=True), top=2)
    events = list(oai.responses.create(**kw, stream=True))
    deltas = [t for e in events if e.type == "response.output_text.delta" for t in e.logprobs]
    done = next(e for e in events if e.type == "response.output_text.done")
    assert [t.model_dump() for t in deltas] == [t.model_dump() for t in done.logprobs]
    assert [t.model_dump() for t in done.logprobs] == [t.model_dump() for t in part.logprobs]
    plain = oai.responses.create(**{**kw, "include": None, "top_logprobs": None})
    assert plain.output[0].content[0].logprobs == []
