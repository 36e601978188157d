"""The gate in front of the handlers (docs/security.md): the Host check against DNS rebinding,
CORS without a same-origin shortcut, the optional API key with the real OpenAI and Ollama
clients, the body limit, large bodies parsed off the event loop, and errors that escape a
started stream."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator

import httpx
import ollama
import openai
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from aiohttp.typedefs import Handler

from ollamalite import cli
from ollamalite.errors import ApiError, ConfigError
from ollamalite.server import gate
from ollamalite.server.app import errors_middleware
from ollamalite.server.keys import SETTINGS
from ollamalite.server import request as request_module
from ollamalite.server.request import read_body
from ollamalite.server.stream import NdjsonStream, SseStream
from ollamalite.settings import Settings, from_env, is_loopback
from tests.conftest import MODEL, REPO, LiveServer, serving
from tests.scripted import post_once

KEY = "s3cret-key"
CONFIG = f"models:\n  {MODEL}:\n    path: bundled\n    num_ctx: 1024\n"
MAX_BODY = 2 << 20  # above PARSE_INLINE_MAX, so the live server parses some bodies in a thread


@pytest.fixture(scope="module")
def open_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """No key, bound to loopback (the default): the Host check applies."""
    folder = tmp_path_factory.mktemp("gate-open")
    with serving(folder, CONFIG, env={"OLLAMALITE_MAX_BODY": str(MAX_BODY)}) as server:
        yield server


@pytest.fixture(scope="module")
def keyed_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """The key comes from a file, surrounding white space stripped."""
    folder = tmp_path_factory.mktemp("gate-keyed")
    key_file = folder / "api-key"
    key_file.write_text(f"  {KEY}\n")
    with serving(folder, CONFIG, env={"OLLAMALITE_API_KEY_FILE": str(key_file)}) as server:
        yield server


def port_of(server: LiveServer) -> int:
    return int(server.url.rsplit(":", 1)[1])


# -- Host check (DNS rebinding) -----------------------------------------------------------------

@pytest.mark.parametrize("origin", [True, False])
def test_rebinding_page_cannot_edit_models(open_server: LiveServer, origin: bool) -> None:
    """A page at http://evil.example:PORT whose name now resolves to 127.0.0.1 sends that Host
    (and that Origin): refused, and models.yaml is untouched."""
    config = open_server.log_path.parent / "models.yaml"
    before = config.read_bytes()
    evil = f"evil.example:{port_of(open_server)}"
    headers = {"Host": evil, **({"Origin": f"http://{evil}"} if origin else {})}
    resp = httpx.post(open_server.url + "/api/copy", headers=headers,
                      json={"source": MODEL, "destination": "stolen"})
    assert (resp.status_code, resp.text) == (403, "")
    assert config.read_bytes() == before
    names = [m["name"] for m in httpx.get(open_server.url + "/api/tags").json()["models"]]
    assert names == [MODEL]


@pytest.mark.parametrize("host", ["localhost", "127.0.0.1", "[::1]", "foo.localhost",
                                  "printer.local", "db.internal", "192.168.1.20", "10.1.2.3",
                                  socket.gethostname()])
def test_local_hosts_pass(open_server: LiveServer, host: str) -> None:
    resp = httpx.get(open_server.url + "/api/version",
                     headers={"Host": f"{host}:{port_of(open_server)}"})
    assert resp.status_code == 200 and "version" in resp.json()


@pytest.mark.parametrize("host", ["evil.example", "127.0.0.1.nip.io", "8.8.8.8", "localhost.evil"])
def test_other_hosts_are_refused(open_server: LiveServer, host: str) -> None:
    resp = httpx.get(open_server.url + "/api/version", headers={"Host": host})
    assert (resp.status_code, resp.text) == (403, "")


@pytest.mark.parametrize(("bind", "loopback"), [
    ("127.0.0.1", True), ("127.5.5.5", True), ("::1", True), ("[::1]", True),
    ("localhost", True), ("0.0.0.0", False), ("::", False), ("", False), ("192.168.1.2", False),
    ("example.lan", False)])
def test_host_check_applies_on_loopback_binds(bind: str, loopback: bool) -> None:
    assert is_loopback(bind) is loopback
    assert (len(gate.middlewares(Settings(host=bind))) == 2) is loopback


def test_host_header_forms() -> None:
    assert gate.host_allowed("", "box")
    assert gate.host_allowed("[::1]", "box") and gate.host_allowed("::1", "box")
    assert gate.host_allowed("[::ffff:127.0.0.1]:80", "box")
    assert gate.host_allowed("BOX:11434", "box") and not gate.host_allowed("box.evil", "box")
    assert not gate.host_allowed("[2001:db8::1]:80", "box")


# -- CORS, on an app with the gate of given settings ---------------------------------------------

async def index(_: web.Request) -> web.Response:
    return web.Response(text="Ollama is running")


async def ok(_: web.Request) -> web.Response:
    return web.json_response({"ok": True})


def gated_app(settings: Settings) -> web.Application:
    """The gate and the errors middleware as create_app puts them, over trivial routes."""
    app = web.Application(middlewares=[*gate.middlewares(settings), errors_middleware])
    app.on_response_prepare.append(gate.add_cors_headers)
    app.router.add_get("/", index)
    app.router.add_post("/api/copy", ok)
    app.router.add_post("/v1/chat/completions", ok)
    return app


async def test_origin_equal_to_host_is_not_a_shortcut() -> None:
    """Bound beyond loopback, every Host passes; a rebinding page's Origin equals its Host, and
    must still be on the list."""
    async with TestClient(TestServer(gated_app(Settings(host="0.0.0.0")))) as client:
        evil = await client.post("/api/copy", headers={"Host": "evil.example:11434",
                                                       "Origin": "http://evil.example:11434"})
        assert (evil.status, await evil.text()) == (403, "")
        plain = await client.post("/api/copy", headers={"Host": "evil.example:11434"})
        assert plain.status == 200
        local = await client.post("/api/copy", headers={"Origin": "http://localhost:11434"})
        assert local.headers["Access-Control-Allow-Origin"] == "http://localhost:11434"


async def test_preflight_needs_no_key_and_a_refusal_is_readable_cross_origin() -> None:
    origin = {"Origin": "http://localhost:5173"}
    async with TestClient(TestServer(gated_app(Settings(api_key=KEY)))) as client:
        pre = await client.options("/v1/chat/completions", headers={
            **origin, "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "x-api-key, anthropic-version"})
        assert pre.status == 204
        allowed = pre.headers["Access-Control-Allow-Headers"].lower()
        assert "x-api-key" in allowed and "anthropic-version" in allowed
        refused = await client.post("/api/copy", headers=origin)
        assert refused.status == 401
        assert refused.headers["Access-Control-Allow-Origin"] == "http://localhost:5173"


# -- API key ------------------------------------------------------------------------------------

def test_clients_with_the_key(keyed_server: LiveServer) -> None:
    oa = openai.OpenAI(base_url=keyed_server.url + "/v1", api_key=KEY, max_retries=0)
    assert [m.id for m in oa.models.list().data] == [MODEL]
    reply = oa.chat.completions.create(model=MODEL, max_tokens=2,
                                       messages=[{"role": "user", "content": "Hi"}])
    assert reply.choices[0].message.role == "assistant" and reply.usage.completion_tokens >= 1
    native = ollama.Client(host=keyed_server.url, headers={"Authorization": f"Bearer {KEY}"})
    assert [m.model for m in native.list().models] == [MODEL]
    generated = native.generate(model=MODEL, prompt="Hi", options={"num_predict": 2})
    assert generated.done and generated.eval_count >= 1


def test_clients_without_the_key(keyed_server: LiveServer) -> None:
    oa = openai.OpenAI(base_url=keyed_server.url + "/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as refused:
        oa.models.list()
    assert refused.value.status_code == 401
    assert refused.value.body["message"] == gate.UNAUTHORIZED  # type: ignore[index]
    with pytest.raises(ollama.ResponseError) as native:
        ollama.Client(host=keyed_server.url).list()
    assert (native.value.status_code, native.value.error) == (401, gate.UNAUTHORIZED)


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"},
                                     {"Authorization": KEY}, {"Authorization": f"Basic {KEY}"},
                                     {"x-api-key": f"{KEY}x"}])
def test_missing_or_wrong_key_is_401_in_each_shape(keyed_server: LiveServer,
                                                   headers: dict[str, str]) -> None:
    native = httpx.post(keyed_server.url + "/api/copy", headers=headers,
                        json={"source": MODEL, "destination": "copy"})
    assert native.status_code == 401 and native.headers["WWW-Authenticate"] == "Bearer"
    assert native.json() == {"error": gate.UNAUTHORIZED}
    v1 = httpx.get(keyed_server.url + "/v1/models", headers=headers)
    assert v1.status_code == 401 and v1.headers["WWW-Authenticate"] == "Bearer"
    assert v1.json() == {"error": {"message": gate.UNAUTHORIZED, "type": "invalid_request_error",
                                   "param": None, "code": None}}


@pytest.mark.parametrize("headers", [{"Authorization": f"Bearer {KEY}"},
                                     {"authorization": f"bearer {KEY}"}, {"x-api-key": KEY}])
def test_either_header_carries_the_key(keyed_server: LiveServer,
                                       headers: dict[str, str]) -> None:
    resp = httpx.get(keyed_server.url + "/api/tags", headers=headers)
    assert resp.status_code == 200 and resp.json()["models"][0]["name"] == MODEL


def test_root_is_open(keyed_server: LiveServer) -> None:
    assert httpx.get(keyed_server.url + "/").text == "Ollama is running"
    assert httpx.head(keyed_server.url + "/").status_code == 200
    assert httpx.get(keyed_server.url + "/api/version").status_code == 401


def test_key_settings(tmp_path: Path) -> None:
    key_file = tmp_path / "key"
    key_file.write_text(f"\n{KEY}  \n")
    assert from_env({"OLLAMALITE_API_KEY_FILE": str(key_file)}).api_key == KEY
    assert from_env({"OLLAMALITE_API_KEY": KEY}).api_key == KEY
    assert KEY not in repr(from_env({"OLLAMALITE_API_KEY": KEY}))
    key_file.write_text(" \n")
    for env, problem in [({"OLLAMALITE_API_KEY_FILE": str(key_file)}, "is empty"),
                         ({"OLLAMALITE_API_KEY_FILE": str(tmp_path / "none")}, "cannot read"),
                         ({"OLLAMALITE_API_KEY": "a key"}, "printable ASCII"),
                         ({"OLLAMALITE_API_KEY": KEY, "OLLAMALITE_API_KEY_FILE": "x"}, "not both")]:
        with pytest.raises(ConfigError, match=problem):
            from_env(env)


def ollamalite(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """`python -m ollamalite ARGS` with `env` added to this environment."""
    return subprocess.run([sys.executable, "-m", "ollamalite", *args], cwd=REPO, text=True,
                          env={**os.environ, **env}, capture_output=True, timeout=120)


def test_unreadable_key_file_stops_start_up(tmp_path: Path) -> None:
    done = ollamalite("serve", "--port", "1", OLLAMALITE_API_KEY_FILE=str(tmp_path / "none"))
    assert done.returncode == 1
    assert "ollamalite: OLLAMALITE_API_KEY_FILE: cannot read" in done.stderr


def test_client_commands_send_the_key(keyed_server: LiveServer) -> None:
    listed = ollamalite("list", OLLAMA_HOST=keyed_server.url, OLLAMALITE_API_KEY=KEY)
    assert listed.returncode == 0 and listed.stdout.splitlines()[1].startswith(MODEL)
    refused = ollamalite("list", OLLAMA_HOST=keyed_server.url, OLLAMALITE_API_KEY="")
    assert (refused.returncode, refused.stderr.strip()) == (1, f"Error: {gate.UNAUTHORIZED}")


@pytest.mark.parametrize(("settings", "warned"), [
    (Settings(host="0.0.0.0"), True), (Settings(host="192.168.1.2"), True),
    (Settings(host="0.0.0.0", api_key=KEY), False), (Settings(host="127.0.0.1"), False)])
def test_exposed_without_key_warns(caplog: pytest.LogCaptureFixture, settings: Settings,
                                   warned: bool) -> None:
    with caplog.at_level(logging.WARNING, logger=cli.log.name):
        cli.warn_if_exposed(settings)
    assert ("set OLLAMALITE_API_KEY" in caplog.text) is warned


# -- request bodies -----------------------------------------------------------------------------

def padded(body: dict[str, Any], size: int) -> bytes:
    """`body` with a `pad` field of many small objects, about `size` bytes in all."""
    return json.dumps({**body, "pad": [{"k": "v"}] * (size // 12)}).encode()


@pytest.mark.parametrize("chunked", [False, True])
@pytest.mark.parametrize(("path", "error"), [
    ("/api/show", lambda body: body["error"]),
    ("/v1/chat/completions", lambda body: body["error"]["message"])])
def test_body_over_the_limit_is_413_in_the_route_shape(open_server: LiveServer, path: str,
                                                       error: Any, chunked: bool) -> None:
    """Announced too large (refused unread), or found so while reading a chunked body."""
    body = padded({"model": MODEL}, MAX_BODY + 1000)
    resp = httpx.post(open_server.url + path, content=iter([body]) if chunked else body,
                      timeout=60)
    assert resp.status_code == 413
    assert error(resp.json()) == (f"request body too large: the limit is {MAX_BODY} bytes "
                                  "(OLLAMALITE_MAX_BODY)")


def test_body_under_the_limit_parsed_in_a_thread(open_server: LiveServer) -> None:
    body = padded({"model": MODEL, "verbose": False}, MAX_BODY - 100_000)
    assert len(body) > 1 << 20
    resp = httpx.post(open_server.url + "/api/show", content=body, timeout=60)
    assert resp.status_code == 200 and resp.json()["details"]["family"]


def test_blob_upload_is_not_bound_by_the_body_limit(open_server: LiveServer) -> None:
    data = os.urandom(MAX_BODY + 4096)
    digest = hashlib.sha256(data).hexdigest()
    resp = httpx.post(f"{open_server.url}/api/blobs/sha256:{digest}", content=data, timeout=60)
    assert resp.status_code == 201


class FakeRequest:
    """What read_body uses of a request: its body, its length and the app's settings."""

    def __init__(self, body: bytes) -> None:
        self.body, self.content_length = body, len(body)
        self.app = {SETTINGS: Settings()}

    async def read(self) -> bytes:
        return self.body


