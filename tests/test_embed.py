"""/api/embed and /api/embeddings against a live server with the bundled (chat) model.

No embedding GGUF ships in a package here, so the chat model's mean-pooled hidden states are
the vectors under test; an `embedding: true` entry stands in for an embedding-only model.
"""

from __future__ import annotations

import concurrent.futures as cf
import json
import math
import socket
import threading
import time
from typing import Any, Iterator

import httpx
import numpy as np
import ollama
import pytest

from tests.conftest import MODEL, LiveServer, serving, start_server, stop_server
from tests.tiny_bert import N_CTX
from tests.tiny_bert import N_EMBD as BERT_EMBD
from tests.tiny_bert import write_tiny_bert

CAT = "The cat sat on the mat."
KITTEN = "A small kitten is sleeping on the rug."
MARKET = "Stock markets fell sharply after the interest rate decision."
N_EMBD = 576
LONG = "word " * 1000  # 1000 tokens, far more than one embedding batch (512)
TOL = 1e-5  # the same input in the same batch position: float noise only


@pytest.fixture(scope="module")
def http(base_url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=base_url, timeout=120) as client:
        yield client


def embed(http: httpx.Client, inputs: Any, **fields: Any) -> dict[str, Any]:
    resp = http.post("/api/embed", json={"model": MODEL, "input": inputs, **fields})
    assert resp.status_code == 200, resp.text
    return resp.json()


def vectors(body: dict[str, Any]) -> np.ndarray:
    return np.array(body["embeddings"], np.float64)


def assert_batched_like_solo(batched: np.ndarray, solo: np.ndarray) -> None:
    """A batch neighbour shifts the order of float sums; llama.cpp's 8-bit activation
    quantisation can magnify that to ~1e-3 for some inputs (docs/engine.md), never more."""
    assert batched.shape == solo.shape
    assert np.abs(batched - solo).max() < 5e-3
    assert (batched * solo).sum(axis=-1).min() > 0.9999


def test_related_sentences_are_closer_and_vectors_are_unit_length(http: httpx.Client) -> None:
    body = embed(http, [CAT, KITTEN, MARKET])
    assert set(body) == {"model", "embeddings", "total_duration", "load_duration",
                         "prompt_eval_count"}
    assert body["model"] == MODEL
    assert all(isinstance(body[k], int) for k in ("total_duration", "load_duration"))
    assert body["total_duration"] >= body["load_duration"] >= 0
    v = vectors(body)
    assert v.shape == (3, N_EMBD)
    assert np.allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-6)
    related, unrelated = v[0] @ v[1], max(v[0] @ v[2], v[1] @ v[2])
    assert related > unrelated + 0.05, (related, unrelated)


def test_list_input_matches_single_inputs_in_order(http: httpx.Client) -> None:
    texts = [MARKET, CAT, KITTEN]
    together = embed(http, texts)
    singles = [embed(http, t) for t in texts]
    assert together["prompt_eval_count"] == sum(s["prompt_eval_count"] for s in singles)
    assert_batched_like_solo(vectors(together), np.vstack([vectors(s) for s in singles]))


def test_inputs_beyond_one_batch_keep_their_order(http: httpx.Client) -> None:
    """70 short inputs exceed the 64 sequences of one batch: two batches, one order."""
    texts = [f"Item {i}." for i in range(70)]
    v = vectors(embed(http, texts))
    assert v.shape == (70, N_EMBD)
    picked = [0, 1, 63, 64, 69]
    assert_batched_like_solo(v[picked], np.vstack([vectors(embed(http, texts[i]))
                                                   for i in picked]))
    assert not np.allclose(v[0], v[1], atol=1e-3)


def test_dimensions_truncate_then_renormalise(http: httpx.Client) -> None:
    full = vectors(embed(http, CAT))[0]
    short = vectors(embed(http, CAT, dimensions=8))[0]
    assert short.shape == (8,) and math.isclose(np.linalg.norm(short), 1.0, rel_tol=1e-6)
    assert np.allclose(short, full[:8] / np.linalg.norm(full[:8]), atol=TOL)
    assert vectors(embed(http, CAT, dimensions=N_EMBD)).shape == (1, N_EMBD)


