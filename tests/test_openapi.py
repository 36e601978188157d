"""The OpenAPI document (GET /api/openapi.json) covers every route the router serves and is
valid OpenAPI 3.1; and Schemathesis, generating requests from it for every route, gets no 5xx
from a live server on the real model, only documented statuses and error shapes."""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path
from typing import Any, Iterator

import httpx
import pytest
import schemathesis
from aiohttp import web
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import Case, GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

from ollamalite.pull.sources import HF_HOSTS, is_url
from ollamalite.registry import models_file
from ollamalite.server.app import create_app
from ollamalite.server.openapi import ROUTES, document
from ollamalite.settings import from_env
from tests.conftest import MODEL, LiveServer, free_port, serving

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
          response_schema_conformance]
EXAMPLES = 20  # per operation and generation mode: 600-odd cases, one to three minutes
MAX_TOKENS = 4  # a generated request may ask for any length; it gets at most this many
# The field a served case names the served model in, by route (else `model`): the routes that
# remove or replace models only take it as their source, so it survives the run (it generates
# at the end).
SOURCE_FIELD = {"/api/create": "from", "/api/copy": "source", "/api/delete": None}
CONFIG = f"""\
models:
  {MODEL}:
    path: bundled
    num_ctx: 1024
    options:
      num_predict: {MAX_TOKENS}
"""


def test_every_route_is_documented(tmp_path: Path) -> None:
    app = _app(tmp_path)
    assert _undocumented(app) == set()
    operations = document(app[ROUTES])["paths"]
    for path, methods in operations.items():
        for method, operation in methods.items():
            if method in ("post", "delete"):
                assert "requestBody" in operation, f"{method} {path} has no request body"
                content = operation["requestBody"]["content"]
                if "application/json" in content:
                    assert "$ref" in content["application/json"]["schema"], (method, path)
            assert operation["responses"], f"{method} {path} documents no replies"


def test_a_route_added_past_the_registry_is_caught(tmp_path: Path) -> None:
    async def stray(_: web.Request) -> web.Response:
        return web.Response()

    app = _app(tmp_path)
    app.router.add_post("/api/stray", stray)
    assert _undocumented(app) == {("POST", "/api/stray")}


def test_document_is_valid_openapi_3_1(fuzz_server: LiveServer) -> None:
    resp = httpx.get(f"{fuzz_server.url}/api/openapi.json")
    assert resp.status_code == 200
    doc = resp.json()
    assert doc["openapi"] == "3.1.0"
    schemathesis.openapi.from_dict(doc).validate()  # against the OpenAPI 3.1 meta-schema
    chat = doc["paths"]["/api/chat"]["post"]
    assert chat["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/native.ChatRequest"}
    assert doc["components"]["schemas"]["OpenAIError"]["properties"]["error"]["required"] == [
        "message", "type", "param", "code"]
    assert doc["paths"]["/v1/embeddings"]["post"]["responses"]["400"]["content"][
        "application/json"]["schema"] == {"$ref": "#/components/schemas/OpenAIError"}


@pytest.mark.fuzz
def test_fuzz_every_route(fuzz_server: LiveServer, capsys: pytest.CaptureFixture[str]) -> None:
    """Valid and invalid requests for every operation: no 5xx, and each reply is one the
    document lists, in its error shape. The server still generates afterwards. The summary is
    printed whether the test passes or not."""
    schema = schemathesis.openapi.from_url(f"{fuzz_server.url}/api/openapi.json")
    tally: Counter[tuple[str, int]] = Counter()  # (operation, status): cases
    failures: dict[str, str] = {}
    started = time.monotonic()
    for result in schema.get_all_operations():
        operation = result.ok()
        # Only a JSON body can be made invalid: any bytes are a blob, any string a path part.
        json_body = any(body.media_type == "application/json" for body in operation.body)
        modes = (GenerationMode.POSITIVE, *[GenerationMode.NEGATIVE] * json_body)
        for mode in modes:
            _fuzz(operation.as_strategy(generation_mode=mode), fuzz_server.url, tally, failures)
    with capsys.disabled():
        _summary(tally, failures, time.monotonic() - started)
    assert not failures
    answered = {label for (label, status) in tally if status == 200}
    # Valid requests reached the engine through both adapters, not only the 400 paths.
    assert answered & {"POST /api/generate", "POST /api/chat"}
    assert answered & {"POST /v1/completions", "POST /v1/chat/completions"}
    _still_serves(fuzz_server.url)


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """A server of its own, on a throwaway models.yaml and home folder, since the fuzzer
    creates, copies and deletes models and uploads blobs. hf.co is a closed local port."""
    folder = tmp_path_factory.mktemp("fuzz")
    with serving(folder, CONFIG, {"HF_ENDPOINT": f"http://127.0.0.1:{free_port()}"}) as server:
        yield server


