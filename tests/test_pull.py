"""Pulling: source names, resumable verified downloads and their progress lines, against a
local fake hub on 127.0.0.1 (no model is loaded here; see test_pull_live.py for that)."""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path
from typing import Any, Iterator

import huggingface_hub.constants as hf_constants
import pytest

from ollamalite.errors import BadRequest, NotFound
from ollamalite.pull import sources
from ollamalite.pull.download import PullError
from ollamalite.pull.puller import Puller
from tests.fake_hub import COMMIT, FakeHub, tiny_gguf

DATA = tiny_gguf(750_000)  # ~3 MB: several write chunks and progress lines
SHA = hashlib.sha256(DATA).hexdigest()


@pytest.fixture
def hub() -> Iterator[FakeHub]:
    fake = FakeHub(files={"model.gguf": DATA, "text.gguf": b"not a model" * 1000}).start()
    yield fake
    fake.stop()


@pytest.fixture
def hf_endpoint(hub: FakeHub, monkeypatch: pytest.MonkeyPatch) -> FakeHub:
    """huggingface_hub reads HF_ENDPOINT once at import; the live tests set the variable."""
    monkeypatch.setattr(hf_constants, "ENDPOINT", hub.url)
    monkeypatch.setattr(hf_constants, "HUGGINGFACE_CO_URL_TEMPLATE",
                        hub.url + "/{repo_id}/resolve/{revision}/{filename}")
    return hub


class Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[str, Path]] = []

    async def __call__(self, name: str, path: Path) -> None:
        self.calls.append((name, path))


@pytest.fixture
def registered() -> Recorder:
    return Recorder()


@pytest.fixture
def puller(tmp_path: Path, registered: Recorder) -> Puller:
    return Puller(tmp_path / "models", registered)


async def collect(puller: Puller, model: str, insecure: bool = True) -> list[dict[str, Any]]:
    return [line async for line in puller.pull(model, insecure)]


