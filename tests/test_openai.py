"""The /v1 OpenAI-compatible API against a live server: the official `openai` SDK for the
behaviour clients see, raw httpx for the SSE framing and the error envelope."""

from __future__ import annotations

import json
from typing import Any

import httpx
import openai
import pytest

from ollamalite.registry.models_file import bundled_model_path
from tests.conftest import MODEL, PIRATE

GREEDY: dict[str, Any] = {"temperature": 0, "seed": 42}
HELLO = [{"role": "user", "content": "Name three colors."}]


@pytest.fixture(scope="module")
def client(base_url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{base_url}/v1", api_key="ollama", max_retries=0,
                         timeout=120)


@pytest.fixture(scope="module")
def http(base_url: str) -> httpx.Client:
    with httpx.Client(base_url=base_url, timeout=120) as c:
        yield c


def sse_events(http: httpx.Client, path: str, body: dict[str, Any]) -> tuple[httpx.Response,
                                                                                list[str]]:
    """The raw `data:` payloads, checking the framing: events separated by one blank line."""
    with http.stream("POST", path, json=body) as resp:
        raw = resp.read().decode()
    assert raw.endswith("\n\n"), raw[-50:]
    events = raw[:-2].split("\n\n")
    for event in events:
        assert event.startswith("data: ") and "\n" not in event, event
    return resp, [e[len("data: "):] for e in events]


# -- chat completions ---------------------------------------------------------------------------

def test_chat_completion_object(client: openai.OpenAI) -> None:
    resp = client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=12, **GREEDY)
    assert resp.object == "chat.completion" and resp.id.startswith("chatcmpl-")
    assert resp.model == MODEL and resp.system_fingerprint == "fp_ollama"
    assert isinstance(resp.created, int) and resp.created > 1_700_000_000
    [choice] = resp.choices
    assert choice.index == 0 and choice.message.role == "assistant"
    assert isinstance(choice.message.content, str) and choice.message.content.strip()
    assert choice.finish_reason in ("stop", "length") and choice.message.tool_calls is None
    usage = resp.usage
    assert usage.prompt_tokens > 5 and 0 < usage.completion_tokens <= 12
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens


def test_stream_deltas_join_to_the_non_streamed_answer(client: openai.OpenAI) -> None:
    whole = client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=20, **GREEDY)
    chunks = list(client.chat.completions.create(
        model=MODEL, messages=HELLO, max_tokens=20, stream=True,
        stream_options={"include_usage": True}, **GREEDY))
    *content, finish, usage_chunk = chunks
    assert {c.id for c in chunks} == {chunks[0].id} and chunks[0].id.startswith("chatcmpl-")
    assert {c.created for c in chunks} == {chunks[0].created}
    assert all(c.object == "chat.completion.chunk" and c.model == MODEL for c in chunks)
    assert content[0].choices[0].delta.role == "assistant"
    assert all(c.choices[0].delta.role is None for c in content[1:])
    assert all(c.choices[0].finish_reason is None for c in content)
    text = "".join(c.choices[0].delta.content for c in content)
    assert text == whole.choices[0].message.content
    assert finish.choices[0].delta.content is None
    assert finish.choices[0].finish_reason == whole.choices[0].finish_reason
    # The second request found its prompt in the slot's cache: usage still counts all of it.
    assert usage_chunk.choices == [] and usage_chunk.usage == whole.usage


def test_max_tokens_ends_with_length(client: openai.OpenAI) -> None:
    for limit in ({"max_tokens": 5}, {"max_completion_tokens": 4}):
        resp = client.chat.completions.create(model=MODEL, messages=HELLO, **limit, **GREEDY)
        assert resp.choices[0].finish_reason == "length"
        assert resp.usage.completion_tokens == next(iter(limit.values()))


def test_stop_cuts_the_answer_before_the_stop_text(client: openai.OpenAI) -> None:
    full = client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=20, **GREEDY)
    text = full.choices[0].message.content
    word = text.split()[1]
    for stop in (word, [word, "zzzz"]):
        cut = client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=20,
                                             stop=stop, **GREEDY)
        assert cut.choices[0].finish_reason == "stop"
        assert cut.choices[0].message.content == text[:text.index(word)]


def test_content_parts_are_the_same_prompt_as_a_string(client: openai.OpenAI) -> None:
    parts = [{"role": "user", "content": [{"type": "text", "text": HELLO[0]["content"]}]}]
    a = client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=8, **GREEDY)
    b = client.chat.completions.create(model=MODEL, messages=parts, max_tokens=8, **GREEDY)
    assert a.choices[0].message.content == b.choices[0].message.content
    assert a.usage.prompt_tokens == b.usage.prompt_tokens


def test_developer_role_is_a_system_prompt(client: openai.OpenAI) -> None:
    def ask(role: str) -> Any:
        return client.chat.completions.create(
            model=MODEL, max_tokens=8, **GREEDY,
            messages=[{"role": role, "content": "You only answer in French."}, *HELLO])
    dev, system = ask("developer"), ask("system")
    assert dev.choices[0].message.content == system.choices[0].message.content
    assert dev.usage.prompt_tokens == system.usage.prompt_tokens