def _app(folder: Path) -> web.Application:
    settings = from_env({"OLLAMALITE_HOME": str(folder)})
    return create_app(settings, models_file.load_or_default(folder / "models.yaml"))


def _undocumented(app: web.Application) -> set[tuple[str, str]]:
    """(method, path) of the routes the router serves that the document does not show."""
    paths = document(app[ROUTES])["paths"]
    return {(r.method, r.resource.canonical) for r in app.router.routes()
            if r.method.lower() not in paths.get(r.resource.canonical, {})}


def _fuzz(strategy: st.SearchStrategy[Case], url: str, tally: Counter[tuple[str, int]],
          failures: dict[str, str]) -> None:
    """Runs one operation's cases; the first failure of each is kept (not shrunk: time)."""
    cases = st.tuples(strategy, st.booleans()).map(_bounded).filter(_stays_local)

    @settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    @given(cases)
    def run(case: Case) -> None:
        status = 0  # no answer
        try:
            response = case.call(base_url=url, timeout=120)
            status = response.status_code
            case.validate_response(response, checks=CHECKS)
        except (Exception, BaseExceptionGroup) as exc:  # failed checks, or no answer
            failures.setdefault(case.operation.label,
                                f"{exc}\n    {case.as_curl_command(base_url=url)}")
        finally:
            tally[case.operation.label, status] += 1

    run()


def _summary(tally: Counter[tuple[str, int]], failures: dict[str, str], seconds: float) -> None:
    """Printed in the test's output: the cases run, the 5xx among them, each operation's
    statuses, and the first failure of each failing operation with its curl command."""
    server_errors = sum(n for (_, status), n in tally.items() if status >= 500)
    print(f"\nfuzz: {sum(tally.values())} cases in {seconds:.0f}s, {server_errors} answered "
          f"5xx, {len(failures)} operations failed a check")
    for label in sorted({label for label, _ in tally}):
        statuses = sorted((status, n) for (other, status), n in tally.items() if other == label)
        print(f"  {label}: " + ", ".join(f"{status} x{n}" for status, n in statuses))
    for label, failure in failures.items():
        print(f"FAILED {label}: {failure}")


def _bounded(drawn: tuple[Case, bool]) -> Case:
    """Caps the tokens a case asks for and, when the flag is drawn, names the served model,
    so valid requests reach the engine, not only a 404."""
    case, served = drawn
    body = case.body
    if isinstance(body, dict):
        field = SOURCE_FIELD.get(case.operation.path, "model")
        if served and field:
            body[field] = MODEL
            if case.operation.path.startswith("/v1/"):
                _answerable(body.get("messages"))
        _cap(body, ("max_tokens", "max_completion_tokens"))
        if isinstance(body.get("options"), dict):
            _cap(body["options"], ("num_predict", "max_tokens"))
    if served and "model" in (case.path_parameters or {}):
        case.path_parameters["model"] = MODEL
    return case


def _answerable(messages: Any) -> None:
    """A served /v1 chat keeps its roles and texts but drops what the document cannot rule out
    and the server refuses: content that is not text (null, unknown parts) and tool calls
    (their arguments must be a JSON object in a string). The other half of the cases still
    sends those, to a model name that does not exist."""
    for message in messages if isinstance(messages, list) else []:
        if isinstance(message, dict):
            message.pop("tool_calls", None)
            if not isinstance(message.get("content"), str):
                message["content"] = "Hi"


def _cap(body: dict[str, Any], keys: tuple[str, ...]) -> None:
    """A token count above MAX_TOKENS (or negative: unlimited) becomes MAX_TOKENS; values of
    other types stay, so invalid ones are still sent. Absent ones default to CONFIG's cap."""
    for key in keys:
        value = body.get(key)
        if isinstance(value, (int, float)) and not 0 <= value <= MAX_TOKENS:
            body[key] = MAX_TOKENS


def _stays_local(case: Case) -> bool:
    """Pulls of hf.co repos and URLs would go to the internet: those are left to
    test_pull_live.py's local hub. Every other pull (names there is no registry for, the
    served model) is fuzzed."""
    body = case.body
    if case.operation.path != "/api/pull" or not isinstance(body, dict):
        return True
    name = body.get("model") or body.get("name")
    return not (isinstance(name, str)
                and (is_url(name) or name.partition("/")[0].lower() in HF_HOSTS))


def _still_serves(url: str) -> None:
    with httpx.Client(base_url=url, timeout=120) as client:
        assert client.get("/").text == "Ollama is running"
        resp = client.post("/api/generate", json={"model": MODEL, "prompt": "Hello",
                                                  "stream": False})
        assert resp.status_code == 200, resp.text
        assert resp.json()["eval_count"] > 0
