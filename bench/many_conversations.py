"""More conversations than slots: follow-up time to first token, side by side in one run.

Eight conversations (by default) take turns on servers with four slots; each opens with its own
~1,500-token logbook (conversation.py), then asks short questions. With more conversations
than slots, a conversation's next turn usually finds its slot taken by another: it is cold
unless the server kept its prefix elsewhere. Systems:

- ollamalite with its host-memory prompt cache (the default);
- ollamalite with `OLLAMALITE_CACHE_RAM=0`: slots only, what it did before that cache;
- llama-server `-np 4` with its default `--cache-ram` (its own host-memory prompt cache).

Why it measures this way:

- All servers are started first; each round gives every system a fresh set of conversations
  (new session numbers, so nothing is cached from an earlier round), systems in turn.
- TTFT is taken at the client as the first text arrives (clients.py). Turn 1 of each
  conversation is cold everywhere; turns 2.. are the follow-ups. Reported: the p50 of each,
  their ratio per system, and each system's follow-up p50 over llama-server's.
- Every server runs alone while it is asked (conversations take turns, one request at a
  time), so this measures what the cache saves, not batching.

Run: PYTHONPATH=. python bench/many_conversations.py [--conversations 8] [--turns 8] [--rounds 1]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
from contextlib import ExitStack
from pathlib import Path
from typing import Callable

from clients import OLLAMA_CHAT, OPENAI_CHAT, Api, ask_each, new_session
from common import (
    exit_on_sigterm,
    llama_server,
    llama_server_binary,
    ollamalite_server,
    write_config,
)
from conversation import opening, questions

from ollamalite.registry.models_file import bundled_model_path
from ollamalite.runtime.engine.llama import LlamaModel

HOST_CACHE = "ollamalite, host cache"
SLOTS_ONLY = "ollamalite, slots only"
LLAMA_SERVER = "llama-server -np 4"
ANSWER_TOKENS = 32


async def conversations(url: str, api: Api, sessions: list[str], turns: int,
                        tokenize: Callable[[str], list[int]]
                        ) -> tuple[list[float], list[float]]:
    """Each turn asks every conversation its next question in order; returns the cold (first
    turn) and follow-up TTFTs in ms."""
    histories = [opening(s, tokenize) for s in sessions]
    cold: list[float] = []
    warm: list[float] = []
    async with new_session() as session:
        for turn, question in enumerate(questions(turns)):
            ttfts = await ask_each(session, url, api, histories, question, ANSWER_TOKENS)
            (warm if turn else cold).extend(ttfts)
    return cold, warm


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--conversations", type=int, default=8)
    parser.add_argument("--turns", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=1)
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    exit_on_sigterm()
    model = LlamaModel(bundled_model_path(), extra_bufts=False)  # tokenizing only
    tokenize = model.tokenize
    binary, note = llama_server_binary(skip=False)
    print(note, file=sys.stderr)
    with ExitStack() as stack, tempfile.TemporaryDirectory() as tmp:
        config = write_config(Path(tmp))
        systems: dict[str, tuple[str, Api]] = {}
        for name, env in ((HOST_CACHE, {}), (SLOTS_ONLY, {"OLLAMALITE_CACHE_RAM": "0"})):
            server = stack.enter_context(ollamalite_server(
                name, config, {"OLLAMA_NUM_PARALLEL": "4", **env}))
            systems[name] = (server.url, OLLAMA_CHAT)
        if binary is not None:
            server = stack.enter_context(llama_server(LLAMA_SERVER, binary, 4))
            systems[LLAMA_SERVER] = (server.url, OPENAI_CHAT)
        results = {name: ([], []) for name in systems}
        for round_ in range(args.rounds):
            for name, (url, api) in systems.items():
                sessions = [f"{round_}.{name}.{k}" for k in range(args.conversations)]
                cold, warm = asyncio.run(conversations(url, api, sessions, args.turns, tokenize))
                results[name][0].extend(cold)
                results[name][1].extend(warm)
                print(f"round {round_}: {name}: cold p50 {statistics.median(cold):.0f} ms, "
                      f"follow-up p50 {statistics.median(warm):.0f} ms", file=sys.stderr)
    print(report(results, args))


def report(results: dict[str, tuple[list[float], list[float]]], args: argparse.Namespace
           ) -> str:
    lines = [f"{args.conversations} conversations x {args.turns} turns on 4 slots, "
             f"{args.rounds} round(s), {ANSWER_TOKENS}-token answers",
             "", "| system | cold TTFT p50 ms | follow-up TTFT p50 ms | follow-up p95 ms | "
             "follow-up / cold | follow-up vs llama-server |", "|---|---|---|---|---|---|"]
    reference = results.get(LLAMA_SERVER)
    base = statistics.median(reference[1]) if reference else None
    for name, (cold, warm) in results.items():
        c, w = statistics.median(cold), statistics.median(warm)
        p95 = statistics.quantiles(warm, n=20)[-1]
        versus = f"{w / base:.2f}x" if base else "n/a"
        lines.append(f"| {name} | {c:.0f} | {w:.0f} | {p95:.0f} | {w / c:.2f}x | {versus} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
