"""GGUF header reading: metadata for /api/tags and /api/show without loading any weights.

Only the key/value section at the head of the file is parsed, so listing a 40 GB model costs
a few kilobytes of reads. Results are cached per (path, size, mtime).

Why not the `gguf` package's GGUFReader (maintained beside llama.cpp): it is neither as light
nor as safe. It maps the whole file, makes a NumPy view of every array element and parses every
tensor description. Measured with bench/gguf_header.py on the bundled SmolLM2-135M Q4_1 (98 MB,
49,152-token vocabulary, 272 tensors), 2 shared cores, over several runs: this reader 40-140 ms
with long arrays skipped (as cached: an 11 KiB peak) and 100-300 ms reading them all (an
8.5 MiB tracemalloc peak, RSS +9 MiB); GGUFReader() with its fields' contents() 2.7-4.1 s, a
157 MiB peak, RSS +167 MiB. On a 335-byte GGUF whose lengths are absurd it raises NumPy's
IndexError rather than an error of its own, and given a float array counting 2**60 values it
was still running after 13 minutes at 23 GB RSS; this reader refuses each of those files at
once, naming the key.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, BinaryIO

from ollamalite.caches import ENTRY_OVERHEAD, byte_lru
from ollamalite.errors import BadRequest

GGUF_MAGIC = b"GGUF"
# Arrays longer than this are left out of /api/show unless `verbose` (Ollama does the same).
SHORT_ARRAY = 5

_SCALARS: dict[int, str] = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f",
                            7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_STRUCTS = {fmt: struct.Struct(fmt) for fmt in (*_SCALARS.values(), "<I", "<Q")}
_STRING, _ARRAY = 8, 9
# The fewest bytes a value of each array element type takes (a string: its length field), so
# that a count the file cannot hold is refused before anything is read or allocated.
_MIN_SIZE = {**{t: struct.calcsize(fmt) for t, fmt in _SCALARS.items()}, _STRING: 8}
_MIN_KV = 8 + 4 + 1  # an empty key, its type, a one-byte value
_MIN_TENSOR_INFO = 8 + 4 + 8 + 4 + 8  # an empty name, one dimension, its type and offset
# Cached headers hold no long arrays, so this is hundreds of models' worth; a file whose
# strings alone pass it is read again each time rather than kept.
HEADER_CACHE_BYTES = 16 * 2**20

# llama.cpp's `enum llama_ftype`, as Ollama prints it in `quantization_level`.
FILE_TYPES = {0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 7: "Q8_0", 8: "Q5_0", 9: "Q5_1",
              10: "Q2_K", 11: "Q3_K_S", 12: "Q3_K_M", 13: "Q3_K_L", 14: "Q4_K_S", 15: "Q4_K_M",
              16: "Q5_K_S", 17: "Q5_K_M", 18: "Q6_K", 19: "IQ2_XXS", 20: "IQ2_XS", 21: "Q2_K_S",
              22: "IQ3_XS", 23: "IQ3_XXS", 24: "IQ1_S", 25: "IQ4_NL", 26: "IQ3_S", 27: "IQ3_M",
              28: "IQ2_S", 29: "IQ2_M", 30: "IQ4_XS", 31: "IQ1_M", 32: "BF16", 36: "TQ1_0",
              37: "TQ2_0", 38: "MXFP4"}

# Fill-in-the-middle token keys (`tokenizer.ggml.<name>_token_id`): current and older names.
FIM_KEYS = (("fim_pre", "prefix"), ("fim_suf", "suffix"), ("fim_mid", "middle"))
# The tokens that end a turn or the text, by their `tokenizer.ggml.<kind>_token_id` keys.
END_KINDS = ("eot", "eom", "eos")


# Architectures that only embed (llama.cpp builds them without a KV cache or output head).
EMBEDDING_ARCHITECTURES = frozenset({"bert", "nomic-bert", "nomic-bert-moe", "jina-bert-v2",
                                     "jina-bert-v3", "neo-bert", "modern-bert",
                                     "gemma-embedding"})


class GGUFError(BadRequest):
    """The file is not a GGUF this reader understands (or cannot be read): a 400 for a request
    naming the model; /api/tags leaves the model out."""


@dataclass(frozen=True)
class LongArray:
    """An array the cached header skipped: only its length is kept."""

    count: int


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
        """GGUF key/values for /api/show: long arrays emptied unless verbose, as Ollama does
        (verbose needs a header read with `arrays`)."""
        hidden = {"general.name", "tokenizer.chat_template"}
        return {k: [] if _hidden_array(v, verbose) else v
                for k, v in self.metadata.items() if k not in hidden}

    def estimated_size(self) -> int:
        """Bytes this header holds, roughly: what the header cache charges for it."""
        return sum(len(k) + ENTRY_OVERHEAD + (len(v) if isinstance(v, str) else 8)
                   for k, v in self.metadata.items())

    @property
    def has_fim_tokens(self) -> bool:
        """Fill-in-the-middle prefix, suffix and middle token ids, under either of the names
        llama.cpp reads (`fim_pre_token_id`..., or the older `prefix_token_id`...)."""
        return self.fim_ids() is not None

    def fim_ids(self) -> tuple[int, int, int] | None:
        """The prefix, suffix and middle token ids, or None without all three."""
        ids = [next((self.metadata[k] for k in (f"tokenizer.ggml.{n}_token_id" for n in names)
                     if k in self.metadata), None) for names in FIM_KEYS]
        return None if None in ids else (ids[0], ids[1], ids[2])

    def capabilities(self, embedding: bool | None = None) -> list[str]:
        """`embedding` (from models.yaml) overrides what the metadata says."""
        if self.is_embedding if embedding is None else embedding:
            return ["embedding"]
        return ["completion", "insert"] if self.has_fim_tokens else ["completion"]


@dataclass(frozen=True)
class SpecialTexts:
    """The text of the special tokens /api/show names: those that end generation (llama.cpp
    stops at each) and fill-in-the-middle's prefix, suffix and middle."""

    end: tuple[str, ...] = ()
    fim: tuple[str, str, str] | None = None