def test_long_input_is_cut_to_the_context_or_refused(http: httpx.Client) -> None:
    refused = http.post("/api/embed", json={"model": MODEL, "input": LONG, "truncate": False})
    assert refused.status_code == 400
    assert refused.json() == {"error": "the input length exceeds the context length"}
    cut = embed(http, LONG)
    assert cut["prompt_eval_count"] == 512  # the embedding context (num_batch) of this model
    assert np.allclose(np.linalg.norm(vectors(cut)), 1.0)
    assert embed(http, LONG, options={"num_ctx": 64})["prompt_eval_count"] == 64
    fits = embed(http, " ".join(["word"] * 20), truncate=False)
    assert fits["prompt_eval_count"] == 20


def test_a_larger_num_ctx_does_not_reload(http: httpx.Client) -> None:
    embed(http, CAT)
    body = embed(http, CAT, options={"num_ctx": 4096})
    assert body["load_duration"] == 0
    loaded = {m["name"]: m["context_length"] for m in http.get("/api/ps").json()["models"]}
    assert loaded == {MODEL: 2048}


def test_empty_input_only_loads_the_model(http: httpx.Client) -> None:
    http.post("/api/generate", json={"model": MODEL, "keep_alive": 0})
    assert MODEL not in {m["name"] for m in http.get("/api/ps").json()["models"]}
    for empty in ([], ""):
        assert embed(http, empty) == {"model": MODEL, "embeddings": []}
    assert MODEL in {m["name"] for m in http.get("/api/ps").json()["models"]}


def test_legacy_embeddings_is_the_raw_pooled_vector(http: httpx.Client) -> None:
    resp = http.post("/api/embeddings", json={"model": MODEL, "prompt": CAT})
    assert resp.status_code == 200 and set(resp.json()) == {"embedding"}
    raw = np.array(resp.json()["embedding"])
    assert raw.shape == (N_EMBD,) and np.linalg.norm(raw) > 2  # not normalised, as in Ollama
    assert np.allclose(raw / np.linalg.norm(raw), vectors(embed(http, CAT))[0], atol=TOL)
    empty = http.post("/api/embeddings", json={"model": MODEL, "prompt": ""})
    assert empty.json() == {"embedding": []}
    unload = http.post("/api/embeddings", json={"model": MODEL, "prompt": "", "keep_alive": 0})
    assert unload.json() == {"embedding": []}
    assert http.get("/api/ps").json()["models"] == []


@pytest.mark.parametrize("path, body, status, error", [
    ("/api/embed", {"input": 5}, 400,
     "input: invalid input type: expected a string or a list of strings"),
    ("/api/embed", {"input": ["ok", 1]}, 400,
     "input: invalid input type: expected a string or a list of strings"),
    ("/api/embed", {"input": {"text": "x"}}, 400,
     "input: invalid input type: expected a string or a list of strings"),
    ("/api/embed", {"input": ["ok", ""]}, 400, "input 1 is empty: nothing to embed"),
    ("/api/embed", {"input": "x", "dimensions": 0}, 400,
     "dimensions: Must be greater than or equal to 1."),
    ("/api/embed", {"input": "x", "dimensions": "8"}, 400, "dimensions: Not a valid integer."),
    ("/api/embed", {"input": "x", "dimensions": N_EMBD + 1}, 400,
     f"dimensions must be between 1 and {N_EMBD}, the model's embedding size"),
    ("/api/embed", {"input": "x", "truncate": "maybe"}, 400, "truncate: Not a valid boolean."),
    ("/api/embed", {"input": "x", "options": {"num_ctx": "big"}}, 400,
     "options.num_ctx: Not a valid integer."),
    ("/api/embed", {"model": "ghost:1b", "input": "x"}, 404,
     'model "ghost:1b" not found, try pulling it first'),
    ("/api/embed", {"model": "", "input": "x"}, 400, "model is required"),
    ("/api/embeddings", {"prompt": 3}, 400, "prompt: Not a valid string."),
    ("/api/embeddings", {"model": "ghost:1b", "prompt": "x"}, 404,
     'model "ghost:1b" not found, try pulling it first'),
    ("/api/embeddings", {"model": "", "prompt": "x"}, 400, "model is required"),
])
def test_bad_requests(http: httpx.Client, path: str, body: dict, status: int,
                      error: str) -> None:
    resp = http.post(path, json={"model": MODEL, **body})
    assert (resp.status_code, resp.json()) == (status, {"error": error})


