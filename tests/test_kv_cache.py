"""KV cache types and flash attention: OLLAMA_KV_CACHE_TYPE, OLLAMA_FLASH_ATTENTION and their
models.yaml keys reach llama.cpp, /api/ps sizes the cache they make, bad values are named."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import httpx
import pytest

from ollamalite.errors import ConfigError
from ollamalite.registry.models_file import parse
from ollamalite.runtime.engine.llama import KV_TYPES
from ollamalite.settings import KV_CACHE_TYPES, from_env
from tests.conftest import LiveServer, module_server, serving

NUM_CTX = 256
# The bundled model's K and V per token: 30 layers x 3 KV heads x 64 dimensions, each twice.
KV_VALUES = 30 * 3 * 64 * 2
F16_BYTES = KV_VALUES * 2
Q8_BYTES = KV_VALUES // 32 * 34  # q8_0 blocks: 32 values in 34 bytes
MIB = 1 << 20


def entry(name: str, extra: str = "") -> str:
    return f"  {name}:\n    path: bundled\n    num_ctx: {NUM_CTX}\n    num_parallel: 1\n{extra}"


# The server-wide setting (q8_0), an entry that asks for f16, one that turns flash attention off.
CONFIG = "models:\n" + entry("quantised") + entry("plain", "    kv_cache_type: f16\n") + \
    entry("no-flash", "    flash_attention: false\n")
ENV = {"OLLAMA_KV_CACHE_TYPE": "q8_0", "OLLAMA_FLASH_ATTENTION": "1",
       "OLLAMA_MAX_LOADED_MODELS": "3", "OLLAMA_DEBUG": "1"}

kv_server = module_server("kv", CONFIG, ENV)


def answer(server: LiveServer, model: str) -> str:
    """A short greedy answer, which loads `model`."""
    body = {"model": model, "stream": False, "options": {"temperature": 0, "num_predict": 12},
            "messages": [{"role": "user", "content": "What is the capital of France?"}]}
    reply = httpx.post(f"{server.url}/api/chat", json=body, timeout=300)
    assert reply.status_code == 200, reply.text
    return reply.json()["message"]["content"]


def load(server: LiveServer, model: str) -> None:
    """Ollama's way to load a model without generating: an empty prompt."""
    reply = httpx.post(f"{server.url}/api/generate", json={"model": model}, timeout=300)
    assert reply.status_code == 200 and reply.json()["done"], reply.text


def sizes(server: LiveServer) -> dict[str, int]:
    models = httpx.get(f"{server.url}/api/ps", timeout=30).json()["models"]
    return {m["name"].removesuffix(":latest"): m["size"] for m in models}


def reported_kv_mib(log: str) -> list[tuple[str, float]]:
    """llama.cpp's own account of each KV cache it made: (type, K + V in MiB)."""
    found = re.findall(r"K \((\w+)\):\s+([\d.]+) MiB, V \(\w+\):\s+([\d.]+) MiB", log)
    return [(kind, float(k) + float(v)) for kind, k, v in found]


def test_a_q8_0_cache_answers_as_f16_does_in_the_size_it_should(kv_server: LiveServer) -> None:
    plain, quantised = answer(kv_server, "plain"), answer(kv_server, "quantised")
    # Twelve greedy tokens; the quantised cache's small error may flip a near-tie late.
    assert len(plain.split()) >= 3 and quantised.split()[:3] == plain.split()[:3], (plain,
                                                                                    quantised)
    loaded = sizes(kv_server)
    assert loaded["plain"] - loaded["quantised"] == NUM_CTX * (F16_BYTES - Q8_BYTES)
    reports = dict(reported_kv_mib(kv_server.log()))  # printed with two decimals
    assert reports["q8_0"] == pytest.approx(NUM_CTX * Q8_BYTES / MIB, abs=0.01)
    assert reports["f16"] == pytest.approx(NUM_CTX * F16_BYTES / MIB, abs=0.01)


