"""A loaded GGUF model through llama-cpp-python's low-level C API: weights, vocabulary, text.

The high-level `Llama` class is not used: it owns a single-sequence context, while the engine
needs one context with several sequences that it builds itself.
"""

from __future__ import annotations

import ctypes
import logging
from functools import lru_cache
from pathlib import Path
from typing import Sequence

import llama_cpp

log = logging.getLogger(__name__)
_llama_log = logging.getLogger("llama.cpp")
# ggml_log_level: 1 debug, 2 info, 3 warn, 4 error, 5 continuation of the previous line.
_LEVELS = {3: logging.WARNING, 4: logging.ERROR}
# settings.KV_CACHE_TYPES as ggml types, with the bytes of one block and the values it holds.
KV_TYPES = {"f16": (llama_cpp.GGML_TYPE_F16, 2, 1), "q8_0": (llama_cpp.GGML_TYPE_Q8_0, 34, 32),
            "q4_0": (llama_cpp.GGML_TYPE_Q4_0, 18, 32)}
FLASH_ATTN = {"auto": llama_cpp.LLAMA_FLASH_ATTN_TYPE_AUTO,
              "on": llama_cpp.LLAMA_FLASH_ATTN_TYPE_ENABLED,
              "off": llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED}


@llama_cpp.llama_log_callback
def _log_callback(level: int, text: bytes, _user: ctypes.c_void_p) -> None:
    """llama.cpp's chatter goes to Python logging at DEBUG; warnings and errors stay visible."""
    message = text.decode("utf-8", errors="replace").rstrip()
    if message:
        _llama_log.log(_LEVELS.get(level, logging.DEBUG), "%s", message)


@lru_cache(maxsize=None)
def init_backend() -> None:
    """Once per process: route llama.cpp's log and initialise its backends."""
    llama_cpp.llama_log_set(_log_callback, ctypes.c_void_p(0))
    llama_cpp.llama_backend_init()


class ModelLoadError(RuntimeError):
    pass


