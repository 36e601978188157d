"""Discovery of models the user already has: `model_dirs` GGUFs and an Ollama store on disk,
listed by a live server and usable for generation; plus the naming rules and the Modelfile
parser as units."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Iterator

import httpx
import pytest

from ollamalite.errors import BadRequest
from ollamalite.registry import discovery, modelfile
from ollamalite.registry.models_file import bundled_model_path
from tests.conftest import MODEL, LiveServer, start_server, stop_server

GO_TEMPLATE = "{{ if .System }}<|im_start|>system\n{{ .System }}<|im_end|>{{ end }}"
STORE_SYSTEM = "You answer in French."


@pytest.mark.parametrize("file, name", [
    ("SmolLM2-135M-Instruct.Q4_1.gguf", "smollm2-135m-instruct:q4_1"),
    ("Llama-3.2-3B-Instruct-Q4_K_M.gguf", "llama-3.2-3b-instruct:q4_k_m"),
    ("mistral-7b.F16.GGUF", "mistral-7b:f16"),
    ("tinyllama.gguf", "tinyllama:latest"),
    ("My Model (v2).gguf", "my-model-v2:latest"),
    ("Q4_0.gguf", "q4_0:latest"),
])
def test_gguf_file_names(file: str, name: str) -> None:
    assert discovery.gguf_name(Path(file)) == name


@pytest.mark.parametrize("parts, name", [
    (("registry.ollama.ai", "library", "llama3.2", "3b"), "llama3.2:3b"),
    (("registry.ollama.ai", "someone", "tool", "latest"), "someone/tool:latest"),
    (("hf.co", "bartowski", "SmolLM2-GGUF", "Q4_1"), "hf.co/bartowski/SmolLM2-GGUF:Q4_1"),
])
def test_ollama_names(parts: tuple[str, str, str, str], name: str) -> None:
    assert discovery.ollama_name(*parts) == name


def test_modelfile_parse() -> None:
    parsed = modelfile.parse('# comment\nfrom base:1b\nPARAMETER temperature 0.5\n'
                             'PARAMETER stop "<|end|>"\nPARAMETER stop "###"\n'
                             'TEMPLATE """{{ messages }}\n"""\n\nSYSTEM "Be "quoted"."\n'
                             'MESSAGE assistant """multi\nline"""\n'
                             'LICENSE MIT\nLICENSE """BSD"""\n')
    assert parsed == {"from": "base:1b", "template": "{{ messages }}\n",
                      "system": 'Be "quoted".',
                      "parameters": {"temperature": "0.5", "stop": ["<|end|>", "###"]},
                      "messages": [{"role": "assistant", "content": "multi\nline"}],
                      "license": ["MIT", "BSD"]}


@pytest.mark.parametrize("text, message", [
    ("PARAMETER temperature 1\n", "no FROM line"),
    ("FROM x\nFLY away\n", 'command must be one of "from"'),
    ("FROM x\nMESSAGE robot hi\n", "message role must be one of"),
    ("FROM x\nSYSTEM \"\"\"never closed\n", 'unterminated """'),
    ("FROM x\nADAPTER lora.gguf\n", "ADAPTER is not supported"),
])
def test_modelfile_errors(text: str, message: str) -> None:
    with pytest.raises(BadRequest, match=message):
        modelfile.parse(text)


def _write_blob(blobs: Path, data: bytes) -> str:
    digest = hashlib.sha256(data).hexdigest()
    (blobs / f"sha256-{digest}").write_bytes(data)
    return f"sha256:{digest}"


def make_ollama_store(root: Path) -> bytes:
    """A store as Ollama lays it out, with the bundled GGUF as its model blob (a symlink)."""
    blobs = root / "blobs"
    blobs.mkdir(parents=True)
    gguf = bundled_model_path()
    model_digest = hashlib.sha256(gguf.read_bytes()).hexdigest()
    (blobs / f"sha256-{model_digest}").symlink_to(gguf)
    layers = [("model", f"sha256:{model_digest}"),
              ("template", _write_blob(blobs, GO_TEMPLATE.encode())),
              ("system", _write_blob(blobs, STORE_SYSTEM.encode())),
              ("params", _write_blob(blobs, b'{"num_predict": 2, "temperature": 0}'))]
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
        "config": {"mediaType": "application/vnd.docker.container.image.v1+json",
                   "digest": _write_blob(blobs, b"{}"), "size": 2},
        "layers": [{"mediaType": f"application/vnd.ollama.image.{kind}", "digest": digest,
                    "size": 1} for kind, digest in layers]}).encode()
    for host, namespace, model, tag in [("registry.ollama.ai", "library", "smol", "135m"),
                                        ("hf.co", "someone", "SmolLM2-GGUF", "Q4_1")]:
        folder = root / "manifests" / host / namespace / model
        folder.mkdir(parents=True)
        (folder / tag).write_bytes(manifest)
    broken = root / "manifests" / "registry.ollama.ai" / "library" / "gone"
    broken.mkdir()
    (broken / "latest").write_text(json.dumps({"layers": [
        {"mediaType": "application/vnd.ollama.image.model", "digest": "sha256:" + "1" * 64}]}))
    return manifest