def test_official_client(http: httpx.Client, base_url: str) -> None:
    client = ollama.Client(host=base_url)
    result = client.embed(model=MODEL, input=[CAT, MARKET])
    assert result.model == MODEL and result.prompt_eval_count > 0
    assert np.allclose(np.array(result.embeddings), vectors(embed(http, [CAT, MARKET])),
                       atol=TOL)
    assert len(client.embed(model=MODEL, input=CAT, dimensions=16).embeddings[0]) == 16
    legacy = client.embeddings(model=MODEL, prompt=CAT).embedding
    assert len(legacy) == N_EMBD and math.sqrt(sum(x * x for x in legacy)) > 2
    with pytest.raises(ollama.ResponseError) as bad:
        client.embed(model=MODEL, input=LONG, truncate=False)
    assert bad.value.status_code == 400


def test_embedding_beside_a_stream_changes_neither(http: httpx.Client, base_url: str) -> None:
    gen = {"model": MODEL, "prompt": "Tell me a story about a dragon.",
           "options": {"temperature": 0.9, "seed": 7, "num_predict": 48}}
    texts = [CAT, KITTEN, MARKET, MARKET * 8]

    def stream(during: Any = None) -> tuple[str, float]:
        parts = []
        with http.stream("POST", "/api/generate", json=gen) as resp:
            for line in resp.iter_lines():
                obj = json.loads(line)
                parts.append(obj["response"])
                if during is not None and len(parts) == 2:
                    during()
        return "".join(parts), time.perf_counter()

    alone_text, _ = stream()
    alone_vectors = vectors(embed(http, texts))
    results: list[tuple[np.ndarray, float]] = []

    def embed_in_background() -> None:
        def run() -> None:
            with httpx.Client(base_url=base_url, timeout=120) as other:
                for _ in range(2):
                    body = other.post("/api/embed", json={"model": MODEL, "input": texts}).json()
                    results.append((vectors(body), time.perf_counter()))
        threading.Thread(target=run, daemon=True).start()

    together_text, stream_end = stream(embed_in_background)
    deadline = time.monotonic() + 60
    while len(results) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert together_text == alone_text
    assert len(results) == 2
    assert results[0][1] < stream_end, "the embedding did not run while the stream was going"
    for got, _ in results:
        assert np.allclose(got, alone_vectors, atol=TOL)


def test_client_disconnect_drops_the_embedding_job(http: httpx.Client, server: LiveServer,
                                                   base_url: str) -> None:
    embed(http, CAT)  # loaded, so the request below reaches the engine at once
    host, port = base_url.removeprefix("http://").split(":")
    body = json.dumps({"model": MODEL, "input": [f"Item {i} is here." for i in range(512)]})
    with socket.create_connection((host, int(port))) as sock:
        sock.sendall(b"POST /api/embed HTTP/1.1\r\nContent-Type: application/json\r\n"
                     + f"Host: {host}:{port}\r\nContent-Length: {len(body)}\r\n\r\n"
                       f"{body}".encode())
        time.sleep(0.2)  # submitted (tokenizing takes milliseconds), far from done (8 batches)
    deadline = time.monotonic() + 60
    while "embedding cancelled: client went away" not in server.log():
        assert time.monotonic() < deadline, "the embedding job was not dropped"
        time.sleep(0.05)
    assert vectors(embed(http, [CAT])).shape == (1, N_EMBD)


def test_concurrent_embed_requests(base_url: str, http: httpx.Client) -> None:
    texts = [CAT, KITTEN, MARKET, "Hello there."]
    solo = [vectors(embed(http, t))[0] for t in texts]
    with cf.ThreadPoolExecutor(4) as pool, httpx.Client(base_url=base_url, timeout=120) as c:
        together = list(pool.map(
            lambda t: c.post("/api/embed", json={"model": MODEL, "input": t}).json(), texts))
    assert_batched_like_solo(np.vstack([vectors(b) for b in together]), np.vstack(solo))


# -- an embedding-only model --------------------------------------------------------------------