def test_flash_attention_off_falls_back_to_f16(kv_server: LiveServer) -> None:
    assert answer(kv_server, "no-flash").strip()  # llama.cpp would refuse a q8_0 V cache
    loaded = sizes(kv_server)
    assert loaded["no-flash"] - loaded["quantised"] == NUM_CTX * (F16_BYTES - Q8_BYTES)
    log = kv_server.log()
    assert "no-flash:latest: a q8_0 KV cache needs flash attention, which is off: using f16" in log
    assert re.search(r"flash_attn\s+= disabled", log)


def test_bad_environment_values_are_named_and_the_defaults_kept(
        tmp_path: Path, kv_server: LiveServer) -> None:
    env = {"OLLAMA_KV_CACHE_TYPE": "q5_1", "OLLAMA_FLASH_ATTENTION": "sometimes"}
    load(kv_server, "plain")  # the same model, context and slots, with an f16 cache
    with serving(tmp_path, "models:\n" + entry("plain"), env) as live:
        load(live, "plain")
        assert sizes(live)["plain"] == sizes(kv_server)["plain"]
        log = live.log()
    assert "invalid OLLAMA_KV_CACHE_TYPE='q5_1' (f16, q8_0, q4_0), using f16" in log
    assert "invalid OLLAMA_FLASH_ATTENTION='sometimes' (auto, on or off), using auto" in log


@pytest.mark.parametrize("env, kv_type, flash", [
    ({}, "f16", "auto"),
    ({"OLLAMA_KV_CACHE_TYPE": " Q4_0 "}, "q4_0", "auto"),
    ({"OLLAMA_KV_CACHE_TYPE": "q8_0", "OLLAMA_FLASH_ATTENTION": "true"}, "q8_0", "on"),
    ({"OLLAMA_FLASH_ATTENTION": "0"}, "f16", "off"),
    ({"OLLAMA_FLASH_ATTENTION": "auto"}, "f16", "auto"),
])
def test_the_settings_read_ollama_spellings(env: dict[str, str], kv_type: str,
                                            flash: str) -> None:
    settings = from_env(env)
    assert (settings.kv_cache_type, settings.flash_attention) == (kv_type, flash)


def test_every_type_the_settings_accept_has_its_ggml_layout() -> None:
    """The settings name the types without importing llama.cpp; the engine maps each."""
    assert tuple(KV_TYPES) == KV_CACHE_TYPES


def test_a_bad_environment_value_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        assert from_env({"OLLAMA_KV_CACHE_TYPE": "bf16"}).kv_cache_type == "f16"
    assert "invalid OLLAMA_KV_CACHE_TYPE='bf16' (f16, q8_0, q4_0), using f16" in caplog.text


@pytest.mark.parametrize("value, kv_type", [("q4_0", "q4_0"), ("f16", "f16")])
@pytest.mark.parametrize("flash, switch", [("true", "on"), ("false", "off"), ("auto", "auto")])
def test_the_models_file_keys_are_read_and_written_back(tmp_path: Path, value: str,
                                                        kv_type: str, flash: str,
                                                        switch: str) -> None:
    text = f"models:\n  a:\n    path: bundled\n    kv_cache_type: {value}\n" \
           f"    flash_attention: {flash}\n"
    model = parse(tmp_path / "models.yaml", text).models["a:latest"]
    assert (model.kv_cache_type, model.flash_attention) == (kv_type, switch)
    spelled = {"true": True, "false": False, "auto": "auto"}[flash]
    assert model.fields()["kv_cache_type"] == kv_type
    assert model.fields()["flash_attention"] == spelled


@pytest.mark.parametrize("line, message", [
    ("kv_cache_type: q5_1", "`kv_cache_type` must be one of f16, q8_0, q4_0"),
    ("kv_cache_type: 8", "`kv_cache_type` must be one of f16, q8_0, q4_0"),
    ("flash_attention: sometimes", "`flash_attention` must be true, false or auto"),
    ("flash_attention: 1", "`flash_attention` must be true, false or auto"),
])
def test_bad_models_file_values_name_the_line(tmp_path: Path, line: str, message: str) -> None:
    text = f"models:\n  a:\n    path: bundled\n    {line}\n"
    with pytest.raises(ConfigError, match=re.escape(f"models.yaml:4: model 'a': {message}")):
        parse(tmp_path / "models.yaml", text)
