"""A tiny BERT embedding GGUF with random weights, written with the `gguf` package.

No real embedding model ships in a package here; this one exercises what a real one does in
llama.cpp (an encoder without KV cache, WordPiece tokens with [CLS]/[SEP], the GGUF's own
pooling type) in a few kilobytes. Its vectors mean nothing.
"""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np

WORDS = ["the", "cat", "sat", "on", "mat", "dog", "ran", "a", "rug", "stock", "market", "fell",
         "."]
SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
N_EMBD, N_HEAD, N_FF, N_LAYER, N_CTX = 32, 2, 64, 2, 64


def write_tiny_bert(path: Path, pooling: int = gguf.PoolingType.CLS, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    tokens = SPECIAL + ["\u2581" + w for w in WORDS]  # llama.cpp's WordPiece marks word starts
    writer = gguf.GGUFWriter(str(path), "bert")
    writer.add_name("tiny-bert")
    writer.add_context_length(N_CTX)
    writer.add_embedding_length(N_EMBD)
    writer.add_feed_forward_length(N_FF)
    writer.add_block_count(N_LAYER)
    writer.add_head_count(N_HEAD)
    writer.add_layer_norm_eps(1e-12)
    writer.add_causal_attention(False)
    writer.add_pooling_type(pooling)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    writer.add_tokenizer_model("bert")
    writer.add_token_list(tokens)
    writer.add_token_types([gguf.TokenType.CONTROL] * len(SPECIAL)
                           + [gguf.TokenType.NORMAL] * len(WORDS))
    writer.add_token_type_count(2)
    for add, name in ((writer.add_pad_token_id, "[PAD]"), (writer.add_unk_token_id, "[UNK]"),
                      (writer.add_bos_token_id, "[CLS]"), (writer.add_sep_token_id, "[SEP]"),
                      (writer.add_eos_token_id, "[SEP]"), (writer.add_mask_token_id, "[MASK]")):
        add(tokens.index(name))

    def tensor(name: str, *shape: int) -> None:
        writer.add_tensor(name, (rng.standard_normal(shape) * 0.2).astype(np.float32))

    def norm(name: str) -> None:
        writer.add_tensor(f"{name}.weight", np.ones(N_EMBD, np.float32))
        writer.add_tensor(f"{name}.bias", np.zeros(N_EMBD, np.float32))

    tensor("token_embd.weight", len(tokens), N_EMBD)
    tensor("token_types.weight", 2, N_EMBD)
    tensor("position_embd.weight", N_CTX, N_EMBD)
    norm("token_embd_norm")
    for i in range(N_LAYER):
        for part in ("attn_q", "attn_k", "attn_v", "attn_output"):
            tensor(f"blk.{i}.{part}.weight", N_EMBD, N_EMBD)
            tensor(f"blk.{i}.{part}.bias", N_EMBD)
        norm(f"blk.{i}.attn_output_norm")
        tensor(f"blk.{i}.ffn_up.weight", N_FF, N_EMBD)
        tensor(f"blk.{i}.ffn_up.bias", N_FF)
        tensor(f"blk.{i}.ffn_down.weight", N_EMBD, N_FF)
        tensor(f"blk.{i}.ffn_down.bias", N_EMBD)
        norm(f"blk.{i}.layer_output_norm")
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
