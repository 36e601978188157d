"""Streaming HTTP clients for the servers under test, timed as each token's bytes arrive.

One asyncio event loop drives every concurrent client, and `StreamReader.readline()` returns a
line as soon as its bytes are in, so each arrival is timed when the token reaches the client,
not when a buffer fills. ollamalite's NDJSON and llama-server's server-sent events (`data: {...}`
lines) are both one JSON object per line; an `Api` turns an object into an `Event`, so every
server is read and timed by the same loop.

Connections are not kept alive (`force_close`): llama-server serves each open connection with
one of a few HTTP threads, and idle keep-alive connections from an earlier trial would hold
them. A fresh loopback connection per request costs well under a millisecond, the same for all.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass
from typing import Any, Callable

import aiohttp
from common import MODEL, Run

Message = dict[str, str]
Payload = str | list[Message]  # a raw prompt, or chat messages


@dataclass(frozen=True)
class Event:
    """What one streamed object says: text, and on the last one, the count and the reason."""

    text: str
    final: bool = False
    tokens: int | None = None
    finish: str = ""


@dataclass(frozen=True)
class Api:
    """One streaming route: where to post, what to send, how to read each object."""

    path: str
    body: Callable[[Payload, int], dict[str, Any]]
    event: Callable[[dict[str, Any]], Event]


def _ollama_event(obj: dict[str, Any]) -> Event:
    text = obj["response"] if "response" in obj else obj["message"]["content"]
    return Event(text, obj["done"], obj.get("eval_count"), obj.get("done_reason", ""))


def _llama_server_event(obj: dict[str, Any]) -> Event:
    """`/completion`: `stop_type` is `limit` at the token budget, `eos` or `word` otherwise."""
    if not obj["stop"]:
        return Event(obj["content"])
    finish = "length" if obj["stop_type"] == "limit" else "stop"
    return Event(obj["content"], True, obj["tokens_predicted"], finish)


def _openai_chat_event(obj: dict[str, Any]) -> Event:
    if not obj.get("choices"):  # a usage-only chunk
        return Event("")
    choice = obj["choices"][0]
    reason = choice.get("finish_reason")
    return Event(choice["delta"].get("content") or "", reason is not None, None, reason or "")


def _options(n: int) -> dict[str, Any]:
    return {"num_predict": n, "temperature": 0}


OLLAMA_GENERATE = Api(
    "/api/generate",
    lambda prompt, n: {"model": MODEL, "prompt": prompt, "raw": True, "stream": True,
                       "options": _options(n)},
    _ollama_event)
OLLAMA_CHAT = Api(
    "/api/chat",
    lambda messages, n: {"model": MODEL, "messages": messages, "stream": True,
                         "options": _options(n)},
    _ollama_event)
LLAMA_SERVER_COMPLETION = Api(
    "/completion",
    lambda prompt, n: {"prompt": prompt, "n_predict": n, "temperature": 0, "stream": True,
                       "cache_prompt": True},
    _llama_server_event)
OPENAI_CHAT = Api(
    "/v1/chat/completions",
    lambda messages, n: {"messages": messages, "max_tokens": n, "temperature": 0,
                         "stream": True},
    _openai_chat_event)


def new_session() -> aiohttp.ClientSession:
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True, limit=0),
                                 timeout=aiohttp.ClientTimeout(total=None, sock_read=600))


def _json_line(line: bytes) -> dict[str, Any] | None:
    """An NDJSON line or an SSE `data:` line as an object; None for blank lines, comments,
    other SSE fields and the OpenAI stream's `[DONE]`."""
    line = line.strip()
    if line.startswith(b"data:"):
        line = line[5:].strip()
    return json.loads(line) if line.startswith(b"{") else None


async def stream(session: aiohttp.ClientSession, url: str, api: Api, payload: Payload,
                 n: int) -> Run:
    """Post one streaming request; time the start and each text-bearing object's arrival."""
    started = time.perf_counter()
    async with session.post(url + api.path, json=api.body(payload, n)) as resp:
        if resp.status != 200:
            raise RuntimeError(f"{url}{api.path}: HTTP {resp.status}: {await resp.text()}")
        arrivals: list[float] = []
        parts: list[str] = []
        while line := await resp.content.readline():
            now = time.perf_counter()
            obj = _json_line(line)
            if obj is None:
                continue
            if "error" in obj:
                raise RuntimeError(f"{url}{api.path}: {obj['error']}")
            event = api.event(obj)
            if event.text:
                arrivals.append(now)
                parts.append(event.text)
            if event.final:
                tokens = len(arrivals) if event.tokens is None else event.tokens
                return Run(started, arrivals, tokens, event.finish, "".join(parts))
    raise RuntimeError(f"{url}{api.path}: the stream ended without a final object")


async def concurrent(session: aiohttp.ClientSession, url: str, api: Api, prompts: list[str],
                     n: int) -> list[Run]:
    """One client per prompt, all started at once."""
    return list(await asyncio.gather(*(stream(session, url, api, p, n) for p in prompts)))


async def chat(session: aiohttp.ClientSession, url: str, api: Api,
               histories: list[list[Message]], questions: list[str], n: int) -> list[float]:
    """Conversations taking turns: each turn asks every conversation its next question (in
    order) and appends the answer. Returns each turn's time to first token in ms, averaged
    over the conversations."""
    per_turn: list[float] = []
    for question in questions:
        ttfts = await ask_each(session, url, api, histories, question, n)
        per_turn.append(sum(ttfts) / len(ttfts))
    return per_turn


async def ask_each(session: aiohttp.ClientSession, url: str, api: Api,
                   histories: list[list[Message]], question: str, n: int) -> list[float]:
    """Every conversation in turn asks `question`, its answer (up to `n` tokens) joining its
    history; each one's time to first token in ms."""
    ttfts = []
    for history in histories:
        ask = {"role": "user", "content": question}
        run = await stream(session, url, api, [*history, ask], n)
        ttfts.append(run.ttft_ms)
        history += [ask, {"role": "assistant", "content": run.text}]
    return ttfts
