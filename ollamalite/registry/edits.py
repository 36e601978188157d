"""Creating, copying and deleting models: API requests become models.yaml edits.

A created model is an entry in models.yaml: derived from an existing model (its fields with the
new ones on top) or backed by a GGUF file (an uploaded blob moved into `data_dir/models/`, or a
file already in a model folder: a caller must not learn which other files this machine has).
Deleting removes the entry, and the GGUF only when ollamalite made it (it is under
`data_dir/models/`) and no other entry still uses it.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Callable

from marshmallow import ValidationError

from ollamalite.errors import BadRequest, NotFound, describe
from ollamalite.options import validate_options
from ollamalite.registry import chat_template, modelfile, names
from ollamalite.registry.blobs import BlobStore, parse_digest
from ollamalite.registry.gguf_header import GGUF_MAGIC, GGUFError, file_digest, read_header
from ollamalite.registry.library import Library
from ollamalite.registry.models_file import CONFIGURED, ModelEntry, overlay_fields

# Fields Ollama's /api/create accepts that have no meaning for a GGUF served by llama.cpp.
UNSUPPORTED = {"quantize": "quantize", "quantization": "quantize", "adapters": "adapters",
               "draft_files": "draft models", "remote_host": "remote models",
               "renderer": "renderer", "parser": "parser", "requires": "requires",
               "info": "info"}
_BLOB_NAME = re.compile(r"sha256-([0-9a-f]{64})(\.gguf)?")


@dataclass(frozen=True)
class Overlay:
    """What a create request sets on top of its base, and the progress line of each part."""

    fields: dict[str, Any]
    statuses: list[str]


async def create(library: Library, blobs: BlobStore, req: dict[str, Any]) -> list[str]:
    """Make the model; returns Ollama's progress lines (all but the final `success`)."""
    name = req["model"] or req["name"]
    if not name or not names.is_valid(name):
        raise BadRequest("invalid model name")
    req = _merge_modelfile(req)
    _refuse_unsupported(req)
    overlay = await asyncio.to_thread(_overlay, req)  # compiles a template: up to ~1 s
    if req["from_"]:
        base = library.registry.get(req["from_"]) if names.is_valid(req["from_"]) else None
        if base is not None:
            digest = await asyncio.to_thread(_gguf_digest, base.path)
            await _derive(library, base, name, overlay.fields)
            return [f"using existing layer sha256:{digest}", *overlay.statuses,
                    "writing manifest"]
        folders = _allowed_folders(library)
        return await _from_gguf(library, name, overlay,
                                lambda: _local_gguf(blobs, req["from_"], folders))
    if req["files"]:
        return await _from_gguf(library, name, overlay, lambda: _adopt_blob(blobs, req["files"]))
    raise BadRequest("neither 'from' or 'files' was specified")


async def copy(library: Library, source: str, destination: str) -> None:
    if not names.is_valid(source):
        raise BadRequest(f'source "{source}" is invalid')
    if not names.is_valid(destination):
        raise BadRequest(f'destination "{destination}" is invalid')
    entry = library.registry.get(source)
    if entry is None:
        raise NotFound(f'model "{source}" not found')
    await _derive(library, entry, destination, {})


async def delete(library: Library, name: str, models_dir: Path) -> None:
    if not name:
        raise BadRequest("model is required")
    if not names.is_valid(name):
        raise BadRequest(f'name "{name}" is invalid')
    entry = library.registry.get(name)
    if entry is None:
        raise NotFound(f"model '{name}' not found")
    if entry.origin != CONFIGURED:
        raise BadRequest(f"{entry.name} is not in models.yaml but found in {entry.origin}: "
                         "ollamalite does not delete files it did not create")
    if not await library.edit(lambda f: f.remove(name)):
        raise NotFound(f"model '{name}' not found")
    in_use = {e.path for e in library.registry.models.values()}
    await asyncio.to_thread(_remove_if_owned, entry.path, models_dir, in_use)


async def _derive(library: Library, base: ModelEntry, name: str,
                  fields: dict[str, Any]) -> None:
    """A models.yaml entry is derived as written; a discovered one from its resolved fields."""
    if base.origin == CONFIGURED:
        if not await library.edit(lambda f: f.derive(base.name, name, fields)):
            raise NotFound(f'model "{base.name}" not found')
    else:
        await library.edit(lambda f: f.add(name, overlay_fields(base.fields(), fields)))


async def _from_gguf(library: Library, name: str, overlay: Overlay,
                     locate: Callable[[], tuple[Path, str]]) -> list[str]:
    path, digest = await asyncio.to_thread(locate)
    fields = overlay_fields({"path": str(path)}, overlay.fields)
    await library.edit(lambda f: f.add(name, fields))
    return ["parsing GGUF", f"using existing layer sha256:{digest}", *overlay.statuses,
            "writing manifest"]


def _merge_modelfile(req: dict[str, Any]) -> dict[str, Any]:
    """The legacy `modelfile` text fills what the JSON fields leave unset."""
    if not req["modelfile"]:
        return req
    parsed = modelfile.parse(req["modelfile"])
    merged = dict(req)
    merged["from_"] = req["from_"] or parsed["from"]
    for key in ("system", "template"):
        merged[key] = req[key] or parsed.get(key, "")
    merged["license"] = req["license"] or parsed["license"]
    merged["parameters"] = {**parsed["parameters"], **(req["parameters"] or {})}
    merged["messages"] = req["messages"] or parsed["messages"]
    return merged


