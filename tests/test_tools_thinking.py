"""Tools and thinking through a live server: capabilities, refusals, and the real model's
output parsed into `tool_calls` / `thinking`.

SmolLM2-135M has neither in its own template, so models.yaml gives the same GGUF a
Qwen2.5-style tools template (`tooler`) and a Qwen3/DeepSeek-R1-style thinking template
(`thinker`). The tiny model does not call tools on its own: the live tool tests show it two
earlier calls (rendered by the template from `tool_calls` in the history), and at
temperature 0 it writes the third call itself, which the server must then parse. What they
prove: template rendering with tools and tool history, and parsing of text the model really
produced, streamed and whole. They do not prove that a model chooses tools well.
"""

from __future__ import annotations

import json
import re
from typing import Any, Iterator

import httpx
import ollama
import openai
import pytest

from tests import chat_templates
from tests.conftest import MODEL, LiveServer, module_server

GREEDY = {"temperature": 0, "seed": 7, "num_predict": 40}
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Get the current weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                   "required": ["city"]}}}
CALL_ID = re.compile(r"^call_[a-z0-9]{8}$")


CONFIG = f"""\
models:
  {MODEL}:
    path: bundled
    num_ctx: 2048
""" + chat_templates.entries(tooler=chat_templates.QWEN_TOOLS, thinker=chat_templates.THINKING,
                             leveler=chat_templates.THINKING_LEVELS)


live = module_server("tools", CONFIG, {"OLLAMA_MAX_LOADED_MODELS": "3"})


@pytest.fixture(scope="module")
def http(live: LiveServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=live.url, timeout=300) as client:
        yield client


def stream(http: httpx.Client, path: str, body: dict[str, Any]) -> list[dict[str, Any]]:
    with http.stream("POST", path, json=body) as resp:
        assert resp.status_code == 200
        return [json.loads(line) for line in resp.iter_lines()]


def weather_history(city: str) -> list[dict[str, Any]]:
    """Two earlier turns where the assistant called the tool, then a third question."""
    messages: list[dict[str, Any]] = []
    for earlier in ("Paris", "Tokyo", "Rome"):
        messages += [{"role": "user", "content": f"What is the weather in {earlier}?"},
                     {"role": "assistant", "content": "", "tool_calls": [
                         {"function": {"name": "get_weather", "arguments": {"city": earlier}}}]}]
    return messages + [{"role": "user", "content": f"What is the weather in {city}?"}]


def test_capabilities_follow_the_template(http: httpx.Client) -> None:
    caps = {m: http.post("/api/show", json={"model": m}).json()["capabilities"]
            for m in (MODEL, "tooler", "thinker")}
    assert caps == {MODEL: ["completion"], "tooler": ["completion", "tools"],
                    "thinker": ["completion", "thinking"]}
    listed = {m["name"].removesuffix(":latest"): m["capabilities"]
              for m in http.get("/api/tags").json()["models"]}
    assert {name: listed[name] for name in caps} == caps  # /api/tags rows carry the same list
    assert http.post("/api/generate", json={"model": MODEL}).json()["done"]  # loads it
    ps_rows = http.get("/api/ps").json()["models"]
    assert ps_rows and all("capabilities" not in row for row in ps_rows)  # as Ollama's


