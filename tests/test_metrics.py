"""/metrics, the access log and the log formats, on live servers after real requests."""

from __future__ import annotations

import json
import logging
import re
from typing import Any, Iterator

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from ollamalite.generation.stats import RequestStats
from ollamalite.logs import FIELDS, JsonFormatter
from ollamalite.runtime.engine.jobs import Finished, TextChunk
from ollamalite.server.metrics import family
from ollamalite.settings import from_env
from tests.conftest import MODEL, LiveServer, module_server, serving

KEY = "metrics-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
CONFIG = f"models:\n  {MODEL}:\n    path: bundled\n    num_ctx: 1024\n"
NUM_PARALLEL = 2
OPTIONS = {"temperature": 0, "num_predict": 8}
TIMEOUT = 180.0  # two cores shared with other test runs
ACCESS_KEYS = {"method", "path", "status", "model", "prompt_tokens", "generated_tokens", "ttft",
               "total", "client"}

QUESTION = {"role": "user", "content": "Name a colour."}
# Protocols whose usage counts the whole prompt, cached prefix included: its key, and the
# generated tokens' key.
WHOLE_PROMPT_USAGE = {"/v1/chat/completions": ("prompt_tokens", "completion_tokens"),
                      "/v1/messages": ("input_tokens", "output_tokens")}

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


@pytest.fixture(scope="module")
def keyed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """Text logs, an API key, two slots."""
    env = {"OLLAMALITE_API_KEY": KEY, "OLLAMA_NUM_PARALLEL": str(NUM_PARALLEL)}
    with serving(tmp_path_factory.mktemp("metrics"), CONFIG, env=env) as server:
        yield server


@pytest.fixture(scope="module")
def json_logs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """JSON logs, metrics off, debug logging."""
    env = {"OLLAMALITE_METRICS": "0", "OLLAMA_DEBUG": "1"}
    with serving(tmp_path_factory.mktemp("json-logs"), CONFIG, env=env,
                 args=("--log-format", "json")) as server:
        yield server


# Speculation on for the server, off for one model by its models.yaml key; debug logging.
PLAIN_MODEL = "plain:latest"
speculating = module_server(
    "speculative", CONFIG + f"  {PLAIN_MODEL}:\n    path: bundled\n    speculative: false\n",
    {"OLLAMALITE_SPECULATIVE": "1", "OLLAMA_DEBUG": "1"})
SOURCE = "".join(f"def scale_{i}(values):\n    return sum(values) * {i}\n\n" for i in range(8))


def scrape(server: LiveServer) -> Samples:
    resp = httpx.get(f"{server.url}/metrics", headers=AUTH, timeout=TIMEOUT)
    assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/plain")
    return {(s.name, frozenset(s.labels.items())): s.value
            for fam in text_string_to_metric_families(resp.text) for s in fam.samples}


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def grown(after: Samples, before: Samples, name: str, **labels: str) -> float:
    return value(after, name, **labels) - value(before, name, **labels)


def post(server: LiveServer, path: str, body: dict[str, Any]) -> httpx.Response:
    resp = httpx.post(server.url + path, json=body, headers=AUTH, timeout=TIMEOUT)
    assert resp.status_code == 200, resp.text
    return resp


def streamed_chat(server: LiveServer) -> dict[str, Any]:
    """The final object of a streamed /api/chat."""
    body = {"model": MODEL, "messages": [QUESTION], "options": OPTIONS}
    with httpx.stream("POST", f"{server.url}/api/chat", json=body, headers=AUTH,
                      timeout=TIMEOUT) as resp:
        lines = [json.loads(line) for line in resp.iter_lines() if line]
    assert lines[-1]["done"] and len(lines) > 1
    return lines[-1]


def access_lines(server: LiveServer) -> list[str]:
    return [line for line in server.log().splitlines() if " ollamalite.access: " in line]


def text_fields(line: str) -> dict[str, str]:
    """`... ollamalite.access: POST /api/chat 200 model=m prompt_tokens=3 ...` -> its fields."""
    method, path, status, *pairs = line.split(" ollamalite.access: ", 1)[1].split(" ")
    return {"method": method, "path": path, "status": status,
            **dict(pair.split("=", 1) for pair in pairs)}