def special_texts(path: Path) -> SpecialTexts:
    """Blocking: the vocabulary is read once per version of the file, then cached."""
    return _special_texts(path, *_version(path))


@lru_cache(maxsize=64)
def _special_texts(path: Path, size: int, mtime_ns: int) -> SpecialTexts:
    info = read_header(path, arrays=True)
    tokens = info.metadata.get("tokenizer.ggml.tokens")
    vocab = tokens if isinstance(tokens, list) else []

    def text(token_id: Any) -> str | None:
        ok = isinstance(token_id, int) and 0 <= token_id < len(vocab)
        return vocab[token_id] if ok and isinstance(vocab[token_id], str) else None

    ends = (text(info.metadata.get(f"tokenizer.ggml.{kind}_token_id")) for kind in END_KINDS)
    fim = [text(i) for i in info.fim_ids() or ()]
    return SpecialTexts(tuple(dict.fromkeys(t for t in ends if t)),
                        (fim[0], fim[1], fim[2]) if len(fim) == 3 and all(fim) else None)


def _hidden_array(value: Any, verbose: bool) -> bool:
    return isinstance(value, LongArray) or (
        not verbose and isinstance(value, list) and len(value) > SHORT_ARRAY)


def human_number(n: int) -> str:
    """Ollama's `format.HumanNumber`: 134515008 -> `134.52M`, 8030261248 -> `8.0B`."""
    for unit, scale, decimals in (("B", 1e9, 1), ("M", 1e6, 2)):
        if n >= scale:
            value = n / scale
            return f"{value:.0f}{unit}" if value.is_integer() else f"{value:.{decimals}f}{unit}"
    return f"{n / 1e3:.0f}K" if n >= 1000 else str(n)


class _Reader:
    """Reads a GGUF header, refusing any length or count the rest of the file could not hold:
    a corrupt or hostile header costs an error, never an allocation as large as its claim."""

    def __init__(self, f: BinaryIO, size: int) -> None:
        self.f = f
        self.left = size

    def need(self, n: int, what: str) -> None:
        if n > self.left:
            raise GGUFError(f"truncated GGUF header: {what} needs {n} bytes, only {self.left} "
                            "are left in the file")

    def take(self, n: int, what: str) -> bytes:
        self.need(n, what)
        data = self.f.read(n)
        if len(data) != n:  # the file shrank while being read
            raise GGUFError(f"truncated GGUF header: {what}")
        self.left -= n
        return data

    def skip(self, n: int, what: str) -> None:
        self.need(n, what)
        self.f.seek(n, 1)
        self.left -= n

    def scalar(self, fmt: str, what: str) -> Any:
        unpack = _STRUCTS[fmt]
        return unpack.unpack(self.take(unpack.size, what))[0]

    def string(self, what: str) -> str:
        return self.take(self.scalar("<Q", what), what).decode("utf-8", errors="replace")

    def skip_strings(self, count: int, what: str) -> None:
        """`count` strings passed over: a vocabulary's worth, so the loop is kept tight."""
        length, seek = _STRUCTS["<Q"], self.f.seek
        for _ in range(count):
            n = length.unpack(self.take(8, what))[0]
            self.need(n, what)
            seek(n, 1)
            self.left -= n


