"""Models the user already has: GGUF files in `model_dirs` and an existing Ollama model store.

They are listed without loading anything (only directory listings and small manifests are read
here); models.yaml entries win when a discovered model has the same name.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from dataclasses import replace
from pathlib import Path
from typing import Any, Iterator

from marshmallow import ValidationError

from ollamalite.errors import BadRequest
from ollamalite.options import validate_options
from ollamalite.registry import names
from ollamalite.registry.models_file import MESSAGE_ROLES, ModelEntry, Registry

log = logging.getLogger(__name__)

# `Model-7B.Q4_K_M`, `model-q8_0`, `model.F16`: a quantisation suffix becomes the tag.
_QUANT_SUFFIX = re.compile(r"[._-]((?:i?q\d[a-z0-9_]*)|f16|f32|bf16)$")
_UNSAFE = re.compile(r"[^a-z0-9_.\-]+")
DEFAULT_HOST = "registry.ollama.ai"
DEFAULT_NAMESPACE = "library"
MEDIA = "application/vnd.ollama.image."


def extend(registry: Registry, ollama_models: Path) -> Registry:
    """The registry plus every discovered model whose name models.yaml does not already use."""
    models = dict(registry.models)
    found = [*scan_model_dirs(registry.model_dirs), *scan_ollama_store(ollama_models)]
    for entry in found:
        models.setdefault(names.normalize(entry.name), entry)
    return replace(registry, models=models)


def gguf_name(path: Path) -> str | None:
    """`SmolLM2-135M-Instruct.Q4_1.gguf` -> `smollm2-135m-instruct:q4_1`; no quant -> `:latest`."""
    stem = path.name[: -len(".gguf")].lower()
    match = _QUANT_SUFFIX.search(stem)
    base, tag = (stem[: match.start()], match.group(1)) if match and match.start() else (stem,
                                                                                           None)
    base = _UNSAFE.sub("-", base).strip("-.")
    name = names.display_name(f"{base}:{tag}" if tag else base)
    return name if base and names.is_valid(name) else None


def scan_model_dirs(folders: tuple[Path, ...]) -> Iterator[ModelEntry]:
    for folder in folders:
        if not folder.is_dir():
            log.warning("model_dirs: %s is not a folder", folder)
            continue
        for path in sorted(folder.iterdir()):
            if path.name.lower().endswith(".gguf") and path.is_file():
                name = gguf_name(path)
                if name is None:
                    log.warning("%s: no valid model name can be made from this file name", path)
                    continue
                yield ModelEntry(name=name, path=path.absolute(), origin=str(folder))


def ollama_name(host: str, namespace: str, model: str, tag: str) -> str:
    """As Ollama displays it: the default host and `library` namespace left out."""
    if host.lower() != DEFAULT_HOST:
        return f"{host}/{namespace}/{model}:{tag}"
    if namespace.lower() != DEFAULT_NAMESPACE:
        return f"{namespace}/{model}:{tag}"
    return f"{model}:{tag}"


def scan_ollama_store(root: Path) -> Iterator[ModelEntry]:
    """Every `manifests/<host>/<namespace>/<model>/<tag>` whose GGUF blob is present."""
    manifests = root / "manifests"
    if not manifests.is_dir():
        return
    for path in sorted(manifests.glob("*/*/*/*")):
        if not path.is_file():
            continue
        name = ollama_name(*path.relative_to(manifests).parts)
        try:
            entry = _ollama_entry(root, path, name)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("Ollama model %s (%s): skipped: %s", name, path, exc)
            continue
        if entry is not None:
            yield entry


def _ollama_entry(root: Path, manifest_path: Path, name: str) -> ModelEntry | None:
    raw = manifest_path.read_bytes()
    layers = {}
    for layer in json.loads(raw)["layers"]:
        kind = layer["mediaType"].removeprefix(MEDIA)
        layers.setdefault(kind, []).append(_blob(root, layer["digest"]))
    if "model" not in layers or not names.is_valid(name):
        return None  # a safetensors, remote or cloud model: nothing llama.cpp can load
    if "adapter" in layers:
        raise ValueError("LoRA adapters are not supported")
    return ModelEntry(
        name=name,
        path=layers["model"][0],
        options=_params(layers),
        system=_text(layers, "system"),
        go_template=_text(layers, "template") or _text(layers, "prompt"),
        messages=_messages(layers),
        license="\n".join(p.read_text(encoding="utf-8") for p in layers.get("license", []))
        or None,
        origin=str(root),
        digest=hashlib.sha256(raw).hexdigest(),
    )


def _blob(root: Path, digest: str) -> Path:
    if not re.fullmatch(r"sha256[:-][0-9a-fA-F]{64}", digest):
        raise ValueError(f"invalid digest {digest!r}")
    path = root / "blobs" / digest.replace(":", "-")
    if not path.is_file():
        raise ValueError(f"blob {path} is missing")
    return path


def _text(layers: dict[str, list[Path]], kind: str) -> str | None:
    paths = layers.get(kind)
    return paths[-1].read_text(encoding="utf-8") if paths else None


def _params(layers: dict[str, list[Path]]) -> dict[str, Any]:
    text = _text(layers, "params")
    if not text:
        return {}
    try:
        return validate_options(json.loads(text))
    except (ValidationError, BadRequest) as exc:
        raise ValueError(f"invalid params: {exc}") from None


def _messages(layers: dict[str, list[Path]]) -> tuple[dict[str, str], ...]:
    text = _text(layers, "messages")
    raw = json.loads(text) if text else []
    return tuple({"role": m["role"], "content": m.get("content") or ""} for m in raw
                 if isinstance(m, dict) and m.get("role") in MESSAGE_ROLES)
