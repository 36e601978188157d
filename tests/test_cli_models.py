"""`ollamalite create`, `cp`, `rm`, `pull` against a server of their own, whose models.yaml they
edit (the session server's models stay as the other tests expect them)."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Iterator

import httpx
import pytest

from ollamalite.registry.gguf_header import file_digest
from ollamalite.registry.models_file import bundled_model_path
from tests.conftest import MODEL, LiveServer, serving
from tests.fake_hub import FakeHub, tiny_gguf
from tests.test_cli import Terminal, cli, columns

CAT_MODELFILE = f'''\
FROM {MODEL}
SYSTEM """You are a cat.
Answer with meows."""
PARAMETER temperature 0
PARAMETER num_predict 4
MESSAGE user Who are you?
MESSAGE assistant Meow.
'''


@pytest.fixture(scope="module")
def editable(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    folder = tmp_path_factory.mktemp("models-edit")
    (folder / "ollama-store").mkdir()
    with serving(folder, f"models:\n  {MODEL}:\n    path: bundled\n    num_ctx: 1024\n",
                 {"OLLAMALITE_HOME": str(folder / "home"),
                  "OLLAMA_MODELS": str(folder / "ollama-store")}) as live:
        yield live


def names(url: str) -> set[str]:
    return {row["NAME"] for row in columns(cli(url, "list").stdout)[1]}


def write(folder: Path, text: str) -> Path:
    path = folder / "Modelfile"
    path.write_text(text)
    return path


def test_create_from_a_model_then_copy_and_remove(editable: LiveServer, tmp_path: Path) -> None:
    url = editable.url
    out = cli(url, "create", "cat", "-f", str(write(tmp_path, CAT_MODELFILE)))
    assert out.returncode == 0, out.stderr
    steps = out.stderr.splitlines()
    assert steps[0] == "gathering model components" and steps[-1] == "success"
    assert re.fullmatch(r"using existing layer sha256:[0-9a-f]{64}", steps[1])
    assert "writing manifest" in steps
    assert "cat:latest" in names(url)
    assert cli(url, "show", "cat", "--system").stdout == "You are a cat.\nAnswer with meows."
    assert re.search(r"^num_predict\s+4$", cli(url, "show", "cat", "--parameters").stdout, re.M)
    assert cli(url, "run", "cat", "Hello").stdout.strip()
    chat = Terminal(url, "cat")  # the preset turns are shown before the first prompt
    assert chat.expect(">>> Who are you?").strip() == ""
    assert chat.expect(">>> ").strip() == "Meow."
    chat.line("/bye")
    assert chat.close() == 0

    copied = cli(url, "cp", "cat", "kitten")
    assert (copied.returncode, copied.stdout) == (0, "copied 'cat' to 'kitten'\n")
    assert cli(url, "show", "kitten", "--system").stdout == "You are a cat.\nAnswer with meows."

    removed = cli(url, "rm", "kitten", "cat")  # cat is loaded: rm unloads it first
    assert (removed.returncode, removed.stdout) == (0, "deleted 'kitten'\ndeleted 'cat'\n")
    assert names(url) == {MODEL}
    assert "cat" not in cli(url, "ps").stdout


def test_create_uploads_a_local_gguf_once(editable: LiveServer, tmp_path: Path) -> None:
    url = editable.url
    (tmp_path / "weights.gguf").symlink_to(bundled_model_path())
    digest = "sha256:" + file_digest(bundled_model_path())
    modelfile = write(tmp_path, "FROM ./weights.gguf\nPARAMETER num_ctx 512\n")
    first = cli(url, "create", "local-copy", "-f", str(modelfile))
    assert first.returncode == 0, first.stderr
    assert f"copying file {digest} 100%" in first.stderr
    assert first.stderr.splitlines()[-1] == "success"
    assert httpx.head(f"{url}/api/blobs/{digest}").status_code == 200
    row = {r["NAME"]: r for r in columns(cli(url, "list").stdout)[1]}["local-copy:latest"]
    assert row["ID"] == digest[7:19]

    again = cli(url, "create", "local-copy2", "-f", str(modelfile))
    assert again.returncode == 0 and "copying file" not in again.stderr  # already there
    assert cli(url, "rm", "local-copy", "local-copy2").returncode == 0


@pytest.mark.parametrize("args, modelfile, message", [
    (["cp", "nosuch", "x"], None, 'Error: model "nosuch" not found'),
    (["rm", "nosuch"], None, "Error: model 'nosuch' not found"),
    (["create", "x", "-f", "missing-file"], None, "Error: no Modelfile at missing-file"),
    (["create", "x"], "FROM nosuch\n", 'Error: model "nosuch" not found'),
    (["create", "x"], f"FROM {MODEL}\nPARAMETER bogus 1\n", "Error: unknown parameter 'bogus'"),
    (["create", "x"], "SYSTEM hi\n", "Error: no FROM line"),
])
def test_model_edit_errors(editable: LiveServer, tmp_path: Path, args: list[str],
                           modelfile: str | None, message: str) -> None:
    if modelfile is not None:
        args = [*args, "-f", str(write(tmp_path, modelfile))]
    out = cli(editable.url, *args)
    assert out.returncode == 1 and out.stderr.splitlines()[-1].startswith(message), out.stderr
    assert names(editable.url) == {MODEL}


def test_pull_shows_progress_and_registers_the_model(editable: LiveServer) -> None:
    data = tiny_gguf(750_000)
    hub = FakeHub(files={"tiny.gguf": data}, pace=0.02).start()
    try:
        url = f"{hub.url}/files/tiny.gguf#sha256={hashlib.sha256(data).hexdigest()}"
        refused = cli(editable.url, "pull", url)
        assert refused.returncode == 1
        assert refused.stderr.splitlines()[-1].startswith("Error: insecure protocol http")

        out = cli(editable.url, "pull", "--insecure", url)
    finally:
        hub.stop()
    assert out.returncode == 0, out.stderr
    steps = out.stderr.splitlines()
    short = hashlib.sha256(data).hexdigest()[:12]
    assert steps[0] == "pulling manifest"
    assert re.fullmatch(rf"pulling {short} +\d+% ▕[█ ]+▏ +[\d.]+ [KM]?B/\d+(\.\d)? MB", steps[1])
    assert re.fullmatch(rf"pulling {short} 100% ▕█+▏ +\d+(\.\d)? MB/\d+(\.\d)? MB", steps[2])
    assert steps[3:] == ["verifying sha256 digest", "writing manifest", "success"]
    name = f"{hub.url.split('/')[2]}/tiny:latest"
    assert name in names(editable.url)
    assert cli(editable.url, "rm", name).returncode == 0
