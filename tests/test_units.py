"""Pure-logic units: names, durations, settings parsing, options, text assembly."""

from __future__ import annotations

import math

import pytest
from marshmallow import ValidationError

from ollamalite.durations import GO_MAX_SECONDS, keep_alive_seconds, parse_go_duration
from ollamalite.errors import BadRequest
from ollamalite.options import SamplingParams, run_options, validate_options
from ollamalite.registry import names
from ollamalite.runtime.engine.text import TextAssembler
from ollamalite.settings import from_env, parse_host
from ollamalite.wire import load, native


@pytest.mark.parametrize("raw, expected", [
    ("llama3", "llama3:latest"),
    ("SmolLM2:135M", "smollm2:135m"),
    ("hf.co/user/repo:Q4_K_M", "hf.co/user/repo:q4_k_m"),
    ("ns/model", "ns/model:latest"),
])
def test_normalize_adds_latest_and_lowercases(raw: str, expected: str) -> None:
    assert names.normalize(raw) == expected


@pytest.mark.parametrize("bad", ["", "a b", "x:y:z", "-lead", "model:", "a/b/c/d"])
def test_invalid_names_are_bad_requests(bad: str) -> None:
    with pytest.raises(BadRequest, match="invalid model name"):
        names.normalize(bad)


@pytest.mark.parametrize("text, seconds", [
    ("5m", 300.0), ("1h30m", 5400.0), ("0", 0.0), ("1.5s", 1.5), ("-1m", -60.0),
    ("300ms", 0.3),
])
def test_go_durations(text: str, seconds: float) -> None:
    assert parse_go_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("bad, message", [
    ("-1", "missing unit"), ("5", "missing unit"), ("1d", "invalid duration"),
    ("abc", "invalid duration"), ("", "invalid duration"), ("1e400s", "invalid duration"),
    ("9999999999999h", "invalid duration"), ("-2562048h", "invalid duration"),
])
def test_bad_go_durations(bad: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_go_duration(bad)


def test_keep_alive_values() -> None:
    assert keep_alive_seconds(30) == 30.0
    assert keep_alive_seconds(2.5) == 2.5
    assert keep_alive_seconds("10m") == 600.0
    assert keep_alive_seconds(-1) == math.inf
    assert keep_alive_seconds("-5m") == math.inf
    for bad in (True, [1], {"a": 1}, None):
        with pytest.raises(ValueError, match="Unsupported type"):
            keep_alive_seconds(bad)
    with pytest.raises(ValueError, match="must be a number"):
        keep_alive_seconds(math.nan)


@pytest.mark.parametrize("value", [1e12, GO_MAX_SECONDS, math.inf, -math.inf, 10**400,
                                   -10**400, "-9999h"])
def test_keep_alive_beyond_go_durations_is_forever(value: object) -> None:
    assert keep_alive_seconds(value) == math.inf


def test_keep_alive_just_below_go_durations_is_kept() -> None:
    assert keep_alive_seconds("2562047h") == 2562047 * 3600.0
    assert keep_alive_seconds(GO_MAX_SECONDS - 1) == GO_MAX_SECONDS - 1


@pytest.mark.parametrize("value, expected", [
    ("", ("127.0.0.1", 11434)),
    ("0.0.0.0", ("0.0.0.0", 11434)),
    ("1.2.3.4:5678", ("1.2.3.4", 5678)),
    (":1234", ("0.0.0.0", 1234)),
    ("http://example.com", ("example.com", 80)),
    ("https://example.com/ollama", ("example.com", 443)),
    ("[::1]", ("::1", 11434)),
    ("[::1]:9000", ("::1", 9000)),
    ("localhost:66000", ("localhost", 11434)),
])
def test_ollama_host_forms(value: str, expected: tuple[str, int]) -> None:
    assert parse_host(value) == expected


def test_settings_from_env_strip_quotes_and_flags_win() -> None:
    env = {"OLLAMA_HOST": '"0.0.0.0:9999"', "OLLAMA_KEEP_ALIVE": "10m",
           "OLLAMA_MAX_LOADED_MODELS": "2", "OLLAMA_ORIGINS": "https://a.example, app://x",
           "OLLAMALITE_CONFIG": "/etc/models.yaml"}
    s = from_env(env)
    assert (s.host, s.port, s.keep_alive, s.max_loaded_models) == ("0.0.0.0", 9999, 600.0, 2)
    assert s.origins == ("https://a.example", "app://x")
    assert str(s.config_path) == "/etc/models.yaml" and s.config_explicit
    flagged = from_env(env, host="127.0.0.1", port=1, config="mine.yaml")
    assert (flagged.host, flagged.port, str(flagged.config_path)) == ("127.0.0.1", 1, "mine.yaml")


def test_settings_defaults_and_bad_values() -> None:
    s = from_env({"OLLAMA_KEEP_ALIVE": "1d", "OLLAMA_NUM_PARALLEL": "x"})
    assert s.keep_alive == 300.0 and s.num_parallel == 4 and not s.config_explicit
    assert from_env({"OLLAMA_KEEP_ALIVE": "-1"}).keep_alive == math.inf
    assert from_env({"OLLAMA_KEEP_ALIVE": "0"}).keep_alive == 0.0
    assert from_env({}).prefix_cache and not from_env({"OLLAMALITE_PREFIX_CACHE": "0"}).prefix_cache
    assert from_env({"OLLAMA_DEBUG": "yes"}).debug and not from_env({}).debug
    assert from_env({}).speculative and not from_env({"OLLAMALITE_SPECULATIVE": "0"}).speculative
    assert not from_env({}).deterministic
    assert from_env({"OLLAMALITE_DETERMINISTIC": "1"}).deterministic
    assert from_env({}).cache_ram is None  # the scheduler's default from free memory
    assert from_env({"OLLAMALITE_CACHE_RAM": "0"}).cache_ram == 0
    assert from_env({"OLLAMALITE_CACHE_RAM": " 512 "}).cache_ram == 512 << 20
    assert from_env({"OLLAMALITE_CACHE_RAM": "-1"}).cache_ram is None
    assert from_env({"OLLAMALITE_CACHE_RAM": "2GiB"}).cache_ram is None


def test_settings_queue_and_load_timeout() -> None:
    assert (from_env({}).max_queue, from_env({}).load_timeout) == (512, 300.0)
    s = from_env({"OLLAMA_MAX_QUEUE": "0", "OLLAMA_LOAD_TIMEOUT": "1m30s"})
    assert (s.max_queue, s.load_timeout) == (0, 90.0)
    assert from_env({"OLLAMA_LOAD_TIMEOUT": "45"}).load_timeout == 45.0
    bad = from_env({"OLLAMA_MAX_QUEUE": "-3", "OLLAMA_LOAD_TIMEOUT": "soon"})
    assert (bad.max_queue, bad.load_timeout) == (512, 300.0)
    assert from_env({"OLLAMA_LOAD_TIMEOUT": "0"}).load_timeout == 300.0


def test_options_validate_types_and_aliases(caplog: pytest.LogCaptureFixture) -> None:
    opts = validate_options({"temperature": 0, "top_k": 12.9, "stop": "END", "seed": None,
                             "max_tokens": 5, "bogus": 1, "penalize_newline": True})
    assert opts == {"temperature": 0.0, "top_k": 12, "stop": ("END",), "num_predict": 5}
    assert "bogus" in caplog.text
    with pytest.raises(ValidationError) as err:
        validate_options({"temperature": "hot", "top_p": 2})
    assert set(err.value.messages) == {"temperature", "top_p"}


@pytest.mark.parametrize("schema", [native.GENERATE, native.CHAT, native.EMBED,
                                    native.EMBEDDINGS, native.SHOW])
def test_null_options_are_no_options(schema: native.Schema) -> None:
    """Found by the fuzzer: `"options": null` reached the handlers as None (a 500)."""
    assert load(schema, {"model": "m", "options": None})["options"] == {}


def test_run_options_split() -> None:
    ro = run_options({"temperature": 0.1, "seed": 7, "num_predict": 9, "stop": ("x",),
                      "num_ctx": 512, "num_gpu": 99})
    assert ro.sampling == SamplingParams(temperature=0.1, seed=7)
    assert (ro.num_predict, ro.stop, ro.num_ctx) == (9, ("x",), 512)


def test_text_assembler_splits_only_whole_utf8_characters() -> None:
    data = "héllo 🙂 世界".encode()
    asm = TextAssembler()
    pieces = [asm.push(data[i:i + 1]) for i in range(len(data))]
    pieces.append(asm.flush())
    assert "".join(pieces) == "héllo 🙂 世界"
    assert all("\ufffd" not in p for p in pieces)
    emoji_start = data.index("🙂".encode())
    assert pieces[emoji_start:emoji_start + 3] == ["", "", ""]
    assert pieces[emoji_start + 3] == "🙂"


def test_text_assembler_holds_back_and_cuts_stop_strings() -> None:
    asm = TextAssembler(("STOP", "\n\n"))
    out = [asm.push(b"Hello S"), asm.push(b"T"), asm.push(b"x and ST"), asm.push(b"OP more")]
    assert out == ["Hello ", "", "STx and ", ""]
    assert asm.stopped and asm.flush() == ""
    asm2 = TextAssembler(("STOP",))
    assert asm2.push(b"ends with ST") == "ends with "
    assert asm2.flush() == "ST"
