"""Structured outputs (`format`): the schema check and grammar on their own, then the live
server with the bundled model, raw HTTP and the official client, outputs checked by jsonschema."""

from __future__ import annotations

import json
import threading
from typing import Any, Literal, Optional

import httpx
import jsonschema
import ollama
import pytest
from llama_cpp.llama_grammar import JSON_GBNF
from pydantic import BaseModel, Field

from ollamalite.errors import BadRequest
from ollamalite.generation.grammar import ANY, grammar_for, normalise
from tests.conftest import MODEL

GREEDY = {"temperature": 0, "num_predict": 120}
ASK = [{"role": "user", "content": "Describe a person as JSON."}]
# A prompt after which the small model closes its JSON object by itself.
JSON_PROMPT = 'Return the JSON {"ok": true}'

SCHEMAS = {
    "nested object": {
        "type": "object",
        "properties": {
            "name": {"type": "string", "maxLength": 20},
            "address": {"type": "object",
                        "properties": {"city": {"type": "string", "maxLength": 20},
                                       "zip": {"type": "integer"}},
                        "required": ["city", "zip"]},
        },
        "required": ["name", "address"],
    },
    "enum": {
        "type": "object",
        "properties": {"color": {"enum": ["red", "green", "blue"]}, "sure": {"type": "boolean"}},
        "required": ["color", "sure"],
    },
    "array bounds": {
        "type": "object",
        "properties": {"fruits": {"type": "array", "items": {"type": "string", "maxLength": 12},
                                  "minItems": 2, "maxItems": 3}},
        "required": ["fruits"],
    },
    "required and optional": {
        "type": "object",
        "properties": {"id": {"type": "integer"},
                       "nickname": {"type": ["string", "null"], "maxLength": 10},
                       "tags": {"type": "array", "items": {"enum": ["a", "b"]}, "maxItems": 2}},
        "required": ["id", "tags"],
        "additionalProperties": False,
    },
}


class Pet(BaseModel):
    name: str = Field(max_length=16)
    kind: Literal["cat", "dog", "bird"]
    legs: int
    owner: Optional[str] = Field(default=None, max_length=16)


class Node(BaseModel):
    """Recursive: pydantic writes a root `$ref` next to `$defs`."""

    value: int
    next: Optional[Node] = None


def deeply_nested(depth: int) -> dict:
    schema: dict = {"type": "integer"}
    for _ in range(depth):
        schema = {"type": "array", "items": schema}
    return schema


# -- the schema check and grammar (no model) ------------------------------------------------------

def test_no_format_is_unconstrained_and_json_is_llama_cpps_json_grammar() -> None:
    assert grammar_for(None) is None and grammar_for("") is None
    assert grammar_for("json") == JSON_GBNF


@pytest.mark.parametrize("schema", [
    *SCHEMAS.values(), Pet.model_json_schema(), Node.model_json_schema(), {},
    {"allOf": [{"properties": {"a": {"type": "integer"}}},
               {"properties": {"b": {"type": "boolean"}}, "required": ["b"]}]},
    {"type": "array", "prefixItems": [{"type": "integer"}, {"type": "string"}], "items": False},
    {"type": "string", "pattern": "^[a-z]{2,4}$"},
    {"type": "string", "format": "date-time", "description": "annotations are fine"},
], ids=lambda s: json.dumps(s)[:40])
def test_schemas_the_converter_honours_become_grammars(schema: dict) -> None:
    grammar = grammar_for(schema)
    assert grammar and "root ::=" in grammar