def test_sampling_defaults_are_openai_s_and_override_models_yaml(client: openai.OpenAI) -> None:
    """`pirate` has temperature 0 in models.yaml; /v1 sends 1.0 unless told, as Ollama does,
    while the model's num_predict (8) still applies."""
    def answers(**sampling: Any) -> list[str]:
        resps = [client.chat.completions.create(model=PIRATE, messages=HELLO, seed=seed,
                                                **sampling) for seed in (1, 2, 3)]
        assert all(r.usage.completion_tokens <= 8 for r in resps)
        return [r.choices[0].message.content for r in resps]

    assert len(set(answers())) > 1
    assert len(set(answers(temperature=0))) == 1


# -- completions --------------------------------------------------------------------------------

def test_text_completion(client: openai.OpenAI) -> None:
    resp = client.completions.create(model=MODEL, prompt="The sky is", max_tokens=8, **GREEDY)
    assert resp.object == "text_completion" and resp.id.startswith("cmpl-")
    assert resp.model == MODEL and resp.system_fingerprint == "fp_ollama"
    [choice] = resp.choices
    assert choice.index == 0 and choice.text.strip() and choice.finish_reason == "length"
    assert resp.usage.completion_tokens == 8 and resp.usage.prompt_tokens > 3

    chunks = list(client.completions.create(model=MODEL, prompt=["The sky is"], max_tokens=8,
                                            stream=True, stream_options={"include_usage": True},
                                            **GREEDY))
    *texts, usage_chunk = chunks
    assert "".join(c.choices[0].text for c in texts) == choice.text
    assert [c.choices[0].finish_reason for c in texts][-2:] == [None, "length"]
    assert usage_chunk.choices == [] and usage_chunk.usage == resp.usage
    assert {c.id for c in chunks} == {chunks[0].id}


def test_completion_refuses_what_it_cannot_do(client: openai.OpenAI) -> None:
    cases = [({"echo": True}, "echo: not supported"), ({"best_of": 2}, "best_of=1"),
             ({"n": 3}, "only n=1"), ({"prompt": ["a", "b"]}, "only one prompt"),
             ({"suffix": "end"}, f'"{MODEL}" does not support insert')]
    for extra, message in cases:
        with pytest.raises(openai.BadRequestError, match=message):
            client.completions.create(**{"model": MODEL, "prompt": "x", **extra})


# -- models ---------------------------------------------------------------------------------------

def test_models_list_and_retrieve(client: openai.OpenAI) -> None:
    mtime = int(bundled_model_path().stat().st_mtime)
    listed = {m.id: m for m in client.models.list()}
    assert set(listed) == {MODEL, PIRATE}
    for m in listed.values():
        assert (m.object, m.owned_by, m.created) == ("model", "library", mtime)
    got = client.models.retrieve("SmolLM2:135M")
    assert (got.id, got.object, got.created, got.owned_by) == (MODEL, "model", mtime, "library")
    assert client.models.retrieve("pirate").id == PIRATE
    with pytest.raises(openai.NotFoundError) as err:
        client.models.retrieve("nope")
    assert err.value.body == {"message": 'model "nope" not found, try pulling it first',
                              "type": "not_found_error", "param": None, "code": None}


# -- errors ---------------------------------------------------------------------------------------

