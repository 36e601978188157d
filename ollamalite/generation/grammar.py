"""Structured outputs: a request's `format` ("json" or a JSON schema) -> a GBNF grammar.

`"json"` is llama.cpp's JSON grammar; a schema goes through llama-cpp-python's JSON-schema
converter. That converter drops, without a word, every keyword it cannot express, so a schema
is first checked against exactly what the converter honours: anything else is a 400 naming the
keyword and where it is, never an answer that quietly ignores part of the schema. The grammar
is then parsed by llama.cpp once here, so one it rejects is a 400 before any model is involved.
"""

from __future__ import annotations

import json
import re
from contextlib import contextmanager
from typing import Any, Iterator

from llama_cpp.llama_grammar import JSON_GBNF, json_schema_to_gbnf

from ollamalite.caches import byte_lru
from ollamalite.errors import BadRequest
from ollamalite.runtime.engine.sampling import GrammarError, check_grammar

Schema = dict[str, Any]

# Keywords that only describe: they never change which values are valid.
ANNOTATIONS = frozenset({"title", "description", "default", "examples", "$schema", "$id",
                         "$comment", "deprecated", "readOnly", "writeOnly", "discriminator"})
DEFINITIONS = frozenset({"$defs", "definitions"})
TYPES = frozenset({"object", "array", "string", "number", "integer", "boolean", "null"})
# The empty schema (any value), spelled so that the converter, which reads `{}` as "any
# object", keeps its meaning.
ANY: Schema = {"type": ["object", "array", "string", "number", "boolean", "null"]}
STRING_FORMATS = re.compile(r"^(uuid[1-5]?|date|time|date-time)$")
# What an `allOf` part may say: the converter merges the parts' properties, nothing else.
ALL_OF_PART = frozenset({"type", "properties", "required", "additionalProperties"})
# Keywords that only constrain values of one type (the others apply whatever the type).
TYPE_KEYWORDS = {
    "string": {"minLength", "maxLength", "pattern", "format"},
    "number": {"minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf"},
    "object": {"properties", "required", "additionalProperties", "patternProperties",
               "propertyNames", "minProperties", "maxProperties", "dependentRequired",
               "dependentSchemas", "unevaluatedProperties"},
    "array": {"items", "prefixItems", "minItems", "maxItems", "uniqueItems", "contains",
              "minContains", "maxContains", "unevaluatedItems", "additionalItems"},
}
TYPE_KEYWORDS["integer"] = TYPE_KEYWORDS["number"]
# Grammars whose parse result is kept, by their size (a schema as large as a request makes a
# grammar as large).
CACHE_BYTES = 16 * 2**20
# Deepest grammar nesting handed to llama.cpp's (recursive) parser; also its repetition limit.
MAX_NESTING = 2000
# Where subschemas live, by the shape of the keyword's value.
_SCHEMA_MAPS = ("properties", "$defs", "definitions")
_SCHEMA_LISTS = ("anyOf", "oneOf", "allOf", "prefixItems")
# The converter's own failures: assertions and lookups on schemas it does not understand.
_CONVERTER_ERRORS = (AssertionError, ValueError, KeyError, TypeError, AttributeError, IndexError,
                     RecursionError)


def grammar_for(fmt: str | Schema | None) -> str | None:
    """The GBNF grammar for a `format` (None: unconstrained); BadRequest if it cannot be one.

    Shared by /api (`format`) and the OpenAI routes (`response_format`: json_object is "json",
    json_schema's `schema` is the schema)."""
    if fmt is None or fmt == "":
        return None
    if fmt == "json":
        return checked_grammar(JSON_GBNF, "format")
    if isinstance(fmt, dict):
        return checked_grammar(schema_grammar(fmt), "format")
    raise BadRequest(f'invalid format: {fmt!r}; expected "json" or a JSON schema object')


def checked_grammar(grammar: str, where: str) -> str:
    """`grammar` once llama.cpp is known to parse it safely; BadRequest naming `where` (the
    request field the schema came from) otherwise."""
    if nesting_depth(grammar) > MAX_NESTING:
        raise BadRequest(f"{where}: the schema makes a grammar nested too deeply for llama.cpp "
                         f"(more than {MAX_NESTING} levels: a very large maxLength, maxItems "
                         "or pattern repetition?)")
    if not _parses(grammar):
        raise BadRequest(f"{where}: llama.cpp could not parse the grammar made from this schema "
                         "(a `pattern` using regex syntax GBNF lacks, such as \\d or \\w, or "
                         "repetitions past llama.cpp's limits?)")
    return grammar


def nesting_depth(grammar: str) -> int:
    """The deepest `(` nesting of a GBNF text, outside literals and character classes.
    llama.cpp's parser recurses once per level: far past a few thousand it overflows the
    C stack and takes the process down, so the depth is bounded before it ever sees one."""
    depth = deepest = 0
    closing, escaped = "", False
    for char in grammar:
        if closing:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == closing:
                closing = ""
        elif char in "\"[":
            closing = "]" if char == "[" else char
        elif char == "(":
            depth += 1
            deepest = max(deepest, depth)
        elif char == ")":
            depth -= 1
    return deepest


