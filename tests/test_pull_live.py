"""`/api/pull` end to end: a live server pulls from a fake hub on 127.0.0.1 (HF_ENDPOINT points
at it), writes models.yaml, and generates with what it pulled; the official client reads the
progress."""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Iterator

import httpx
import ollama
import pytest
from ruamel.yaml import YAML

from ollamalite.registry.models_file import bundled_model_path
from tests.conftest import LiveServer, serving
from tests.fake_hub import FakeHub, tiny_gguf

REPO = "test/SmolLM2-135M-Instruct-GGUF"
GGUF = "SmolLM2-135M-Instruct-Q4_1.gguf"
PULLED = f"hf.co/{REPO}:q4_1"
SMALL = tiny_gguf(1 << 20)  # a 4 MiB GGUF for download-only cases
SMALL_SHA = hashlib.sha256(SMALL).hexdigest()


@pytest.fixture(scope="module")
def hub() -> Iterator[FakeHub]:
    fake = FakeHub(repos={REPO: {GGUF: bundled_model_path().read_bytes()}},
                   files={"small.gguf": SMALL}).start()
    yield fake
    fake.stop()


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("pull-home")


@pytest.fixture(scope="module")
def live(hub: FakeHub, home: Path) -> Iterator[LiveServer]:
    with serving(home, "# kept by the test\nmodels:\n  smollm2:135m: bundled\n",
                 {"HF_ENDPOINT": hub.url, "HF_HOME": str(home / "hf"),
                  "OLLAMALITE_HOME": str(home)}) as server:
        yield server


@pytest.fixture(scope="module")
def http(live: LiveServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=live.url, timeout=120) as client:
        yield client


def pull_lines(http: httpx.Client, body: dict) -> tuple[int, list[dict]]:
    with http.stream("POST", "/api/pull", json=body) as resp:
        return resp.status_code, [json.loads(line) for line in resp.iter_lines() if line]


def models_yaml(home: Path) -> dict:
    return YAML(typ="safe").load((home / "models.yaml").read_text())["models"]


def test_official_client_pulls_from_hf_and_generates(live: LiveServer, home: Path,
                                                     hub: FakeHub) -> None:
    client = ollama.Client(host=live.url)
    size = bundled_model_path().stat().st_size
    progress = list(client.pull(PULLED, stream=True))
    statuses = [p.status for p in progress]
    assert statuses[0] == "pulling manifest"
    assert statuses[-3:] == ["verifying sha256 digest", "writing manifest", "success"]
    layer = progress[1:-3]
    digest = layer[0].digest
    assert digest.startswith("sha256:") and {p.status for p in layer} == {
        f"pulling {digest[7:19]}"}
    assert {p.total for p in layer} == {size} and layer[-1].completed == size
    assert [p.completed for p in layer] == sorted(p.completed for p in layer)

    final = home / "models" / "hf.co" / REPO / GGUF
    assert hashlib.sha256(final.read_bytes()).hexdigest() == digest[7:]
    text = (home / "models.yaml").read_text()
    assert text.startswith("# kept by the test\n")
    assert models_yaml(home)[PULLED] == {"path": str(final)}
    assert PULLED in {m.model for m in client.list().models}

    answer = client.generate(model=PULLED, prompt="Say hi.",
                             options={"temperature": 0, "num_predict": 4})
    assert answer.done and answer.eval_count == 4 and answer.response
    requests = len(hub.seen)
    assert [p.status for p in client.pull(PULLED, stream=True)] == ["success"]
    assert len(hub.seen) == requests  # a configured model is not fetched again


def test_bad_sources_are_4xx_before_any_download(http: httpx.Client, hub: FakeHub) -> None:
    plain = http.post("/api/pull", json={"model": f"{hub.url}/files/small.gguf"})
    assert plain.status_code == 400
    assert plain.json() == {"error": 'insecure protocol http: set "insecure": true to download '
                                     "over plain http"}
    registry = http.post("/api/pull", json={"model": "llama3.2"})
    assert registry.status_code == 404
    assert registry.json() == {"error": "pull model manifest: file does not exist"}
    status, lines = pull_lines(http, {"model": "hf.co/test/missing-GGUF"})
    assert status == 200 and lines[0] == {"status": "pulling manifest"}
    assert lines[1:] == [{"error": "pull model manifest: file does not exist: test/missing-GGUF "
                                   "is not a model repository the hub shows you "
                                   "(RepositoryNotFoundError)"}]
    missing = http.post("/api/pull", json={"model": "hf.co/test/missing-GGUF", "stream": False})
    assert missing.status_code == 404 and "file does not exist" in missing.json()["error"]


def test_interrupted_pull_resumes_and_wrong_checksum_leaves_nothing(
        http: httpx.Client, hub: FakeHub, home: Path) -> None:
    url = f"{hub.url}/files/small.gguf"
    wrong = {"model": f"{url}#sha256={'0' * 64}", "insecure": True, "stream": False}
    bad = http.post("/api/pull", json=wrong)
    assert bad.status_code == 500 and bad.json()["error"].startswith(
        f"digest mismatch, file must be downloaded again: want sha256:{'0' * 64}, got sha256:")
    folder = home / "models" / url.split("/")[2].replace(":", "_")
    assert not folder.exists() or list(folder.iterdir()) == []

    hub.cut_after["small.gguf"] = 1_000_000
    body = {"model": f"{url}#sha256={SMALL_SHA}", "insecure": True}
    status, lines = pull_lines(http, body)
    assert status == 200 and "the partial file is kept" in lines[-1]["error"]
    kept = (folder / "small.gguf.partial").stat().st_size
    assert 0 < kept <= 1_000_000
    done = http.post("/api/pull", json={**body, "stream": False})
    assert done.json() == {"status": "success"}
    assert hub.requests_for("/files/small.gguf")[-1].range == f"bytes={kept}-"
    assert sorted(p.name for p in folder.iterdir()) == ["small.gguf"]
    name = f"{url.split('/')[2]}/small:latest"
    assert models_yaml(home)[name] == {"path": str(folder / "small.gguf")}


def test_client_disconnect_stops_the_download_and_keeps_the_partial(
        http: httpx.Client, live: LiveServer, hub: FakeHub, home: Path) -> None:
    hub.files["slow.gguf"] = SMALL
    hub.pace = 0.2  # 4 MiB in 17 pieces: about 3.4 s
    url = f"{hub.url}/files/slow.gguf"
    partial = home / "models" / url.split("/")[2].replace(":", "_") / "slow.gguf.partial"
    try:
        with httpx.stream("POST", f"{live.url}/api/pull", json={"model": url, "insecure": True},
                          timeout=30) as resp:
            lines = (json.loads(line) for line in resp.iter_lines() if line)
            assert next(lines) == {"status": "pulling manifest"}
            assert next(line for line in lines if line["completed"] > 0)
        time.sleep(1.0)
        kept = partial.stat().st_size
        assert 0 < kept < len(SMALL)
        time.sleep(1.0)
        assert partial.stat().st_size == kept  # nothing is writing it any more
    finally:
        hub.pace = 0.0
    assert http.post("/api/pull", json={"model": url, "insecure": True,
                                        "stream": False}).json() == {"status": "success"}
    assert hub.requests_for("/files/slow.gguf")[-1].range == f"bytes={kept}-"
