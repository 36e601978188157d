"""Malformed and hostile bodies on every POST route of a live server: each answer is a 2xx or a
4xx whose body is JSON with an error message (OpenAI's shape on /v1), never a 5xx; and the
server still serves afterwards."""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any, Iterator

import httpx
import pytest

from tests.conftest import MODEL, LiveServer, serving

ROUTES = ("/api/generate", "/api/chat", "/api/embed", "/api/embeddings", "/api/show",
          "/api/pull", "/api/push", "/api/create", "/api/copy", "/v1/chat/completions",
          "/v1/completions", "/v1/embeddings", "/v1/responses")
USER = [{"role": "user", "content": "x"}]
BODIES: tuple[Any, ...] = (
    None, [], "x", 5, {"model": 5}, {"model": None}, {"model": MODEL, "options": "x"},
    {"model": MODEL, "options": {"num_ctx": -5}}, {"model": MODEL, "messages": "hi"},
    {"model": MODEL, "messages": [{"role": "user"}]}, {"model": MODEL, "messages": [5]},
    {"model": MODEL, "messages": [{"content": "x"}]}, {"model": MODEL, "prompt": 5},
    {"model": MODEL, "input": 5}, {"model": MODEL, "input": [5]}, {"model": MODEL, "format": 5},
    {"model": MODEL, "prompt": "hi", "format": {"type": "nonsense"}},
    {"model": MODEL, "tools": "x"}, {"model": MODEL, "messages": USER, "tools": [5]},
    {"model": MODEL, "think": "x"}, {"model": MODEL, "keep_alive": {}},
    {"model": MODEL, "prompt": "hi", "options": {"num_predict": "x"}},
    {"model": MODEL, "prompt": "hi", "context": ["a"]},
    {"model": MODEL, "prompt": "hi", "images": ["%%%"]}, {"model": MODEL, "stream": "maybe"},
    {"model": MODEL, "prompt": "hi", "options": {"stop": 5}},
    {"model": MODEL, "prompt": "hi", "options": {"seed": 1e30}},
    {"model": MODEL, "prompt": "hi", "options": {"temperature": 1e308}},
    {"model": MODEL, "prompt": "hi", "options": {"top_k": -1}},
    {"model": MODEL, "messages": USER, "max_tokens": -1},
    {"model": MODEL, "messages": [{"role": "user", "content": [{"type": "text"}]}]},
    {"model": MODEL, "source": 5, "destination": []}, {"model": "../../etc/passwd", "from": MODEL},
    {"model": MODEL, "from": "/etc/passwd"}, {"model": "x", "modelfile": "FROM"},
    {"model": MODEL, "prompt": "hi", "suffix": 5},
    {"model": MODEL, "input": "hi", "dimensions": 10**9},
    {"model": MODEL, "prompt": "hi", "raw": True, "template": "x"},
    {"model": MODEL, "prompt": "x" * 100_000},
    {"model": MODEL, "prompt": "hi", "context": [1_000_000]},
    {"model": MODEL, "prompt": "hi", "context": [-1]},
    {"model": MODEL, "keep_alive": 1e12}, {"model": MODEL, "keep_alive": -1e308},
    {"model": MODEL, "keep_alive": "9999999999999h"},
    {"model": "x", "from": "/proc/self/environ"}, {"model": "x", "from": "../../../etc/shadow"},
    {"model": MODEL, "prompt": "hi", "template":
        "{% for i in range(100000) %}{% for j in range(100000) %}x{% endfor %}{% endfor %}"},
    {"model": MODEL, "input": [{"role": 5}]}, {"model": MODEL, "input": [{"content": [5]}]},
    {"model": MODEL, "input": [{"role": "user", "content": [{"type": "input_image"}]}]},
    {"model": MODEL, "input": [{"type": "function_call", "name": "f", "call_id": "c",
                                "arguments": "{{"}]},
    {"model": MODEL, "input": [{"type": "reasoning", "summary": [{"text": 5}]}]},
    {"model": MODEL, "input": [{"type": 5}]}, {"model": MODEL, "input": "hi", "text": 5},
    {"model": MODEL, "input": "hi", "tools": [{"type": "function"}]},
    {"model": MODEL, "input": "hi", "tools": [{"type": "function", "name": "f",
                                               "parameters": 5}]},
    {"model": MODEL, "input": "hi", "tool_choice": {"type": "function", "name": "f"}},
)
# Bodies json.dumps cannot write: invalid UTF-8, a number past Python's int digit limit.
RAW_BODIES = (
    b'{"model": "' + MODEL.encode() + b'", "prompt": "\xff\xfe"}',
    b'{"model": "' + MODEL.encode() + b'", "prompt": "hi", "context": [' + b"9" * 5000 + b"]}",
    b'{"model": "' + MODEL.encode() + b'", "keep_alive": ' + b"1" * 5000 + b"}",
)


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """Answers are cut at 4 tokens, so the bodies that are valid stay quick."""
    folder = tmp_path_factory.mktemp("malformed")
    with serving(folder, f"models:\n  {MODEL}:\n    path: bundled\n    num_ctx: 1024\n"
                         "    options:\n      num_predict: 4\n") as server:
        yield server


def error_message(route: str, resp: httpx.Response) -> Any:
    body = resp.json()
    return body["error"]["message"] if route.startswith("/v1/") else body["error"]


def test_no_body_gets_a_5xx_and_every_error_is_json(live: LiveServer) -> None:
    failures = []
    with httpx.Client(base_url=live.url, timeout=120) as client:
        encoded = [json.dumps(body).encode() for body in BODIES] + list(RAW_BODIES)
        for route, raw in itertools.product(ROUTES, encoded):
            resp = client.post(route, content=raw)
            shown = raw[:80].decode(errors="replace")
            if resp.status_code >= 500:
                failures.append(f"{route} {shown}: {resp.status_code} {resp.text[:120]}")
            elif resp.status_code >= 400:
                try:
                    assert isinstance(error_message(route, resp), str)
                except (ValueError, KeyError, TypeError, AssertionError):
                    failures.append(f"{route} {shown}: {resp.status_code} not an error object")
        assert client.get("/").text == "Ollama is running"
        ok = client.post("/api/generate", json={"model": MODEL, "prompt": "Hi", "stream": False})
        assert ok.status_code == 200 and ok.json()["eval_count"] <= 4
    assert failures == []
    assert "Traceback" not in Path(live.log_path).read_text()
