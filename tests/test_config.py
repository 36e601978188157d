"""models.yaml loading: valid files, and every start-up error naming file and line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from ollamalite.errors import ConfigError
from ollamalite.registry import models_file
from tests.conftest import REPO


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "models.yaml"
    path.write_text(text)
    return path


def test_repo_models_yaml_serves_bundled_model() -> None:
    registry = models_file.load(REPO / "models.yaml")
    entry = registry.get("SmolLM2:135M")
    assert entry is not None and entry.name == "smollm2:135m"
    assert entry.path == models_file.bundled_model_path().resolve()
    assert registry.get("smollm2") is None  # means smollm2:latest, which is not configured


def test_relative_paths_short_form_and_defaults(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    gguf = tmp_path / "sub" / "tiny.gguf"
    gguf.write_bytes(b"GGUF")
    path = write(tmp_path, """\
models:
  tiny: sub/tiny.gguf    # short form: just a path
  Tiny-Chat:v1:
    path: ./sub/tiny.gguf
    num_ctx: 512
    keep_alive: 1h30m
    system: be brief
    options: {temperature: 0.2, stop: ["\\n"]}
""")
    registry = models_file.load(path)
    assert set(registry.models) == {"tiny:latest", "tiny-chat:v1"}
    entry = registry.get("tiny-chat:V1")
    assert entry.path == gguf.resolve() and entry.num_ctx == 512
    assert entry.keep_alive == 5400.0 and entry.system == "be brief"
    assert entry.options == {"temperature": 0.2, "stop": ("\n",)}
    assert registry.get("tiny").name == "tiny:latest"


@pytest.mark.parametrize("text, line, fragment", [
    ("models:\n  a:\n    path: bundled\n    colour: red\n", 4, "unknown key 'colour'"),
    ("models:\n  a:\n    path: nowhere.gguf\n", 3, "GGUF file not found"),
    ("modles:\n  a: bundled\n", 1, "unknown key 'modles'"),
    ("models:\n  a:\n    path: bundled\n    num_ctx: -5\n", 4, "positive integer"),
    ("models:\n  a:\n    path: bundled\n    options: {temperature: hot}\n", 4, "temperature"),
    ("models:\n  a:\n    path: bundled\n    keep_alive: 1d\n", 4, "invalid duration"),
    ("models:\n  a:\n    path: [x\n", 4, "invalid YAML"),
    ("models:\n  'bad name!':\n    path: bundled\n", 2, "invalid model name"),
])
def test_errors_name_file_and_line(tmp_path: Path, text: str, line: int, fragment: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        models_file.load(path)
    message = str(err.value)
    assert message.startswith(f"{path}:{line}:"), message
    assert fragment in message


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        models_file.load(tmp_path / "absent.yaml")


def test_serve_reports_config_errors_without_traceback(tmp_path: Path) -> None:
    path = write(tmp_path, "models:\n  a:\n    path: bundled\n    colour: red\n")
    result = subprocess.run([sys.executable, "-m", "ollamalite", "serve", "--config", str(path),
                             "--port", "0"], cwd=REPO, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 1
    assert f"{path}:4: model 'a': unknown key 'colour'" in result.stderr
    assert "Traceback" not in result.stderr


def test_tags_skips_a_model_whose_file_disappeared(tmp_path: Path) -> None:
    import shutil

    import httpx

    from tests.conftest import start_server, stop_server

    gguf = tmp_path / "copy.gguf"
    shutil.copy(models_file.bundled_model_path(), gguf)
    path = write(tmp_path, "models:\n  smollm2:135m: bundled\n  copy: copy.gguf\n")
    server = start_server(path, tmp_path / "server.log")
    try:
        gguf.unlink()
        names = [m["name"] for m in httpx.get(server.url + "/api/tags").json()["models"]]
        assert names == ["smollm2:135m"]
        assert "copy:latest: cannot read" in server.log()
    finally:
        stop_server(server)