def _refuse_unsupported(req: dict[str, Any]) -> None:
    for key, what in UNSUPPORTED.items():
        if req.get(key):
            raise BadRequest(f"{what} is not supported by ollamalite: it serves GGUF files "
                             "as they are")


def _overlay(req: dict[str, Any]) -> Overlay:
    """Check each new part; its progress line names the digest Ollama's layer would have."""
    fields: dict[str, Any] = {}
    statuses: list[str] = []

    def put(key: str, value: Any, layer: Any) -> None:
        fields[key] = value
        data = layer if isinstance(layer, str) else json.dumps(layer)
        statuses.append(f"creating new layer sha256:{hashlib.sha256(data.encode()).hexdigest()}")

    if req["template"]:
        chat_template.check(req["template"])
        put("template", req["template"], req["template"])
    if req["system"]:
        put("system", req["system"], req["system"])
    if req["license"]:
        put("license", "\n".join(req["license"]), req["license"])
    if req["parameters"]:
        options = _parameters(req["parameters"])
        put("options", options, options)
    if req["messages"]:
        messages = [_preset_message(m) for m in req["messages"]]
        put("messages", messages, messages)
    return Overlay(fields, statuses)


def _parameters(raw: dict[str, Any]) -> dict[str, Any]:
    try:
        options = validate_options(raw)
    except ValidationError as exc:
        raise BadRequest(f"parameters: {describe(exc.messages)}") from None
    return {k: list(v) if isinstance(v, tuple) else v for k, v in options.items()}


def _preset_message(message: dict[str, Any]) -> dict[str, str]:
    if message.get("images"):
        raise BadRequest("messages with images are not supported")
    return {"role": message["role"], "content": message["content"] or ""}


def _allowed_folders(library: Library) -> tuple[Path, ...] | None:
    """Where `from` may name a GGUF: the folders models are configured, made or found in
    (None: anywhere, for a single-user machine that allows any path)."""
    settings = library.settings
    if settings.allow_any_path:
        return None
    return (*library.registry.model_dirs, settings.models_dir, settings.blobs_dir,
            settings.ollama_models)


def _local_gguf(blobs: BlobStore, text: str, folders: tuple[Path, ...] | None,
                ) -> tuple[Path, str]:
    """Blocking: `from` that is no known model is an uploaded blob (`@sha256:<hex>`) or a GGUF
    file in `folders` (None: anywhere), symlinks and `..` resolved first. Any other path gets
    the answer of an unknown name, whether the file exists or not."""
    if text.startswith("@"):
        return _adopt(blobs, parse_digest(text[1:]))
    unknown = NotFound(f'model "{text}" not found')
    if not text.startswith(("/", "./", "../", "~")) and not text.lower().endswith(".gguf"):
        raise unknown if names.is_valid(text) else BadRequest("invalid model name")
    path = Path(text).expanduser().resolve()
    if not (_inside(path, folders) and path.is_file()):
        raise unknown
    _check_gguf(path)
    return path, _gguf_digest(path)


def _inside(path: Path, folders: tuple[Path, ...] | None) -> bool:
    return folders is None or any(path.is_relative_to(f.resolve()) for f in folders)


def _adopt_blob(blobs: BlobStore, files: dict[str, str]) -> tuple[Path, str]:
    """Blocking: the one uploaded GGUF of `files`, moved into the models folder."""
    for filename, digest in files.items():
        relative = PurePosixPath(filename)
        if relative.is_absolute() or ".." in relative.parts or not filename:
            raise BadRequest("file path must be relative")
        parse_digest(digest)
    if len(files) != 1:
        raise BadRequest("only one GGUF file per model is supported (no split GGUF or "
                         "safetensors)")
    return _adopt(blobs, parse_digest(next(iter(files.values()))))


def _adopt(blobs: BlobStore, hex_digest: str) -> tuple[Path, str]:
    """Blocking: an uploaded GGUF blob, moved into the models folder."""
    path = blobs.find(hex_digest)
    if path is None:
        raise BadRequest(f'blob "sha256:{hex_digest}" not found: upload it with '
                         "POST /api/blobs first")
    _check_gguf(path)
    return blobs.adopt(hex_digest), hex_digest


def _check_gguf(path: Path) -> None:
    """Ollama's refusal for a file that is not GGUF; then the header must parse, so a broken
    file is refused here rather than entering models.yaml and failing every later request."""
    with open(path, "rb") as f:
        if f.read(4) != GGUF_MAGIC:
            raise BadRequest("supplied file was not in GGUF format")
    try:
        read_header(path)
    except GGUFError as exc:
        raise BadRequest(f"supplied file is not a valid GGUF: {exc.message.split(': ', 1)[-1]}"
                         ) from None


def _gguf_digest(path: Path) -> str:
    """A blob's name already is its digest; other files are hashed (cached per version)."""
    match = _BLOB_NAME.fullmatch(path.name)
    return match.group(1) if match else file_digest(path)


def _remove_if_owned(path: Path, models_dir: Path, in_use: set[Path]) -> None:
    """Blocking: delete a GGUF ollamalite made, once no entry uses it; never the user's."""
    if path.is_relative_to(models_dir.resolve()) and path not in in_use:
        path.unlink(missing_ok=True)