async def test_large_body_is_parsed_in_a_thread_by_the_yielding_parser(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A body over PARSE_INLINE_MAX leaves the event loop: it goes to a thread, parsed by the
    Python scanner (json's C scanner would hold the GIL, and so the loop, for the whole parse);
    a small one parses inline. Both give exactly what json.loads gives."""
    calls: list[Any] = []
    real_to_thread = asyncio.to_thread

    async def recording_to_thread(func: Any, *args: Any) -> Any:
        calls.append(func)
        return await real_to_thread(func, *args)

    monkeypatch.setattr(request_module.asyncio, "to_thread", recording_to_thread)
    body = {"messages": [{"role": "user", "content": f"m{i} \u00e9\\n"} for i in range(40_000)],
            "n": [1.5, -2, None, True, 10**30]}
    raw = json.dumps(body).encode()
    assert len(raw) > request_module.PARSE_INLINE_MAX
    assert await read_body(FakeRequest(raw)) == body  # type: ignore[arg-type]
    assert calls == [request_module.parse_yielding]
    small = {"model": MODEL, "prompt": "\u00e9"}
    assert await read_body(FakeRequest(json.dumps(small).encode())) == small  # type: ignore
    assert calls == [request_module.parse_yielding]


def test_yielding_parser_agrees_with_json() -> None:
    raw = json.dumps({"a": [1, 2.5, "\u00e9", None], "b": {"c": True}}).encode("utf-16")
    assert request_module.parse_yielding(raw) == json.loads(raw)
    with pytest.raises(json.JSONDecodeError):
        request_module.parse_yielding(b'{"a": [1,')


async def test_body_announced_too_large_is_refused_unread() -> None:
    request = FakeRequest(b"{}")
    request.content_length = Settings().max_body + 1
    with pytest.raises(ApiError) as refused:
        await read_body(request)  # type: ignore[arg-type]
    assert refused.value.status == 413


# -- failures that escape a handler -------------------------------------------------------------

class Boom(Exception):
    pass


def failing(stream_kind: type[NdjsonStream] | None, error: Exception) -> Handler:
    """A handler that sends one object on a stream of `stream_kind` (or nothing), then raises
    `error`."""
    async def handler(request: web.Request) -> web.StreamResponse:
        if stream_kind is not None:
            await stream_kind(request).send({"part": 1})
        raise error

    return handler


async def test_crash_mid_ndjson_ends_the_stream_with_a_generic_line(
        caplog: pytest.LogCaptureFixture) -> None:
    status, ctype, body = await post_once(failing(NdjsonStream, Boom("secret /path")),
                                     "/api/chat")
    assert (status, ctype) == (200, "application/x-ndjson")
    assert [json.loads(line) for line in body.splitlines()] == [{"part": 1},
                                                                {"error": "internal error"}]
    assert "secret" not in body
    assert "Boom: secret /path" in caplog.text and "Traceback" in caplog.text


async def test_crash_mid_sse_ends_the_stream_with_an_openai_error_event() -> None:
    status, ctype, body = await post_once(failing(SseStream, Boom("secret")),
                                     "/v1/chat/completions")
    assert (status, ctype) == (200, "text/event-stream")
    events = [json.loads(e.removeprefix("data: ")) for e in body.strip().split("\n\n")]
    assert events == [{"part": 1}, {"error": {"message": "internal error", "type": "api_error",
                                              "param": None, "code": None}}]


async def test_api_error_mid_stream_keeps_its_message() -> None:
    status, _, body = await post_once(failing(NdjsonStream, ApiError("model went away")),
                                 "/api/chat")
    assert status == 200 and json.loads(body.splitlines()[-1]) == {"error": "model went away"}


@pytest.mark.parametrize(("path", "expected"), [
    ("/api/chat", {"error": "internal error"}),
    ("/v1/chat/completions", {"error": {"message": "internal error", "type": "api_error",
                                        "param": None, "code": None}})])
async def test_crash_before_output_is_a_generic_500(path: str, expected: dict) -> None:
    status, ctype, body = await post_once(failing(None, Boom("secret")), path)
    assert (status, json.loads(body)) == (500, expected)
    assert ctype.startswith("application/json")