@pytest.mark.parametrize(("path", "body", "error"), [
    ("/api/chat", {"model": MODEL, "tools": [WEATHER]}, '"smollm2:135m" does not support tools'),
    ("/api/chat", {"model": "thinker", "tools": [WEATHER]}, '"thinker" does not support tools'),
    ("/api/chat", {"model": "tooler", "think": True}, '"tooler" does not support thinking'),
    ("/api/generate", {"model": MODEL, "think": "high"},
     '"smollm2:135m" does not support thinking'),
    ("/api/chat", {"model": "thinker", "think": True, "format": "json"},
     "think together with format is not supported yet"),
    ("/api/chat", {"model": "leveler", "think": "low", "format": "json"},
     "think together with format is not supported yet"),
    ("/api/generate", {"model": "thinker", "think": "medium"},
     '"thinker" does not support thinking levels'),
    ("/api/chat", {"model": "tooler", "tools": [{"type": "function", "function": {}}]},
     "tools.0.function.name"),
    ("/api/chat", {"model": "tooler", "messages": [
        {"role": "assistant", "tool_calls": [{"function": {"name": "f", "arguments": "{}"}}]}]},
     "messages.0.tool_calls.0.function.arguments"),
])
def test_refusals(http: httpx.Client, path: str, body: dict, error: str) -> None:
    body = {"messages": [{"role": "user", "content": "Hi"}], "prompt": "Hi", **body}
    resp = http.post(path, json=body)
    assert resp.status_code == 400
    assert error in resp.json()["error"]


def test_think_false_is_accepted_by_any_model(http: httpx.Client) -> None:
    body = {"model": MODEL, "prompt": "Hi", "think": False, "stream": False,
            "options": {"num_predict": 2}}
    reply = http.post("/api/generate", json=body).json()
    assert reply["done"] and "thinking" not in reply


def test_streamed_tool_call_arrives_whole(http: httpx.Client) -> None:
    lines = stream(http, "/api/chat", {"model": "tooler", "messages": weather_history("London"),
                                       "tools": [WEATHER], "options": GREEDY})
    with_calls = [line for line in lines if line["message"].get("tool_calls")]
    assert len(with_calls) == 1
    message = with_calls[0]["message"]
    assert message["content"] == "" and not with_calls[0]["done"]
    [call] = message["tool_calls"]
    assert CALL_ID.match(call["id"])
    assert call["function"] == {"index": 0, "name": "get_weather",
                                "arguments": {"city": "London"}}
    text = "".join(line["message"]["content"] for line in lines)
    assert "<tool_call>" not in text and "get_weather" not in text
    assert lines[-1]["done"] and lines[-1]["done_reason"] == "stop"

    whole = http.post("/api/chat", json={"model": "tooler", "messages": weather_history(
        "London"), "tools": [WEATHER], "options": GREEDY, "stream": False}).json()
    assert [c["function"] for c in whole["message"]["tool_calls"]] == [call["function"]]
    assert whole["message"]["content"] == text


def test_without_tools_the_call_is_plain_text(http: httpx.Client) -> None:
    """No `tools` in the request: nothing is parsed (as Ollama), the model's text is content."""
    history = weather_history("London")
    reply = http.post("/api/chat", json={"model": "tooler", "messages": history,
                                         "options": GREEDY, "stream": False}).json()
    assert "tool_calls" not in reply["message"]
    assert '<tool_call>\n{"name": "get_weather"' in reply["message"]["content"]


def test_official_client_tool_round_trip(live: LiveServer) -> None:
    client = ollama.Client(host=live.url)

    def get_weather(city: str) -> str:
        """Get the current weather in a city.

        Args:
          city: The city's name

        Returns:
          str: The weather
        """
        return "18 degrees"

    reply = client.chat(model="tooler", messages=weather_history("Berlin"), tools=[get_weather],
                        options=GREEDY)
    [call] = reply.message.tool_calls
    assert isinstance(call, ollama.Message.ToolCall)
    assert call.function.name == "get_weather" and call.function.arguments == {"city": "Berlin"}
    # The call and the tool's answer go back into the conversation, typed as the client has it.
    answer = client.chat(model="tooler", tools=[get_weather], options={"num_predict": 8},
                         messages=[*weather_history("Berlin"), reply.message,
                                   {"role": "tool", "tool_name": "get_weather",
                                    "content": get_weather(**call.function.arguments)}])
    assert answer.done and answer.message.role == "assistant"


SHOTS = [("What is 2+2?", "2 plus 2 is 4.", "4"), ("What is 3+5?", "3 plus 5 is 8.", "8")]