@pytest.fixture(scope="module")
def embedder(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    folder = tmp_path_factory.mktemp("embedder")
    with serving(folder, "models:\n  embedder:\n    path: bundled\n    num_ctx: 64\n"
                         "    embedding: true\n") as live:
        yield live


def test_embedding_model_embeds_but_does_not_generate(embedder: LiveServer,
                                                      http: httpx.Client) -> None:
    with httpx.Client(base_url=embedder.url, timeout=120) as c:
        show = c.post("/api/show", json={"model": "embedder"}).json()
        assert show["capabilities"] == ["embedding"]
        for path, key, value, word in (("/api/generate", "prompt", "Hi", "generate"),
                                       ("/api/chat", "messages", [], "chat")):
            resp = c.post(path, json={"model": "embedder", key: value})
            assert (resp.status_code, resp.json()) == (
                400, {"error": f'"embedder" does not support {word}'})
        assert c.get("/api/ps").json()["models"] == []  # refused before loading anything
        body = c.post("/api/embed", json={"model": "embedder", "input": [CAT]}).json()
    assert body["model"] == "embedder"
    assert np.allclose(vectors(body), vectors(embed(http, [CAT])), atol=TOL)
    assert "embedding context: 64 tokens, pooling 1" in embedder.log()


def test_inputs_beyond_one_batch_of_tokens(embedder: LiveServer) -> None:
    """With a 64-token context, three inputs of 27 to 30 tokens take two batches."""
    texts = [" ".join([CAT] * 4), " ".join([KITTEN] * 3), " ".join([MARKET] * 3)]
    with httpx.Client(base_url=embedder.url, timeout=120) as c:
        def run(inputs: Any) -> dict[str, Any]:
            return c.post("/api/embed", json={"model": "embedder", "input": inputs}).json()

        together = run(texts)
        singles = [run(t) for t in texts]
        cut = run(LONG)
    assert all(s["prompt_eval_count"] > 20 for s in singles)
    assert together["prompt_eval_count"] == sum(s["prompt_eval_count"] for s in singles)
    assert_batched_like_solo(vectors(together), np.vstack([vectors(s) for s in singles]))
    assert cut["prompt_eval_count"] == 64


# -- an embedding GGUF (a tiny random BERT: encoder, WordPiece, CLS pooling) -------------------

@pytest.fixture(scope="module")
def bert(tmp_path_factory: pytest.TempPathFactory) -> Iterator[httpx.Client]:
    folder = tmp_path_factory.mktemp("bert")
    write_tiny_bert(folder / "tiny-bert.gguf")
    config = folder / "models.yaml"
    config.write_text("models:\n  tinybert: tiny-bert.gguf\n")
    live = start_server(config, folder / "server.log")
    with httpx.Client(base_url=live.url, timeout=120) as client:
        yield client
    assert "embedding context: 64 tokens, pooling 2" in live.log()  # the GGUF's CLS pooling
    stop_server(live)


def test_embedding_gguf_is_detected_and_refuses_generation(bert: httpx.Client) -> None:
    assert bert.post("/api/show", json={"model": "tinybert"}).json()["capabilities"] == [
        "embedding"]
    resp = bert.post("/api/chat", json={"model": "tinybert",
                                        "messages": [{"role": "user", "content": "hi"}]})
    assert (resp.status_code, resp.json()) == (400, {"error": '"tinybert" does not support chat'})


def test_embedding_gguf_embeds_in_batches_and_truncates(bert: httpx.Client) -> None:
    texts = ["the cat sat on the mat.", "a dog ran on a rug.", "the stock market fell."]

    def run(inputs: Any, **fields: Any) -> httpx.Response:
        return bert.post("/api/embed", json={"model": "tinybert", "input": inputs, **fields})

    together = run(texts).json()
    v = vectors(together)
    assert v.shape == (3, BERT_EMBD)
    assert np.allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-6)
    singles = [run(t).json() for t in texts]
    assert [s["prompt_eval_count"] for s in singles] == [9, 9, 7]  # with [CLS] and [SEP]
    assert_batched_like_solo(v, np.vstack([vectors(s) for s in singles]))
    long = " ".join(["the cat sat on the mat."] * 20)
    assert run(long).json()["prompt_eval_count"] == N_CTX
    refused = run(long, truncate=False)
    assert (refused.status_code, refused.json()) == (
        400, {"error": "the input length exceeds the context length"})
