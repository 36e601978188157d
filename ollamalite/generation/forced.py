"""Forced tool calls (`tool_choice` "required", or one named tool): a grammar for the reply.

Small models often answer in prose where a call is wanted; a grammar leaves them no choice.
It admits exactly one call, spelled as the template taught the model and as the reply parser
reads it (`<tool_call>` + `{"name": …, "arguments": …}` + `</tool_call>`, or the bare JSON
object): an alternation over the tools allowed, each branch with its name fixed and the
tool's `parameters` schema for its arguments. The parsed call then leaves through the usual
path, as if the model had chosen it. Schemas are held to what `grammar.py` honours: a tool
whose schema would be partly ignored is a 400 naming the tool.
"""

from __future__ import annotations

import json
from typing import Any, Sequence

from llama_cpp.llama_grammar import SchemaConverter

from ollamalite.errors import BadRequest
from ollamalite.generation import grammar
from ollamalite.generation.request import TextRequest
from ollamalite.generation.templates import TemplateFeatures

Schema = dict[str, Any]
# Where one tool's `$defs` go in the schema of all the calls: prefixed per tool, so two tools'
# definitions of the same name stay apart (the converter names rules after definitions).
_DEFS = "#/$defs/"


def reply_grammar(req: TextRequest, found: TemplateFeatures) -> str | None:
    """The grammar a request's reply is held to: its forced call's or its `format`'s."""
    if not req.force_tool:
        return grammar.grammar_for(req.format)
    if req.format not in (None, ""):
        raise BadRequest("a format (response_format, text.format) together with a forced tool "
                         "call (tool_choice) is not supported: the reply can follow only one")
    return call_grammar(req.tools or (), req.force_tool, found)


def check_choice(tools: Sequence[dict[str, Any]] | None, force: bool | str) -> None:
    """A forced call needs tools, and a named one must be among them."""
    if not tools:
        raise BadRequest("tool_choice forces a tool call, but the request has no tools")
    names = [t["function"]["name"] for t in tools]
    if isinstance(force, str) and force not in names:
        raise BadRequest(f"tool_choice names the tool {json.dumps(force)}, which is not in "
                         f"tools: {', '.join(map(json.dumps, names))}")


def call_grammar(tools: Sequence[dict[str, Any]], force: bool | str,
                 found: TemplateFeatures) -> str:
    """GBNF for one call to any of `tools` (`force` True) or to the one named `force`."""
    check_choice(tools, force)
    if found.tool_xml:
        raise BadRequest("tool_choice: forcing a call is not supported for a template that "
                         "writes calls as <function=…> XML; send \"auto\"")
    chosen = [t["function"] for t in tools if force is True or t["function"]["name"] == force]
    branches, definitions = [], {}
    for index, function in enumerate(chosen):
        branch, defs = _call_schema(function, index)
        branches.append(branch)
        definitions.update(defs)
    schema: Schema = {"anyOf": branches, **({"$defs": definitions} if definitions else {})}
    converter = SchemaConverter(prop_order={"name": 0, "arguments": 1}, allow_fetch=False,
                                dotall=False, raw_pattern=False)
    with grammar.converting("tools"):
        call = converter.visit(converter.resolve_refs(schema, "tools"), "tool-call")
    # The converter names its rules after `tool-call` and the prefixed definitions: `root`
    # stays free for the call inside the template's tags.
    return grammar.checked_grammar(
        f"{grammar.json_strings(converter.format_grammar())}\nroot ::= {_tagged(call, found)}",
        "tools")


def _tagged(call: str, found: TemplateFeatures) -> str:
    """The call between the template's tags, on lines of its own as templates write it."""
    parts = [json.dumps(found.tool_open + "\n")] if found.tool_open else []
    parts.append(call)
    if found.tool_close:
        parts.append(json.dumps("\n" + found.tool_close))
    return " ".join(parts)


def _call_schema(function: dict[str, Any], index: int) -> tuple[Schema, Schema]:
    """One tool's call as a JSON schema, and its definitions renamed for the shared root."""
    name = function["name"]
    parameters = function.get("parameters")
    parameters = {"type": "object"} if parameters in (None, {}) else parameters
    if not isinstance(parameters, dict):
        raise BadRequest(f"tools: the parameters of {json.dumps(name)} must be a JSON schema "
                         "object")
    grammar.checked_schema(parameters, f"tools: parameters of {json.dumps(name)}")
    prefix = f"{_DEFS}tool{index}-"
    moved = _moved_refs(parameters, prefix, f"#/anyOf/{index}/properties/arguments/")
    definitions = {f"tool{index}-{key}": value for field in grammar.DEFINITIONS
                   for key, value in (moved.pop(field, None) or {}).items()}
    branch = {"type": "object", "additionalProperties": False, "required": ["name", "arguments"],
              "properties": {"name": {"const": name}, "arguments": grammar.normalise(moved)}}
    return branch, {key: grammar.normalise(value) for key, value in definitions.items()}


def _moved_refs(node: Any, defs_prefix: str, here: str) -> Any:
    """A copy whose local `$ref`s point where the parts now are: definitions under the shared
    root's `$defs` with this tool's prefix, anything else below this tool's `arguments`."""
    if isinstance(node, list):
        return [_moved_refs(item, defs_prefix, here) for item in node]
    if not isinstance(node, dict):
        return node
    out = {key: _moved_refs(value, defs_prefix, here) for key, value in node.items()}
    ref = node.get("$ref")
    if isinstance(ref, str) and ref.startswith("#/"):
        path = ref[2:]
        for field in grammar.DEFINITIONS:
            if path.startswith(field + "/"):
                out["$ref"] = defs_prefix + path[len(field) + 1:]
                break
        else:
            out["$ref"] = here + path
    return out
