"""Files and URLs that come from callers: /api/create's `from` paths, /api/pull's downloads,
/api/blobs uploads, and models.yaml edits beside a GGUF deleted by hand.

Most of it runs in-process (a real Library on a temporary models.yaml, a real aiohttp app for
blobs, the fake hub on 127.0.0.1 for pulls); one live server checks the whole flow."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any, AsyncIterator

import httpx
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from ollamalite import settings as settings_module
from ollamalite.errors import ApiError, BadRequest, ConfigError, NotFound
from ollamalite.pull import guard, sources
from ollamalite.pull.download import Limits, Refused
from ollamalite.pull.puller import Puller
from ollamalite.registry import blobs as blobs_module
from ollamalite.registry import edits
from ollamalite.registry.blobs import BlobStore
from ollamalite.registry.library import Library
from ollamalite.registry.models_file import ModelsFile, Registry
from ollamalite.server import models as model_routes
from ollamalite.server import openapi
from ollamalite.server.app import errors_middleware
from ollamalite.server.keys import SETTINGS
from ollamalite.settings import Settings
from ollamalite.wire import load, native
from tests.conftest import MODEL, serving
from tests.fake_hub import FakeHub, tiny_gguf
from tests.test_pull import DATA, SHA, files_under
from tests.test_pull import hf_endpoint, hub  # noqa: F401 (fixtures, used by name)

GGUF = tiny_gguf(1000)


# -- /api/create: which paths `from` may name ---------------------------------------------------

@pytest.fixture
def place(tmp_path: Path) -> SimpleNamespace:
    """A models folder with one GGUF, a GGUF outside every models folder, and a models.yaml."""
    ggufs, outside = tmp_path / "ggufs", tmp_path / "outside"
    ggufs.mkdir()
    outside.mkdir()
    (ggufs / "tiny.gguf").write_bytes(GGUF)
    (outside / "real.gguf").write_bytes(GGUF)
    (outside / "notes.txt").write_text("not a model")
    (ggufs / "link.gguf").symlink_to(outside / "real.gguf")
    config = tmp_path / "models.yaml"
    config.write_text("model_dirs: [ggufs]\nmodels:\n  base: ggufs/tiny.gguf\n")
    return SimpleNamespace(root=tmp_path, ggufs=ggufs, outside=outside, config=config)


def library_for(place: SimpleNamespace, **settings: Any) -> Library:
    current = Settings(data_dir=place.root / "home", ollama_models=place.root / "store",
                       **settings)
    models_file = ModelsFile(place.config)

    async def serve(_: Registry) -> None:
        pass

    return Library(current, models_file, models_file.load(), serve)


async def create_from(library: Library, source: str) -> list[str]:
    """/api/create of the model `made` from `source`; returns its progress lines."""
    req = load(native.CREATE, {"model": "made", "from": source})
    return await edits.create(library, BlobStore(library.settings), req)


async def test_from_a_file_in_a_model_folder_is_accepted(place: SimpleNamespace) -> None:
    library = library_for(place)
    tiny = place.ggufs / "tiny.gguf"
    statuses = await create_from(library, str(place.ggufs / ".." / "ggufs" / "tiny.gguf"))
    assert statuses == ["parsing GGUF",
                        f"using existing layer sha256:{hashlib.sha256(GGUF).hexdigest()}",
                        "writing manifest"]
    assert library.registry.get("made").path == tiny.resolve()
    assert f"  made:\n    path: {tiny.resolve()}\n" in place.config.read_text()


@pytest.mark.parametrize("where", [
    "outside/real.gguf",  # a GGUF outside every models folder
    "outside/absent.gguf",  # nothing there at all
    "outside/notes.txt",  # a file that is not a GGUF
    "ggufs/link.gguf",  # a symlink inside a models folder, to a file outside
    "ggufs/../outside/real.gguf",  # `..` climbing out of a models folder
    "ggufs/absent.gguf",  # inside, but not there
])
async def test_other_paths_get_the_answer_of_an_unknown_name(place: SimpleNamespace,
                                                             where: str) -> None:
    library = library_for(place)
    before = place.config.read_text()
    text = str(place.root / where)
    with pytest.raises(NotFound) as err:
        await create_from(library, text)
    with pytest.raises(NotFound) as unknown:
        await create_from(library, "no-such-model")
    assert (err.value.status, err.value.message) == (404, f'model "{text}" not found')
    assert (unknown.value.status, unknown.value.message) == (404,
                                                             'model "no-such-model" not found')
    assert place.config.read_text() == before


async def test_any_path_when_the_setting_allows_it(place: SimpleNamespace) -> None:
    library = library_for(place, allow_any_path=True)
    await create_from(library, str(place.ggufs / "link.gguf"))
    assert library.registry.get("made").path == (place.outside / "real.gguf").resolve()
    with pytest.raises(NotFound, match='model ".*absent.gguf" not found'):
        await create_from(library, str(place.outside / "absent.gguf"))
    with pytest.raises(BadRequest, match="supplied file was not in GGUF format"):
        await create_from(library, str(place.outside / "notes.txt"))


async def chunks_of(data: bytes, size: int = 4096) -> AsyncIterator[bytes]:
    for at in range(0, len(data), size):
        yield data[at:at + size]


async def test_from_an_uploaded_blob_reference(place: SimpleNamespace) -> None:
    library = library_for(place)
    hex_digest = hashlib.sha256(GGUF).hexdigest()
    await BlobStore(library.settings).receive(hex_digest, chunks_of(GGUF), len(GGUF))
    statuses = await create_from(library, f"@sha256:{hex_digest}")
    assert statuses[1] == f"using existing layer sha256:{hex_digest}"
    adopted = library.settings.models_dir / f"sha256-{hex_digest}.gguf"
    assert library.registry.get("made").path == adopted.resolve()
    assert adopted.read_bytes() == GGUF
    assert files_under(library.settings.blobs_dir) == []


def test_the_settings_are_read_from_the_environment() -> None:
    read = settings_module.from_env({"OLLAMALITE_ALLOW_ANY_PATH": "1",
                                     "OLLAMALITE_PULL_PRIVATE": "0",
                                     "OLLAMALITE_MAX_DOWNLOAD": "1000",
                                     "OLLAMALITE_MAX_UPLOAD": "0"})
    assert (read.allow_any_path, read.pull_private, read.max_download, read.max_upload) == (
        True, False, 1000, 0)
    default = settings_module.from_env({})
    assert (default.allow_any_path, default.pull_private) == (False, True)
    assert default.max_download == default.max_upload == 64 << 30


# -- models.yaml edits beside a GGUF deleted by hand --------------------------------------------

def test_an_edit_does_not_need_the_files_of_other_entries(tmp_path: Path) -> None:
    (tmp_path / "kept.gguf").write_bytes(GGUF)
    (tmp_path / "gone.gguf").write_bytes(GGUF)
    models_file = ModelsFile(tmp_path / "models.yaml")
    models_file.path.write_text("models:\n  kept: kept.gguf\n  gone: gone.gguf\n")
    (tmp_path / "gone.gguf").unlink()
    assert models_file.copy("kept", "twin") is True
    models_file.add("pulled", {"path": str(tmp_path / "kept.gguf")})
    assert list(models_file.load().models) == ["kept:latest", "gone:latest", "twin:latest",
                                               "pulled:latest"]
    with pytest.raises(ConfigError, match="model 'new': GGUF file not found"):
        models_file.add("new", {"path": "missing.gguf"})  # the entry edited must have its file
    with pytest.raises(ConfigError, match="model 'other': GGUF file not found"):
        models_file.copy("gone", "other")


# -- POST /api/blobs ----------------------------------------------------------------------------

@pytest.fixture
async def blob_client(tmp_path: Path) -> AsyncIterator[TestClient]:
    """The blob routes in an app whose JSON body limit (1 KiB) is far below the uploads."""
    app = web.Application(middlewares=[errors_middleware], client_max_size=1024)
    app[SETTINGS] = Settings(data_dir=tmp_path / "home", max_upload=100_000)
    app[model_routes.BLOBS] = BlobStore(app[SETTINGS])
    openapi.add_routes(app, model_routes.ROUTES)
    client = TestClient(TestServer(app))
    await client.start_server()
    yield client
    await client.close()


def free_space(monkeypatch: pytest.MonkeyPatch, free: int) -> None:
    """What the disk check sees: `free` bytes, whatever the disk really has."""
    fake = SimpleNamespace(disk_usage=lambda _: SimpleNamespace(free=free))
    monkeypatch.setattr(blobs_module, "shutil", fake)


def blob_url(data: bytes) -> str:
    return f"/api/blobs/sha256:{hashlib.sha256(data).hexdigest()}"


async def test_an_upload_is_streamed_past_the_json_body_limit(blob_client: TestClient,
                                                              tmp_path: Path) -> None:
    data = bytes(range(256)) * 256  # 64 KiB
    response = await blob_client.post(blob_url(data), data=data)
    assert response.status == 201
    assert files_under(tmp_path / "home") == [
        f"blobs/sha256-{hashlib.sha256(data).hexdigest()}"]


@pytest.mark.parametrize("announced", [True, False])
async def test_an_upload_over_the_cap_is_refused_and_deleted(blob_client: TestClient,
                                                             tmp_path: Path,
                                                             announced: bool) -> None:
    data = b"x" * 200_000
    body: Any = data if announced else chunks_of(data, 16_384)  # chunked: no Content-Length
    response = await blob_client.post(blob_url(data), data=body)
    assert response.status == 413
    assert await response.json() == {
        "error": "blob too large: over the 100000 bytes OLLAMALITE_MAX_UPLOAD allows"}
    assert files_under(tmp_path / "home") == []


async def test_an_upload_the_disk_has_no_room_for_is_refused(blob_client: TestClient,
                                                             tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch
                                                             ) -> None:
    free_space(monkeypatch, 500)
    data = b"y" * 1000
    response = await blob_client.post(blob_url(data), data=data)
    assert response.status == 507
    assert await response.json() == {"error": "not enough disk space: 1000 bytes needed, "
                                              "500 free"}
    assert files_under(tmp_path / "home") == []


# -- /api/pull: where downloads may connect, and how much they may bring -------------------------

def puller_in(tmp_path: Path, limits: Limits) -> Puller:
    async def register(name: str, path: Path) -> None:
        pass

    return Puller(tmp_path / "models", register, limits)


async def pull(puller: Puller, model: str) -> list[dict[str, Any]]:
    return [line async for line in puller.pull(model, insecure=True)]


@pytest.mark.parametrize("address, private, refused", [
    ("169.254.169.254", True, guard.NEVER),
    ("169.254.1.1", True, guard.NEVER),
    ("fe80::1%eth0", True, guard.NEVER),
    ("::ffff:169.254.169.254", True, guard.NEVER),
    ("fd00:ec2::254", True, guard.NEVER),
    ("127.0.0.1", True, None),
    ("10.1.2.3", True, None),
    ("127.0.0.1", False, guard.PRIVATE),
    ("::1", False, guard.PRIVATE),
    ("192.168.0.10", False, guard.PRIVATE),
    ("0.0.0.0", False, guard.PRIVATE),
    ("93.184.215.14", False, None),
    ("2606:4700::1111", False, None),
])
def test_which_addresses_a_pull_may_reach(address: str, private: bool,
                                          refused: str | None) -> None:
    assert guard.refusal(address, private) == refused


@pytest.mark.parametrize("url", [
    "http://169.254.169.254/latest/meta-data/model.gguf",
    "http://metadata.google.internal./computeMetadata/model.gguf",
    "http://[fd00:ec2::254]/model.gguf",
    "http://[fe80::1]:8080/model.gguf",
])
def test_metadata_urls_are_refused_before_any_network(url: str) -> None:
    with pytest.raises(BadRequest, match=f"pulls never connect to {guard.NEVER}"):
        sources.check(url, insecure=True)


async def test_a_redirect_to_a_metadata_address_is_refused(hub: FakeHub, tmp_path: Path) -> None:
    hub.redirects["evil.gguf"] = "http://169.254.169.254/latest/meta-data/iam"
    with pytest.raises(Refused) as err:
        await pull(puller_in(tmp_path, Limits()), f"{hub.url}/files/evil.gguf")
    assert err.value.status == 400
    assert err.value.message == f"pull refused: 169.254.169.254: pulls never connect to " \
                                f"{guard.NEVER}"
    assert files_under(tmp_path) == []


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
async def test_loopback_is_refused_when_private_addresses_are_off(hub: FakeHub, tmp_path: Path,
                                                                  host: str) -> None:
    """`localhost` is a name: it is refused on the address it resolved to, at connect time."""
    url = hub.url.replace("127.0.0.1", host) + "/files/model.gguf"
    with pytest.raises(Refused, match=f"pull refused: {host}: pulls never connect to "
                                      "loopback and private addresses"):
        await pull(puller_in(tmp_path, Limits(private=False)), url)
    assert hub.seen == [] and files_under(tmp_path) == []


async def test_a_download_over_the_cap_is_refused_from_its_length(hub: FakeHub,
                                                                  tmp_path: Path) -> None:
    with pytest.raises(Refused, match=r"larger than OLLAMALITE_MAX_DOWNLOAD \(1000000 bytes\)"):
        await pull(puller_in(tmp_path, Limits(max_size=1_000_000)), f"{hub.url}/files/model.gguf")
    assert files_under(tmp_path) == []


async def test_a_download_without_length_stops_at_the_cap(hub: FakeHub, tmp_path: Path) -> None:
    hub.lengths = False
    puller = puller_in(tmp_path, Limits(max_size=1_000_000))
    lines: list[dict[str, Any]] = []
    with pytest.raises(Refused, match="the partial file was deleted"):
        async for line in puller.pull(f"{hub.url}/files/model.gguf", insecure=True):
            lines.append(line)
    assert "total" not in lines[1] and lines[-1]["completed"] <= 1_000_000
    assert files_under(tmp_path) == []


async def test_a_download_longer_than_announced_is_cut_off(hf_endpoint: FakeHub,
                                                           tmp_path: Path) -> None:
    """The hub lists the size; a file server that sends more, unannounced, is stopped."""
    hf_endpoint.repos["me/Tiny-GGUF"] = {"tiny-Q4_K_M.gguf": DATA}
    hf_endpoint.files[f"cdn-{SHA}"] = DATA + b"\0" * 2_000_000
    hf_endpoint.lengths = False
    with pytest.raises(Refused, match=f"size mismatch, file must be downloaded again: want "
                                      f"{len(DATA)} bytes, got more") as err:
        await pull(puller_in(tmp_path, Limits()), "hf.co/me/Tiny-GGUF")
    assert err.value.status == 500 and files_under(tmp_path) == []


async def test_a_download_the_disk_has_no_room_for_is_refused(hub: FakeHub, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch
                                                              ) -> None:
    free_space(monkeypatch, 1000)
    with pytest.raises(ApiError) as err:
        await pull(puller_in(tmp_path, Limits()), f"{hub.url}/files/model.gguf")
    assert (err.value.status, err.value.message) == (
        507, f"not enough disk space: {len(DATA)} bytes needed, 1000 free")
    assert files_under(tmp_path) == []


# -- the whole flow on a live server ------------------------------------------------------------

def test_a_gguf_deleted_by_hand_blocks_no_copy_or_pull(tmp_path: Path, hub: FakeHub) -> None:
    (tmp_path / "gone.gguf").write_bytes(GGUF)
    hub.files["tiny.gguf"] = GGUF
    hub.redirects["evil.gguf"] = "http://169.254.169.254/latest/meta-data/iam"
    config = f"models:\n  {MODEL}:\n    path: bundled\n  gone: gone.gguf\n"
    with serving(tmp_path, config) as live:
        (tmp_path / "gone.gguf").unlink()
        copied = httpx.post(live.url + "/api/copy", json={"source": MODEL, "destination": "twin"})
        assert copied.status_code == 200, copied.text
        pulled = httpx.post(live.url + "/api/pull", timeout=60,
                            json={"model": f"{hub.url}/files/tiny.gguf", "insecure": True,
                                  "stream": False})
        assert (pulled.status_code, pulled.json()) == (200, {"status": "success"})
        listed = {m["name"] for m in httpx.get(live.url + "/api/tags").json()["models"]}
        port = hub.url.rsplit(":", 1)[1]
        assert listed == {MODEL, "twin:latest", f"127.0.0.1:{port}/tiny:latest"}

        refused = httpx.post(live.url + "/api/pull", json={"model": f"{hub.url}/files/evil.gguf",
                                                           "insecure": True})
        assert refused.status_code == 200  # the stream had begun: the error is its last line
        last = json.loads(refused.text.splitlines()[-1])
        assert last["error"].startswith("pull refused: 169.254.169.254: ")
        early = httpx.post(live.url + "/api/pull",
                           json={"model": "http://169.254.169.254/m.gguf", "insecure": True})
        assert early.status_code == 400
        assert early.json() == {"error": f"pulls never connect to {guard.NEVER}: 169.254.169.254"}
    assert "model 'gone': GGUF file not found" in live.log()
