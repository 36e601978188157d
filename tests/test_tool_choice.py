"""Forced tool calls (`tool_choice`) through a live server, with the official SDKs.

Left to itself the bundled model answers a weather question in prose, even with a tool
offered. Forced, a grammar holds it to one call spelled as its template writes calls, so every
reply parses into a call whose arguments satisfy the tool's schema: at temperature 0.8 with
several seeds and prompts, whole and streamed, on /v1/chat/completions, /v1/responses and
/v1/messages, for a `<tool_call>`-tagged template and a bare-JSON (Llama 3.x) one.
"""

from __future__ import annotations

import json
from typing import Any

import anthropic
import httpx
import jsonschema
import openai
import pytest

from tests import chat_templates
from tests.conftest import MODEL, LiveServer, module_server
from tests.test_tools_thinking import CONFIG, WEATHER

ADD = {"type": "function", "function": {
    "name": "add", "description": "Add two whole numbers",
    "parameters": {"type": "object", "properties": {"a": {"type": "integer"},
                                                    "b": {"type": "integer"}},
                   "required": ["a", "b"]}}}
FORECAST = {"type": "function", "function": {
    "name": "forecast", "description": "The weather forecast for the coming days",
    "parameters": {"type": "object", "required": ["city", "days", "unit"], "properties": {
        "city": {"type": "string", "maxLength": 40},
        "days": {"type": "integer", "enum": [1, 2, 3]},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}}}}}
TOOLS = [WEATHER, ADD, FORECAST]
SCHEMAS = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}
PROMPTS = ["What is the weather in Paris?", "Add 2 and 3.", "Will it rain in Oslo tomorrow?",
           "Tell me a joke.", "How warm is it in Lima in fahrenheit?"]
# Varied sampling: the grammar, not a lucky greedy path, makes the call.
SAMPLED = [{"temperature": 0.8, "seed": seed} for seed in (1, 2, 3, 4, 5)]
TOOL_CONFIG = CONFIG + chat_templates.entries(llamatooler=chat_templates.LLAMA_TOOLS,
                                             xmltooler=chat_templates.QWEN_XML_TOOLS)


def anthropic_tool(tool: dict[str, Any]) -> dict[str, Any]:
    function = tool["function"]
    return {"name": function["name"], "description": function["description"],
            "input_schema": function["parameters"]}


live = module_server("tool_choice", TOOL_CONFIG, {"OLLAMA_MAX_LOADED_MODELS": "2"})


@pytest.fixture(scope="module")
def oai(live: LiveServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{live.url}/v1", api_key="x", max_retries=0, timeout=300)


@pytest.fixture(scope="module")
def claude(live: LiveServer) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=live.url, api_key="x", max_retries=0, timeout=300)


def valid_call(name: str, arguments: Any, allowed: set[str]) -> None:
    assert name in allowed
    jsonschema.validate(arguments, SCHEMAS[name])


def test_unforced_the_model_answers_in_prose(oai: openai.OpenAI) -> None:
    """Why the feature exists: with the tool offered and left to the model, no call comes."""
    choice = oai.chat.completions.create(
        model="tooler", messages=[{"role": "user", "content": PROMPTS[0]}], tools=[WEATHER],
        temperature=0, seed=1, max_tokens=40).choices[0]
    assert choice.finish_reason != "tool_calls" and choice.message.content


@pytest.mark.parametrize("model", ["tooler", "llamatooler"])
def test_openai_required_always_parses(oai: openai.OpenAI, model: str) -> None:
    for prompt, sampling in zip(PROMPTS, SAMPLED):
        choice = oai.chat.completions.create(
            model=model, messages=[{"role": "user", "content": prompt}], tools=TOOLS,
            tool_choice="required", max_tokens=120, **sampling).choices[0]
        assert choice.finish_reason == "tool_calls", (prompt, choice.message.content)
        assert not choice.message.content
        [call] = choice.message.tool_calls
        assert call.type == "function" and call.id.startswith("call_")
        valid_call(call.function.name, json.loads(call.function.arguments),
                   set(SCHEMAS))


def test_openai_named_function(oai: openai.OpenAI) -> None:
    for prompt, sampling in zip(PROMPTS, SAMPLED):
        choice = oai.chat.completions.create(
            model="tooler", messages=[{"role": "user", "content": prompt}], tools=TOOLS,
            tool_choice={"type": "function", "function": {"name": "forecast"}},
            max_tokens=120, **sampling).choices[0]
        [call] = choice.message.tool_calls
        assert choice.finish_reason == "tool_calls"
        valid_call(call.function.name, json.loads(call.function.arguments), {"forecast"})


def test_openai_forced_stream(oai: openai.OpenAI) -> None:
    chunks = list(oai.chat.completions.create(
        model="tooler", messages=[{"role": "user", "content": PROMPTS[1]}], tools=TOOLS,
        tool_choice={"type": "function", "function": {"name": "add"}}, max_tokens=120,
        stream=True, **SAMPLED[0]))
    assert chunks[0].choices[0].delta.role == "assistant"
    calls = [tc for c in chunks for tc in (c.choices[0].delta.tool_calls or [])]
    assert [(c.index, c.type, c.function.name) for c in calls] == [(0, "function", "add")]
    valid_call("add", json.loads(calls[0].function.arguments), {"add"})
    assert not "".join(c.choices[0].delta.content or "" for c in chunks)
    assert [c.choices[0].finish_reason for c in chunks][-2:] == [None, "tool_calls"]