class LlamaModel:
    """Weights plus vocabulary. Thread-safe for reading; freed by `close()`."""

    def __init__(self, path: Path, *, extra_bufts: bool, use_mmap: bool = True,
                 use_mlock: bool = False) -> None:
        """`extra_bufts`: whether weights may go to llama.cpp's extra CPU buffer types (AMX,
        repacked layouts); a required choice because some CPUs die from it (see `cpu.py`)."""
        init_backend()
        params = llama_cpp.llama_model_default_params()
        params.n_gpu_layers = 0
        params.use_extra_bufts = extra_bufts
        params.load_mode = _load_mode(use_mmap, use_mlock)
        ptr = llama_cpp.llama_model_load_from_file(str(path).encode(), params)
        if not ptr:
            raise ModelLoadError(f"llama.cpp could not load {path}")
        self.ptr = ptr
        self.path = path
        self.vocab = llama_cpp.llama_model_get_vocab(ptr)
        self.n_vocab = llama_cpp.llama_vocab_n_tokens(self.vocab)
        self.n_ctx_train = llama_cpp.llama_model_n_ctx_train(ptr)
        self.n_embd = llama_cpp.llama_model_n_embd_out(ptr)
        self.size = llama_cpp.llama_model_size(ptr)
        self.kv_values_per_token = _kv_values_per_token(ptr)
        self._pieces: dict[tuple[int, bool], bytes] = {}

    def kv_bytes_per_token(self, kv_type: str) -> int:
        """The KV cache's bytes per token when its K and V are of `kv_type` (a KV_TYPES key)."""
        _, block_bytes, block_values = KV_TYPES[kv_type]
        return self.kv_values_per_token * block_bytes // block_values

    def tokenize(self, text: str, add_special: bool = True, parse_special: bool = True,
                 ) -> list[int]:
        """Special tokens written in the text (`<|im_start|>`) are parsed unless
        `parse_special` is off: templates need them, user text for fill-in-the-middle not."""
        data = text.encode("utf-8")
        capacity = len(data) + 8
        buf = (llama_cpp.llama_token * capacity)()
        n = llama_cpp.llama_tokenize(self.vocab, data, len(data), buf, capacity, add_special,
                                     parse_special)
        if n < 0:
            capacity = -n
            buf = (llama_cpp.llama_token * capacity)()
            n = llama_cpp.llama_tokenize(self.vocab, data, len(data), buf, capacity, add_special,
                                         parse_special)
        return list(buf[:n])

    def outside_vocab(self, tokens: Sequence[int]) -> int | None:
        """The first id in `tokens` that is no token of this model, else None: llama.cpp
        indexes its vocabulary with ids unchecked (an id out of range aborts the process)."""
        if not tokens or (min(tokens) >= 0 and max(tokens) < self.n_vocab):
            return None
        return next(t for t in tokens if not 0 <= t < self.n_vocab)

    @property
    def fim_tokens(self) -> tuple[int, int, int] | None:
        """The fill-in-the-middle (prefix, suffix, middle) tokens, or None if the model has none
        (llama.cpp reads the GGUF's ids or recognises the tokens by their text)."""
        ids = (llama_cpp.llama_vocab_fim_pre(self.vocab), llama_cpp.llama_vocab_fim_suf(self.vocab),
               llama_cpp.llama_vocab_fim_mid(self.vocab))
        return None if min(ids) < 0 else ids

    def piece(self, token: int) -> bytes:
        """The bytes a generated token stands for; control tokens render as nothing."""
        return self._token_bytes(token, special=False)

    def spelling(self, token: int) -> bytes:
        """A token's bytes with special tokens spelled out (`<|im_end|>`): what chat templates
        and logprobs call a token, so that an end-of-turn candidate is not an empty string."""
        return self._token_bytes(token, special=True)

    def token_text(self, token: int) -> str:
        """A special token's own spelling (for chat templates' `bos_token`/`eos_token`)."""
        if token < 0:
            return ""
        return self.spelling(token).decode("utf-8", errors="replace")

    def _token_bytes(self, token: int, special: bool) -> bytes:
        cached = self._pieces.get((token, special))
        if cached is None:
            cached = self._pieces[(token, special)] = self._render(token, special)
        return cached

    def _render(self, token: int, special: bool) -> bytes:
        buf = ctypes.create_string_buffer(64)
        n = llama_cpp.llama_token_to_piece(self.vocab, token, buf, len(buf), 0, special)
        if n < 0:
            buf = ctypes.create_string_buffer(-n)
            n = llama_cpp.llama_token_to_piece(self.vocab, token, buf, len(buf), 0, special)
        return buf.raw[:n]

    def is_eog(self, token: int) -> bool:
        return bool(llama_cpp.llama_vocab_is_eog(self.vocab, token))

    @property
    def bos_text(self) -> str:
        return self.token_text(llama_cpp.llama_vocab_bos(self.vocab))

    @property
    def eos_text(self) -> str:
        return self.token_text(llama_cpp.llama_vocab_eos(self.vocab))

    @property
    def adds_bos(self) -> bool:
        return bool(llama_cpp.llama_vocab_get_add_bos(self.vocab))

    @property
    def adds_eos(self) -> bool:
        """Whether tokenizing closes every input with EOS or a separator (BERT's `[SEP]`)."""
        return bool(llama_cpp.llama_vocab_get_add_eos(self.vocab)
                    or llama_cpp.llama_vocab_get_add_sep(self.vocab))

    def meta(self, key: str) -> str | None:
        """A GGUF metadata value as llama.cpp prints it, or None when the key is absent."""
        buf = ctypes.create_string_buffer(256)
        n = llama_cpp.llama_model_meta_val_str(self.ptr, key.encode(), buf, len(buf))
        return buf.value.decode("utf-8", errors="replace") if n >= 0 else None

    @property
    def pooling_type(self) -> int | None:
        """The GGUF's `<arch>.pooling_type` (set by embedding models), else None."""
        arch = self.meta("general.architecture")
        value = self.meta(f"{arch}.pooling_type") if arch else None
        return int(value) if value is not None and value.lstrip("-").isdigit() else None

    def close(self) -> None:
        if self.ptr:
            llama_cpp.llama_model_free(self.ptr)
            self.ptr = None


def _kv_values_per_token(ptr: llama_cpp.llama_model_p) -> int:
    """The values K and V hold for one token in every layer; an estimate for models whose key
    and value heads differ in size."""
    n_head = max(1, llama_cpp.llama_model_n_head(ptr))
    head_dim = llama_cpp.llama_model_n_embd(ptr) // n_head
    return llama_cpp.llama_model_n_layer(ptr) * 2 * llama_cpp.llama_model_n_head_kv(ptr) * \
        head_dim


