"""The reply parser (ollamalite.generation.reply) on replies as real models write them, whole
and split into every possible pair of chunks and into single characters."""

from __future__ import annotations

from typing import Iterable

import pytest

from ollamalite.generation.reply import Delta, ReplyParser, ThinkingSplitter, ToolCallParser

TOOLS: dict[str, dict] = {"get_weather": {}, "get_time": {}}
QWEN = ("<tool_call>", "</tool_call>")
MISTRAL = ("[TOOL_CALLS]", "")
BARE = ("", "")


def run(parser: ReplyParser, chunks: Iterable[str]) -> list[Delta]:
    out: list[Delta] = []
    for chunk in chunks:
        out.extend(parser.feed(chunk))
    return out + parser.finish()


def splits(text: str) -> list[list[str]]:
    """The text whole, cut once at every position, and one character at a time."""
    return [[text]] + [[text[:i], text[i:]] for i in range(1, len(text))] + [list(text)]


def total(deltas: list[Delta]) -> Delta:
    whole = Delta()
    for d in deltas:
        whole.add(d)
    return whole


def tools_parser(fmt: tuple[str, str]) -> ReplyParser:
    return ReplyParser(tools=ToolCallParser(*fmt, TOOLS))


def calls_of(deltas: list[Delta]) -> list[tuple[str, dict]]:
    return [(c["function"]["name"], c["function"]["arguments"]) for d in deltas
            for c in d.tool_calls]


# -- thinking -----------------------------------------------------------------------------------

QWEN3_REPLY = "<think>\nThe user greets me. I greet back.\n</think>\n\nHello! How can I help?"


@pytest.mark.parametrize("chunks", splits(QWEN3_REPLY))
def test_thinking_split_anywhere(chunks: list[str]) -> None:
    deltas = run(ReplyParser(thinking=ThinkingSplitter("<think>", "</think>")), chunks)
    whole = total(deltas)
    assert whole.thinking == "The user greets me. I greet back.\n"
    assert whole.content == "Hello! How can I help?"
    # thinking never arrives after content
    kinds = [k for d in deltas for k in (("t",) if d.thinking else ()) + (("c",) if d.content
                                                                             else ())]
    assert kinds == sorted(kinds, reverse=True)


def test_thinking_streams_as_it_comes() -> None:
    splitter = ThinkingSplitter("<think>", "</think>")
    assert splitter.feed("<think>") == ("", "")
    assert splitter.feed("Let me") == ("Let me", "")
    assert splitter.feed(" see</th") == (" see", "")  # a possible closing tag is held back
    assert splitter.feed("ink>") == ("", "")
    assert splitter.feed("\n\nFour.") == ("", "Four.")
    assert splitter.finish() == ("", "")


def test_prompt_opened_the_block() -> None:
    """DeepSeek-R1 style: the template ends the prompt with `<think>\\n`."""
    deltas = run(ReplyParser(thinking=ThinkingSplitter("<think>", "</think>", opened=True)),
                 ["2 plus 2 ", "is 4.</think>", "\n\n4"])
    assert total(deltas) == Delta(content="4", thinking="2 plus 2 is 4.")


@pytest.mark.parametrize("reply", ["Hello there", "  Hi <think>not at the start</think>",
                                   "<thinking is fun", "<thi"])
def test_no_thinking_block_is_all_content(reply: str) -> None:
    for chunks in splits(reply):
        whole = total(run(ReplyParser(thinking=ThinkingSplitter("<think>", "</think>")),
                          chunks))
        assert whole == Delta(content=reply)


def test_unclosed_thinking_stays_thinking() -> None:
    """A reply cut short (num_predict) inside the block: it was all reasoning."""
    whole = total(run(ReplyParser(thinking=ThinkingSplitter("<think>", "</think>")),
                      ["<think>I wonder", " about </thi"]))
    assert whole == Delta(thinking="I wonder about </thi")


# -- tool calls ---------------------------------------------------------------------------------

QWEN_CALL = ('<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", '
             '"unit": "celsius"}}\n</tool_call>')


@pytest.mark.parametrize("chunks", splits("I'll check.\n" + QWEN_CALL))
def test_qwen_call_split_anywhere(chunks: list[str]) -> None:
    deltas = run(tools_parser(QWEN), chunks)
    assert calls_of(deltas) == [("get_weather", {"city": "Paris", "unit": "celsius"})]
    assert total(deltas).content == "I'll check.\n"
    call_delta = next(d for d in deltas if d.tool_calls)
    assert call_delta.content == "" and call_delta.tool_calls[0]["function"]["index"] == 0


def test_call_is_held_until_complete_then_arrives_whole() -> None:
    parser = tools_parser(QWEN)
    seen = [parser.feed(c) for c in ["Sure.", " <tool_", 'call>\n{"name": "get_time", ',
                                     '"arguments": {"tz": "UTC"}}\n</tool', "_call>"]]
    assert seen[0] == [Delta(content="Sure.")]
    assert seen[1] == [Delta(content=" ")]
    assert seen[2] == [] and seen[3] == []
    [only] = seen[4]
    call = only.tool_calls[0]
    assert call["function"] == {"index": 0, "name": "get_time", "arguments": {"tz": "UTC"}}
    assert call["id"].startswith("call_") and len(call["id"]) == 13
    assert parser.finish() == []


def test_two_calls_get_indexes_and_ids() -> None:
    reply = QWEN_CALL + "\n" + QWEN_CALL.replace("Paris", "Rome")
    for chunks in splits(reply)[::7]:
        deltas = run(tools_parser(QWEN), chunks)
        calls = [c for d in deltas for c in d.tool_calls]
        assert [c["function"]["index"] for c in calls] == [0, 1]
        assert [c["function"]["arguments"]["city"] for c in calls] == ["Paris", "Rome"]
        assert calls[0]["id"] != calls[1]["id"]
        assert total(deltas).content == ""


