"""Token ids from clients, on a live server: an id outside the model's vocabulary is a 400 in
the protocol's shape before anything reaches the engine, and a stream beside it goes on."""

from __future__ import annotations

import json
from typing import Any, Iterator

import httpx
import pytest

from tests.conftest import MODEL, LiveServer, serving

N_VOCAB = 49152  # the bundled SmolLM2's vocabulary
GREEDY = {"temperature": 0, "seed": 7, "num_predict": 24}


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    with serving(tmp_path_factory.mktemp("token-ids"),
                 f"models:\n  {MODEL}:\n    path: bundled\n    num_ctx: 1024\n") as server:
        yield server


@pytest.fixture
def http(live: LiveServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=live.url, timeout=300) as client:
        yield client


def refusal(bad: int) -> str:
    return (f"context contains token id {bad} outside the model's vocabulary "
            f"(0..{N_VOCAB - 1})")


@pytest.mark.parametrize("context, bad", [
    ([1000000], 1000000), ([-1], -1), ([5, N_VOCAB], N_VOCAB), ([1, 2, 10**30, -4], 10**30),
])
@pytest.mark.parametrize("stream", [False, True])
def test_context_ids_outside_the_vocabulary_are_refused(
        http: httpx.Client, context: list[int], bad: int, stream: bool) -> None:
    resp = http.post("/api/generate", json={"model": MODEL, "prompt": "hi", "context": context,
                                            "stream": stream})
    assert resp.status_code == 400
    assert resp.headers["content-type"].startswith("application/json")
    assert resp.json() == {"error": refusal(bad)}


def test_an_id_the_reply_parser_would_spell_out_is_refused_too(http: httpx.Client) -> None:
    """With a bare template the prompt's last tokens are the context's, which are spelled out
    to read the reply's start: llama.cpp aborted the process on an id outside the vocabulary."""
    resp = http.post("/api/generate", json={"model": MODEL, "prompt": "a",
                                            "template": "{{ .Prompt }}",
                                            "context": [N_VOCAB + 1], "stream": False})
    assert resp.status_code == 400 and resp.json() == {"error": refusal(N_VOCAB + 1)}
    assert http.get("/api/version").status_code == 200


def test_ids_at_the_edges_of_the_vocabulary_are_accepted(http: httpx.Client) -> None:
    resp = http.post("/api/generate", json={"model": MODEL, "prompt": "hi", "stream": False,
                                            "context": [0, N_VOCAB - 1], "options": GREEDY})
    body = resp.json()
    assert resp.status_code == 200 and body["done"] is True
    assert body["context"][:2] == [0, N_VOCAB - 1]


def stream_lines(http: httpx.Client, body: dict[str, Any]) -> Iterator[dict[str, Any]]:
    with http.stream("POST", "/api/generate", json={**body, "stream": True}) as resp:
        assert resp.status_code == 200
        for line in resp.iter_lines():
            yield json.loads(line)


def test_a_stream_beside_a_refused_context_is_unaffected(live: LiveServer,
                                                         http: httpx.Client) -> None:
    body = {"model": MODEL, "prompt": "Count from 1 upwards, one number per line.",
            "options": GREEDY}
    alone = list(stream_lines(http, body))
    lines = stream_lines(http, body)
    beside = [next(lines)]
    with httpx.Client(base_url=live.url, timeout=300) as other:
        refused = other.post("/api/generate", json={"model": MODEL, "prompt": "hi",
                                                    "context": [1000000]})
    beside += list(lines)
    assert all("error" not in line for line in beside)
    assert "".join(x["response"] for x in beside) == "".join(x["response"] for x in alone)
    assert beside[-1]["done"] is True and beside[-1]["context"] == alone[-1]["context"]
    assert beside[-1]["eval_count"] == alone[-1]["eval_count"] == GREEDY["num_predict"]
    assert refused.status_code == 400 and refused.json() == {"error": refusal(1000000)}


@pytest.mark.parametrize("route, body", [
    ("/v1/completions", {"prompt": [1000000]}),
    ("/v1/completions", {"prompt": [[1, 2], [1000000]]}),
    ("/v1/completions", {"prompt": "hi", "logit_bias": {"1000000": 5}}),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}],
                              "logit_bias": {"-1": 5}}),
    ("/v1/embeddings", {"input": [1000000]}),
    ("/v1/embeddings", {"input": [[1, 2], [-1]]}),
])
def test_openai_token_arrays_and_logit_bias_are_refused(http: httpx.Client, route: str,
                                                        body: dict[str, Any]) -> None:
    """Token arrays are not taken on /v1 (text only) and logit_bias is refused: no client id
    reaches the engine there."""
    resp = http.post(route, json={"model": MODEL, **body})
    assert resp.status_code == 400
    error = resp.json()["error"]
    assert error["type"] == "invalid_request_error" and isinstance(error["message"], str)


@pytest.mark.parametrize("route", ["/api/embed", "/api/embeddings"])
def test_ollama_embedding_token_arrays_are_refused(http: httpx.Client, route: str) -> None:
    field = "input" if route == "/api/embed" else "prompt"
    resp = http.post(route, json={"model": MODEL, field: [1000000]})
    assert resp.status_code == 400 and isinstance(resp.json()["error"], str)
