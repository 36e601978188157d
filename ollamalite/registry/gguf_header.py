"""GGUF header reading: metadata for /api/tags and /api/show without loading any weights.

Only the key/value section at the head of the file is parsed, so listing a 40 GB model costs
a few kilobytes of reads. Results are cached per (path, size, mtime).
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, BinaryIO, Callable

GGUF_MAGIC = b"GGUF"
# Arrays longer than this are left out of /api/show unless `verbose` (Ollama does the same).
SHORT_ARRAY = 5

_SCALARS: dict[int, str] = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f",
                            7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9

# llama.cpp's `enum llama_ftype`, as Ollama prints it in `quantization_level`.
FILE_TYPES = {0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 7: "Q8_0", 8: "Q5_0", 9: "Q5_1",
              10: "Q2_K", 11: "Q3_K_S", 12: "Q3_K_M", 13: "Q3_K_L", 14: "Q4_K_S", 15: "Q4_K_M",
              16: "Q5_K_S", 17: "Q5_K_M", 18: "Q6_K", 19: "IQ2_XXS", 20: "IQ2_XS", 21: "Q2_K_S",
              22: "IQ3_XS", 23: "IQ3_XXS", 24: "IQ1_S", 25: "IQ4_NL", 26: "IQ3_S", 27: "IQ3_M",
              28: "IQ2_S", 29: "IQ2_M", 30: "IQ4_XS", 31: "IQ1_M", 32: "BF16", 36: "TQ1_0",
              37: "TQ2_0", 38: "MXFP4"}

# Fill-in-the-middle token keys (`tokenizer.ggml.<name>_token_id`): current and older names.
FIM_KEYS = (("fim_pre", "prefix"), ("fim_suf", "suffix"), ("fim_mid", "middle"))


# Architectures that only embed (llama.cpp builds them without a KV cache or output head).
EMBEDDING_ARCHITECTURES = frozenset({"bert", "nomic-bert", "nomic-bert-moe", "jina-bert-v2",
                                     "jina-bert-v3", "neo-bert", "modern-bert",
                                     "gemma-embedding"})


class GGUFError(ValueError):
    """The file is not a GGUF this reader understands."""


@dataclass(frozen=True)
class GGUFInfo:
    """The header of one GGUF file."""

    version: int
    tensor_count: int
    metadata: dict[str, Any]

    @property
    def architecture(self) -> str:
        return str(self.metadata.get("general.architecture", ""))

    def arch_value(self, suffix: str, default: Any = None) -> Any:
        return self.metadata.get(f"{self.architecture}.{suffix}", default)

    @property
    def context_length(self) -> int:
        return int(self.arch_value("context_length", 2048))

    @property
    def chat_template(self) -> str | None:
        return self.metadata.get("tokenizer.chat_template")

    @property
    def is_embedding(self) -> bool:
        """An embedding model: an encoder architecture, or a pooling type (Qwen3-Embedding
        is a `qwen3` GGUF with `qwen3.pooling_type`)."""
        return (self.architecture in EMBEDDING_ARCHITECTURES
                or self.arch_value("pooling_type") is not None)

    def details(self) -> dict[str, Any]:
        """Ollama's `details` object."""
        family = self.architecture
        return {
            "parent_model": "",
            "format": "gguf",
            "family": family,
            "families": [family] if family else None,
            "parameter_size": self.parameter_size,
            "quantization_level": FILE_TYPES.get(self.metadata.get("general.file_type", -1), ""),
        }

    @property
    def parameter_size(self) -> str:
        count = self.metadata.get("general.parameter_count")
        if isinstance(count, int) and count > 0:
            return human_number(count)
        return str(self.metadata.get("general.size_label", ""))

    def model_info(self, verbose: bool = False) -> dict[str, Any]:
        """GGUF key/values for /api/show: long arrays emptied unless verbose, as Ollama does."""
        hidden = {"general.name", "tokenizer.chat_template"}
        return {
            k: (v if verbose or not isinstance(v, list) or len(v) <= SHORT_ARRAY else [])
            for k, v in self.metadata.items()
            if k not in hidden
        }

    @property
    def has_fim_tokens(self) -> bool:
        """Fill-in-the-middle prefix, suffix and middle token ids, under either of the names
        llama.cpp reads (`fim_pre_token_id`..., or the older `prefix_token_id`...)."""
        return all(any(f"tokenizer.ggml.{name}_token_id" in self.metadata for name in names)
                   for names in FIM_KEYS)

    def capabilities(self, embedding: bool | None = None) -> list[str]:
        """`embedding` (from models.yaml) overrides what the metadata says."""
        if self.is_embedding if embedding is None else embedding:
            return ["embedding"]
        return ["completion", "insert"] if self.has_fim_tokens else ["completion"]