def set_kv_cache(params: llama_cpp.llama_context_params, kv_type: str,
                 flash_attention: str) -> None:
    """`kv_type` (a KV_TYPES key) for both K and V, and the FLASH_ATTN switch: llama.cpp
    refuses a quantised V cache with flash attention off (the scheduler falls back to f16)."""
    params.type_k = params.type_v = KV_TYPES[kv_type][0]
    params.flash_attn_type = FLASH_ATTN[flash_attention]


def new_context(model: LlamaModel, params: llama_cpp.llama_context_params, n_threads: int,
                what: str) -> llama_cpp.llama_context_p:
    """A context on `model` with `params`, `n_threads` for prompts and decoding alike; raise
    if llama.cpp cannot make it (mostly: no memory for its KV cache)."""
    params.n_threads = params.n_threads_batch = n_threads
    params.no_perf = True
    ctx = llama_cpp.llama_init_from_model(model.ptr, params)
    if not ctx:
        raise RuntimeError(f"llama.cpp could not create {what} of {params.n_ctx} tokens")
    return ctx


def put_token(batch: llama_cpp.llama_batch, i: int, token: int, pos: int, seq_id: int,
              output: bool) -> None:
    """Fill entry `i` of a one-sequence-per-token batch; `output` asks for its logits (or,
    in an embedding context, makes it count in the pooled vector)."""
    batch.token[i] = token
    batch.pos[i] = pos
    batch.n_seq_id[i] = 1
    batch.seq_id[i][0] = seq_id
    batch.logits[i] = output


def save_sequence(ctx: llama_cpp.llama_context_p, seq_id: int) -> ctypes.Array | None:
    """A copy of sequence `seq_id`'s KV cells (llama.cpp's per-sequence state), or None when
    llama.cpp cannot give one."""
    size = llama_cpp.llama_state_seq_get_size(ctx, seq_id)
    state = (ctypes.c_uint8 * size)()
    if not size or llama_cpp.llama_state_seq_get_data(ctx, state, size, seq_id) != size:
        return None
    return state


def restore_sequence(ctx: llama_cpp.llama_context_p, state: ctypes.Array, seq_id: int) -> bool:
    """Put a `save_sequence` copy into the empty sequence `seq_id`; False when llama.cpp
    refuses it (it checks the layout: another model's or another cache type's state)."""
    size = ctypes.sizeof(state)
    return llama_cpp.llama_state_seq_set_data(ctx, state, size, seq_id) == size


def decode_once(model: LlamaModel, n_tokens: int, n_threads: int = 1) -> int:
    """Decode a batch of `n_tokens` tokens, then one more, in a context of its own; return
    the greedy next token. The smallest run that proves this machine can serve `model`."""
    params = llama_cpp.llama_context_default_params()
    params.n_ctx = params.n_batch = params.n_ubatch = n_tokens + 1
    ctx = new_context(model, params, n_threads, "a probe context")
    batch = llama_cpp.llama_batch_init(n_tokens, 0, 1)
    try:
        prompt = model.tokenize("Why is the sky blue? " * n_tokens)[:n_tokens]
        for step, tokens in enumerate((prompt, [0])):
            batch.n_tokens = len(tokens)
            for i, token in enumerate(tokens):
                put_token(batch, i, token, step * n_tokens + i, 0, i == len(tokens) - 1)
            if llama_cpp.llama_decode(ctx, batch) != 0:
                raise RuntimeError("llama_decode failed")
        logits = llama_cpp.llama_get_logits_ith(ctx, -1)
        return max(range(model.n_vocab), key=lambda t: logits[t])
    finally:
        llama_cpp.llama_batch_free(batch)
        llama_cpp.llama_free(ctx)


def _load_mode(use_mmap: bool, use_mlock: bool) -> int:
    if use_mmap:
        return llama_cpp.LLAMA_LOAD_MODE_MMAP_MLOCK if use_mlock else llama_cpp.LLAMA_LOAD_MODE_MMAP
    return llama_cpp.LLAMA_LOAD_MODE_MLOCK if use_mlock else llama_cpp.LLAMA_LOAD_MODE_NONE