def files_under(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


# -- names (no network) -------------------------------------------------------------------------

@pytest.mark.parametrize("files, tag, chosen", [
    (["m-Q8_0.gguf", "m-Q4_K_M.gguf", "m-Q2_K.gguf"], "", "m-Q4_K_M.gguf"),
    (["m-Q8_0.gguf", "m-Q4_K_M.gguf"], "latest", "m-Q4_K_M.gguf"),
    (["m-q8_0.gguf", "m-Q2_K.gguf"], "", "m-Q2_K.gguf"),  # no Q4_K_M: the first by name
    (["m-Q8_0.gguf", "m-Q4_K_M.gguf"], "q8_0", "m-Q8_0.gguf"),  # case-insensitive
    (["m-Q4_K_M.gguf", "m-Q4_K.gguf"], "Q4_K", "m-Q4_K.gguf"),  # the whole word wins
    (["m-Q4_K_M.gguf", "m-Q4_K_S.gguf"], "Q4_K", "m-Q4_K_M.gguf"),  # else the first that has it
    (["m-IQ4_XS.gguf", "m-Q4_K_M.gguf"], "m-iq4_xs.gguf", "m-IQ4_XS.gguf"),  # a full file name
    (["Q4_K_M/m.gguf", "README.md"], "", "Q4_K_M/m.gguf"),
    (["mmproj-Q4_K_M.gguf", "m-Q8_0.gguf"], "", "m-Q8_0.gguf"),  # projectors never count
    (["m-Q4_K_M-00001-of-00002.gguf", "m-Q4_K_M-00002-of-00002.gguf"], "", None),  # shards
    (["m-Q8_0.gguf"], "Q5_K_M", None),
    (["README.md"], "", None),
])
def test_pick_gguf(files: list[str], tag: str, chosen: str | None) -> None:
    assert sources.pick_gguf(files, tag) == chosen


@pytest.mark.parametrize("model, name", [
    ("hf.co/bartowski/Llama-3.2-1B-GGUF", "hf.co/bartowski/Llama-3.2-1B-GGUF:latest"),
    ("huggingface.co/u/r:Q4_K_M", "huggingface.co/u/r:Q4_K_M"),
    ("https://example.com/models/Tiny%20Model.Q4_0.GGUF", "example.com/Tiny-Model.Q4_0:latest"),
    ("http://127.0.0.1:8000/files/tiny.gguf#sha256=" + "a" * 64, "127.0.0.1:8000/tiny:latest"),
    ("smollm2:135m", "smollm2:135m"),
])
def test_model_name(model: str, name: str) -> None:
    assert sources.model_name(model) == name


def test_check_refuses_before_any_network() -> None:
    with pytest.raises(BadRequest, match='insecure protocol http: set "insecure": true'):
        sources.check("http://example.com/m.gguf", insecure=False)
    sources.check("http://example.com/m.gguf", insecure=True)
    with pytest.raises(BadRequest, match="#sha256=<64 hex digits>"):
        sources.check("https://example.com/m.gguf#md5=abc", insecure=False)
    with pytest.raises(BadRequest, match="bad port"):
        sources.model_name("https://example.com:port/m.gguf")
    with pytest.raises(BadRequest, match="the URL must end in a file name"):
        sources.model_name("https://example.com/")
    with pytest.raises(BadRequest, match="hf.co/<user>/<repo>"):
        sources.check("hf.co/just-a-repo", insecure=False)
    with pytest.raises(NotFound, match="pull model manifest: file does not exist"):
        sources.check("llama3.2:1b", insecure=False)  # no Ollama registry here


# -- plain URLs ---------------------------------------------------------------------------------

async def test_url_pull_streams_ollama_progress(hub: FakeHub, puller: Puller,
                                                registered: Recorder, tmp_path: Path) -> None:
    lines = await collect(puller, f"{hub.url}/files/model.gguf#sha256={SHA}")
    layer = [line for line in lines if line["status"].startswith("pulling ")
             and line["status"] != "pulling manifest"]
    assert lines[0] == {"status": "pulling manifest"}
    assert [line["status"] for line in lines[-3:]] == [
        "verifying sha256 digest", "writing manifest", "success"]
    assert lines[1:-3] == layer and len(layer) >= 3
    assert {line["status"] for line in layer} == {f"pulling {SHA[:12]}"}
    assert {(line["digest"], line["total"]) for line in layer} == {(f"sha256:{SHA}", len(DATA))}
    completed = [line["completed"] for line in layer]
    assert completed == sorted(completed) and completed[0] == 0 and completed[-1] == len(DATA)
    port = hub.url.rsplit(":", 1)[1]
    final = tmp_path / "models" / f"127.0.0.1_{port}" / "model.gguf"
    assert registered.calls == [(f"127.0.0.1:{port}/model:latest", final)]
    assert hashlib.sha256(final.read_bytes()).hexdigest() == SHA
    assert files_under(tmp_path / "models") == [f"127.0.0.1_{port}/model.gguf"]


async def test_interrupted_download_resumes_with_range(hub: FakeHub, puller: Puller,
                                                       registered: Recorder,
                                                       tmp_path: Path) -> None:
    hub.cut_after["model.gguf"] = 1_234_567
    url = f"{hub.url}/files/model.gguf#sha256={SHA}"
    kept_message = r"download interrupted after \d+ bytes: .*; the partial file is kept"
    with pytest.raises(PullError, match=kept_message):
        await collect(puller, url)
    [partial] = (tmp_path / "models").rglob("*.partial")
    kept = partial.stat().st_size
    assert 0 < kept <= 1_234_567 and DATA.startswith(partial.read_bytes())
    assert registered.calls == []

    lines = await collect(puller, url)
    assert [s.range for s in hub.requests_for("/files/model.gguf")] == [None, f"bytes={kept}-"]
    assert lines[1]["completed"] == kept and lines[-1] == {"status": "success"}
    final = partial.with_name("model.gguf")
    assert hashlib.sha256(final.read_bytes()).hexdigest() == SHA and not partial.exists()
    assert len(registered.calls) == 1


async def test_a_server_that_ignores_range_sends_it_all_again(hub: FakeHub, puller: Puller,
                                                             tmp_path: Path) -> None:
    hub.cut_after["model.gguf"] = 1_500_000
    url = f"{hub.url}/files/model.gguf#sha256={SHA}"
    with pytest.raises(PullError, match="the partial file is kept"):
        await collect(puller, url)
    hub.ranges = False
    lines = await collect(puller, url)
    assert hub.requests_for("/files/model.gguf")[-1].range is not None
    assert lines[1]["completed"] == 0 and lines[-1] == {"status": "success"}
    [final] = (tmp_path / "models").rglob("*.gguf")
    assert hashlib.sha256(final.read_bytes()).hexdigest() == SHA


async def test_wrong_checksum_leaves_nothing_behind(hub: FakeHub, puller: Puller,
                                                    registered: Recorder, tmp_path: Path) -> None:
    wrong = hashlib.sha256(b"something else").hexdigest()
    with pytest.raises(PullError, match=f"digest mismatch.*want sha256:{wrong}, got sha256:{SHA}"):
        await collect(puller, f"{hub.url}/files/model.gguf#sha256={wrong}")
    assert files_under(tmp_path / "models") == [] and registered.calls == []


async def test_a_file_that_is_not_a_gguf_is_not_kept(hub: FakeHub, puller: Puller,
                                                     registered: Recorder,
                                                     tmp_path: Path) -> None:
    with pytest.raises(PullError, match=r"text.gguf is not a GGUF model \(.*\); the file was "
                                        "deleted"):
        await collect(puller, f"{hub.url}/files/text.gguf")
    assert files_under(tmp_path / "models") == [] and registered.calls == []


async def test_http_errors_are_pull_errors(hub: FakeHub, puller: Puller,
                                           tmp_path: Path) -> None:
    with pytest.raises(PullError, match=r"HTTP 404 Not Found") as err:
        await collect(puller, f"{hub.url}/files/missing.gguf")
    assert err.value.status == 502
    with pytest.raises(PullError, match="download interrupted after 0 bytes: Cannot connect"):
        await collect(puller, "http://127.0.0.1:9/files/x.gguf")  # nothing listens on port 9
    assert files_under(tmp_path / "models") == []


async def test_concurrent_pulls_share_one_download(hub: FakeHub, puller: Puller,
                                                   registered: Recorder) -> None:
    url = f"{hub.url}/files/model.gguf#sha256={SHA}"
    first, second = await asyncio.gather(collect(puller, url), collect(puller, url))
    assert first[-1] == second[-1] == {"status": "success"}
    assert len(hub.requests_for("/files/model.gguf")) == 1
    assert second[1] == {"status": f"pulling {SHA[:12]}", "digest": f"sha256:{SHA}",
                         "total": len(DATA), "completed": len(DATA)}
    assert len(registered.calls) == 2


# -- hf.co --------------------------------------------------------------------------------------

async def test_hf_pull_picks_the_quant_and_verifies_lfs_sha256(
        hf_endpoint: FakeHub, puller: Puller, registered: Recorder, tmp_path: Path) -> None:
    hf_endpoint.repos["me/Tiny-GGUF"] = {"tiny-Q8_0.gguf": b"eight" * 1000,
                                        "tiny-Q4_K_M.gguf": DATA}
    lines = await collect(puller, "hf.co/me/Tiny-GGUF")
    assert lines[1]["status"] == f"pulling {SHA[:12]}" and lines[-1] == {"status": "success"}
    final = tmp_path / "models" / "hf.co" / "me" / "Tiny-GGUF" / "tiny-Q4_K_M.gguf"
    assert registered.calls == [("hf.co/me/Tiny-GGUF:latest", final)]
    assert final.read_bytes() == DATA
    assert [s.path for s in hf_endpoint.seen] == [
        "/api/models/me/Tiny-GGUF?blobs=true", f"/me/Tiny-GGUF/resolve/{COMMIT}/tiny-Q4_K_M.gguf",
        f"/cdn/{SHA}"]


async def test_hf_resume_keeps_its_range_through_the_redirect(hf_endpoint: FakeHub,
                                                              puller: Puller) -> None:
    hf_endpoint.repos["me/Tiny-GGUF"] = {"tiny-Q4_K_M.gguf": DATA}
    hf_endpoint.cut_after[f"cdn-{SHA}"] = 2_000_000
    hf_endpoint.files[f"cdn-{SHA}"] = DATA
    with pytest.raises(PullError, match="the partial file is kept"):
        await collect(puller, "hf.co/me/Tiny-GGUF:Q4_K_M")
    assert (await collect(puller, "hf.co/me/Tiny-GGUF:Q4_K_M"))[-1] == {"status": "success"}
    [first, second] = hf_endpoint.requests_for(f"/cdn/{SHA}")
    assert first.range is None and second.range is not None
    assert 0 < int(second.range.removeprefix("bytes=").rstrip("-")) <= 2_000_000


async def test_hf_wrong_sha256_and_missing_things(hf_endpoint: FakeHub, puller: Puller,
                                                  registered: Recorder, tmp_path: Path) -> None:
    hf_endpoint.repos["me/Tiny-GGUF"] = {"tiny-Q4_K_M.gguf": DATA}
    hf_endpoint.wrong_sha256.add("tiny-Q4_K_M.gguf")
    with pytest.raises(PullError, match="digest mismatch, file must be downloaded again"):
        await collect(puller, "hf.co/me/Tiny-GGUF:q4_k_m")
    assert files_under(tmp_path / "models") == [] and registered.calls == []
    with pytest.raises(NotFound, match=r"no single-file GGUF in me/Tiny-GGUF matches 'Q8_0' "
                                       r"\(GGUF files: tiny-Q4_K_M.gguf\)"):
        await collect(puller, "hf.co/me/Tiny-GGUF:Q8_0")
    with pytest.raises(NotFound, match="file does not exist: me/Nope is not a model repository"):
        await collect(puller, "hf.co/me/Nope")

