"""keep_alive at its extremes, on a live server: whatever a client sends is a 400 or a sane
value, and /api/ps shows it; huge values mean forever, as in Ollama."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Iterator

import httpx
import pytest

from ollamalite.durations import GO_MAX_SECONDS
from tests.conftest import MODEL, LiveServer, serving


@pytest.fixture(scope="module")
def http(tmp_path_factory: pytest.TempPathFactory) -> Iterator[httpx.Client]:
    with serving(tmp_path_factory.mktemp("keep-alive"),
                 f"models:\n  {MODEL}:\n    path: bundled\n    num_ctx: 512\n") as live:
        with httpx.Client(base_url=live.url, timeout=300) as client:
            yield client


def generate(http: httpx.Client, keep_alive: str, prompt: str = "") -> httpx.Response:
    """/api/generate with `keep_alive` as raw JSON text (NaN and Infinity included)."""
    body = (f'{{"model": "{MODEL}", "prompt": "{prompt}", "stream": false, '
            f'"options": {{"num_predict": 1}}, "keep_alive": {keep_alive}}}')
    return http.post("/api/generate", content=body.encode())


def expires_in(http: httpx.Client) -> timedelta:
    """How far from now /api/ps says the model's keep-alive ends."""
    resp = http.get("/api/ps")
    assert resp.status_code == 200
    [row] = resp.json()["models"]
    assert row["name"] == MODEL
    return datetime.fromisoformat(row["expires_at"]) - datetime.now(timezone.utc)


def short(value: str) -> str:
    return value if len(value) < 20 else f"{value[:4]}...({len(value)} chars)"


@pytest.mark.parametrize("keep_alive", [
    "1e12", "-1", "1e308", "Infinity", "-Infinity", "-1e300", "1" + "0" * 400,
    "-1" + "0" * 400, '"-1m"', '"-9999h"',
], ids=short)
def test_huge_and_negative_keep_alive_keep_the_model_forever(http: httpx.Client,
                                                             keep_alive: str) -> None:
    resp = generate(http, keep_alive)
    assert resp.status_code == 200 and resp.json()["done_reason"] == "load"
    forever = timedelta(seconds=GO_MAX_SECONDS)  # Ollama's: around the year 2318
    assert abs(expires_in(http) - forever) < timedelta(minutes=5)


def test_a_long_keep_alive_within_go_durations_is_kept_as_it_is(http: httpx.Client) -> None:
    resp = generate(http, "1e9", prompt="Hi")
    assert resp.status_code == 200 and resp.json()["done"] is True
    assert abs(expires_in(http) - timedelta(seconds=1e9)) < timedelta(minutes=5)
    assert generate(http, '"2562047h"').status_code == 200  # just below Go's longest
    assert abs(expires_in(http) - timedelta(hours=2562047)) < timedelta(minutes=5)


@pytest.mark.parametrize("keep_alive, error", [
    ("NaN", "keep_alive: keep_alive must be a number"),
    ('"1e400s"', 'keep_alive: time: invalid duration "1e400s"'),
    ('"9999999999999h"', 'keep_alive: time: invalid duration "9999999999999h"'),
    ('"' + "1" * 400 + 's"', f'keep_alive: time: invalid duration "{"1" * 400}s"'),
], ids=short)
def test_keep_alive_nobody_can_hold_is_a_400(http: httpx.Client, keep_alive: str,
                                             error: str) -> None:
    resp = generate(http, keep_alive)
    assert resp.status_code == 400 and resp.json() == {"error": error}
    assert http.get("/api/ps").status_code == 200
