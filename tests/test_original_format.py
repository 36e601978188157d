"""models.yaml in the project's original shape: `parameters`, `name` and a `server:` section."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Iterator

import httpx
import pytest

from ollamalite import cli
from ollamalite.errors import ConfigError
from ollamalite.registry import models_file
from ollamalite.registry.models_file import ModelsFile
from ollamalite.settings import ServerSection, from_env, with_server_section
from tests.conftest import LiveServer, free_port, start_server, stop_server

PHI3 = "phi3-mini-4k-instruct"
# The example of the original design, as users copied it, with the bundled GGUF as its path.
EXAMPLE = """\
models:
  phi3-mini-4k-instruct:
    path: "bundled"
    name: "phi3-mini-4k-instruct"
    parameters:
      temperature: 0.7
      top_p: 0.9
      max_tokens: 2048
server:
  host: "0.0.0.0"
  port: 11434
"""
# The same shape with comments, greedy sampling, a short reply, and an address for a test.
SERVED = """\
# models.yaml in the original shape
models:
  phi3-mini-4k-instruct:
    path: "bundled"   # the GGUF shipped with ollamalite
    name: "phi3-mini-4k-instruct"
    parameters:
      temperature: 0
      top_p: 0.9
      max_tokens: 5
# where serve listens
server:
  host: "127.0.0.1"   # loopback only
  port: {port}
"""
COPIED_ENTRY = """\
  phi3-copy:
    path: bundled
    name: phi3-copy
    parameters:
      temperature: 0
      top_p: 0.9
      max_tokens: 5