def _value(r: _Reader, vtype: int, key: str, arrays: bool) -> Any:
    if vtype in _SCALARS:
        return r.scalar(_SCALARS[vtype], key)
    if vtype == _STRING:
        return r.string(key)
    if vtype == _ARRAY:
        return _array(r, key, arrays)
    raise GGUFError(f"GGUF key {key}: unknown value type {vtype}")


def _array(r: _Reader, key: str, arrays: bool) -> list[Any] | LongArray:
    """An array's values; a long one only skipped (its length kept) unless `arrays`."""
    etype, count = r.scalar("<I", key), r.scalar("<Q", key)
    if etype not in _MIN_SIZE:  # arrays of arrays: llama.cpp refuses them too
        raise GGUFError(f"GGUF key {key}: arrays of value type {etype} are not supported")
    r.need(count * _MIN_SIZE[etype], f"{key} ({count} values)")
    if etype == _STRING:
        if not arrays and count > SHORT_ARRAY:
            r.skip_strings(count, key)
            return LongArray(count)
        return [r.string(key) for _ in range(count)]
    size = _MIN_SIZE[etype] * count
    if not arrays and count > SHORT_ARRAY:
        r.skip(size, key)
        return LongArray(count)
    return list(struct.unpack(f"<{count}{_SCALARS[etype][1]}", r.take(size, key)))


def read_header(path: Path, arrays: bool = False) -> GGUFInfo:
    """Parse the key/value header of a GGUF file (blocking file I/O: call off the event loop).

    Arrays longer than SHORT_ARRAY (the vocabulary, merges, scores: megabytes for a large
    vocabulary) are skipped, and the result cached, unless `arrays` asks for them: then the
    file is read again and nothing is kept. A file that cannot be read or parsed is a
    GGUFError naming it (a 400 for the request naming the model)."""
    size, mtime_ns = _version(path)
    try:
        if arrays:
            return _parse(str(path), size, arrays=True)
        return _read_header_cached(str(path), size, mtime_ns)
    except OSError as exc:
        raise _unreadable(path, exc) from None
    except GGUFError as exc:
        raise GGUFError(f"{path}: {exc.message}") from None


def _version(path: Path) -> tuple[int, int]:
    """The file's size and modification time: what keys the caches of what it holds."""
    try:
        stat = path.stat()
    except OSError as exc:
        raise _unreadable(path, exc) from None
    return stat.st_size, stat.st_mtime_ns


def _unreadable(path: Path, exc: OSError) -> GGUFError:
    return GGUFError(f"cannot read {path}: {exc.strerror or exc}")


@byte_lru(HEADER_CACHE_BYTES, lambda info: info.estimated_size())
def _read_header_cached(path: str, size: int, mtime_ns: int) -> GGUFInfo:
    return _parse(path, size, arrays=False)


def _parse(path: str, size: int, arrays: bool) -> GGUFInfo:
    with open(path, "rb") as f:
        if f.read(4) != GGUF_MAGIC:
            raise GGUFError("not a GGUF file")
        r = _Reader(f, size - 4)
        version = r.scalar("<I", "version")
        if version < 2:
            raise GGUFError(f"GGUF version {version} is too old")
        tensor_count, kv_count = r.scalar("<Q", "tensor count"), r.scalar("<Q", "key count")
        r.need(kv_count * _MIN_KV, f"{kv_count} keys")
        metadata = {}
        for _ in range(kv_count):
            key = r.string("key")
            metadata[key] = _value(r, r.scalar("<I", key), key, arrays)
        r.need(tensor_count * _MIN_TENSOR_INFO, f"{tensor_count} tensor descriptions")
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
