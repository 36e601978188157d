"""The official `ollama` Python client against the live server, sync and async."""

from __future__ import annotations

import ollama
import pytest

from tests.conftest import MODEL

GREEDY = {"temperature": 0, "num_predict": 12}
HELLO = [{"role": "user", "content": "Say hello in one word."}]


@pytest.fixture(scope="module")
def client(base_url: str) -> ollama.Client:
    return ollama.Client(host=base_url)


@pytest.fixture
def aclient(base_url: str) -> ollama.AsyncClient:
    return ollama.AsyncClient(host=base_url)


def test_list(client: ollama.Client) -> None:
    models = {m.model: m for m in client.list().models}
    m = models[MODEL]
    assert m.size > 90_000_000 and len(m.digest) == 64 and m.modified_at is not None
    assert m.details.family == "llama" and m.details.quantization_level == "Q4_1"
    assert m.details.parameter_size == "135M" and m.details.format == "gguf"


def test_show(client: ollama.Client) -> None:
    shown = client.show(MODEL)
    assert shown.modelinfo["general.architecture"] == "llama"
    assert shown.modelinfo["llama.context_length"] == 8192
    assert shown.capabilities == ["completion"]
    assert shown.details.family == "llama" and "<|im_start|>" in shown.template


def test_generate_and_stream_agree(client: ollama.Client) -> None:
    whole = client.generate(model=MODEL, prompt="Name a colour.", options=GREEDY)
    assert whole.done and whole.done_reason == "length" and whole.eval_count == 12
    assert whole.total_duration > 0 and whole.context
    parts = list(client.generate(model=MODEL, prompt="Name a colour.", options=GREEDY,
                                 stream=True))
    assert [p.done for p in parts] == [False] * (len(parts) - 1) + [True]
    assert "".join(p.response for p in parts) == whole.response


def test_chat_and_stream_agree(client: ollama.Client) -> None:
    whole = client.chat(model=MODEL, messages=HELLO, options=GREEDY)
    assert whole.message.role == "assistant" and whole.message.content
    assert whole.prompt_eval_count > 0 and whole.eval_duration > 0
    parts = list(client.chat(model=MODEL, messages=HELLO, options=GREEDY, stream=True))
    assert parts[-1].done and parts[-1].done_reason == whole.done_reason
    assert "".join(p.message.content for p in parts) == whole.message.content


async def test_async_chat_and_generate(aclient: ollama.AsyncClient,
                                       client: ollama.Client) -> None:
    expected = client.chat(model=MODEL, messages=HELLO, options=GREEDY).message.content
    whole = await aclient.chat(model=MODEL, messages=HELLO, options=GREEDY)
    assert whole.message.content == expected
    stream = await aclient.chat(model=MODEL, messages=HELLO, options=GREEDY, stream=True)
    assert "".join([p.message.content async for p in stream]) == expected
    gen = await aclient.generate(model=MODEL, prompt="Hi", options={"num_predict": 3},
                                 stream=True)
    parts = [p async for p in gen]
    assert parts[-1].done and parts[-1].eval_count == 3


def test_ps_lists_the_loaded_model(client: ollama.Client) -> None:
    client.generate(model=MODEL, prompt="", keep_alive="10m")
    loaded = {m.model: m for m in client.ps().models}
    assert loaded[MODEL].size > 0 and loaded[MODEL].size_vram == 0
    assert loaded[MODEL].expires_at is not None and loaded[MODEL].details.family == "llama"


def test_errors_are_response_errors(client: ollama.Client) -> None:
    with pytest.raises(ollama.ResponseError) as missing:
        client.chat(model="ghost:7b", messages=HELLO)
    assert missing.value.status_code == 404
    assert missing.value.error == 'model "ghost:7b" not found, try pulling it first'
    with pytest.raises(ollama.ResponseError) as bad:
        client.generate(model=MODEL, prompt="x", options={"temperature": "warm"})
    assert bad.value.status_code == 400 and "options.temperature" in bad.value.error
    with pytest.raises(ollama.ResponseError) as streamed:
        list(client.generate(model=MODEL, prompt="x", stream=True, keep_alive="forever"))
    assert streamed.value.status_code == 400 and "keep_alive" in streamed.value.error


def test_pull_of_a_present_model(client: ollama.Client) -> None:
    assert client.pull(MODEL).status == "success"
