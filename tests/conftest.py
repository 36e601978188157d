"""Shared fixtures: a real ollamalite server on a free port, serving the bundled model."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generator, Iterator

import pytest

from ollamalite import settings
from ollamalite.registry.models_file import bundled_model_path
from ollamalite.runtime.engine.cpu import CpuPlan, CpuPolicy
from ollamalite.runtime.engine.engine import Engine
from ollamalite.runtime.engine.llama import LlamaModel

REPO = Path(__file__).resolve().parent.parent
MODEL = "smollm2:135m"
# A second name for the same GGUF with its own defaults, to test models.yaml settings.
PIRATE = "pirate:latest"
PIRATE_SYSTEM = "You are a pirate. Answer every question like a pirate."

TEST_CONFIG = f"""\
# models.yaml written by the test suite
models:
  {MODEL}:
    path: bundled
    num_ctx: 2048
  pirate:
    path: bundled
    num_ctx: 1024
    system: "{PIRATE_SYSTEM}"
    options:
      temperature: 0
      num_predict: 8
"""


PLAN = pytest.StashKey[CpuPlan]()
GATE = "gate"  # the marker of tests that prove this machine can run the engine at all


def pytest_configure(config: pytest.Config) -> None:
    """Decide once, as a server would, whether llama.cpp's extra buffer types (AMX, repacked
    weights) are safe on this CPU, and hand the verdict to every server and model the tests
    start: each server has a home folder of its own, so each would otherwise probe again. The
    probe's verdict is cached in pytest's cache folder, per CPU."""
    cache = getattr(config, "cache", None)  # absent under `-p no:cacheprovider`
    folder = cache.mkdir("cpu-probe") if cache else Path(tempfile.mkdtemp(prefix="cpu-probe"))
    policy = CpuPolicy(settings.current().repack, folder)
    config.stash[PLAN] = plan = policy.plan(bundled_model_path())
    os.environ["OLLAMALITE_REPACK"] = "on" if plan.extra_bufts else "off"


def pytest_report_header(config: pytest.Config) -> str:
    return config.stash[PLAN].describe()


def extra_bufts() -> bool:
    """What models loaded by the tests themselves use (see `pytest_configure`)."""
    return os.environ["OLLAMALITE_REPACK"] == "on"


@pytest.fixture(scope="module")
def model() -> Iterator[LlamaModel]:
    """The bundled model loaded in the test process, for tests that drive the engine."""
    loaded = LlamaModel(bundled_model_path(), extra_bufts=extra_bufts())
    yield loaded
    loaded.close()


@contextmanager
def running(model: LlamaModel, **kw: Any) -> Iterator[Engine]:
    """An engine on `model` (Engine's keywords), closed when the block ends."""
    engine = Engine(model, **kw)
    try:
        yield engine
    finally:
        engine.close()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Gate tests run first: if the engine cannot decode here, nothing after them can pass."""
    items.sort(key=lambda item: item.get_closest_marker(GATE) is None)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]
                              ) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if report.failed and item.get_closest_marker(GATE) is not None:
        item.session.shouldstop = ("the engine cannot run on this machine (see the failure "
                                   "above): every test that loads a model would fail after it")
    return report


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class LiveServer:
    url: str
    process: subprocess.Popen
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def start_server(config: Path, log_path: Path, env: dict[str, str] | None = None,
                 timeout: float = 60.0, port: int | None = None,
                 args: tuple[str, ...] = ()) -> LiveServer:
    """`port`: the one `config`'s `server:` section names (no --port flag is passed); by
    default a free one, passed as --port. `args`: more `serve` flags."""
    flags = list(args)
    if port is None:
        port = free_port()
        flags += ["--port", str(port)]
    # Files the server creates, and the Ollama store it reads, stay next to its log.
    isolated = {"OLLAMALITE_HOME": str(log_path.parent / "home"),
                "OLLAMA_MODELS": str(log_path.parent / "no-ollama-store")}
    full_env = {**os.environ, "OLLAMA_HOST": "", "OLLAMA_ORIGINS": "", **isolated, **(env or {})}
    log = open(log_path, "wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "ollamalite", "serve", *flags, "--config", str(config)],
        cwd=REPO, env=full_env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}:\n"
                               f"{log_path.read_text(errors='replace')}")
        try:
            with urllib.request.urlopen(url + "/", timeout=1) as resp:
                if resp.status == 200:
                    return LiveServer(url, process, log_path)
        except OSError:
            time.sleep(0.1)
    process.kill()
    raise RuntimeError("server did not start in time")


def disconnect_mid_stream(server: LiveServer, path: str, body: bytes, marker: bytes) -> None:
    """POST `body` over a raw socket, read until `marker` has streamed, hang up; then wait
    (10 s at most) for the server to log that the generation was cancelled."""
    host, port = server.url.removeprefix("http://").split(":")
    head = (f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n")
    with socket.create_connection((host, int(port)), timeout=120) as sock:
        sock.sendall(head.encode() + body)
        received = b""
        while marker not in received:
            data = sock.recv(4096)
            assert data, f"the server closed the stream before {marker!r}"
            received += data
    deadline = time.monotonic() + 10
    while "client went away" not in server.log() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "client went away, generation cancelled" in server.log()


def stop_server(server: LiveServer) -> None:
    server.process.terminate()
    try:
        server.process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        server.process.kill()


@contextmanager
def serving(folder: Path, config_text: str, env: dict[str, str] | None = None,
            args: tuple[str, ...] = ()) -> Iterator[LiveServer]:
    """A server of its own on `config_text` (written to `folder`/models.yaml, its log beside
    it), started with `serve` flags `args`, stopped when the block ends."""
    config = folder / "models.yaml"
    config.write_text(config_text)
    live = start_server(config, folder / "server.log", env=env, args=args)
    try:
        yield live
    finally:
        stop_server(live)


def module_server(name: str, config_text: str, env: dict[str, str] | None = None) -> Any:
    """A module-scoped fixture: a server of the module's own on `config_text` (see
    `serving`), in a temporary folder named after `name`."""
    @pytest.fixture(scope="module")
    def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
        with serving(tmp_path_factory.mktemp(name), config_text, env) as server:
            yield server
    return live


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    folder = tmp_path_factory.mktemp("server")
    config = folder / "models.yaml"
    config.write_text(TEST_CONFIG)
    live = start_server(config, folder / "server.log",
                        env={"OLLAMA_ORIGINS": "https://allowed.example"})
    yield live
    stop_server(live)


@pytest.fixture(scope="session")
def base_url(server: LiveServer) -> str:
    return server.url