@pytest.mark.parametrize("schema, fragment", [
    ({"type": "integer", "minimum": 0}, "minimum at #"),
    ({"type": "object", "patternProperties": {"^a": {}}}, "patternProperties at #"),
    ({"if": {"type": "string"}, "then": {"minLength": 2}}, "if, then at #"),
    ({"type": "object", "properties": {"tags": {"type": "array", "items": {"type": "string"},
                                                "uniqueItems": True}}},
     "uniqueItems at #/properties/tags"),
    ({"type": "string", "format": "email"}, "format at #"),
    ({"not": {"type": "null"}}, "not at #"),
    ({"type": ["integer", "null"], "minimum": 0}, "minimum at #/anyOf/0"),
    ({"anyOf": [{"type": "string"}], "type": "string"}, "type at #"),
    ({"$ref": "https://example.com/schema.json"}, "only local references"),
    ({"properties": {"a": {"$ref": "#/$defs/missing"}}}, "does not resolve"),
    ({"type": "object", "required": ["a"]}, "required at #"),
    ({"type": "object", "properties": {"b": {}}, "required": ["a"]}, '"a" is not in properties'),
    ({"type": "array", "items": {"type": "integer"}, "minItems": 3, "maxItems": 1},
     "minItems <= maxItems"),
    ({"allOf": [{"type": "string"}, {"maxLength": 3}]}, "allOf part must be an object"),
    ({"anyOf": []}, "non-empty list"),
    ({"type": "decimal"}, '"decimal" is not a JSON schema type'),
    ({"properties": {"a": False}}, "false is not a schema object"),
    ({"type": "string", "pattern": "abc"}, 'Pattern must start with "^"'),
    ({"type": "string", "pattern": "^\\d+$"}, "could not parse the grammar"),
    ("yaml", "invalid format"),
    (deeply_nested(5000), "nested too deeply"),
    # would overflow llama.cpp's recursive parser (a segfault): refused before it gets there
    ({"type": "string", "maxLength": 100_000}, "grammar nested too deeply"),
    ({"type": "string", "pattern": "^a{0,50000}$"}, "grammar nested too deeply"),
    ({"type": "array", "items": {"type": "null"}, "maxItems": 1999}, "past llama.cpp's limits"),
])
def test_what_the_converter_would_drop_is_a_bad_request(schema: Any, fragment: str) -> None:
    with pytest.raises(BadRequest) as err:
        grammar_for(schema)
    assert fragment in err.value.message


def test_strings_hold_only_the_characters_json_allows() -> None:
    """The converter's own `char` rule admits raw control characters, which JSON forbids: a
    sampled reply through one would not parse. Schema grammars use JSON_GBNF's set."""
    made = grammar_for({"type": "object", "properties": {"a": {"type": "string"}}})
    [char] = [line for line in made.splitlines() if line.startswith("char ::=")]
    assert char.startswith(r'char ::= [^"\\\x7F\x00-\x1F] |')
    assert r'[^"\\\x7F\x00-\x1F]' in JSON_GBNF


def test_normalise_keeps_meaning_the_converter_would_change() -> None:
    assert normalise({"title": "T", "description": "d"}) == ANY  # `{}` is any value
    assert normalise({"allOf": [{"$ref": "#/$defs/C"}], "default": "red"}) == {"$ref": "#/$defs/C"}
    assert normalise({"type": "array", "items": True}) == {"type": "array", "items": ANY}
    assert normalise({"type": ["string", "null"], "maxLength": 3, "title": "t"}) == {
        "anyOf": [{"type": "string", "maxLength": 3}, {"type": "null"}]}
    # a property called "title" is a property, not an annotation
    assert normalise({"properties": {"title": {"type": "string"}}}) == {
        "properties": {"title": {"type": "string"}}}


# -- the live server -----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def http(base_url: str) -> httpx.Client:
    with httpx.Client(base_url=base_url, timeout=300) as client:
        yield client


def stream(http: httpx.Client, path: str, body: dict[str, Any]) -> list[dict[str, Any]]:
    with http.stream("POST", path, json=body) as resp:
        assert resp.status_code == 200
        return [json.loads(line) for line in resp.iter_lines()]


@pytest.mark.parametrize("name", list(SCHEMAS))
def test_chat_output_validates_against_the_schema(http: httpx.Client, name: str) -> None:
    schema = SCHEMAS[name]
    body = http.post("/api/chat", json={"model": MODEL, "messages": ASK, "format": schema,
                                        "stream": False, "options": GREEDY}).json()
    assert body["done_reason"] == "stop", body  # the grammar ended, then the model's EOS
    jsonschema.validate(json.loads(body["message"]["content"]), schema)


def test_streamed_generate_with_a_schema_joins_to_a_valid_document(http: httpx.Client) -> None:
    schema = SCHEMAS["nested object"]
    lines = stream(http, "/api/generate", {"model": MODEL, "prompt": "A person as JSON.",
                                           "format": schema, "options": GREEDY})
    assert [line["done"] for line in lines] == [False] * (len(lines) - 1) + [True]
    assert lines[-1]["done_reason"] == "stop" and lines[-1]["response"] == ""
    jsonschema.validate(json.loads("".join(line["response"] for line in lines)), schema)