def test_metrics_count_requests_tokens_and_times(keyed: LiveServer) -> None:
    before = scrape(keyed)
    generated = post(keyed, "/api/generate", {"model": MODEL, "prompt": "Say hi.",
                                              "stream": False, "options": OPTIONS}).json()
    chat = streamed_chat(keyed)
    missing = httpx.get(f"{keyed.url}/api/nope", headers=AUTH, timeout=TIMEOUT)
    assert missing.status_code == 404
    native = scrape(keyed)
    assert grown(native, before, "ollamalite_prompt_tokens_total", model=MODEL) == \
        generated["prompt_eval_count"] + chat["prompt_eval_count"]
    assert grown(native, before, "ollamalite_generated_tokens_total", model=MODEL) == \
        generated["eval_count"] + chat["eval_count"]

    all_generated = generated["eval_count"] + chat["eval_count"]
    for path, (whole_prompt, completion) in WHOLE_PROMPT_USAGE.items():
        usage = post(keyed, path, {"model": MODEL, "messages": [QUESTION], "max_tokens": 8,
                                   "temperature": 0}).json()["usage"]
        after = scrape(keyed)
        evaluated, reused, generated_now = (
            grown(after, native, name, model=MODEL)
            for name in ("ollamalite_prompt_tokens_total",
                         "ollamalite_prefix_cache_reused_tokens_total",
                         "ollamalite_generated_tokens_total"))
        # What was evaluated plus what a slot's cache held (the same question as the native
        # chat's, so most of it).
        assert evaluated + reused == usage[whole_prompt] and reused > 0, path
        assert generated_now == usage[completion], path
        all_generated += usage[completion]
        native = after

    def requests(family: str, status: str) -> float:
        return grown(after, before, "ollamalite_requests_total", family=family, status=status)

    assert (requests("ollama", "200"), requests("ollama", "404")) == (2, 1)
    assert (requests("openai", "200"), requests("anthropic", "200")) == (1, 1)
    assert requests("other", "200") == 3  # the scrapes
    assert grown(after, before, "ollamalite_time_to_first_token_seconds_count",
                 model=MODEL) == 4
    logged = {(f["method"], f["path"]): f for f in map(text_fields, access_lines(keyed))}
    generations = [logged[("POST", path)]
                   for path in ("/api/generate", "/api/chat", *WHOLE_PROMPT_USAGE)]
    assert 0 < grown(after, before, "ollamalite_time_to_first_token_seconds_sum",
                     model=MODEL) <= sum(float(f["total"]) for f in generations)
    assert 0 < grown(after, before, "ollamalite_inter_token_seconds_count",
                     model=MODEL) <= all_generated - 4  # none before each first token
    assert value(after, "ollamalite_model_load_seconds_count", model=MODEL) == 1
    assert value(after, "ollamalite_slots", model=MODEL) == NUM_PARALLEL
    assert value(after, "ollamalite_slots_busy", model=MODEL) == 0
    assert value(after, "ollamalite_models_loaded") == 1
    assert value(after, "ollamalite_queue_depth") == 0

    access = logged[("POST", "/api/generate")]
    assert access["status"] == "200" and access["model"] == MODEL
    assert int(access["prompt_tokens"]) == generated["prompt_eval_count"]
    assert int(access["generated_tokens"]) == generated["eval_count"]
    assert 0 < float(access["ttft"]) <= float(access["total"])
    assert access["client"] == "127.0.0.1"
    assert int(logged[("POST", "/api/chat")]["generated_tokens"]) == chat["eval_count"]
    assert logged[("GET", "/api/nope")]["status"] == "404"
    assert logged[("GET", "/api/nope")]["model"] == "-"
    assert set(logged[("POST", "/v1/messages")]) == ACCESS_KEYS


def test_a_running_stream_holds_a_slot(keyed: LiveServer) -> None:
    body = {"model": MODEL, "prompt": "Count from 1 to 100, one number a line.",
            "options": {"temperature": 0, "num_predict": 128}}
    with httpx.stream("POST", f"{keyed.url}/api/generate", json=body, headers=AUTH,
                      timeout=TIMEOUT) as resp:
        lines = resp.iter_lines()
        assert not json.loads(next(lines))["done"]
        during = scrape(keyed)
        assert json.loads(list(lines)[-1])["done"]
    assert value(during, "ollamalite_slots_busy", model=MODEL) == 1
    assert value(scrape(keyed), "ollamalite_slots_busy", model=MODEL) == 0


def test_metrics_need_the_key(keyed: LiveServer) -> None:
    refused = httpx.get(f"{keyed.url}/metrics", timeout=TIMEOUT)
    assert refused.status_code == 401
    assert value(scrape(keyed), "ollamalite_requests_total", family="other",
                 status="401") == 1
    assert any(re.search(r"GET /metrics 401 model=- .* client=127\.0\.0\.1$", line)
               for line in access_lines(keyed))