def human_number(n: int) -> str:
    """Ollama's `format.HumanNumber`: 134515008 -> `134.52M`, 8030261248 -> `8.0B`."""
    for unit, scale, decimals in (("B", 1e9, 1), ("M", 1e6, 2)):
        if n >= scale:
            value = n / scale
            return f"{value:.0f}{unit}" if value.is_integer() else f"{value:.{decimals}f}{unit}"
    return f"{n / 1e3:.0f}K" if n >= 1000 else str(n)


def _reader(f: BinaryIO) -> Callable[[str], Any]:
    def read(fmt: str) -> Any:
        size = struct.calcsize(fmt)
        data = f.read(size)
        if len(data) != size:
            raise GGUFError("truncated GGUF header")
        return struct.unpack(fmt, data)[0]

    return read


def _read_string(f: BinaryIO, read: Callable[[str], Any]) -> str:
    length = read("<Q")
    data = f.read(length)
    if len(data) != length:
        raise GGUFError("truncated GGUF string")
    return data.decode("utf-8", errors="replace")


def _read_value(f: BinaryIO, read: Callable[[str], Any], vtype: int) -> Any:
    if vtype in _SCALARS:
        return read(_SCALARS[vtype])
    if vtype == _STRING:
        return _read_string(f, read)
    if vtype == _ARRAY:
        etype, count = read("<I"), read("<Q")
        if etype in _SCALARS:
            fmt = _SCALARS[etype]
            size = struct.calcsize(fmt)
            data = f.read(size * count)
            if len(data) != size * count:
                raise GGUFError("truncated GGUF array")
            return list(struct.unpack(f"<{count}{fmt[1]}", data))
        return [_read_value(f, read, etype) for _ in range(count)]
    raise GGUFError(f"unknown GGUF value type {vtype}")


def read_header(path: Path) -> GGUFInfo:
    """Parse the key/value header of a GGUF file (blocking file I/O: call off the event loop)."""
    stat = path.stat()
    return _read_header_cached(str(path), stat.st_size, stat.st_mtime_ns)


@lru_cache(maxsize=64)
def _read_header_cached(path: str, size: int, mtime_ns: int) -> GGUFInfo:
    with open(path, "rb") as f:
        if f.read(4) != GGUF_MAGIC:
            raise GGUFError(f"{path} is not a GGUF file")
        read = _reader(f)
        version = read("<I")
        if version < 2:
            raise GGUFError(f"{path}: GGUF version {version} is too old")
        tensor_count, kv_count = read("<Q"), read("<Q")
        metadata = {}
        for _ in range(kv_count):
            key = _read_string(f, read)
            metadata[key] = _read_value(f, read, read("<I"))
    return GGUFInfo(version=version, tensor_count=tensor_count, metadata=metadata)


def file_digest(path: Path) -> str:
    """sha256 hex of the whole file (blocking: call off the event loop); cached per version."""
    stat = path.stat()
    return _digest_cached(str(path), stat.st_size, stat.st_mtime_ns)


@lru_cache(maxsize=256)
def _digest_cached(path: str, size: int, mtime_ns: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()
