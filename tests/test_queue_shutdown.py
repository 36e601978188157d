"""Server lifecycle on a real server: the pending-request limit, waiting for room, and
graceful shutdown."""

from __future__ import annotations

import asyncio
import json
import signal
import time
from pathlib import Path
from typing import Any, Iterator

import httpx
import pytest

from tests.conftest import MODEL, TEST_CONFIG, LiveServer, start_server, stop_server

QUEUE_FULL = "server busy, please try again.  maximum pending requests exceeded"


def long_request(num_predict: int) -> dict[str, Any]:
    return {"model": MODEL, "prompt": "Once upon a time, in a land far away,", "raw": True,
            "options": {"num_predict": num_predict, "temperature": 0}}


def serve(folder: Path, env: dict[str, str]) -> LiveServer:
    config = folder / "models.yaml"
    config.write_text(TEST_CONFIG)
    return start_server(config, folder / "server.log", env=env)


@pytest.fixture
def one_slot_server(tmp_path: Path) -> Iterator[LiveServer]:
    """One slot and room for one waiting request: the third concurrent one is refused."""
    live = serve(tmp_path, {"OLLAMA_NUM_PARALLEL": "1", "OLLAMA_MAX_QUEUE": "1"})
    yield live
    stop_server(live)


async def read_lines(response: httpx.Response) -> list[dict[str, Any]]:
    return [json.loads(line) async for line in response.aiter_lines() if line]


async def test_requests_beyond_the_queue_get_503_and_the_rest_are_served(
        one_slot_server: LiveServer) -> None:
    async with httpx.AsyncClient(base_url=one_slot_server.url, timeout=120) as client:
        async with client.stream("POST", "/api/generate", json=long_request(2000)) as first:
            first_lines = first.aiter_lines()  # held: a dropped iterator closes the stream
            assert json.loads(await first_lines.__anext__())["done"] is False  # in the slot

            async def waiting() -> list[dict[str, Any]]:
                async with client.stream("POST", "/api/generate",
                                         json=long_request(5)) as resp:
                    assert resp.status_code == 200
                    return await read_lines(resp)

            second = asyncio.create_task(waiting())
            await asyncio.sleep(1.0)  # the second request is in, waiting for the slot
            refused = await client.post("/api/generate", json=long_request(5))
            assert refused.status_code == 503
            assert refused.json() == {"error": QUEUE_FULL}
            assert refused.headers["Retry-After"] == "1"
            assert not second.done()
        # closing the first stream frees its slot: the waiting request runs to the end
        lines = await asyncio.wait_for(second, 60)
        assert lines[-1]["done"] is True and lines[-1]["eval_count"] == 5
        # the counts went back down: a new request is accepted
        again = await client.post("/api/generate", json={**long_request(2), "stream": False})
        assert again.status_code == 200 and again.json()["eval_count"] == 2


async def test_sigterm_ends_running_streams_with_an_error_line_and_exits_zero(
        tmp_path: Path) -> None:
    live = serve(tmp_path, {})
    try:
        async with httpx.AsyncClient(base_url=live.url, timeout=60) as client:
            async with client.stream("POST", "/api/generate",
                                     json=long_request(100000)) as resp:
                lines = resp.aiter_lines()
                assert json.loads(await lines.__anext__())["done"] is False
                live.process.send_signal(signal.SIGTERM)
                signalled = time.monotonic()
                rest = [json.loads(line) async for line in lines if line]
        assert rest[-1] == {"error": "server is shutting down"}
        assert all(line.get("done") is False for line in rest[:-1])
        code = await asyncio.to_thread(live.process.wait, 15)
        assert code == 0
        assert time.monotonic() - signalled < 10
        with pytest.raises(httpx.ConnectError):
            httpx.get(live.url + "/", timeout=2)
    finally:
        stop_server(live)


def test_sigint_on_an_idle_server_exits_zero_at_once(tmp_path: Path) -> None:
    live = serve(tmp_path, {})
    try:
        live.process.send_signal(signal.SIGINT)
        started = time.monotonic()
        assert live.process.wait(timeout=15) == 0
        assert time.monotonic() - started < 5
        assert "shutting down" in live.log()
    finally:
        stop_server(live)


def test_a_busy_model_is_not_evicted_and_the_other_request_times_out(tmp_path: Path) -> None:
    """One model at a time: while smollm2 streams, a request for pirate waits for room, up to
    OLLAMA_LOAD_TIMEOUT, then gets a 503; the stream is not disturbed."""
    live = serve(tmp_path, {"OLLAMA_MAX_LOADED_MODELS": "1", "OLLAMA_LOAD_TIMEOUT": "1s"})
    try:
        with httpx.Client(base_url=live.url, timeout=60) as client:
            with client.stream("POST", "/api/generate", json=long_request(300)) as resp:
                lines = resp.iter_lines()
                assert json.loads(next(lines))["done"] is False
                started = time.monotonic()
                other = client.post("/api/generate", json={"model": "pirate", "prompt": "hi"})
                waited = time.monotonic() - started
                assert other.status_code == 503
                assert "busy model" in other.json()["error"]
                assert other.headers["Retry-After"] == "5"
                assert 0.9 < waited < 10
                final = json.loads(list(filter(None, lines))[-1])
            assert final["done"] is True and final["eval_count"] == 300
            assert [m["name"] for m in client.get("/api/ps").json()["models"]] == [MODEL]
    finally:
        stop_server(live)