@byte_lru(CACHE_BYTES)
def _parses(grammar: str) -> bool:
    try:
        check_grammar(grammar)
    except GrammarError:
        return False
    return True


def schema_grammar(schema: Schema) -> str:
    """A JSON schema -> GBNF, after checking that the converter honours all of it."""
    checked = checked_schema(schema, "format")
    with converting("format"):
        return json_strings(json_schema_to_gbnf(json.dumps(checked)))


# The converter lets a string character be anything but `"` and `\`, raw control characters
# included, which JSON forbids: a reply sampled through one would not parse (a forced tool
# call read as text). Its `char` rule gets JSON's own set, as JSON_GBNF has it.
_CONVERTER_CHAR = r'char ::= [^"\\] |'
_JSON_CHAR = r'char ::= [^"\\\x7F\x00-\x1F] |'


def json_strings(gbnf: str) -> str:
    """`gbnf` (the converter's output) with strings held to the characters JSON allows."""
    return gbnf.replace(_CONVERTER_CHAR, _JSON_CHAR)


def checked_schema(schema: Any, where: str) -> Schema:
    """`schema` normalised for the converter; BadRequest naming `where` and each keyword the
    converter would drop."""
    try:
        schema = _inline_root_ref(normalise(schema))
        problems = list(unsupported(schema, schema, "#"))
    except RecursionError:
        raise BadRequest(f"{where}: JSON schema nested too deeply") from None
    if problems:
        raise BadRequest(f"{where}: JSON schema features not supported: " + "; ".join(problems))
    return schema


@contextmanager
def converting(where: str) -> Iterator[None]:
    """The converter's own failures on a schema it does not understand, as a 400."""
    try:
        yield
    except _CONVERTER_ERRORS as exc:
        raise BadRequest(f"{where}: invalid JSON schema: {exc}") from None


# -- normalising ----------------------------------------------------------------------------------

def normalise(node: Any) -> Any:
    """A copy without annotations, with `{}`/`true` spelled as ANY and a lone `allOf` part
    unwrapped (pydantic's spelling of a `$ref` with a default), so the converter reads it
    the way JSON Schema means it."""
    if node is True:
        return dict(ANY)
    if not isinstance(node, dict):
        return node
    out = {key: _normalise_value(key, value) for key, value in node.items()
           if key not in ANNOTATIONS}
    parts = out.get("allOf")
    if list(out) == ["allOf"] and isinstance(parts, list) and len(parts) == 1:
        return parts[0]
    return _split_types(out) or dict(ANY)


def _split_types(node: Schema) -> Schema:
    """`{"type": ["string", "null"], "maxLength": 9}` -> one `anyOf` branch per type with the
    keywords that apply to it: the converter would keep the types and drop the rest."""
    kinds = node.get("type")
    if not isinstance(kinds, list) or len(node) == 1 or "anyOf" in node or "oneOf" in node:
        return node
    typed = set().union(*TYPE_KEYWORDS.values())
    shared = {k: v for k, v in node.items() if k != "type" and k not in typed}
    return {"anyOf": [{**shared, "type": kind,
                       **{k: v for k, v in node.items() if k in TYPE_KEYWORDS.get(kind, ())}}
                      for kind in kinds]}


def _inline_root_ref(schema: Schema) -> Schema:
    """A root that is only a `$ref` (pydantic's recursive models) becomes its target: the
    converter does not look into the definitions beside a root `$ref`."""
    ref = schema.get("$ref")
    target = resolve(schema, ref) if isinstance(ref, str) and ref.startswith("#/") else None
    if not isinstance(target, dict) or "$ref" in target:
        return schema
    return {**{k: v for k, v in schema.items() if k != "$ref"}, **target}


def _normalise_value(key: str, value: Any) -> Any:
    if key in _SCHEMA_MAPS and isinstance(value, dict):
        return {name: normalise(sub) for name, sub in value.items()}
    if key in _SCHEMA_LISTS and isinstance(value, list):
        return [normalise(sub) for sub in value]
    if key == "items":
        return [normalise(s) for s in value] if isinstance(value, list) else normalise(value)
    if key == "additionalProperties" and isinstance(value, dict):
        return normalise(value)
    return value


# -- checking -------------------------------------------------------------------------------------

def unsupported(node: Any, root: Schema, path: str) -> Iterator[str]:
    """Each keyword the converter would drop (or cannot read) in `node` and below, with its
    JSON-pointer path. Mirrors the order in which `SchemaConverter.visit` picks a branch."""
    if not isinstance(node, dict):
        yield f"{path}: {json.dumps(node)} is not a schema object"
        return
    honoured, problems = _branch(node, root, path)
    yield from problems
    dropped = sorted(set(node) - honoured - DEFINITIONS)
    if dropped:
        yield f"{', '.join(dropped)} at {path}"
    for key in sorted((honoured | DEFINITIONS) & set(node)):
        yield from _below(key, node[key], root, f"{path}/{key}")