def _raw_thinking_prompt() -> str:
    prompt = "".join(f"<|im_start|>user\n{q}<|im_end|>\n<|im_start|>assistant\n<think>\n{t}\n"
                     f"</think>\n\n{a}<|im_end|>\n" for q, t, a in SHOTS)
    return prompt + "<|im_start|>user\nWhat is 1+1?<|im_end|>\n<|im_start|>assistant\n"


def test_generate_splits_real_thinking(http: httpx.Client) -> None:
    """A raw prompt shows the model two answers that think first; its own reply then opens
    with <think>. With think off the text is untouched; on (the default for a model that can
    think) the same text arrives split, reasoning first."""
    body = {"model": "thinker", "prompt": _raw_thinking_prompt(), "raw": True,
            "options": GREEDY}
    raw = http.post("/api/generate", json={**body, "think": False, "stream": False}).json()
    assert "thinking" not in raw and raw["response"].startswith("<think>")
    lines = stream(http, "/api/generate", body)
    thinking = "".join(line.get("thinking", "") for line in lines)
    response = "".join(line["response"] for line in lines)
    kinds = [k for line in lines for k in ("t" * bool(line.get("thinking"))
                                           + "r" * bool(line["response"]))]
    assert kinds and kinds == sorted(kinds, key="tr".index)  # all thinking, then the answer
    assert len([k for k in kinds if k == "t"]) > 1  # streamed, not held back
    assert thinking.strip() and response.strip()
    assert "<think>" not in thinking + response and "</think>" not in thinking + response
    assert raw["response"] == f"<think>\n{thinking}</think>\n\n{response}"


def test_chat_thinking_on_off_and_levels(http: httpx.Client) -> None:
    """The template opens the block itself when thinking is on (DeepSeek-R1 style)."""
    messages = [m for q, t, a in SHOTS for m in (
        {"role": "user", "content": q}, {"role": "assistant", "content": a, "thinking": t})]
    messages.append({"role": "user", "content": "What is 1+1?"})
    body = {"model": "thinker", "messages": messages, "options": GREEDY, "stream": False}
    on = http.post("/api/chat", json=body).json()["message"]
    assert on["thinking"].strip() and "</think>" not in on["thinking"] + on["content"]
    assert on["content"].strip()
    off = http.post("/api/chat", json={**body, "think": False}).json()["message"]
    assert "thinking" not in off and off["content"]
    high = http.post("/api/chat", json={**body, "think": "high"})
    assert high.status_code == 400  # this template has no levels
    assert high.json() == {"error": '"thinker" does not support thinking levels: send think '
                                    "true or false"}
    # With a grammar (format) thinking is off unless asked for: the JSON is content.
    constrained = http.post("/api/chat", json={**body, "format": "json"}).json()["message"]
    assert "thinking" not in constrained and constrained["content"].lstrip().startswith("{")


def test_thinking_levels_reach_a_template_that_reads_them(http: httpx.Client) -> None:
    """`leveler` writes `Reasoning: <level>` into the prompt (gpt-oss style): each level makes
    another prompt (`context` holds the prompt's tokens), `true` and `false` still work."""
    body = {"model": "leveler", "prompt": "What is 1+1?", "stream": False,
            "options": {**GREEDY, "num_predict": 1}}
    contexts = {}
    for think in ("low", "medium", "high", True, False):
        reply = http.post("/api/generate", json={**body, "think": think})
        assert reply.status_code == 200 and reply.json()["done"]
        contexts[think] = tuple(reply.json()["context"][:-1])  # the prompt, without the answer
    assert len(set(contexts.values())) == 5
    assert len(contexts["low"]) == len(contexts["high"])  # one word differs
    chat = http.post("/api/chat", json={"model": "leveler", "think": "low", "stream": False,
                                        "messages": [{"role": "user", "content": "Hi"}],
                                        "options": {**GREEDY, "num_predict": 4}})
    assert chat.status_code == 200 and chat.json()["message"]["thinking"]


def test_official_client_thinking(live: LiveServer) -> None:
    client = ollama.Client(host=live.url)
    reply = client.generate(model="thinker", prompt=_raw_thinking_prompt(), raw=True,
                            think=True, options=GREEDY)
    assert reply.thinking and reply.response and "<think>" not in reply.response


