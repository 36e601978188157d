"""ModelsFile: round-trip edits of models.yaml (comments, order, atomic, serialised)."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from ollamalite.errors import BadRequest, ConfigError
from ollamalite.registry.models_file import ModelsFile

ORIGINAL = """\
# head comment: keep me
models:
  # about a
  a:
    path: bundled   # eol a
    options: {temperature: 0}
  b: bundled   # eol b
  # about c
  c:
    path: bundled
    num_ctx: 512
# before model_dirs
model_dirs: []
"""


@pytest.fixture
def models_file(tmp_path: Path) -> ModelsFile:
    path = tmp_path / "models.yaml"
    path.write_text(ORIGINAL)
    return ModelsFile(path)


def test_add_appends_and_keeps_every_comment(models_file: ModelsFile) -> None:
    models_file.add("new:v1", {"path": "bundled", "system": "one\ntwo\n",
                               "options": {"num_predict": 3}})
    text = models_file.path.read_text()
    assert text.startswith(ORIGINAL.split("# before model_dirs")[0])
    for line in ("# head comment: keep me", "  # about a", "    path: bundled   # eol a",
                 "  b: bundled   # eol b", "  # about c", "# before model_dirs"):
        assert line + "\n" in text
    assert "  new:v1:\n    path: bundled\n    system: |\n      one\n      two\n" in text
    assert list(models_file.load().models) == ["a:latest", "b:latest", "c:latest", "new:v1"]
    assert text.index("new:v1") < text.index("# before model_dirs")
    entry = models_file.load().get("new:v1")
    assert entry.system == "one\ntwo\n" and entry.options == {"num_predict": 3}


def test_replace_keeps_place_and_matches_names_loosely(models_file: ModelsFile) -> None:
    models_file.add("A:latest", {"path": "bundled", "num_ctx": 64})
    registry = models_file.load()
    assert list(registry.models) == ["a:latest", "b:latest", "c:latest"]
    assert registry.get("a").num_ctx == 64 and registry.get("a").options == {}
    assert "  # about a\n  a:\n    path: bundled\n    num_ctx: 64\n" in models_file.path.read_text()


def test_remove_keeps_the_comments_around(models_file: ModelsFile) -> None:
    assert models_file.remove("c") is True
    assert models_file.remove("c") is False
    assert models_file.remove("B:LATEST") is True
    text = models_file.path.read_text()
    assert list(models_file.load().models) == ["a:latest"]
    assert "# head comment: keep me\n" in text and "# before model_dirs\n" in text
    assert "    path: bundled   # eol a\n" in text


def test_copy_duplicates_an_entry(models_file: ModelsFile) -> None:
    assert models_file.copy("c", "d:copy") is True
    assert models_file.copy("nothing", "e") is False
    registry = models_file.load()
    assert registry.get("d:copy").num_ctx == 512
    text = models_file.path.read_text()
    assert "  # about c\n  c:\n    path: bundled\n    num_ctx: 512\n" in text


def test_bad_edit_leaves_the_file_alone(models_file: ModelsFile) -> None:
    with pytest.raises(ConfigError, match="GGUF file not found"):
        models_file.add("x", {"path": "missing.gguf"})
    with pytest.raises(BadRequest, match="invalid model name"):
        models_file.add("bad name!", {"path": "bundled"})
    assert models_file.path.read_text() == ORIGINAL
    assert [p.name for p in models_file.path.parent.iterdir()] == ["models.yaml"]


def test_missing_file_starts_from_the_bundled_model(tmp_path: Path) -> None:
    models_file = ModelsFile(tmp_path / "home" / "models.yaml")
    assert list(models_file.load().models) == ["smollm2:135m"]
    models_file.copy("smollm2:135m", "mine")
    assert list(models_file.load().models) == ["smollm2:135m", "mine:latest"]


def test_concurrent_edits_are_all_kept(models_file: ModelsFile) -> None:
    threads = [threading.Thread(target=models_file.add, args=(f"m{i}", {"path": "bundled"}))
               for i in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert {f"m{i}:latest" for i in range(16)} <= set(models_file.load().models)


def test_comments_after_nested_lists_stay_at_the_end(tmp_path: Path) -> None:
    path = tmp_path / "models.yaml"
    path.write_text("models:\n  a:\n    path: bundled\n    options:\n      stop:\n      - x\n"
                    "      - END   # eol\n# after a\n")
    models_file = ModelsFile(path)
    models_file.add("b", {"path": "bundled", "messages": [{"role": "user", "content": "hi"}]})
    models_file.add("c", {"path": "bundled"})
    assert path.read_text() == (
        "models:\n  a:\n    path: bundled\n    options:\n      stop:\n      - x\n"
        "      - END   # eol\n  b:\n    path: bundled\n    messages:\n    - role: user\n"
        "      content: hi\n  c:\n    path: bundled\n# after a\n")
    models_file.remove("c")
    models_file.remove("b")
    assert path.read_text().endswith("      - END   # eol\n# after a\n")


def test_data_dir_and_ollama_store_settings(tmp_path: Path, monkeypatch) -> None:
    from ollamalite.cli import models_path
    from ollamalite.settings import from_env

    defaults = from_env({})
    assert defaults.data_dir == Path("~/.ollamalite").expanduser()
    assert defaults.ollama_models == Path("~/.ollama/models").expanduser()
    s = from_env({"OLLAMALITE_HOME": f'"{tmp_path}/home"', "OLLAMA_MODELS": str(tmp_path)})
    assert s.blobs_dir == tmp_path / "home" / "blobs"
    assert s.models_dir == tmp_path / "home" / "models" and s.ollama_models == tmp_path
    # No models file named and none here: the one in the data folder (written on first edit).
    monkeypatch.chdir(tmp_path)
    assert models_path(s) == tmp_path / "home" / "models.yaml"
    (tmp_path / "models.yaml").write_text("models: {}\n")
    assert models_path(s) == Path("models.yaml")
    named = from_env({"OLLAMALITE_CONFIG": "elsewhere.yaml"})
    assert models_path(named) == Path("elsewhere.yaml")


@pytest.mark.parametrize("text", [
    # indented lists, quoted strings, a long line, flow style, a blank line
    """\
models:
  # keep
  a:
    path: 'bundled'
    system: "A long system prompt that goes well past eighty characters, which must not wrap."
    options:
      stop:
        - "x"
        - 'y'
      temperature: 0.70

  b: {path: bundled, num_ctx: 512}   # flow
""",
    # four-space indentation, unindented lists
    """\
models:
    a:
        path: bundled
        messages:
        - role: user
          content: hi
""",
])
def test_untouched_text_survives_an_add_and_remove(tmp_path: Path, text: str) -> None:
    path = tmp_path / "models.yaml"
    path.write_text(text)
    models_file = ModelsFile(path)
    models_file.add("tmp", {"path": "bundled", "options": {"stop": ["z"]}})
    assert path.read_text().startswith(text)
    models_file.remove("tmp")
    assert path.read_text() == text