@pytest.mark.parametrize(("extra", "message"), [
    ({"n": 2}, "n: only n=1 is supported"),
    ({"temperature": 3}, "temperature: Must be"),
    ({"messages": []}, r"\[\] is too short - 'messages'"),
    ({"logit_bias": {"50256": -100}}, "logit_bias: not supported"),
    ({"max_tokens": 4, "max_completion_tokens": 5}, "max_tokens and max_completion_tokens"),
    ({"tool_choice": "required", "tools": []}, "tool_choice forces a tool call, but the "
     "request has no tools"),
    ({"messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}]}]},
     f'"{MODEL}" does not support images'),
    ({"messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}]}]},
     "image URLs are not currently supported"),
    ({"messages": [{"role": "user", "content": [{"type": "video"}]}]}, "invalid message format"),
    ({"messages": [{"role": "wizard", "content": "x"}]}, "messages.0.role: role must be one of"),
    ({"reasoning_effort": "high"}, f'"{MODEL}" does not support thinking'),
    ({"reasoning_effort": "extreme"}, "reasoning_effort: Must be one of"),
])
def test_bad_chat_requests_raise_bad_request(client: openai.OpenAI, extra: dict[str, Any],
                                             message: str) -> None:
    with pytest.raises(openai.BadRequestError, match=message) as err:
        client.chat.completions.create(**{"model": MODEL, "messages": HELLO, **extra})
    assert err.value.status_code == 400 and err.value.type == "invalid_request_error"


def test_reasoning_effort_none_is_accepted(client: openai.OpenAI) -> None:
    resp = client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=2,
                                          reasoning_effort="none", **GREEDY)
    assert resp.usage.completion_tokens == 2


def test_unknown_model_is_not_found(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError, match='model "ghost" not found'):
        client.chat.completions.create(model="ghost", messages=HELLO)


def test_embedding_requests_are_checked(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError):
        client.embeddings.create(model="ghost", input="hello")
    with pytest.raises(openai.BadRequestError, match="encoding_format"):
        client.embeddings.create(model=MODEL, input="hello",
                                 encoding_format="int8")  # type: ignore[arg-type]
    with pytest.raises(openai.BadRequestError, match="input: invalid input"):
        client.embeddings.create(model=MODEL, input=[])


# -- raw HTTP: SSE framing and the error envelope ------------------------------------------------

def test_chat_sse_framing(http: httpx.Client) -> None:
    resp, events = sse_events(http, "/v1/chat/completions", {
        "model": MODEL, "messages": HELLO, "max_tokens": 4, "stream": True,
        "stream_options": {"include_usage": True}, **GREEDY})
    assert resp.status_code == 200
    assert resp.headers["content-type"] == "text/event-stream"
    assert events[-1] == "[DONE]"
    objs = [json.loads(e) for e in events[:-1]]
    assert objs[0]["choices"][0]["delta"]["role"] == "assistant"
    assert objs[-2]["choices"] == [{"index": 0, "delta": {}, "logprobs": None,
                                    "finish_reason": "length"}]
    assert objs[-1]["choices"] == [] and objs[-1]["usage"]["completion_tokens"] == 4
    assert all("usage" not in o for o in objs[:-1])
    assert sum(1 for o in objs[:-2] if o["choices"][0]["delta"]["content"]) >= 1


def test_completion_sse_framing_without_usage(http: httpx.Client) -> None:
    resp, events = sse_events(http, "/v1/completions", {
        "model": MODEL, "prompt": "Once upon", "max_tokens": 3, "stream": True, **GREEDY})
    assert resp.headers["content-type"] == "text/event-stream" and events[-1] == "[DONE]"
    objs = [json.loads(e) for e in events[:-1]]
    assert all(o["object"] == "text_completion" and "usage" not in o for o in objs)
    assert objs[-1]["choices"][0]["finish_reason"] == "length"


def test_non_streamed_is_one_json_object(http: httpx.Client) -> None:
    resp = http.post("/v1/chat/completions", json={"model": MODEL, "messages": HELLO,
                                                   "max_tokens": 2, **GREEDY})
    assert resp.headers["content-type"].startswith("application/json")
    body = resp.json()
    assert set(body) == {"id", "object", "created", "model", "system_fingerprint", "choices",
                         "usage"}
    assert set(body["choices"][0]) == {"index", "message", "logprobs", "finish_reason"}
    assert set(body["choices"][0]["message"]) == {"role", "content"}


@pytest.mark.parametrize(("method", "path", "body", "status", "etype", "message"), [
    ("POST", "/v1/chat/completions", b"{nope", 400, "invalid_request_error", "invalid JSON"),
    ("POST", "/v1/chat/completions", b"", 400, "invalid_request_error", "missing request body"),
    ("POST", "/v1/chat/completions", b'{"messages":[{"role":"user","content":"x"}]}', 400,
     "invalid_request_error", "model is required"),
    ("POST", "/v1/completions", b'{"model":"ghost","prompt":"x"}', 404, "not_found_error",
     'model "ghost" not found, try pulling it first'),
    ("GET", "/v1/models/ghost", None, 404, "not_found_error",
     'model "ghost" not found, try pulling it first'),
    ("GET", "/v1/nothing-here", None, 404, "not_found_error", "404 page not found"),
    ("GET", "/v1/chat/completions", None, 405, "api_error", "405 method not allowed"),
])
def test_error_envelope(http: httpx.Client, method: str, path: str, body: bytes | None,
                        status: int, etype: str, message: str) -> None:
    resp = http.request(method, path, content=body)
    assert resp.status_code == status
    assert resp.headers["content-type"].startswith("application/json")
    assert resp.json() == {"error": {"message": resp.json()["error"]["message"], "type": etype,
                                     "param": None, "code": None}}
    assert message in resp.json()["error"]["message"]


def test_native_routes_keep_ollama_error_shape(http: httpx.Client) -> None:
    resp = http.post("/api/chat", json={"model": "ghost", "messages": HELLO})
    assert resp.status_code == 404
    assert resp.json() == {"error": 'model "ghost" not found, try pulling it first'}
    assert http.get("/api/nothing").text == "404 page not found"


def test_browser_clients_pass_cors_on_v1(http: httpx.Client) -> None:
    """The openai SDK in a browser sends its x-stainless-* headers: the preflight allows them."""
    origin = {"Origin": "https://allowed.example"}
    preflight = http.options("/v1/chat/completions", headers={
        **origin, "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization, x-stainless-os"})
    assert preflight.status_code == 204
    allowed = preflight.headers["Access-Control-Allow-Headers"].lower()
    assert "authorization" in allowed and "x-stainless-os" in allowed
    resp = http.get("/v1/models", headers=origin)
    assert resp.headers["Access-Control-Allow-Origin"] == "https://allowed.example"
    assert http.get("/v1/models", headers={"Origin": "https://evil.example"}).status_code == 403
