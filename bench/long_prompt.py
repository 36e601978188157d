"""A long prompt arriving beside running streams: how much it stalls them, side by side in one run.

Three clients stream story continuations from a four-slot server; once they are well under way
a fourth sends a ~3,000-token prompt. While that prompt is evaluated the three streams' tokens
arrive further apart; this measures by how much, on ollamalite and on llama-server `-np 4`.

Why it measures this way:

- Gaps are taken at the client between consecutive text chunks of each stream (clients.py
  times every chunk). "Normal" gaps are those that end before the long prompt is sent, "during"
  gaps those that end between its sending and its first token (its prefill); reported: the
  normal p50, the during p95, their ratio (target: at most 2) and the long prompt's TTFT (what
  a smaller per-step budget costs it).
- The streams ask for many tokens so that they outlast the prefill; a stream that ends early
  only contributes fewer gaps. Each round uses new story numbers, so nothing is cached; rounds
  alternate the systems and each keeps its best round (lowest during-p95).

Run: PYTHONPATH=. python bench/long_prompt.py [--rounds 2] [--history 3000]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from clients import LLAMA_SERVER_COMPLETION, OLLAMA_GENERATE, Api, new_session, stream
from common import (
    PROMPTS,
    Run,
    exit_on_sigterm,
    llama_server,
    llama_server_binary,
    ollamalite_server,
    write_config,
)
from conversation import logbook

from ollamalite.registry.models_file import bundled_model_path
from ollamalite.runtime.engine.llama import LlamaModel

STREAMS = 3
STREAM_TOKENS = 600
WARM_UP_S = 3.0  # the streams run alone this long before the long prompt comes
OLLAMALITE = "ollamalite NUM_PARALLEL=4"
LLAMA_SERVER = "llama-server -np 4"


@dataclass(frozen=True)
class Trial:
    normal_gaps: list[float]  # ms
    during_gaps: list[float]  # ms
    long_ttft: float  # ms

    @property
    def during_p95(self) -> float:
        return statistics.quantiles(self.during_gaps, n=20)[-1] if len(
            self.during_gaps) > 1 else float("nan")

    @property
    def normal_p50(self) -> float:
        return statistics.median(self.normal_gaps)


async def trial(url: str, api: Api, round_: int, long_prompt: str) -> Trial:
    async with new_session() as session:
        streams = [asyncio.create_task(stream(session, url, api, f"({round_}.{k}) {p}",
                                              STREAM_TOKENS))
                   for k, p in enumerate(PROMPTS[:STREAMS])]
        await asyncio.sleep(WARM_UP_S)
        sent = time.perf_counter()
        long_run = await stream(session, url, api, f"({round_}) {long_prompt}\n\nIn short,", 4)
        prefilled = long_run.arrivals[0] if long_run.arrivals else time.perf_counter()
        runs: list[Run] = list(await asyncio.gather(*streams))
    normal, during = [], []
    for run in runs:
        for before, after in zip(run.arrivals, run.arrivals[1:]):
            if after < sent:
                normal.append((after - before) * 1e3)
            elif after <= prefilled:
                during.append((after - before) * 1e3)
    return Trial(normal, during, (prefilled - sent) * 1e3)


def long_text(tokenize: Callable[[str], list[int]], tokens: int) -> str:
    """Logbooks (conversation.py, ~1,500 tokens each) until the text has `tokens` tokens."""
    parts: list[str] = []
    while len(tokenize("\n".join(parts))) < tokens:
        parts.append(logbook(f"part {len(parts)}", tokenize))
    return "\n".join(parts)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--history", type=int, default=3000, help="long prompt tokens")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    exit_on_sigterm()
    model = LlamaModel(bundled_model_path(), extra_bufts=False)  # tokenizing only
    long_prompt = long_text(model.tokenize, args.history)
    binary, note = llama_server_binary(skip=False)
    print(note, file=sys.stderr)
    best: dict[str, Trial] = {}
    with ExitStack() as stack, tempfile.TemporaryDirectory() as tmp:
        systems = {OLLAMALITE: (stack.enter_context(ollamalite_server(
            OLLAMALITE, write_config(Path(tmp)), {"OLLAMA_NUM_PARALLEL": "4"})).url,
            OLLAMA_GENERATE)}
        if binary is not None:
            systems[LLAMA_SERVER] = (stack.enter_context(llama_server(LLAMA_SERVER, binary, 4)
                                                         ).url, LLAMA_SERVER_COMPLETION)
        for round_ in range(args.rounds):
            for name, (url, api) in systems.items():
                result = asyncio.run(trial(url, api, round_, long_prompt))
                print(f"round {round_}: {name}: normal gap p50 {result.normal_p50:.0f} ms, "
                      f"during prefill p95 {result.during_p95:.0f} ms "
                      f"({len(result.during_gaps)} gaps), long prompt TTFT "
                      f"{result.long_ttft:.0f} ms", file=sys.stderr)
                if name not in best or result.during_p95 < best[name].during_p95:
                    best[name] = result
    print(report(best, len(model.tokenize(long_prompt))))


def report(best: dict[str, Trial], prompt_tokens: int) -> str:
    lines = [f"{STREAMS} streams, then a {prompt_tokens}-token prompt; best round per system",
             "", "| system | normal gap p50 ms | gap p95 during prefill ms | ratio | "
             "long prompt TTFT ms |", "|---|---|---|---|---|"]
    for name, t in best.items():
        lines.append(f"| {name} | {t.normal_p50:.0f} | {t.during_p95:.0f} | "
                     f"{t.during_p95 / t.normal_p50:.2f}x | {t.long_ttft:.0f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