def test_metrics_off_json_logs_and_debug(json_logs: LiveServer) -> None:
    assert httpx.get(f"{json_logs.url}/metrics", timeout=TIMEOUT).status_code == 404
    done = httpx.post(f"{json_logs.url}/api/generate", timeout=TIMEOUT, json={
        "model": MODEL, "prompt": "Say hi.", "stream": False, "options": OPTIONS}).json()
    records = [json.loads(line) for line in json_logs.log().splitlines() if line.strip()]
    assert all({"time", "level", "logger", "message"} <= set(r) for r in records)
    access = {r["path"]: r for r in records if r["logger"] == "ollamalite.access"}
    assert set(access["/api/generate"]) >= ACCESS_KEYS
    assert access["/api/generate"]["model"] == MODEL
    assert access["/api/generate"]["prompt_tokens"] == done["prompt_eval_count"]
    assert access["/api/generate"]["generated_tokens"] == done["eval_count"]
    assert access["/metrics"]["status"] == 404 and access["/metrics"]["model"] is None
    debug = [r["message"] for r in records if r["level"] == "DEBUG"]
    assert any(re.fullmatch(r"smollm2:135m: prompt of \d+ tokens: '.*Say hi\..*'", m)
               for m in debug)
    assert any(re.fullmatch(r"slot \d: chosen, .*", m) for m in debug)


# -- units --------------------------------------------------------------------------------------

@pytest.mark.parametrize("path, name", [
    ("/api/chat", "ollama"), ("/v1/chat/completions", "openai"), ("/v1/messages", "anthropic"),
    ("/v1/messages/count_tokens", "anthropic"), ("/", "other"), ("/metrics", "other")])
def test_route_families(path: str, name: str) -> None:
    assert family(path) == name


def test_request_stats_from_engine_events() -> None:
    stats = RequestStats(started=10.0)
    stats.record(TextChunk("Hi", 1), now=10.5)
    stats.record(TextChunk("é", 2), now=10.7)  # one character of two tokens
    stats.record(Finished("stop", prompt_tokens=12, prompt_eval_count=5,
                          prompt_eval_duration=0, eval_count=3, eval_duration=0, tokens=()),
                 now=10.8)
    assert stats.ttft == pytest.approx(0.5)
    assert stats.token_gaps == pytest.approx([0.1, 0.1])
    assert (stats.prompt_tokens, stats.reused_tokens, stats.generated_tokens) == (5, 7, 3)


def test_json_formatter_writes_fields_as_keys() -> None:
    record = logging.LogRecord("ollamalite.access", logging.INFO, __file__, 1, "GET / %d",
                               (200,), None)
    setattr(record, FIELDS, {"status": 200, "model": None})
    body = json.loads(JsonFormatter().format(record))
    assert body["message"] == "GET / 200" and body["status"] == 200 and body["model"] is None
    assert body["logger"] == "ollamalite.access" and body["time"].endswith("+00:00")


def test_metrics_setting() -> None:
    assert from_env({}).metrics and not from_env({"OLLAMALITE_METRICS": "0"}).metrics


def test_speculative_counters_move_when_drafting_is_on(speculating: LiveServer) -> None:
    body = {"prompt": "Return this file unchanged:\n\n" + SOURCE, "stream": False,
            "options": {"temperature": 0, "num_predict": 64}}
    before = scrape(speculating)
    drafted = post(speculating, "/api/generate", {"model": MODEL, **body}).json()
    after = scrape(speculating)
    counts = {name: grown(after, before, f"ollamalite_speculative_{name}_tokens_total",
                          model=MODEL) for name in ("drafted", "accepted")}
    assert counts["drafted"] >= counts["accepted"] > 0
    assert grown(after, before, "ollamalite_generated_tokens_total", model=MODEL) == \
        drafted["eval_count"]
    assert re.search(rf"slot \d: {drafted['eval_count']} tokens generated, "
                     rf"{counts['drafted']:.0f} drafted, {counts['accepted']:.0f} of them "
                     "accepted", speculating.log())

    plain = post(speculating, "/api/generate", {"model": PLAIN_MODEL, **body}).json()
    last = scrape(speculating)
    assert grown(last, after, "ollamalite_generated_tokens_total", model=PLAIN_MODEL) == \
        plain["eval_count"] > 0
    assert value(last, "ollamalite_speculative_drafted_tokens_total", model=PLAIN_MODEL) == 0
