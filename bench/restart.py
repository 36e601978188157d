"""Conversations across a server restart: follow-up time to first token with the prompt cache's
disk (OLLAMALITE_CACHE_DISK) and without, side by side in one run.

Eight conversations (by default) each open with their own ~1,500-token logbook (conversation.py)
and get a first answer on a 4-slot server; the server stops (SIGTERM, as a service manager stops
it: half the conversations are in slots, half in host memory); a new server starts on the same
OLLAMALITE_HOME, loads the model (untimed) and every conversation asks its next question. Without
a disk each follow-up evaluates its whole history again; with one it reads it back. Reported:
turn 1 (cold) and the follow-up TTFT p50, and their ratio, per system.

llama-server has no counterpart that works unasked (its `--slot-save-path` saves and restores a
slot only when a client calls its slot API), so it is not in this table.

Run: PYTHONPATH=. python bench/restart.py [--conversations 8] [--rounds 1]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Callable

import aiohttp
from clients import OLLAMA_CHAT, Message, ask_each, new_session
from common import MODEL, exit_on_sigterm, ollamalite_server, write_config
from conversation import opening, questions

from ollamalite.registry.models_file import bundled_model_path
from ollamalite.runtime.engine.llama import LlamaModel

ANSWER_TOKENS = 32
SYSTEMS = {"ollamalite, disk cache": {"OLLAMALITE_CACHE_DISK": "2048"},
           "ollamalite, no disk": {"OLLAMALITE_CACHE_DISK": "0"}}


async def turn(url: str, histories: list[list[Message]], question: str) -> list[float]:
    """Every conversation asks `question` in order (its answer joins its history); TTFTs, ms.
    The model is loaded first, untimed."""
    async with new_session() as session:
        await _load(session, url)
        return await ask_each(session, url, OLLAMA_CHAT, histories, question, ANSWER_TOKENS)


async def _load(session: aiohttp.ClientSession, url: str) -> None:
    async with session.post(f"{url}/api/generate", json={"model": MODEL, "prompt": ""}) as resp:
        resp.raise_for_status()


def across_restart(name: str, env: dict[str, str], sessions: list[str],
                   tokenize: Callable[[str], list[int]]) -> tuple[list[float], list[float]]:
    """Turn 1 on one server, turn 2 on the next one over the same home: the TTFTs of each."""
    first, second = questions(2)
    histories = [opening(s, tokenize) for s in sessions]
    with tempfile.TemporaryDirectory() as folder:
        config = write_config(Path(folder))
        full_env = {"OLLAMA_NUM_PARALLEL": "4", "OLLAMALITE_HOME": str(Path(folder, "home")),
                    **env}
        with ollamalite_server(name, config, full_env) as server:
            cold = asyncio.run(turn(server.url, histories, first))
        with ollamalite_server(name, config, full_env) as server:
            warm = asyncio.run(turn(server.url, histories, second))
    return cold, warm


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--conversations", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=1)
    args = parser.parse_args()
    exit_on_sigterm()
    model = LlamaModel(bundled_model_path(), extra_bufts=False)  # tokenizing only
    results: dict[str, tuple[list[float], list[float]]] = {name: ([], []) for name in SYSTEMS}
    for round_ in range(args.rounds):
        for name, env in SYSTEMS.items():
            sessions = [f"{round_}.{name}.{k}" for k in range(args.conversations)]
            cold, warm = across_restart(name, env, sessions, model.tokenize)
            results[name][0].extend(cold)
            results[name][1].extend(warm)
            print(f"round {round_}: {name}: cold p50 {statistics.median(cold):.0f} ms, "
                  f"after the restart p50 {statistics.median(warm):.0f} ms", file=sys.stderr)
    lines = [f"{args.conversations} conversations on 4 slots, a restart between turns 1 and 2, "
             f"{args.rounds} round(s), {ANSWER_TOKENS}-token answers", "",
             "| system | turn 1 TTFT p50 ms | turn 2 (after the restart) p50 ms | p95 ms | "
             "turn 2 / turn 1 |", "|---|---|---|---|---|"]
    for name, (cold, warm) in results.items():
        c, w = statistics.median(cold), statistics.median(warm)
        p95 = statistics.quantiles(warm, n=20)[-1]
        lines.append(f"| {name} | {c:.0f} | {w:.0f} | {p95:.0f} | {w / c:.2f}x |")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