def _below(key: str, value: Any, root: Schema, path: str) -> Iterator[str]:
    """The subschemas under one honoured keyword."""
    if key in _SCHEMA_MAPS and isinstance(value, dict):
        for name, sub in value.items():
            yield from unsupported(sub, root, f"{path}/{name}")
    elif key in _SCHEMA_LISTS or (key == "items" and isinstance(value, list)):
        if not isinstance(value, list) or not value:
            yield f"{path}: must be a non-empty list of schemas"
            return
        for i, sub in enumerate(value):
            yield from unsupported(sub, root, f"{path}/{i}")
    elif key == "items" and value is not False or (key == "additionalProperties"
                                                   and isinstance(value, dict)):
        yield from unsupported(value, root, path)


def _branch(node: Schema, root: Schema, path: str) -> tuple[set[str], list[str]]:
    """The keywords the converter honours for this node, and problems with their values."""
    kind = node.get("type")
    if "$ref" in node:
        return {"$ref"}, _check_ref(node["$ref"], root, path)
    if "oneOf" in node or "anyOf" in node:
        return ({"oneOf"} if "oneOf" in node else {"anyOf"}), []
    problems = _check_type(kind, path)
    if isinstance(kind, list):
        return {"type"}, problems
    if "const" in node:
        return {"const", "type"}, problems
    if "enum" in node:
        ok = isinstance(node["enum"], list) and node["enum"]
        return {"enum", "type"}, problems + ([] if ok else [f"{path}/enum: must be a non-empty "
                                                            "list"])
    if kind in (None, "object") and ("properties" in node or node.get(
            "additionalProperties", True) is not True):
        return set(ALL_OF_PART), problems + _check_required(node, path)
    if kind in (None, "object") and "allOf" in node:
        return {"type", "allOf"}, problems + _check_all_of(node["allOf"], root, path)
    if kind in (None, "array") and ("items" in node or "prefixItems" in node):
        return _array_keys(node), problems + _check_counts(node, path, ("minItems", "maxItems"))
    if kind in (None, "string") and "pattern" in node:
        return {"type", "pattern"}, problems
    if kind in (None, "string") and STRING_FORMATS.match(str(node.get("format", ""))):
        return {"type", "format"}, problems
    if kind == "string" and ("minLength" in node or "maxLength" in node):
        return ({"type", "minLength", "maxLength"},
                problems + _check_counts(node, path, ("minLength", "maxLength")))
    return {"type"}, problems


def _array_keys(node: Schema) -> set[str]:
    items = node.get("items")
    if isinstance(items, dict):
        return {"type", "items", "minItems", "maxItems"}
    if isinstance(items, list):
        return {"type", "items"}  # a tuple: its length is fixed by the list
    return {"type", "prefixItems"} | ({"items"} if items is False else set())


def _check_type(kind: Any, path: str) -> list[str]:
    kinds = kind if isinstance(kind, list) else [kind]
    if kind is None or (kinds and all(isinstance(k, str) and k in TYPES for k in kinds)):
        return []
    return [f"{path}/type: {json.dumps(kind)} is not a JSON schema type"]


def _check_required(node: Schema, path: str) -> list[str]:
    required = node.get("required", [])
    properties = node.get("properties", {})
    if not isinstance(required, list) or not isinstance(properties, dict):
        return [f"{path}: properties must be an object and required a list"]
    return [f"{path}/required: {json.dumps(name)} is not in properties"
            for name in required if name not in properties]


def _check_counts(node: Schema, path: str, keys: tuple[str, str]) -> list[str]:
    low, high = (node.get(k, 0 if k == keys[0] else None) for k in keys)
    valid = [isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in (low, high)
             if v is not None]
    if not all(valid) or (high is not None and low > high):
        return [f"{path}: {keys[0]}/{keys[1]} must be counts with {keys[0]} <= {keys[1]}"]
    return []


def _check_ref(ref: Any, root: Schema, path: str) -> list[str]:
    if not isinstance(ref, str) or not ref.startswith("#/"):
        return [f"$ref {json.dumps(ref)} at {path} (only local references \"#/...\")"]
    if resolve(root, ref) is None:
        return [f"$ref {json.dumps(ref)} at {path} does not resolve"]
    return []


def _check_all_of(parts: Any, root: Schema, path: str) -> list[str]:
    """The converter merges `allOf` parts by their properties alone (making all of them
    required); a part that says anything else would lose it."""
    if not isinstance(parts, list):
        return []
    problems = []
    for i, part in enumerate(parts):
        target = resolve(root, part["$ref"]) if isinstance(part, dict) and "$ref" in part and \
            len(part) == 1 and isinstance(part["$ref"], str) else part
        if not (isinstance(target, dict) and "properties" in target
                and set(target) <= ALL_OF_PART | DEFINITIONS
                and target.get("type", "object") == "object"):
            problems.append(f"{path}/allOf/{i}: an allOf part must be an object schema with "
                            "properties (only properties are merged)")
    return problems


def resolve(root: Schema, ref: str) -> Any:
    """The node a local `#/a/b` reference points at, or None."""
    node: Any = root
    for part in ref[2:].split("/"):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node
