"""Inputs from outside are bounded: GGUF headers (lengths and counts within the file, a bad file a
clean per-model error), the caches keyed by request-supplied templates and grammars (by bytes),
and template rendering (a budget of steps, time and output)."""

from __future__ import annotations

import hashlib
import struct
import time
from pathlib import Path
from typing import Iterator

import gguf
import httpx
import pytest

from ollamalite.caches import ENTRY_OVERHEAD, ByteLRU, byte_lru
from ollamalite.errors import BadRequest
from ollamalite.generation import grammar, prompt, templates
from ollamalite.registry import chat_template, gguf_header
from ollamalite.registry.gguf_header import GGUFError, LongArray, read_header
from ollamalite.registry.models_file import bundled_model_path
from ollamalite.registry.template_sandbox import MAX_OUTPUT, MAX_STEPS, MAX_TEMPLATE
from tests.conftest import MODEL, LiveServer, serving

USER = [{"role": "user", "content": "hi"}]
BUDGET = "template rendering exceeded its budget"


# -- GGUF headers ---------------------------------------------------------------------------

def write_gguf(path: Path, name: str = "tiny", tokens: int = 10) -> Path:
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_string("general.name", name)
    writer.add_uint32("llama.context_length", 4096)
    writer.add_array("tokenizer.ggml.tokens", [f"t{i}" for i in range(tokens)])
    writer.add_array("tokenizer.ggml.scores", [0.5] * tokens)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.close()
    return path


def patched(path: Path, key: str, after_key: int, value: int) -> Path:
    """The file with the 8 bytes `after_key` bytes past `key`'s name set to `value`: a string's
    length (after its 4-byte type) or an array's count (after its type and element type)."""
    data = path.read_bytes()
    at = data.index(key.encode()) + len(key) + after_key
    path.write_bytes(data[:at] + struct.pack("<Q", value) + data[at + 8:])
    return path


def broken_gguf(path: Path) -> Path:
    return patched(write_gguf(path), "general.name", 4, 2**62)


@pytest.mark.parametrize("key, after_key, value", [
    ("general.name", 4, 2**62),  # a string's length
    ("general.name", 4, 2**63 + 5),
    ("tokenizer.ggml.scores", 8, 2**60),  # a float array's count
    ("tokenizer.ggml.tokens", 8, 2**60),  # a string array's count
])
def test_lengths_past_the_end_of_the_file_are_refused(tmp_path: Path, key: str, after_key: int,
                                                       value: int) -> None:
    path = patched(write_gguf(tmp_path / "x.gguf"), key, after_key, value)
    with pytest.raises(GGUFError, match=f"truncated GGUF header: {key}.*left in the file"):
        read_header(path)
    with pytest.raises(GGUFError, match="left in the file"):
        read_header(path, arrays=True)


def test_counts_that_cannot_fit_are_refused_before_reading(tmp_path: Path) -> None:
    path = write_gguf(tmp_path / "x.gguf")
    data = path.read_bytes()
    path.write_bytes(data[:16] + struct.pack("<Q", 2**60) + data[24:])  # the key count
    with pytest.raises(GGUFError, match=f"{2**60} keys needs .* bytes, only"):
        read_header(path)
    path.write_bytes(data[:8] + struct.pack("<Q", 2**40) + data[16:])  # the tensor count
    with pytest.raises(GGUFError, match=f"{2**40} tensor descriptions"):
        read_header(path)


def test_arrays_of_arrays_are_refused(tmp_path: Path) -> None:
    path = write_gguf(tmp_path / "x.gguf")
    data = bytearray(path.read_bytes())
    at = data.index(b"tokenizer.ggml.scores") + len("tokenizer.ggml.scores") + 4
    data[at:at + 4] = struct.pack("<I", 9)  # the element type: array
    path.write_bytes(bytes(data))
    with pytest.raises(GGUFError, match="tokenizer.ggml.scores: arrays of value type 9"):
        read_header(path)


def test_an_unreadable_file_is_a_gguf_error(tmp_path: Path) -> None:
    with pytest.raises(GGUFError, match="cannot read .*missing.gguf") as caught:
        read_header(tmp_path / "missing.gguf")
    assert caught.value.status == 400


def test_the_cached_header_keeps_no_vocabulary() -> None:
    info = read_header(bundled_model_path())
    assert info.metadata["tokenizer.ggml.tokens"] == LongArray(49152)
    assert info.metadata["tokenizer.ggml.merges"] == LongArray(48900)
    assert info.metadata["llama.context_length"] == 8192
    assert info.estimated_size() < 64 * 1024