def test_responses_forced_call(oai: openai.OpenAI) -> None:
    flat = [{"type": "function", **t["function"]} for t in TOOLS]
    for choice, allowed in (("required", set(SCHEMAS)),
                            ({"type": "function", "name": "get_weather"}, {"get_weather"})):
        resp = oai.responses.create(model="tooler", input=PROMPTS[3], tools=flat,
                                    tool_choice=choice, max_output_tokens=120, temperature=0.8,
                                    extra_body={"seed": 2})
        [item] = resp.output
        assert item.type == "function_call" and item.status == "completed"
        valid_call(item.name, json.loads(item.arguments), allowed)


def test_anthropic_any_and_named_tool(claude: anthropic.Anthropic) -> None:
    tools = [anthropic_tool(t) for t in TOOLS]
    for prompt, sampling in zip(PROMPTS, SAMPLED):
        for choice, allowed in (({"type": "any"}, set(SCHEMAS)),
                                ({"type": "tool", "name": "add"}, {"add"})):
            msg = claude.messages.create(
                model="tooler", max_tokens=120, tools=tools, tool_choice=choice,
                messages=[{"role": "user", "content": prompt}], extra_body=sampling)
            assert msg.stop_reason == "tool_use"
            [block] = msg.content
            assert block.type == "tool_use" and block.id.startswith("toolu_")
            valid_call(block.name, block.input, allowed)


def test_anthropic_forced_stream_events(claude: anthropic.Anthropic) -> None:
    with claude.messages.stream(
            model="tooler", max_tokens=120, tools=[anthropic_tool(t) for t in TOOLS],
            tool_choice={"type": "tool", "name": "get_weather"}, extra_body=SAMPLED[2],
            messages=[{"role": "user", "content": PROMPTS[2]}]) as stream:
        events = list(stream)
        final = stream.get_final_message()
    kinds = [e.type for e in events if e.type not in ("text", "input_json")]
    assert kinds == ["message_start", "content_block_start", "content_block_delta",
                     "content_block_stop", "message_delta", "message_stop"]
    start = next(e for e in events if e.type == "content_block_start")
    assert start.index == 0 and start.content_block.type == "tool_use"
    assert start.content_block.name == "get_weather" and start.content_block.input == {}
    delta = next(e for e in events if e.type == "content_block_delta")
    assert delta.delta.type == "input_json_delta"
    valid_call("get_weather", json.loads(delta.delta.partial_json), {"get_weather"})
    assert next(e for e in events if e.type == "message_delta").delta.stop_reason == "tool_use"
    assert [b.type for b in final.content] == ["tool_use"]


@pytest.mark.parametrize(("body", "error"), [
    ({"tool_choice": {"type": "function", "function": {"name": "nope"}}},
     'tool_choice names the tool "nope", which is not in tools: "get_weather", "add", '
     '"forecast"'),
    ({"tool_choice": {"type": "function"}}, "invalid tool_choice"),
    ({"tool_choice": "required", "tools": None},
     "tool_choice forces a tool call, but the request has no tools"),
    ({"tool_choice": "required", "response_format": {"type": "json_object"}},
     "together with a forced tool call (tool_choice) is not supported"),
    ({"tool_choice": "required", "tools": [{"type": "function", "function": {
        "name": "f", "parameters": {"type": "object", "properties": {
            "n": {"type": "integer", "not": {"const": 3}}}}}}]},
     'tools: parameters of "f": JSON schema features not supported: not at #/properties/n'),
    ({"tool_choice": "required", "model": "xmltooler"},
     "forcing a call is not supported for a template that writes calls as <function=…> XML"),
    ({"tool_choice": "required", "model": MODEL}, f'"{MODEL}" does not support tools'),
])
def test_openai_refusals(live: LiveServer, body: dict[str, Any], error: str) -> None:
    request = {"model": "tooler", "messages": [{"role": "user", "content": "Hi"}],
               "tools": TOOLS, **body}
    resp = httpx.post(f"{live.url}/v1/chat/completions", json=request, timeout=60)
    assert resp.status_code == 400
    assert resp.json()["error"]["type"] == "invalid_request_error"
    assert error in resp.json()["error"]["message"]


def test_anthropic_refusals(claude: anthropic.Anthropic) -> None:
    tools = [anthropic_tool(t) for t in TOOLS]
    ask = {"model": "tooler", "max_tokens": 8, "messages": [{"role": "user", "content": "Hi"}]}
    with pytest.raises(anthropic.BadRequestError, match='tool_choice names the tool "nope"'):
        claude.messages.create(**ask, tools=tools, tool_choice={"type": "tool", "name": "nope"})
    with pytest.raises(anthropic.BadRequestError, match="tool_choice.name"):
        claude.messages.create(**ask, tools=tools, tool_choice={"type": "tool"})
    with pytest.raises(anthropic.BadRequestError, match="request has no tools"):
        claude.messages.create(**ask, tool_choice={"type": "any"})
