"""Template probing (tools, tool-call format, thinking tags), request checks and how tool
conversations render, on the test templates and the bundled model's own template."""

from __future__ import annotations

import json

import pytest

from ollamalite.errors import BadRequest
from ollamalite.generation import prompt, templates
from ollamalite.generation.templates import TemplateFeatures
from ollamalite.registry.gguf_header import read_header
from ollamalite.registry.models_file import bundled_model_path
from tests import chat_templates as ct

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                   "required": ["city"]}}}


@pytest.mark.parametrize(("template", "expected"), [
    (ct.QWEN_TOOLS, TemplateFeatures(True, "<tool_call>", "</tool_call>")),
    (ct.LLAMA_TOOLS, TemplateFeatures(True, "", "")),
    (ct.MISTRAL_TOOLS, TemplateFeatures(True, "[TOOL_CALLS]", "")),
    (ct.QWEN_XML_TOOLS, TemplateFeatures(True, "<tool_call>", "</tool_call>", tool_xml=True)),
    (ct.THINKING, TemplateFeatures(think_tags=("<think>", "</think>"))),
    (ct.THINKING.replace("think>", "reasoning>"),
     TemplateFeatures(think_tags=("<reasoning>", "</reasoning>"))),
    (ct.THINKING_LEVELS, TemplateFeatures(think_tags=("<think>", "</think>"), think_levels=True)),
    # Naming the variable is not reading it: levels are found by what they change.
    ("{# reasoning_effort #}" + ct.THINKING, TemplateFeatures(think_tags=("<think>", "</think>"))),
    (None, TemplateFeatures()),
    ("{{ .Prompt }}", TemplateFeatures()),  # a Go template: nothing to probe
])
def test_features(template: str | None, expected: TemplateFeatures) -> None:
    assert templates.features(template) == expected


def test_bundled_template_has_neither() -> None:
    found = templates.features(read_header(bundled_model_path()).chat_template)
    assert found == TemplateFeatures() and found.capabilities() == []


def test_capabilities_order() -> None:
    both = TemplateFeatures(True, "<tool_call>", "</tool_call>",
                            think_tags=("<think>", "</think>"))
    assert both.capabilities() == ["tools", "thinking"]


def test_check_request() -> None:
    plain, thinker = TemplateFeatures(), templates.features(ct.THINKING)
    with pytest.raises(BadRequest, match='^"m" does not support tools$'):
        templates.check_request("m", plain, [WEATHER], None)
    with pytest.raises(BadRequest, match='^"m" does not support thinking$'):
        templates.check_request("m", plain, None, True)
    with pytest.raises(BadRequest, match="thinking"):
        templates.check_request("m", plain, None, "high")
    assert templates.check_request("m", plain, None, False) is None
    assert templates.check_request("m", thinker, None, None) is True  # on by default
    assert templates.check_request("m", thinker, None, False) is False
    with pytest.raises(BadRequest, match='"m" does not support thinking levels'):
        templates.check_request("m", thinker, None, "low")
    # OpenAI's effort is a hint: without levels it means "think".
    assert templates.check_request("m", thinker, None, templates.Effort("low")) is True
    leveler = templates.features(ct.THINKING_LEVELS)
    assert templates.check_request("m", leveler, None, "low") == "low"
    assert templates.check_request("m", leveler, None, templates.Effort("high")) == "high"
    # A grammar (format) holds the reply from its first token: no thinking to split off.
    assert templates.check_request("m", thinker, None, None, constrained="format") is False
    assert templates.check_request("m", thinker, None, False, constrained="format") is False
    with pytest.raises(BadRequest, match="think together with format"):
        templates.check_request("m", thinker, None, True, constrained="format")
    assert templates.check_request("m", plain, None, None, constrained="format") is None
    with pytest.raises(BadRequest, match="think together with tool_choice"):
        templates.check_request("m", leveler, None, "high", constrained="tool_choice")


def test_variables() -> None:
    assert templates.variables(None, None) == {}
    assert templates.variables([WEATHER], False) == {"tools": [WEATHER],
                                                          "enable_thinking": False}
    assert templates.variables(None, "high") == {"enable_thinking": True,
                                                     "reasoning_effort": "high"}


def test_thinking_flag_reaches_the_template() -> None:
    msgs = [{"role": "user", "content": "Hi"}]
    on = prompt.render_chat(ct.THINKING, msgs, "", "", templates.variables(None, True))
    off = prompt.render_chat(ct.THINKING, msgs, "", "", templates.variables(None, False))
    assert on.endswith("<|im_start|>assistant\n<think>\n")
    assert off.endswith("<think>\n\n</think>\n\n")


def test_tool_conversation_renders() -> None:
    """Tools in the system turn, the earlier call with its arguments as a JSON object, and the
    tool's answer (an OpenAI-style result naming only its call id gets the tool's name)."""
    messages = prompt.template_messages([
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": "", "tool_calls": [
            {"id": "call_abc", "function": {"name": "get_weather",
                                            "arguments": {"city": "Paris"}}}]},
        {"role": "tool", "content": "18 degrees", "tool_call_id": "call_abc"},
    ])
    assert messages[2]["name"] == messages[2]["tool_name"] == "get_weather"
    assert messages[1]["tool_calls"][0]["type"] == "function"
    text = prompt.render_chat(ct.QWEN_TOOLS, messages, "", "",
                              templates.variables([WEATHER], None))
    assert json.dumps(WEATHER) in text
    assert ('<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n'
            '</tool_call><|im_end|>') in text
    assert "<tool_response>\n18 degrees\n</tool_response>" in text
    assert text.endswith("<|im_start|>assistant\n")


def test_template_messages_keep_only_what_is_set() -> None:
    [m] = prompt.template_messages([{"role": "assistant", "content": None, "thinking": "hmm",
                                     "tool_calls": None, "tool_name": None}])
    assert m == {"role": "assistant", "content": "", "thinking": "hmm",
                 "reasoning_content": "hmm"}


def test_reply_parser_knows_a_pre_opened_block() -> None:
    thinker = templates.features(ct.THINKING)
    parser = templates.reply_parser(thinker, None, True, "<|im_start|>assistant\n<think>\n")
    assert [d.thinking for d in parser.feed("Easy.</think>4")] == ["Easy."]
    assert templates.reply_parser(thinker, None, False, "").thinking is None


def test_reply_parser_reads_xml_calls_with_schema_types() -> None:
    tool = {"type": "function", "function": {"name": "book", "parameters": {
        "type": "object", "properties": {"city": {"type": "string"}, "nights": {
            "type": "integer"}, "code": {"type": "string"}, "tags": {"type": "array"}}}}}
    parser = templates.reply_parser(templates.features(ct.QWEN_XML_TOOLS), [tool],
                                        None, "")
    reply = ("Booking.\n<tool_call>\n<function=book>\n<parameter=city>\nNew York\n"
             "</parameter>\n<parameter=nights>\n3\n</parameter>\n<parameter=code>\n007\n"
             "</parameter>\n<parameter=tags>\n[\"a\", \"b\"]\n</parameter>\n</function>\n"
             "</tool_call>")
    deltas = [d for c in reply for d in parser.feed(c)] + parser.finish()
    assert "".join(d.content for d in deltas) == "Booking.\n"
    [call] = [c for d in deltas for c in d.tool_calls]
    assert call["function"]["name"] == "book"
    assert call["function"]["arguments"] == {"city": "New York", "nights": 3, "code": "007",
                                             "tags": ["a", "b"]}