def test_the_header_cache_is_bounded_by_bytes(tmp_path: Path) -> None:
    cache = gguf_header._read_header_cached.cache
    cache.clear()
    big_name = "n" * (gguf_header.HEADER_CACHE_BYTES // 8)
    paths = [write_gguf(tmp_path / f"m{i}.gguf", f"{big_name}{i}") for i in range(12)]
    for path in paths:
        assert read_header(path).metadata["general.name"].endswith(path.stem[1:])
    assert cache.bytes <= gguf_header.HEADER_CACHE_BYTES
    assert 0 < len(cache) < len(paths)
    assert read_header(paths[-1]) is read_header(paths[-1])  # the newest is still kept


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """The bundled model beside a GGUF with an absurd string length and one whose file is
    deleted once the server has started."""
    folder = tmp_path_factory.mktemp("bounds")
    broken = broken_gguf(folder / "broken.gguf")
    gone = write_gguf(folder / "gone.gguf")
    with serving(folder, f"models:\n  {MODEL}:\n    path: bundled\n    num_ctx: 512\n"
                         f"  broken:\n    path: {broken}\n  gone:\n    path: {gone}\n") as server:
        gone.unlink()
        yield server


@pytest.fixture(scope="module")
def http(live: LiveServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=live.url, timeout=120) as client:
        yield client


def test_tags_lists_the_readable_models(http: httpx.Client) -> None:
    resp = http.get("/api/tags")
    assert resp.status_code == 200
    assert [m["name"] for m in resp.json()["models"]] == [MODEL]


@pytest.mark.parametrize("model, message", [("broken", "general.name needs"),
                                            ("gone", "cannot read")])
@pytest.mark.parametrize("route, body", [
    ("/api/show", {}), ("/api/generate", {"prompt": "hi"}), ("/api/chat", {"messages": USER}),
])
def test_a_bad_gguf_is_a_400_for_the_request_naming_it(http: httpx.Client, model: str,
                                                       message: str, route: str,
                                                       body: dict) -> None:
    resp = http.post(route, json={"model": model, "stream": False, **body})
    assert resp.status_code == 400, resp.text
    assert message in resp.json()["error"]


def test_verbose_show_reads_the_vocabulary_on_demand(http: httpx.Client) -> None:
    info = http.post("/api/show", json={"model": MODEL, "verbose": True}).json()["model_info"]
    assert len(info["tokenizer.ggml.tokens"]) == 49152
    short = http.post("/api/show", json={"model": MODEL}).json()["model_info"]
    assert short["tokenizer.ggml.tokens"] == [] and short["llama.context_length"] == 8192


def test_create_refuses_a_gguf_whose_header_does_not_parse(http: httpx.Client, live: LiveServer,
                                                           tmp_path: Path) -> None:
    data = broken_gguf(tmp_path / "upload.gguf").read_bytes()
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    assert http.post(f"/api/blobs/{digest}", content=data).status_code == 201
    resp = http.post("/api/create", json={"model": "uploaded", "files": {"x.gguf": digest},
                                          "stream": False})
    assert resp.status_code == 400
    assert resp.json()["error"].startswith("supplied file is not a valid GGUF: truncated GGUF "
                                           "header: general.name needs")
    assert "uploaded" not in (live.log_path.parent / "models.yaml").read_text()


# -- caches bounded by bytes ------------------------------------------------------------------

def test_byte_lru_evicts_the_least_recently_used() -> None:
    entry = 200 + ENTRY_OVERHEAD
    cache = ByteLRU(3 * entry)
    for key in "abc":
        cache.put(key, key.upper(), 200)
    assert cache.get("a") == "A"  # now the most recent
    cache.put("d", "D", 200)
    assert cache.get("b") is None and cache.get("a") == "A" and cache.get("d") == "D"
    assert cache.bytes == 3 * entry and len(cache) == 3
    cache.put("huge", "H", 3 * entry)
    assert cache.get("huge") is None and len(cache) == 3


def test_byte_lru_charges_keys_and_values() -> None:
    calls = []

    @byte_lru(10_000, value_size=len)
    def double(text: str) -> str:
        calls.append(text)
        return text * 2

    for i in range(10):
        double(f"{i}" * 1000)
    entry = 1000 + 2000 + ENTRY_OVERHEAD  # the key, the value
    assert double.cache.bytes == 3 * entry and len(double.cache) == 3
    double("9" * 1000)
    assert len(calls) == 10  # a hit


def test_compiled_templates_and_their_features_are_bounded_by_bytes() -> None:
    chat_template.formatter.cache.clear()
    templates.features.cache.clear()
    count = templates.CACHE_BYTES // MAX_TEMPLATE + 8  # more than either cache can keep
    for i in range(count):
        source = f"{{{{ messages[0].content }}}} {i} ".ljust(MAX_TEMPLATE, "x")
        assert templates.features(source) == templates.TemplateFeatures()
        assert prompt.render_chat(source, USER, "", "").startswith(f"hi {i} xx")
    assert chat_template.formatter.cache.bytes <= chat_template.CACHE_BYTES
    assert templates.features.cache.bytes <= templates.CACHE_BYTES
    assert 0 < len(chat_template.formatter.cache) < count
    assert 0 < len(templates.features.cache) < count


def test_grammars_are_bounded_by_bytes() -> None:
    grammar._parses.cache.clear()
    made = [grammar.grammar_for({"enum": [f"{i}" + "v" * 1_000_000]}) for i in range(24)]
    assert all(f'{i}{"v" * 100}' in text for i, text in enumerate(made))
    assert grammar._parses.cache.bytes <= grammar.CACHE_BYTES
    assert 0 < len(grammar._parses.cache) < len(made)


# -- the render budget ------------------------------------------------------------------------

def test_a_quadratic_loop_exceeds_the_budget() -> None:
    loop = ("{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}"
            "{{ messages[0].content }}")
    started = time.monotonic()
    with pytest.raises(BadRequest, match=f"{BUDGET}: more than {MAX_STEPS} loop iterations"):
        prompt.render_chat(loop, USER, "", "")
    assert time.monotonic() - started < 60  # sanity only: the budget, not a clock, stops it


@pytest.mark.parametrize("template, what", [
    ("{% for i in range(100000) %}{{ 'x' * 100000 }}{% endfor %}", "an output of more than"),
    ("{{ 'x' * 10**10 }}", "\\* would make"),
    ("{{ [0] * 10**10 }}", "\\* would make"),
    ("{{ 7 ** 1000000 }}", "an integer of more than"),
    ("{% set ns = namespace(n=3) %}{% for i in range(40) %}{% set ns.n = ns.n * ns.n %}"
     "{% endfor %}", "an integer of more than"),
    ("{% for i in range(10**9) %}{% endfor %}", "a range of 1000000000"),
    ("{{ 'x'|center(10**9) }}", "a width of 1000000000"),
    ("{{ 'x'.rjust(10**9) }}", "a width of 1000000000"),
    ("{{ '%999999999d' % 1 }}", "a width of 999999999"),
    ("{{ '%999999999d'|format(1) }}", "a width of 999999999"),
    ("{{ '{:>999999999}'.format(1) }}", "a width of 999999999"),
    ("{{ '%.999999999d' % 1 }}", "a width of 999999999"),
    ("{{ '%(n)999999999d' % {'n': 1} }}", "a width of 999999999"),
    ("{{ '{:10.999999999f}'.format(1) }}", "a width of 999999999"),
    ("{{ '%*d' % (10**9, 1) }}", "a format width taken from the arguments"),
    ("{{ messages|tojson(indent=10**6) }}", "a tojson indent of"),
    ("{% set ns = namespace(s='x' * 1000000) %}{% for i in range(30) %}"
     "{% set ns.s = ns.s ~ ns.s %}{% endfor %}", "~ would make"),
    ("{% set ns = namespace(s='x' * 1000000) %}{% for i in range(30) %}"
     "{% set ns.s = ns.s + ns.s %}{% endfor %}", "a value of more than"),
    ("{% set s = 'x' * 1000000 %}{{ ([s] * 1000)|join }}", "join would make"),
    ("{% set s = 'x' * 1000000 %}{{ ''.join([s] * 1000) }}", "join would make"),
    ("{% set s = 'x' * 100000 %}{{ s.replace('', s) }}", "replace would make"),
    ("{% set s = 'x\n' * 1000000 %}{{ s|indent(10000) }}", "indent would make"),
    ("{% macro f(n) %}{{ f(n) }}{% endmacro %}{{ f(1) }}", "nested too deeply"),
    ("{% for a in messages[0].content * 5000 %}{% for b in messages[0].content * 5000 %}"
     "{% endfor %}{% endfor %}", "loop iterations"),
])
def test_templates_that_would_grow_without_bound_exceed_the_budget(template: str,
                                                                   what: str) -> None:
    with pytest.raises(BadRequest, match=f"{BUDGET}: .*{what}"):
        prompt.render_chat(template, USER, "", "")


@pytest.mark.parametrize("template", ["{{ 1 // 0 }}", "{{ lipsum(10**6) }}",
                                      "{% for i in range(10**30) %}{% endfor %}"])
def test_other_template_failures_are_template_errors(template: str) -> None:
    with pytest.raises(BadRequest, match="template error"):
        prompt.render_chat(template, USER, "", "")


@pytest.mark.parametrize("template", ["{% if a %}" * 2900 + "{% endif %}" * 2900,
                                      "{{ " + "(" * 30000 + "1" + ")" * 30000 + " }}"])
def test_a_template_nested_too_deeply_is_a_template_error(template: str) -> None:
    for inspect in (templates.features,
                    lambda t: prompt.render_chat(t, USER, "", "")):
        with pytest.raises(BadRequest, match="template error: nested too deeply"):
            inspect(template)


def test_a_template_longer_than_the_limit_is_refused() -> None:
    with pytest.raises(BadRequest, match=f"the limit is {MAX_TEMPLATE}"):
        prompt.render_chat("x" * (MAX_TEMPLATE + 1), USER, "", "")


def test_what_chat_templates_do_still_renders() -> None:
    template = ("{% for m in messages %}<|{{ m.role }}|>{{ m.content|trim }} {{ m|tojson }}"
                "{% if loop.last %}{{ bos_token ~ '!' }}{% endif %}{% endfor %}"
                "{{ ['a', 'b']|join(',') }} {{ '-'.join(['c', 'd']) }} {{ '%03d'|format(7) }}"
                " {{ 'ab'|center(6) }}|{{ range(3)|list|length }}|{{ '{{x}} {:>4}'.format(5) }}"
                "|{{ '%(n)s%%' % {'n': 50} }}|{{ 'a b'|wordwrap(1, wrapstring='/') }}")
    assert prompt.render_chat(template, USER, "<s>", "</s>") == (
        '<|user|>hi {"role": "user", "content": "hi"}<s>!a,b c-d 007   ab  |3|{x}    5|50%|a/b')


def test_output_at_the_limit_is_refused_before_memory_grows() -> None:
    template = "{% for i in range(1000) %}{{ 'x' * 1000000 }}{% endfor %}"
    with pytest.raises(BadRequest, match=f"more than {MAX_OUTPUT} characters"):
        prompt.render_chat(template, USER, "", "")


@pytest.mark.parametrize("template, what", [
    ("{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
     "loop iterations"),
    ("{% for i in range(100000) %}{{ 'x' * 100000 }}{% endfor %}", "an output of more than"),
])
def test_a_request_template_over_budget_is_a_400(http: httpx.Client, template: str,
                                                 what: str) -> None:
    started = time.monotonic()
    resp = http.post("/api/generate", json={"model": MODEL, "prompt": "hi", "template": template,
                                            "stream": False})
    assert resp.status_code == 400, resp.text
    assert resp.json()["error"].startswith(BUDGET) and what in resp.json()["error"]
    assert time.monotonic() - started < 60  # sanity only


# -- history truncation -----------------------------------------------------------------------

@pytest.mark.parametrize("turns, limit", [(1000, 50), (1000, 5000), (7, 3), (2, 2), (1000, 2)])
def test_truncation_drops_the_fewest_turns_in_few_renders(turns: int, limit: int) -> None:
    """Each turn costs as many tokens as its number (so later turns cost more): the kept
    history is the longest tail that fits, found in a logarithmic number of renders."""
    messages = [{"role": "system", "content": "s"},
                *({"role": "user", "content": str(i)} for i in range(1, turns + 1))]
    rendered = []

    def render(msgs: list[dict]) -> list[int]:
        rendered.append(len(msgs))
        return [0] * (1 + sum(int(m["content"]) for m in msgs[1:]))

    fits = [k for k in range(1, turns + 1) if 1 + sum(range(k, turns + 1)) < limit]
    if not fits:
        with pytest.raises(BadRequest, match="longer than the context"):
            prompt.fit_chat(messages, render, limit)
    else:
        tokens = prompt.fit_chat(messages, render, limit)
        assert len(tokens) == 1 + sum(range(fits[0], turns + 1))
    assert len(rendered) <= 2 + turns.bit_length()