@pytest.mark.parametrize("reply", [
    "<tool_calls are listed below",  # starts like the tag, is not it
    "<tool_call>not json</tool_call> sorry",
    '<tool_call>{"name": "launch_rocket", "arguments": {}}</tool_call>',  # not offered
    '<tool_call>{"name": "get_weather", "arguments": {"city": "Par',  # cut short
    '<tool_call>{"city": "Paris"}</tool_call>',  # no name
])
def test_not_a_call_is_content(reply: str) -> None:
    for chunks in splits(reply)[::3]:
        deltas = run(tools_parser(QWEN), chunks)
        assert total(deltas) == Delta(content=reply)


def test_text_after_a_failed_tag_is_still_scanned() -> None:
    reply = "<tool_call>oops</tool_call> " + QWEN_CALL
    deltas = run(tools_parser(QWEN), [reply])
    assert calls_of(deltas) == [("get_weather", {"city": "Paris", "unit": "celsius"})]
    assert total(deltas).content == "<tool_call>oops</tool_call> "


def test_arguments_as_json_string_and_braces_in_strings() -> None:
    reply = ('<tool_call>{"name": "get_weather", "arguments": "{\\"city\\": \\"a}b{\\\\\\"\\"}"}'
             '</tool_call>')
    assert calls_of(run(tools_parser(QWEN), list(reply))) == [("get_weather",
                                                               {"city": 'a}b{"'})]


def test_mistral_list() -> None:
    reply = ('[TOOL_CALLS][{"name": "get_weather", "arguments": {"city": "Paris"}}, '
             '{"name": "get_time", "arguments": {}}]')
    for chunks in splits(reply)[::5]:
        deltas = run(tools_parser(MISTRAL), chunks)
        assert calls_of(deltas) == [("get_weather", {"city": "Paris"}), ("get_time", {})]
        assert total(deltas).content == ""


@pytest.mark.parametrize("chunks", splits('\n{"name": "get_weather", "parameters": '
                                          '{"city": "Paris"}}'))
def test_llama_bare_json(chunks: list[str]) -> None:
    deltas = run(tools_parser(BARE), chunks)
    assert calls_of(deltas) == [("get_weather", {"city": "Paris"})]
    assert total(deltas).content == ""


@pytest.mark.parametrize("reply", ['The weather: {"name": "get_weather", "parameters": {}}',
                                   '{"answer": 42}', '{"name": "get_weather", "parameters": '])
def test_bare_json_only_a_whole_call_at_the_start(reply: str) -> None:
    for chunks in splits(reply)[::4]:
        assert total(run(tools_parser(BARE), chunks)) == Delta(content=reply)


def test_thinking_then_call() -> None:
    reply = "<think>I need the weather.</think>\n" + QWEN_CALL
    for chunks in splits(reply)[::6]:
        deltas = run(ReplyParser(ThinkingSplitter("<think>", "</think>"),
                                 ToolCallParser(*QWEN, TOOLS)), chunks)
        assert total(deltas).thinking == "I need the weather."
        assert total(deltas).content == ""
        assert calls_of(deltas) == [("get_weather", {"city": "Paris", "unit": "celsius"})]


@pytest.mark.parametrize("fmt", [QWEN, MISTRAL])
def test_untagged_json_call_at_the_start(fmt: tuple[str, str]) -> None:
    """Mistral's [TOOL_CALLS] is a control token the engine does not print: the reply then
    starts with the bare list, still a call."""
    reply = '[{"name": "get_weather", "arguments": {"city": "Paris"}}]\n'
    for chunks in splits(reply)[::5]:
        deltas = run(tools_parser(fmt), chunks)
        assert calls_of(deltas) == [("get_weather", {"city": "Paris"})]
        assert total(deltas).content == ""


def test_json_that_is_not_a_call_then_a_tagged_call() -> None:
    reply = '{"a": 1} then ' + QWEN_CALL + "\nDone."
    for chunks in splits(reply)[::9]:
        deltas = run(tools_parser(QWEN), chunks)
        assert calls_of(deltas) == [("get_weather", {"city": "Paris", "unit": "celsius"})]
        assert total(deltas).content == '{"a": 1} then Done.'
        call_at = next(i for i, d in enumerate(deltas) if d.tool_calls)
        assert "".join(d.content for d in deltas[call_at:]) == "Done."  # in order


def xml_parser() -> ReplyParser:
    return ReplyParser(tools=ToolCallParser("<tool_call>", "</tool_call>",
                                            {"get_weather": {"days": {"type": "integer"}}},
                                            xml=True))


XML_CALL = ("<tool_call>\n<function=get_weather>\n<parameter=city>\nSão Paulo\n</parameter>\n"
            "<parameter=days>\n2\n</parameter>\n</function>\n</tool_call>")


@pytest.mark.parametrize("chunks", splits("Let me look.\n" + XML_CALL)[::3])
def test_xml_call_split_anywhere(chunks: list[str]) -> None:
    deltas = run(xml_parser(), chunks)
    assert calls_of(deltas) == [("get_weather", {"city": "São Paulo", "days": 2})]
    assert total(deltas).content == "Let me look.\n"


@pytest.mark.parametrize("reply", ["<tool_call>\n<function=get_weather>\n<parameter=city>\nX",
                                   "<tool_call><function=nope></function></tool_call>",
                                   "<tool_call>plain</tool_call>"])
def test_xml_not_a_call_is_content(reply: str) -> None:
    assert total(run(xml_parser(), [reply])) == Delta(content=reply)
