"""Where a pulled model comes from: a Hugging Face repo (`hf.co/<user>/<repo>[:<quant>]`) or a
plain `https://…/file.gguf` URL, resolved to one GGUF file with the size and sha256 it must have.

Parsing a name needs no network; `resolve` asks the hub (through huggingface_hub, which honours
`HF_ENDPOINT` and `HF_TOKEN`) and blocks, so callers run it in a thread.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Mapping
from urllib.parse import unquote, urlsplit

import httpx2
from huggingface_hub import HfApi, hf_hub_url
from huggingface_hub.errors import (
    HFValidationError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.utils import build_hf_headers

from ollamalite.errors import ApiError, BadRequest, NotFound
from ollamalite.pull import guard
from ollamalite.registry import names

HF_HOSTS = ("hf.co", "huggingface.co")
DEFAULT_QUANT = "Q4_K_M"
NO_MANIFEST = "pull model manifest: file does not exist"
_SHARD = re.compile(r"-\d{5}-of-\d{5}\.gguf$", re.IGNORECASE)
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_UNSAFE = re.compile(r"[^A-Za-z0-9_.\-]+")
_GGUF_SUFFIX = re.compile(r"\.gguf$", re.IGNORECASE)


@dataclass(frozen=True)
class Source:
    """One GGUF to download: where from, where to (under the models folder), what it must be."""

    name: str
    url: str
    relpath: PurePosixPath
    size: int | None = None
    sha256: str | None = None
    headers: Mapping[str, str] = field(default_factory=dict)

    @property
    def digest(self) -> str:
        """The sha256 the progress lines name; a stand-in made from the URL when unknown."""
        return self.sha256 or hashlib.sha256(self.url.encode()).hexdigest()


def is_url(model: str) -> bool:
    return model.lower().startswith(("http://", "https://"))


def hf_repo(model: str) -> tuple[str, str] | None:
    """`hf.co/user/repo:quant` -> (`user/repo`, `quant`); None for names from elsewhere."""
    host, _, rest = model.partition("/")
    if host.lower() not in HF_HOSTS:
        return None
    repo, _, tag = rest.partition(":")
    if repo.count("/") != 1 or not all(repo.split("/")):
        raise BadRequest(f"invalid model name {model!r}: expected hf.co/<user>/<repo>[:<quant>]")
    return repo, tag


def model_name(model: str) -> str:
    """The name a pull registers: the URL's `<host>/<file stem>:latest`, else `model` itself.

    Raises 400 for an invalid name, as Ollama does.
    """
    if not is_url(model):
        names.normalize(model)
        return names.display_name(model)
    parts = urlsplit(model)
    try:
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        raise BadRequest(f"invalid model URL {model!r}: bad port") from None
    stem = _GGUF_SUFFIX.sub("", _safe(PurePosixPath(unquote(parts.path)).name))
    name = f"{_safe(parts.hostname or '')}{port}/{stem.lstrip('.-')[:80]}"
    if not names.is_valid(name):
        raise BadRequest(f"cannot name a model after {model!r}: the URL must end in a file name")
    return names.display_name(name)


def check(model: str, insecure: bool) -> None:
    """Refuse, before any network, what cannot be pulled: 400 for bad URLs, 404 for names
    that are neither a Hugging Face repo nor a URL (there is no Ollama registry here)."""
    if is_url(model):
        _url_parts(model, insecure)
    elif hf_repo(model) is None:
        raise NotFound(NO_MANIFEST)


def resolve(model: str, insecure: bool) -> Source:
    """The GGUF to download for `model` (blocking: asks the hub for hf.co names)."""
    check(model, insecure)
    if is_url(model):
        return _url_source(model, insecure)
    repo_tag = hf_repo(model)
    assert repo_tag is not None
    return _hf_source(model_name(model), *repo_tag)


def _safe(text: str) -> str:
    return _UNSAFE.sub("-", text)


def _url_parts(model: str, insecure: bool) -> tuple[str, str | None]:
    """(URL without fragment, sha256 from a `#sha256=<hex>` fragment or None)."""
    parts = urlsplit(model)
    if parts.scheme.lower() == "http" and not insecure:
        raise BadRequest('insecure protocol http: set "insecure": true to download over '
                         "plain http")
    if not parts.hostname or not PurePosixPath(parts.path).name:
        raise BadRequest(f"invalid model URL {model!r}: expected https://host/path/file.gguf")
    guard.check_host(parts.hostname)
    sha256 = None
    if parts.fragment:
        key, _, value = parts.fragment.partition("=")
        if key != "sha256" or not _SHA256.match(value.lower()):
            raise BadRequest("a model URL's fragment must be #sha256=<64 hex digits>")
        sha256 = value.lower()
    return parts._replace(fragment="").geturl(), sha256


def _url_source(model: str, insecure: bool) -> Source:
    url, sha256 = _url_parts(model, insecure)
    parts = urlsplit(url)
    filename = _safe(PurePosixPath(unquote(parts.path)).name).lstrip(".")
    folder = _safe(parts.netloc.rpartition("@")[2].replace(":", "_"))
    return Source(name=model_name(model), url=url, relpath=PurePosixPath(folder, filename),
                  sha256=sha256)


def pick_gguf(files: list[str], tag: str) -> str | None:
    """Ollama's rule for hf.co tags: the file named by the tag, else the first GGUF whose name
    contains the tag (case-insensitive; a whole-word match wins, so `Q4_K` prefers `m-Q4_K.gguf`
    to `m-Q4_K_M.gguf`). No tag or `latest` means Q4_K_M when the repo has
    it, else the first GGUF by name. Projector (`mmproj`) files and split shards never count."""
    ggufs = sorted(f for f in files if f.lower().endswith(".gguf")
                   and "mmproj" not in f.lower() and not _SHARD.search(f))
    wanted = tag.lower()
    if wanted in ("", names.DEFAULT_TAG):
        return pick_gguf(ggufs, DEFAULT_QUANT) or (ggufs[0] if ggufs else None)
    exact = [f for f in ggufs if wanted in (f.lower(), PurePosixPath(f).name.lower())]
    hits = [f for f in ggufs if wanted in PurePosixPath(f).name.lower()]
    whole = re.compile(rf"(?<![a-z0-9]){re.escape(wanted)}(?![a-z0-9]|_[a-z0-9])")
    best = exact or [f for f in hits if whole.search(PurePosixPath(f).name.lower())] or hits
    return best[0] if best else None


def _hf_source(name: str, repo: str, tag: str) -> Source:
    info = _model_info(repo)
    files = {s.rfilename: s for s in info.siblings or []}
    chosen = pick_gguf(list(files), tag)
    if chosen is None:
        available = ", ".join(sorted(f for f in files if f.lower().endswith(".gguf"))) or "none"
        raise NotFound(f"{NO_MANIFEST}: no single-file GGUF in {repo} matches "
                       f"{tag or 'the default quantization'!r} (GGUF files: {available})")
    if ".." in PurePosixPath(chosen).parts or chosen.startswith("/"):
        raise ApiError(f"pull model manifest: unsafe file name {chosen!r} in {repo}", 502)
    sibling = files[chosen]
    lfs = sibling.lfs
    return Source(
        name=name, url=hf_hub_url(repo, chosen, revision=info.sha),
        relpath=PurePosixPath("hf.co", repo, chosen),
        size=lfs.size if lfs else sibling.size, sha256=lfs.sha256 if lfs else None,
        headers=build_hf_headers())


def _model_info(repo: str):  # noqa: ANN202 - huggingface_hub's ModelInfo
    try:
        return HfApi().model_info(repo, files_metadata=True)
    except (RepositoryNotFoundError, RevisionNotFoundError) as exc:
        raise NotFound(f"{NO_MANIFEST}: {repo} is not a model repository the hub shows you "
                       f"({type(exc).__name__})") from None
    except HFValidationError as exc:
        raise BadRequest(f"invalid Hugging Face repo {repo!r}: {exc}") from None
    except (httpx2.HTTPError, OSError) as exc:
        raise ApiError(f"pull model manifest: {exc}", 502) from None