def test_format_json_gives_json_streamed_and_not(http: httpx.Client) -> None:
    lines = stream(http, "/api/generate", {"model": MODEL, "prompt": JSON_PROMPT,
                                           "format": "json", "options": GREEDY})
    streamed = "".join(line["response"] for line in lines)
    assert lines[-1]["done_reason"] == "stop" and json.loads(streamed) == {"ok": True}
    body = http.post("/api/chat", json={"model": MODEL, "format": "json", "stream": False,
                                        "messages": [{"role": "user", "content": JSON_PROMPT}],
                                        "options": GREEDY}).json()
    assert isinstance(json.loads(body["message"]["content"]), dict)


def test_num_predict_still_cuts_a_constrained_answer_with_length(http: httpx.Client) -> None:
    body = http.post("/api/chat", json={"model": MODEL, "messages": ASK, "stream": False,
                                        "format": SCHEMAS["nested object"],
                                        "options": {"temperature": 0, "num_predict": 4}}).json()
    assert body["done_reason"] == "length" and body["eval_count"] == 4
    assert body["message"]["content"].startswith("{")
    with pytest.raises(json.JSONDecodeError):
        json.loads(body["message"]["content"])


def test_same_seed_same_constrained_output_alone_and_beside_another(http: httpx.Client,
                                                                    base_url: str) -> None:
    request = {"model": MODEL, "messages": ASK, "format": SCHEMAS["enum"], "stream": False,
               "options": {"temperature": 1.0, "seed": 1234, "num_predict": 60}}
    alone = http.post("/api/chat", json=request).json()["message"]["content"]

    started = threading.Event()
    other: list[str] = []

    def unconstrained() -> None:
        with httpx.Client(base_url=base_url, timeout=300) as client, client.stream(
                "POST", "/api/generate", json={"model": MODEL, "prompt": "Tell me a story.",
                                               "options": {"num_predict": 48}}) as resp:
            for line in resp.iter_lines():
                started.set()
                other.append(json.loads(line)["response"])

    thread = threading.Thread(target=unconstrained)
    thread.start()
    assert started.wait(120)
    beside = http.post("/api/chat", json=request).json()["message"]["content"]
    thread.join()
    assert beside == alone
    jsonschema.validate(json.loads(alone), SCHEMAS["enum"])
    assert len(other) > 2  # the neighbour really ran alongside, unconstrained


@pytest.mark.parametrize("path, extra", [
    ("/api/generate", {"prompt": "x"}),
    ("/api/chat", {"messages": [{"role": "user", "content": "x"}]}),
])
@pytest.mark.parametrize("fmt, fragment", [
    ({"type": "object", "properties": {"n": {"type": "integer", "maximum": 9}}},
     "not supported: maximum at #/properties/n"),
    ({"$ref": "https://example.com/s.json"}, "only local references"),
    ({"type": "string", "pattern": "^\\w+$"}, "could not parse the grammar"),
    (5, "invalid format"),
])
def test_bad_formats_are_400s_on_both_routes(http: httpx.Client, path: str, extra: dict,
                                             fmt: Any, fragment: str) -> None:
    resp = http.post(path, json={"model": MODEL, "format": fmt, **extra})
    assert resp.status_code == 400 and fragment in resp.json()["error"], resp.text


# -- the official client -------------------------------------------------------------------------

@pytest.fixture(scope="module")
def client(base_url: str) -> ollama.Client:
    return ollama.Client(host=base_url)


def test_ollama_client_with_a_pydantic_schema(client: ollama.Client) -> None:
    resp = client.chat(model=MODEL, format=Pet.model_json_schema(), options=GREEDY,
                       messages=[{"role": "user", "content": "Describe a pet as JSON."}])
    pet = Pet.model_validate_json(resp.message.content)
    assert pet.kind in ("cat", "dog", "bird") and resp.done_reason == "stop"


def test_ollama_client_format_json_and_a_refused_schema(client: ollama.Client) -> None:
    resp = client.generate(model=MODEL, prompt=JSON_PROMPT, format="json", options=GREEDY)
    assert json.loads(resp.response) == {"ok": True}
    with pytest.raises(ollama.ResponseError) as err:
        client.generate(model=MODEL, prompt="x", format={"type": "number", "multipleOf": 2})
    assert err.value.status_code == 400 and "multipleOf at #" in err.value.error