@pytest.fixture(scope="module")
def discovered(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LiveServer, bytes]]:
    folder = tmp_path_factory.mktemp("discovery")
    manifest = make_ollama_store(folder / "ollama")
    ggufs = folder / "ggufs"
    ggufs.mkdir()
    (ggufs / "Tiny-Model.Q4_1.gguf").symlink_to(bundled_model_path())
    (ggufs / "smollm2-135m.gguf").symlink_to(bundled_model_path())
    (ggufs / "notes.txt").write_text("not a model")
    # An explicit entry wins over a discovered file of the same name.
    (folder / "models.yaml").write_text(f"""\
model_dirs: [ggufs]
models:
  {MODEL}: bundled
  smollm2-135m:
    path: bundled
    system: explicit wins
""")
    server = start_server(folder / "models.yaml", folder / "server.log",
                          env={"OLLAMA_MODELS": str(folder / "ollama")})
    yield server, manifest
    stop_server(server)


def test_tags_lists_discovered_models(discovered: tuple[LiveServer, bytes]) -> None:
    server, manifest = discovered
    rows = {m["name"]: m for m in httpx.get(server.url + "/api/tags").json()["models"]}
    assert set(rows) == {MODEL, "smollm2-135m:latest", "tiny-model:q4_1", "smol:135m",
                         "hf.co/someone/SmolLM2-GGUF:Q4_1"}
    assert rows["smol:135m"]["digest"] == hashlib.sha256(manifest).hexdigest()
    for row in rows.values():
        assert row["details"]["family"] == "llama"
        assert row["details"]["quantization_level"] == "Q4_1"
        assert row["size"] == bundled_model_path().stat().st_size
    assert "gone:latest" in server.log() and "is missing" in server.log()


def test_show_and_generate_with_an_ollama_store_model(
        discovered: tuple[LiveServer, bytes]) -> None:
    server, _ = discovered
    shown = httpx.post(server.url + "/api/show", json={"model": "smol:135m"}).json()
    assert shown["system"] == STORE_SYSTEM
    assert "num_predict                    2" in shown["parameters"]
    assert "<|im_start|>" in shown["template"] and ".System" not in shown["template"]
    assert "\n# {{ if .System }}<|im_start|>system\n# {{ .System }}" in shown["modelfile"]
    explicit = httpx.post(server.url + "/api/show", json={"model": "smollm2-135m"}).json()
    assert explicit["system"] == "explicit wins"
    reply = httpx.post(server.url + "/api/generate",
                       json={"model": "smol:135m", "prompt": "Hello", "stream": False},
                       timeout=60).json()
    assert reply["eval_count"] == 2 and reply["done_reason"] == "length"


def test_discovered_models_are_not_deleted_but_can_be_copied(
        discovered: tuple[LiveServer, bytes]) -> None:
    server, _ = discovered
    refused = httpx.request("DELETE", server.url + "/api/delete", json={"model": "smol:135m"})
    assert refused.status_code == 400 and "does not delete" in refused.json()["error"]
    copied = httpx.post(server.url + "/api/copy",
                        json={"source": "tiny-model:q4_1", "destination": "tiny-copy"})
    assert copied.status_code == 200 and copied.text == ""
    config = (server.log_path.parent / "models.yaml").read_text()
    gguf = server.log_path.parent / "ggufs" / "Tiny-Model.Q4_1.gguf"
    assert config.endswith(f"  tiny-copy:\n    path: {gguf}\n")
    assert config.startswith("model_dirs: [ggufs]\n")


def test_new_files_in_model_dirs_are_picked_up(discovered: tuple[LiveServer, bytes]) -> None:
    import time

    server, _ = discovered
    (server.log_path.parent / "ggufs" / "late-arrival-q8_0.gguf").symlink_to(bundled_model_path())
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        listed = [m["name"] for m in httpx.get(server.url + "/api/tags").json()["models"]]
        if "late-arrival:q8_0" in listed:
            return
        time.sleep(0.2)
    pytest.fail("a GGUF added to a model_dirs folder was not listed")
