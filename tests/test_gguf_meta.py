"""GGUF header reading on the bundled model, without loading weights."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from ollamalite.registry.gguf_header import GGUFError, file_digest, human_number, read_header
from ollamalite.registry.models_file import bundled_model_path


def test_bundled_header_details() -> None:
    info = read_header(bundled_model_path())
    assert info.architecture == "llama"
    assert info.context_length == 8192
    assert info.details() == {"parent_model": "", "format": "gguf", "family": "llama",
                              "families": ["llama"], "parameter_size": "135M",
                              "quantization_level": "Q4_1"}
    assert "<|im_start|>" in info.chat_template
    assert info.capabilities() == ["completion"]


def test_model_info_hides_long_arrays_unless_verbose() -> None:
    info = read_header(bundled_model_path())
    short = info.model_info()
    assert short["llama.embedding_length"] == 576
    assert short["tokenizer.ggml.tokens"] == []
    assert "tokenizer.chat_template" not in short and "general.name" not in short
    assert info.model_info(verbose=True)["tokenizer.ggml.tokens"] == []  # not kept
    verbose = read_header(bundled_model_path(), arrays=True).model_info(verbose=True)
    assert len(verbose["tokenizer.ggml.tokens"]) == 49152
    assert verbose["tokenizer.ggml.tokens"][:2] == ["<|endoftext|>", "<|im_start|>"]


def test_digest_is_sha256_of_the_file(tmp_path: Path) -> None:
    f = tmp_path / "x.bin"
    f.write_bytes(b"abc" * 1000)
    assert file_digest(f) == hashlib.sha256(b"abc" * 1000).hexdigest()


def test_not_a_gguf(tmp_path: Path) -> None:
    f = tmp_path / "x.gguf"
    f.write_bytes(b"nope")
    with pytest.raises(GGUFError):
        read_header(f)
    f.write_bytes(b"GGUF\x03\x00\x00\x00")
    with pytest.raises(GGUFError, match="truncated"):
        read_header(f)


@pytest.mark.parametrize("n, text", [(134515008, "134.52M"), (8030261248, "8.0B"),
                                     (7000000000, "7B"), (135000000, "135M"), (5000, "5K"),
                                     (12, "12")])
def test_human_number(n: int, text: str) -> None:
    assert human_number(n) == text