# -- the same through /v1 with the openai SDK ----------------------------------------------------

@pytest.fixture(scope="module")
def oai(live: LiveServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{live.url}/v1", api_key="ollama", max_retries=0,
                         timeout=300)


def openai_history(city: str) -> list[dict[str, Any]]:
    """weather_history in OpenAI's spelling: calls with ids, arguments as JSON strings."""
    messages: list[dict[str, Any]] = []
    for n, earlier in enumerate(("Paris", "Tokyo", "Rome")):
        messages += [{"role": "user", "content": f"What is the weather in {earlier}?"},
                     {"role": "assistant", "content": None, "tool_calls": [{
                         "id": f"call_{n}", "type": "function", "function": {
                             "name": "get_weather", "arguments": json.dumps({"city": earlier})}}]}]
    return messages + [{"role": "user", "content": f"What is the weather in {city}?"}]


def test_openai_tool_calls(oai: openai.OpenAI) -> None:
    ask = {"model": "tooler", "messages": openai_history("Madrid"), "tools": [WEATHER],
           "max_tokens": 40, "temperature": 0, "seed": 7}
    choice = oai.chat.completions.create(**ask).choices[0]
    assert choice.finish_reason == "tool_calls" and not choice.message.content
    [call] = choice.message.tool_calls
    assert call.type == "function" and call.id.startswith("call_")
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "Madrid"}

    chunks = list(oai.chat.completions.create(**ask, stream=True))
    calls = [tc for c in chunks for tc in (c.choices[0].delta.tool_calls or [])]
    assert [(c.function.name, json.loads(c.function.arguments)) for c in calls] == [
        ("get_weather", {"city": "Madrid"})]
    assert chunks[-1].choices[0].finish_reason == "tool_calls"

    # The call and its result (named by tool_call_id only) continue the conversation.
    after = oai.chat.completions.create(**{**ask, "max_tokens": 8, "messages": [
        *ask["messages"], choice.message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": "sunny, 21 C"}]})
    assert after.choices[0].finish_reason in ("stop", "length", "tool_calls")


def test_openai_reasoning(oai: openai.OpenAI) -> None:
    messages = [m for q, t, a in SHOTS for m in (
        {"role": "user", "content": q}, {"role": "assistant", "content": a, "reasoning": t})]
    messages.append({"role": "user", "content": "What is 1+1?"})
    message = oai.chat.completions.create(model="thinker", messages=messages, max_tokens=40,
                                          temperature=0, seed=7).choices[0].message
    assert message.model_extra["reasoning"].strip() and message.content.strip()
    plain = oai.chat.completions.create(model="thinker", messages=messages, max_tokens=40,
                                        temperature=0, seed=7, reasoning_effort="none")
    assert not (plain.choices[0].message.model_extra or {}).get("reasoning")
    # An effort is a hint: a template without levels thinks as it does with `think: true`.
    high = oai.chat.completions.create(model="thinker", messages=messages, max_tokens=40,
                                       temperature=0, seed=7, reasoning_effort="high")
    assert high.choices[0].message.model_extra["reasoning"] == message.model_extra["reasoning"]
    with pytest.raises(openai.BadRequestError, match="does not support tools"):
        oai.chat.completions.create(model="thinker", messages=messages, tools=[WEATHER])


def test_templated_generate_passes_the_flag(http: httpx.Client) -> None:
    """Not raw: the template gets `enable_thinking`; on, it opens the block itself, so the
    reply is reasoning from its first token; off, it writes an empty block and no thinking
    comes back."""
    body = {"model": "thinker", "prompt": "What is 1+1?", "stream": False,
            "options": {**GREEDY, "num_predict": 6}}
    on = http.post("/api/generate", json=body).json()
    assert on["thinking"] and on["response"] == "" and on["done_reason"] == "length"
    off = http.post("/api/generate", json={**body, "think": False}).json()
    assert "thinking" not in off and off["response"]
