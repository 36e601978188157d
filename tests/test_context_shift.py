"""A generation that outgrows its context over HTTP: `shift` (Ollama's default) keeps it going,
`shift: false` ends it with `done_reason: "length"` at the context's end."""

from __future__ import annotations

import httpx
import pytest

from tests.conftest import MODEL

COUNT = "".join(f"{n}\n" for n in range(1, 11))  # raw: the model goes on counting


@pytest.fixture(scope="module")
def http(base_url: str) -> httpx.Client:
    with httpx.Client(base_url=base_url, timeout=300) as client:
        yield client


def generate(http: httpx.Client, prompt: str = COUNT, **fields: object) -> dict:
    body = {"model": MODEL, "prompt": prompt, "raw": True, "stream": False,
            "options": {"temperature": 0, "num_ctx": 128, "num_predict": 300}, **fields}
    resp = http.post("/api/generate", json=body)
    assert resp.status_code == 200, resp.text
    return resp.json()


@pytest.mark.slow
def test_generation_shifts_past_the_context_by_default(http: httpx.Client) -> None:
    result = generate(http)
    assert result["done_reason"] == "length" and result["eval_count"] == 300
    assert result["prompt_eval_count"] + result["eval_count"] > 2 * 128
    numbers = [int(n) for n in result["response"].split() if n.isdigit()]
    assert numbers == sorted(numbers) and numbers[-1] > 100  # still counting after two shifts


def test_without_shift_it_ends_at_the_context(http: httpx.Client) -> None:
    # a prompt no slot holds yet: `prompt_eval_count` then counts all of it (a reused prefix
    # would not be counted)
    result = generate(http, "".join(f"{n}\n" for n in range(501, 511)), shift=False)
    assert result["done_reason"] == "length"
    # every token but the last went through the 128-token cache
    assert result["prompt_eval_count"] + result["eval_count"] == 128 + 1