"""


def with_copy(text: str) -> str:
    """`text` (SERVED) after copying its model to phi3-copy: the new entry ends `models:`."""
    models_part, server_part = text.split("# where serve listens\n")
    return models_part + COPIED_ENTRY + "# where serve listens\n" + server_part


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "models.yaml"
    path.write_text(text)
    return path


def test_the_original_example_loads(tmp_path: Path) -> None:
    registry = models_file.load(write(tmp_path, EXAMPLE))
    entry = registry.get("PHI3-mini-4k-instruct:latest")
    assert entry is not None and entry.name == f"{PHI3}:latest"
    assert entry.path == models_file.bundled_model_path().resolve()
    assert entry.options == {"temperature": 0.7, "top_p": 0.9, "num_predict": 2048}
    assert registry.server == ServerSection(host="0.0.0.0", port=11434)


@pytest.mark.parametrize("name", ["phi3-mini-4k-instruct", "Phi3-Mini-4K-Instruct:latest"])
def test_name_equal_to_the_key_is_accepted(tmp_path: Path, name: str) -> None:
    text = EXAMPLE.replace('name: "phi3-mini-4k-instruct"', f"name: {name}")
    assert list(models_file.load(write(tmp_path, text)).models) == [f"{PHI3}:latest"]


MODEL = "models:\n  a:\n    path: bundled\n"


@pytest.mark.parametrize("text, line, fragment", [
    (MODEL + "    options: {top_k: 1}\n    parameters: {top_k: 2}\n", 5,
     "model 'a': `options` and `parameters` are two names for the same settings"),
    (MODEL + "    parameters: {temperature: hot}\n", 4, "model 'a': invalid options"),
    (MODEL + "    parameters: [1]\n", 4, "model 'a': `parameters` must be a mapping"),
    (MODEL + "    name: b\n", 4, "model 'a': `name: b` differs from the entry's key 'a'"),
    (MODEL + "    name: a:v2\n", 4, "`name: a:v2` differs from the entry's key 'a'"),
    (MODEL + "server:\n  port: 0\n", 5, "server: `port` must be an integer from 1 to 65535"),
    (MODEL + "server:\n  port: 65536\n", 5, "from 1 to 65535"),
    (MODEL + "server:\n  port: '8080'\n", 5, "from 1 to 65535"),
    (MODEL + "server:\n  port: true\n", 5, "from 1 to 65535"),
    (MODEL + "server:\n  host: 8080\n", 5, "server: `host` must be a host name or address"),
    (MODEL + "server:\n  host: ''\n", 5, "server: `host` must be a host name or address"),
    (MODEL + "server:\n  hots: x\n", 5, "server: unknown key 'hots' (allowed: host, port)"),
    (MODEL + "server: 11434\n", 4, "`server` must be a mapping"),
])
def test_errors_name_file_and_line(tmp_path: Path, text: str, line: int, fragment: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        models_file.load(path)
    assert str(err.value).startswith(f"{path}:{line}: "), err.value
    assert fragment in str(err.value)


FILE = ServerSection(host="192.0.2.1", port=8080)


@pytest.mark.parametrize("env, flags, expected", [
    ({}, {}, ("192.0.2.1", 8080)),
    ({"OLLAMA_HOST": ""}, {}, ("192.0.2.1", 8080)),
    ({"OLLAMA_HOST": "127.0.0.2"}, {}, ("127.0.0.2", 11434)),  # a whole address: port too
    ({"OLLAMA_HOST": ":9000"}, {}, ("0.0.0.0", 9000)),
    ({}, {"port": 7000}, ("192.0.2.1", 7000)),
    ({}, {"host": "127.0.0.3"}, ("127.0.0.3", 8080)),
    ({"OLLAMA_HOST": "127.0.0.2:9000"}, {"port": 7000}, ("127.0.0.2", 7000)),
])
def test_address_flags_then_ollama_host_then_the_file(env: dict[str, str], flags: dict[str, Any],
                                                      expected: tuple[str, int]) -> None:
    settings = with_server_section(from_env(env, **flags), FILE, **flags, env=env)
    assert (settings.host, settings.port) == expected


def test_an_empty_server_section_keeps_the_defaults() -> None:
    settings = with_server_section(from_env({}), ServerSection(), env={})
    assert (settings.host, settings.port) == ("127.0.0.1", 11434)


@pytest.mark.parametrize("host, warned", [("0.0.0.0", True), ("127.0.0.1", False),
                                          ("::1", False), ("localhost", False)])
def test_serve_warns_when_the_file_binds_beyond_loopback(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
        host: str, warned: bool) -> None:
    monkeypatch.delenv("OLLAMA_HOST", raising=False)
    monkeypatch.setenv("OLLAMA_MODELS", str(tmp_path / "no-store"))
    path = write(tmp_path, EXAMPLE.replace('"0.0.0.0"', f'"{host}"'))
    args = cli._parser().parse_args(["serve", "--config", str(path)])
    with caplog.at_level(logging.WARNING, logger="ollamalite"):
        settings, registry = cli.startup(args)
    assert (settings.host, settings.port) == (host, 11434)
    assert list(registry.models) == [f"{PHI3}:latest"]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    expected = [f"listening on {host}:11434, beyond this machine: anyone who can reach this "
                "port can use the API, including creating, copying and deleting models; set "
                "OLLAMALITE_API_KEY (docs/security.md)"]
    assert warnings == (expected if warned else [])


@pytest.fixture
def original(tmp_path: Path) -> ModelsFile:
    return ModelsFile(write(tmp_path, SERVED.format(port=11434)))


def test_copy_keeps_the_shape_and_every_comment(original: ModelsFile) -> None:
    assert original.copy(PHI3, "phi3-copy") is True
    assert original.path.read_text() == with_copy(SERVED.format(port=11434))
    copy = original.load().get("phi3-copy")
    assert copy.options == {"temperature": 0.0, "top_p": 0.9, "num_predict": 5}


def test_create_merges_new_options_into_parameters(original: ModelsFile) -> None:
    assert original.derive(PHI3, "Terse:v1", {"options": {"top_k": 3}, "system": "Be terse."})
    text = original.path.read_text()
    assert ("  Terse:v1:\n    path: bundled\n    name: Terse:v1\n    parameters:\n"
            "      temperature: 0\n      top_p: 0.9\n      max_tokens: 5\n      top_k: 3\n"
            "    system: Be terse.\n") in text
    assert "options" not in text
    entry = original.load().get("terse:v1")
    assert entry.options == {"temperature": 0.0, "top_p": 0.9, "num_predict": 5, "top_k": 3}


def test_delete_keeps_the_server_section(original: ModelsFile) -> None:
    original.copy(PHI3, "phi3-copy")
    assert original.remove("phi3-copy") is True
    assert original.path.read_text() == SERVED.format(port=11434)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LiveServer, Path, int]]:
    """A server started without --port on the original shape, its port from `server:`."""
    folder = tmp_path_factory.mktemp("original")
    port = free_port()
    config = write(folder, SERVED.format(port=port))
    live = start_server(config, folder / "server.log", port=port)
    yield live, config, port
    stop_server(live)


def generate(live: LiveServer, model: str, **options: Any) -> dict[str, Any]:
    body = {"model": model, "prompt": "Tell me a story about a dragon.", "stream": False,
            "options": options}
    reply = httpx.post(live.url + "/api/generate", json=body, timeout=120)
    assert reply.status_code == 200, reply.text
    return reply.json()


def test_serves_on_the_port_its_server_section_names(
        served: tuple[LiveServer, Path, int]) -> None:
    live, _, port = served
    assert live.url == f"http://127.0.0.1:{port}"
    assert f"listening on http://127.0.0.1:{port} (1 models)" in live.log()
    assert "beyond this machine" not in live.log()
    tags = httpx.get(live.url + "/api/tags").json()["models"]
    assert [m["name"] for m in tags] == [f"{PHI3}:latest"]


def test_its_parameters_apply_to_requests(served: tuple[LiveServer, Path, int]) -> None:
    live, _, _ = served
    greedy = generate(live, PHI3, temperature=0, num_predict=5)
    for seed in (1, 2, 3):  # temperature 0 from the file: every seed gives the greedy reply
        reply = generate(live, PHI3, seed=seed)
        assert (reply["eval_count"], reply["done_reason"]) == (5, "length")  # max_tokens: 5
        assert reply["response"] == greedy["response"]
    assert generate(live, PHI3, num_predict=7)["eval_count"] == 7  # the request still wins


def test_copy_through_the_api_keeps_the_file_shape(served: tuple[LiveServer, Path, int]) -> None:
    live, config, port = served
    copied = httpx.post(live.url + "/api/copy", json={"source": PHI3, "destination": "phi3-copy"})
    assert copied.status_code == 200, copied.text
    assert config.read_text() == with_copy(SERVED.format(port=port))
    assert f'  host: "127.0.0.1"   # loopback only\n  port: {port}\n' in config.read_text()
    reply = generate(live, "phi3-copy")
    assert (reply["eval_count"], reply["done_reason"]) == (5, "length")
