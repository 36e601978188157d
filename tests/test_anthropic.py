"""Anthropic's Messages API (/v1/messages, count_tokens) against a live server, through the
official `anthropic` SDK: whole and streamed messages, usage against count_tokens, stop
reasons, system prompts in every spelling, tools and thinking (on the `tooler` and `thinker`
templates and models.yaml of test_tools_thinking), errors in Anthropic's shape, and its headers. The server
needs an API key, so every SDK call also proves `x-api-key` is read. The stream writer's
error event and keep-alive are checked on scripted events, without a model."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any, AsyncIterator, Iterator

import anthropic
import httpx
import openai
import pytest
from aiohttp import web

from ollamalite.generation.reply import Delta
from ollamalite.generation.run import Generation
from ollamalite.runtime.engine.jobs import Failed, Finished, TextChunk
from ollamalite.runtime.engine.text import TextAssembler
from ollamalite.server import anthropic as adapter
from ollamalite.server.stream import heartbeat
from ollamalite.wire import anthropic as wire
from ollamalite.wire import load
from tests import chat_templates
from tests.conftest import MODEL, LiveServer, serving
from tests.scripted import post_once, scripted
from tests.test_tools_thinking import CONFIG, SHOTS, WEATHER

# ChatML that allows a system message only first, as Qwen3.5's and others' templates do.
STRICT = """\
{%- for message in messages %}
{%- if message.role == 'system' and not loop.first %}
{{- raise_exception('System message must be at the beginning.') }}
{%- endif %}
{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' }}
{%- endfor %}
{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}
"""
STRICT_CONFIG = CONFIG + chat_templates.entries(strict=STRICT)
KEY = "sk-ant-test-key"
HELLO = [{"role": "user", "content": "Name three colors."}]
# The SDK no longer offers sampling parameters; the API (and this server) still takes them.
GREEDY: dict[str, Any] = {"extra_body": {"temperature": 0, "top_k": 1}}
TOOL = {"name": "get_weather", "description": "Get the current weather in a city",
        "input_schema": WEATHER["function"]["parameters"]}


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    folder: Path = tmp_path_factory.mktemp("anthropic")
    with serving(folder, STRICT_CONFIG, {"OLLAMA_MAX_LOADED_MODELS": "4",
                                  "OLLAMALITE_API_KEY": KEY}) as server:
        yield server


@pytest.fixture(scope="module")
def client(live: LiveServer) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=live.url, api_key=KEY, max_retries=0, timeout=300)


@pytest.fixture(scope="module")
def http(live: LiveServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=live.url, timeout=300, headers={"x-api-key": KEY}) as c:
        yield c


def ask(client: anthropic.Anthropic, **kw: Any) -> Any:
    """A greedy message (at temperature 0 the same request gives the same reply)."""
    return client.messages.create(**{"model": MODEL, "max_tokens": 20, "messages": HELLO,
                                     **GREEDY, **kw})


# -- messages.create ----------------------------------------------------------------------------

def test_message_object(client: anthropic.Anthropic) -> None:
    msg = ask(client)
    assert isinstance(msg, anthropic.types.Message)
    assert msg.id.startswith("msg_") and msg.type == "message" and msg.role == "assistant"
    assert msg.model == MODEL
    [block] = msg.content
    assert block.type == "text" and block.text.strip()
    assert msg.stop_reason in ("end_turn", "max_tokens") and msg.stop_sequence is None
    assert 0 < msg.usage.output_tokens <= 20
    counted = client.messages.count_tokens(model=MODEL, messages=HELLO)
    assert msg.usage.input_tokens == counted.input_tokens > 5


def test_max_tokens_and_stop_sequences(client: anthropic.Anthropic) -> None:
    short = ask(client, max_tokens=4)
    assert short.stop_reason == "max_tokens" and short.usage.output_tokens == 4
    warm = ask(client, max_tokens=0)  # Anthropic's cache warm-up: the prompt, no reply
    assert (warm.content, warm.stop_reason, warm.usage.output_tokens) == ([], "max_tokens", 0)
    assert warm.usage.input_tokens == short.usage.input_tokens
    text = ask(client).content[0].text
    word = text.split()[1]
    cut = ask(client, stop_sequences=["zzzz", word])
    assert (cut.stop_reason, cut.stop_sequence) == ("stop_sequence", word)
    assert cut.content[0].text == text[:text.index(word)]


def test_system_in_every_spelling_is_the_same_prompt(client: anthropic.Anthropic) -> None:
    """A string, text blocks, and a `system` turn first in `messages` (Claude Code's)."""
    rule = "You only answer in French."
    spellings = [
        {"system": rule},
        {"system": [{"type": "text", "text": rule, "cache_control": {"type": "ephemeral"}}]},
        {"messages": [{"role": "system", "content": rule}, *HELLO]},
    ]
    answers = [ask(client, max_tokens=8, **s) for s in spellings]
    assert len({(a.content[0].text, a.usage.input_tokens) for a in answers}) == 1


def test_system_turn_after_user_turns_stays_in_place(client: anthropic.Anthropic) -> None:
    messages = [{"role": "user", "content": "Hello!"},
                {"role": "assistant", "content": [{"type": "text", "text": "Hi there."}]},
                {"role": "system", "content": "Reminder: answer briefly."}, *HELLO]
    msg = ask(client, messages=messages, max_tokens=8)
    assert msg.content[0].text
    counted = client.messages.count_tokens(model=MODEL, messages=messages)
    assert msg.usage.input_tokens == counted.input_tokens
    without = client.messages.count_tokens(model=MODEL, messages=messages[:2] + HELLO)
    assert counted.input_tokens > without.input_tokens


def test_system_turn_folds_into_the_first_for_a_strict_template(
        client: anthropic.Anthropic) -> None:
    """A template that refuses a later system turn gets it folded into the leading system
    prompt (after it, a blank line between) rather than a 400."""
    late = [{"role": "user", "content": "Hello!"},
            {"role": "system", "content": "Answer briefly."}, *HELLO]
    folded = [{"role": "user", "content": "Hello!"}, *HELLO]
    msg = ask(client, model="strict", system="Be kind.", messages=late, max_tokens=8)
    same = ask(client, model="strict", system="Be kind.\n\nAnswer briefly.", messages=folded,
               max_tokens=8)
    assert msg.usage.input_tokens == same.usage.input_tokens
    assert msg.content[0].text == same.content[0].text


# -- streaming ----------------------------------------------------------------------------------

def test_stream_event_order_and_text(client: anthropic.Anthropic) -> None:
    whole = ask(client)
    events = list(ask(client, stream=True))  # the SDK drops the pings (see the raw test)
    kinds = [e.type for e in events]
    assert kinds[:2] == ["message_start", "content_block_start"]
    assert kinds[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    assert set(kinds[2:-3]) == {"content_block_delta"}
    start = events[0].message
    assert start.id.startswith("msg_") and start.content == [] and start.stop_reason is None
    assert start.usage.input_tokens == whole.usage.input_tokens
    assert events[1].index == 0 and events[1].content_block.type == "text"
    assert events[1].content_block.text == ""
    assert {e.index for e in events if e.type.startswith("content_block")} == {0}
    text = "".join(e.delta.text for e in events if e.type == "content_block_delta")
    assert text == whole.content[0].text
    delta = events[-2]
    assert delta.delta.stop_reason == whole.stop_reason and delta.delta.stop_sequence is None
    assert delta.usage.output_tokens == whole.usage.output_tokens


def test_messages_stream_helper(client: anthropic.Anthropic) -> None:
    whole = ask(client)
    with client.messages.stream(model=MODEL, max_tokens=20, messages=HELLO, **GREEDY) as s:
        text = "".join(s.text_stream)
        final = s.get_final_message()
    assert text == whole.content[0].text == final.content[0].text
    assert final.stop_reason == whole.stop_reason
    assert final.usage.output_tokens == whole.usage.output_tokens


def test_raw_sse_framing(http: httpx.Client) -> None:
    """Every event is `event: <type>` then its `data:`, the names equal to the JSON types; a
    ping follows message_start, as Anthropic sends it."""
    body = {"model": MODEL, "max_tokens": 3, "messages": HELLO, "stream": True}
    with http.stream("POST", "/v1/messages", json=body) as resp:
        assert resp.headers["content-type"].startswith("text/event-stream")
        raw = resp.read().decode()
    assert raw.endswith("\n\n") and "[DONE]" not in raw
    names = []
    for event in raw[:-2].split("\n\n"):
        name, data = event.split("\n")
        assert name.startswith("event: ") and data.startswith("data: ")
        names.append(name[len("event: "):])
        assert json.loads(data[len("data: "):])["type"] == names[-1]
    assert names[:3] == ["message_start", "ping", "content_block_start"]
    assert names[-2:] == ["message_delta", "message_stop"] and names.count("ping") == 1


def test_client_disconnect_stops_generation(client: anthropic.Anthropic,
                                            live: LiveServer) -> None:
    endless = [{"role": "user", "content": "Write an endless story."}]
    with client.messages.stream(model=MODEL, max_tokens=2000, messages=endless) as s:
        next(iter(s.text_stream))
    deadline = time.monotonic() + 30
    while "client went away" not in live.log() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "client went away, generation cancelled" in live.log()
    started = time.perf_counter()
    assert ask(client, max_tokens=4).usage.output_tokens == 4
    assert time.perf_counter() - started < 30


# -- tools --------------------------------------------------------------------------------------

CITIES = ("Paris", "Tokyo", "Rome")


def tool_history(city: str, results: bool) -> list[dict[str, Any]]:
    """Earlier questions the assistant answered with a tool_use block, then a new question;
    with `results`, each next user turn opens with the tool_result (as Anthropic requires).
    Without them, the small model at temperature 0 calls the tool itself."""
    messages: list[dict[str, Any]] = []
    for n, earlier in enumerate((*CITIES, city)):
        answer = [{"type": "tool_result", "tool_use_id": f"toolu_{n - 1}",
                   "content": [{"type": "text", "text": "18 C"}]}] if results and n else []
        messages.append({"role": "user", "content": [
            *answer, {"type": "text", "text": f"What is the weather in {earlier}?"}]})
        if earlier != city:
            messages.append({"role": "assistant", "content": [{
                "type": "tool_use", "id": f"toolu_{n}", "name": "get_weather",
                "input": {"city": earlier}}]})
    return messages


def openai_tool_history(city: str) -> list[dict[str, Any]]:
    """tool_history(city, results=True) in OpenAI's spelling."""
    messages: list[dict[str, Any]] = []
    for n, earlier in enumerate((*CITIES, city)):
        if n:
            messages.append({"role": "tool", "tool_call_id": f"toolu_{n - 1}", "content": "18 C"})
        messages.append({"role": "user", "content": f"What is the weather in {earlier}?"})
        if earlier != city:
            messages.append({"role": "assistant", "content": None, "tool_calls": [{
                "id": f"toolu_{n}", "type": "function", "function": {
                    "name": "get_weather", "arguments": json.dumps({"city": earlier})}}]})
    return messages


def test_tool_history_renders_as_the_openai_one(client: anthropic.Anthropic,
                                                live: LiveServer) -> None:
    """tool_use and tool_result blocks become the same tool calls and tool messages /v1 sends
    (the same prompt, token for token)."""
    counted = client.messages.count_tokens(model="tooler", tools=[TOOL],
                                           messages=tool_history("London", results=True))
    oai = openai.OpenAI(base_url=f"{live.url}/v1", api_key=KEY, max_retries=0, timeout=300)
    usage = oai.chat.completions.create(model="tooler", messages=openai_tool_history("London"),
                                        tools=[WEATHER], max_tokens=1).usage
    assert counted.input_tokens == usage.prompt_tokens
    msg = ask(client, model="tooler", tools=[TOOL], messages=tool_history("London", True))
    assert msg.usage.input_tokens == counted.input_tokens


def test_tool_use_reply(client: anthropic.Anthropic) -> None:
    """The model's call arrives as a tool_use block (the small model may answer in prose
    instead: the shape holds either way), streamed as the same blocks; the call and its
    result then go back into the conversation as the SDK types them."""
    kw = {"model": "tooler", "tools": [TOOL], "messages": tool_history("London", False),
          "max_tokens": 40, **GREEDY}
    msg = ask(client, **kw)
    calls = [b for b in msg.content if b.type == "tool_use"]
    if msg.stop_reason == "tool_use":
        [call] = calls
        assert msg.content[-1] is call and call.id.startswith("toolu_")
        assert call.name == "get_weather" and call.input == {"city": "London"}
    else:
        assert not calls and msg.content[0].type == "text"
    with client.messages.stream(**kw) as s:
        events = list(s)
        final = s.get_final_message()
    assert final.stop_reason == msg.stop_reason
    assert [b.type for b in final.content] == [b.type for b in msg.content]
    assert [b.input for b in final.content if b.type == "tool_use"] == [c.input for c in calls]
    starts = [e.index for e in events if e.type == "content_block_start"]
    assert starts == list(range(len(final.content)))
    results = [{"type": "tool_result", "tool_use_id": c.id, "content": "21 C"} for c in calls]
    after = ask(client, **{**kw, "max_tokens": 8, "messages": [
        *kw["messages"], {"role": "assistant", "content": final.content},
        {"role": "user", "content": [*results, {"type": "text", "text": "Thanks!"}]}]})
    assert after.role == "assistant" and after.usage.input_tokens > msg.usage.input_tokens


def test_tool_choice(client: anthropic.Anthropic) -> None:
    """`none` withholds the tools (a model without tool support then answers); forcing a call
    (tests/test_tool_choice.py) still needs a model with tool support."""
    msg = ask(client, tools=[TOOL], tool_choice={"type": "none"}, max_tokens=2)
    assert msg.content
    with pytest.raises(anthropic.BadRequestError, match="does not support tools"):
        ask(client, tools=[TOOL], tool_choice={"type": "any"})
    with pytest.raises(anthropic.BadRequestError, match="does not support tools"):
        ask(client, tools=[TOOL])


# -- thinking -----------------------------------------------------------------------------------

def thinking_history() -> list[dict[str, Any]]:
    """Earlier answers that thought first (thinking blocks in assistant turns)."""
    messages: list[dict[str, Any]] = []
    for q, t, a in SHOTS:
        messages += [{"role": "user", "content": q},
                     {"role": "assistant", "content": [
                         {"type": "thinking", "thinking": t, "signature": ""},
                         {"type": "text", "text": a}]}]
    return messages + [{"role": "user", "content": "What is 1+1?"}]


def test_thinking_blocks(client: anthropic.Anthropic) -> None:
    kw = {"model": "thinker", "messages": thinking_history(), "max_tokens": 40}
    on = ask(client, thinking={"type": "enabled", "budget_tokens": 1024}, **kw)
    assert [b.type for b in on.content] == ["thinking", "text"]
    assert on.content[0].thinking.strip() and on.content[0].signature == ""
    assert "</think>" not in on.content[0].thinking + on.content[1].text
    off = ask(client, thinking={"type": "disabled"}, **kw)
    assert [b.type for b in off.content] == ["text"]
    events = list(ask(client, thinking={"type": "enabled", "budget_tokens": 1024},
                      stream=True, **kw))
    blocks = [(e.index, e.content_block.type) for e in events
              if e.type == "content_block_start"]
    assert blocks == [(0, "thinking"), (1, "text")]
    deltas = [(e.index, e.delta.type) for e in events if e.type == "content_block_delta"]
    assert deltas == sorted(deltas) and {d for _, d in deltas} == {"thinking_delta",
                                                                   "text_delta"}
    assert "".join(e.delta.thinking for e in events if e.type == "content_block_delta"
                   and e.delta.type == "thinking_delta") == on.content[0].thinking
    with pytest.raises(anthropic.BadRequestError, match="does not support thinking"):
        ask(client, thinking={"type": "enabled", "budget_tokens": 1024})


# -- errors and headers -------------------------------------------------------------------------

def test_missing_max_tokens(client: anthropic.Anthropic) -> None:
    with pytest.raises(anthropic.BadRequestError) as caught:
        client.post("/v1/messages", cast_to=httpx.Response,
                    body={"model": MODEL, "messages": HELLO})
    assert caught.value.status_code == 400
    assert caught.value.body["type"] == "error"
    assert caught.value.body["error"]["type"] == "invalid_request_error"
    assert "max_tokens" in caught.value.body["error"]["message"]


@pytest.mark.parametrize(("body", "error"), [
    ({"messages": []}, "messages: at least one message is required"),
    ({"max_tokens": -1}, "max_tokens"),
    ({"temperature": 1.5}, "temperature"),
    ({"messages": [{"role": "tool", "content": "x"}]}, "messages.0.role"),
    ({"messages": [{"role": "user", "content": [{"type": "document", "source": {}}]}]},
     "messages.0.content.0: content block type 'document' is not supported"),
    ({"messages": [{"role": "user", "content": [{"type": "tool_use", "id": "t", "name": "f"}]}]},
     "tool_use blocks belong in assistant turns"),
    ({"tools": [{"type": "web_search_20250305", "name": "web_search"}]},
     "server tool type 'web_search_20250305' is not supported"),
])
def test_invalid_requests(client: anthropic.Anthropic, body: dict[str, Any],
                          error: str) -> None:
    with pytest.raises(anthropic.BadRequestError, match=error) as caught:
        client.post("/v1/messages", cast_to=httpx.Response,
                    body={"model": MODEL, "max_tokens": 5, "messages": HELLO, **body})
    assert caught.value.body["error"]["type"] == "invalid_request_error"


def test_unknown_model(client: anthropic.Anthropic) -> None:
    with pytest.raises(anthropic.NotFoundError) as caught:
        ask(client, model="claude-unknown-1")
    assert caught.value.body["error"] == {
        "type": "not_found_error",
        "message": 'model "claude-unknown-1" not found, try pulling it first'}
    with pytest.raises(anthropic.NotFoundError):
        client.messages.count_tokens(model="claude-unknown-1", messages=HELLO)


def test_images_are_refused(client: anthropic.Anthropic) -> None:
    png = ("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAA"
           "BJRU5ErkJggg==")
    image = {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                         "data": png}}
    content = [image, {"type": "text", "text": "What is this?"}]
    with pytest.raises(anthropic.BadRequestError, match='"smollm2:135m" does not support '
                                                        "images"):
        ask(client, messages=[{"role": "user", "content": content}])
    url = {"type": "image", "source": {"type": "url", "url": "https://example.com/a.png"}}
    with pytest.raises(anthropic.BadRequestError, match="send the image as base64"):
        ask(client, messages=[{"role": "user", "content": [url]}])


def test_headers_query_and_api_key(live: LiveServer) -> None:
    """`anthropic-version`, `anthropic-beta` and `?beta=true` (Claude Code's) are accepted;
    the key is read from `x-api-key` or `Authorization: Bearer`; without it, a 401 in
    Anthropic's shape (the SDK's AuthenticationError)."""
    body = {"model": MODEL, "messages": HELLO}
    headers = {"anthropic-version": "2023-06-01",
               "anthropic-beta": "claude-code-20250219,mid-conversation-system-2026-04-07"}
    for auth in ({"x-api-key": KEY}, {"Authorization": f"Bearer {KEY}"}):
        resp = httpx.post(f"{live.url}/v1/messages/count_tokens?beta=true", json=body,
                          headers={**headers, **auth}, timeout=300)
        assert resp.status_code == 200 and set(resp.json()) == {"input_tokens"}
    stranger = anthropic.Anthropic(base_url=live.url, api_key="wrong", max_retries=0)
    with pytest.raises(anthropic.AuthenticationError) as caught:
        stranger.messages.count_tokens(model=MODEL, messages=HELLO)
    assert caught.value.body["error"]["type"] == "authentication_error"


def test_router_errors_take_anthropic_shape(http: httpx.Client) -> None:
    resp = http.get("/v1/messages")
    assert resp.status_code == 405
    assert resp.json() == {"type": "error", "error": {"type": "invalid_request_error",
                                                      "message": "405 method not allowed"}}


# -- the stream writer on scripted events -------------------------------------------------------

async def test_mid_stream_failure_is_an_error_event() -> None:
    events = [TextChunk("Hel", 1), Failed("boom")]

    async def write(request: web.Request) -> web.StreamResponse:
        gen = Generation("m", scripted(events), 0.0, 0.0, prompt_tokens=7)
        return await adapter._stream(request, gen, adapter.MessageFormatter("m"))

    status, ctype, body = await post_once(write, path="/v1/messages")
    assert status == 200 and ctype == "text/event-stream"
    frames = [frame.split("\n") for frame in body.strip().split("\n\n")]
    names = [name.removeprefix("event: ") for name, _ in frames]
    assert names == ["message_start", "ping", "content_block_start", "content_block_delta",
                     "error"]
    assert json.loads(frames[0][1][len("data: "):])["message"]["usage"] == {
        "input_tokens": 7, "output_tokens": 0}
    assert json.loads(frames[-1][1][len("data: "):]) == {
        "type": "error", "error": {"type": "api_error", "message": "boom"}}


async def test_heartbeat_marks_silences() -> None:
    async def slow() -> AsyncIterator[str]:
        yield "a"
        await asyncio.sleep(0.35)
        yield "b"

    got = [item async for item in heartbeat(slow(), 0.1)]
    assert got[0] == "a" and got[-1] == "b" and set(got[1:-1]) == {None}
    assert 2 <= len(got[1:-1]) <= 4


def test_block_events_one_open_block_at_a_time() -> None:
    blocks = adapter.BlockEvents()
    call = {"id": "call_x", "function": {"index": 0, "name": "f", "arguments": {"a": 1}}}
    events = [*blocks.of(Delta(thinking="hm")), *blocks.of(Delta(content="Hi")),
              *blocks.of(Delta(content="!")), *blocks.of(Delta(tool_calls=[call])),
              *blocks.close()]
    shape = [(e["type"], e.get("index"), (e.get("delta") or e.get("content_block") or {})
              .get("type")) for e in events]
    assert shape == [
        ("content_block_start", 0, "thinking"), ("content_block_delta", 0, "thinking_delta"),
        ("content_block_stop", 0, None),
        ("content_block_start", 1, "text"), ("content_block_delta", 1, "text_delta"),
        ("content_block_delta", 1, "text_delta"), ("content_block_stop", 1, None),
        ("content_block_start", 2, "tool_use"), ("content_block_delta", 2, "input_json_delta"),
        ("content_block_stop", 2, None)]
    assert events[7]["content_block"]["input"] == {}
    assert json.loads(events[8]["delta"]["partial_json"]) == {"a": 1}
    assert blocks.called_tools


def test_history_mapping() -> None:
    """tool_result blocks come first as tool messages, then the turn's text; thinking and
    tool_use blocks become the assistant's reasoning and tool calls."""
    req = load(wire.MESSAGES, {"model": "m", "max_tokens": 1, "system": [
        {"type": "text", "text": "A"}, {"type": "text", "text": "B"}], "messages": [
        {"role": "user", "content": "Q"},
        {"role": "assistant", "content": [
            {"type": "thinking", "thinking": "t", "signature": "s"},
            {"type": "text", "text": "Let me check."},
            {"type": "tool_use", "id": "toolu_1", "name": "f", "input": {"a": 1}}]},
        {"role": "user", "content": [
            {"type": "text", "text": "and?"},
            {"type": "tool_result", "tool_use_id": "toolu_1", "content": "42"}]}]})
    assert adapter.chat_messages(req) == [
        {"role": "system", "content": "A\nB"},
        {"role": "user", "content": "Q"},
        {"role": "assistant", "content": "Let me check.", "thinking": "t",
         "tool_calls": [{"id": "toolu_1", "function": {"name": "f", "arguments": {"a": 1}}}]},
        {"role": "tool", "tool_call_id": "toolu_1", "content": "42"},
        {"role": "user", "content": "and?"}]


def test_stop_reason_and_the_matched_stop_string() -> None:
    asm = TextAssembler(("STOP", "END"))
    assert asm.push(b"one END two STOP") == "one " and asm.matched == "END"

    def fin(reason: str, stop: str | None = None) -> Finished:
        return Finished(reason, 5, 5, 1, 2, 1, (), stop_sequence=stop)

    assert adapter.stop_reason(fin("stop"), False) == "end_turn"
    assert adapter.stop_reason(fin("stop", "END"), False) == "stop_sequence"
    assert adapter.stop_reason(fin("stop"), True) == "tool_use"
    assert adapter.stop_reason(fin("length"), True) == "max_tokens"
