"""Embedding logic that needs no model: batch packing, truncation, normalising, detection."""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np
import pytest

from ollamalite.errors import BadRequest, ConfigError
from ollamalite.generation.embedding import TOO_LONG, fit, normalize, shorten
from ollamalite.registry import models_file
from ollamalite.registry.gguf_header import read_header
from ollamalite.runtime.engine.embedder import MAX_SEQS, pack, pooling_for
from ollamalite.runtime.engine.llama import LlamaModel
from tests.conftest import extra_bufts
from tests.tiny_bert import write_tiny_bert


def test_pack_fills_a_batch_by_tokens_and_sequences() -> None:
    inputs = [[1] * 300, [2] * 200, [3] * 100, [4] * 600]
    assert pack(inputs, 0, 512) == 2  # 300 + 200; the third would overflow
    assert pack(inputs, 2, 512) == 1
    assert pack(inputs, 3, 512) == 1  # never zero, even when one input is too long
    many = [[1, 2]] * (MAX_SEQS + 5)
    assert pack(many, 0, 10_000) == MAX_SEQS
    assert pack(many, MAX_SEQS, 10_000) == 5


def test_fit_cuts_or_refuses() -> None:
    tokens = list(range(10))
    assert fit(tokens, 10, keep_last=False, truncate=False) == tokens
    assert fit(tokens, 4, keep_last=False, truncate=True) == [0, 1, 2, 3]
    assert fit(tokens, 4, keep_last=True, truncate=True) == [0, 1, 2, 9]  # closing [SEP] kept
    with pytest.raises(BadRequest, match=TOO_LONG):
        fit(tokens, 4, keep_last=False, truncate=False)


def test_normalize_and_shorten() -> None:
    vectors = np.array([[3.0, 4.0, 0.0], [0.0, 0.0, 0.0]], np.float32)
    unit = normalize(vectors)
    assert np.allclose(unit, [[0.6, 0.8, 0.0], [0.0, 0.0, 0.0]])
    short = shorten(unit, 1)
    assert np.allclose(short, [[1.0], [0.0]])
    assert shorten(unit, None) is unit and shorten(unit, 3) is unit
    with pytest.raises(BadRequest, match="between 1 and 3"):
        shorten(unit, 4)
    with pytest.raises(BadRequest, match="NaN or Inf"):
        normalize(np.array([[np.nan, 1.0]], np.float32))


def _gguf(path: Path, arch: str, pooling: int | None = None) -> Path:
    writer = gguf.GGUFWriter(str(path), arch)
    if pooling is not None:
        writer.add_uint32(f"{arch}.pooling_type", pooling)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.close()
    return path


@pytest.mark.parametrize("arch, pooling, expected", [
    ("bert", None, ["embedding"]),
    ("nomic-bert", 1, ["embedding"]),
    ("qwen3", 3, ["embedding"]),  # Qwen3-Embedding: a decoder GGUF with a pooling type
    ("llama", None, ["completion"]),
])
def test_embedding_models_are_detected_from_metadata(tmp_path: Path, arch: str,
                                                     pooling: int | None,
                                                     expected: list[str]) -> None:
    info = read_header(_gguf(tmp_path / "m.gguf", arch, pooling))
    assert info.capabilities() == expected
    assert info.capabilities(embedding=True) == ["embedding"]
    assert info.capabilities(embedding=False) == ["completion"]


def test_models_yaml_embedding_flag(tmp_path: Path) -> None:
    gguf_path = _gguf(tmp_path / "m.gguf", "llama")
    path = tmp_path / "models.yaml"
    path.write_text(f"models:\n  e:\n    path: {gguf_path}\n    embedding: true\n"
                    f"  c: {gguf_path}\n")
    registry = models_file.load(path)
    assert registry.get("e").embedding is True and registry.get("c").embedding is None
    path.write_text(f"models:\n  e:\n    path: {gguf_path}\n    embedding: yes please\n")
    with pytest.raises(ConfigError, match=r"models.yaml:4: model 'e': `embedding` must be true"):
        models_file.load(path)


@pytest.mark.parametrize("pooling, used", [(gguf.PoolingType.CLS, gguf.PoolingType.CLS),
                                           (gguf.PoolingType.NONE, gguf.PoolingType.MEAN)])
def test_pooling_comes_from_the_gguf(tmp_path: Path, pooling: int, used: int) -> None:
    model = LlamaModel(write_tiny_bert(tmp_path / "bert.gguf", pooling),
                       extra_bufts=extra_bufts())
    try:
        assert model.pooling_type == pooling and pooling_for(model) == used
        assert model.adds_eos  # [SEP] closes every input: truncation keeps it
        tokens = model.tokenize("the cat sat")
        assert [model.token_text(t) for t in (tokens[0], tokens[-1])] == ["[CLS]", "[SEP]"]
    finally:
        model.close()
