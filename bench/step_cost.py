"""What prompt tokens cost a decode step: the measurement behind the engine's PREFILL_BUDGET.

While streams are generating, every engine step decodes one token per stream; a prompt being
evaluated adds its chunk to that same `llama_decode`, and the streams wait for the whole step.
This times one step of three generating sequences plus B prompt rows of a fourth, for several
B, on a context made as the engine makes its own (bare_loop.py), and prints each step's time
and its ratio to the step without prompt rows: the largest B whose ratio stays within the
target (2x) is the per-step budget for prompt tokens beside running streams.

Why it measures this way: rows are timed inside one process, B values interleaved over
`--rounds` rounds, each keeping its median, so a shared machine's drift spreads over all of
them; the prompt rows go at positions after a 1,000-token prefix, like a long prompt half way.

Run: PYTHONPATH=. python bench/step_cost.py [--rounds 5]
"""

from __future__ import annotations

import argparse
import statistics
import time

import llama_cpp
from bare_loop import BareLoop, BareModel
from common import PROMPTS

from ollamalite.registry.models_file import bundled_model_path
from ollamalite.runtime.engine.llama import put_token

STREAMS = 3
SIZES = (0, 8, 16, 32, 48, 64, 96, 128, 256, 509)  # 509 + 3: a full 512-token batch
PREFIX = 1000
STEPS = 8  # timed steps per size and round


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    model = BareModel(bundled_model_path())
    loop = BareLoop(model, STREAMS + 1)  # the engine's context settings
    ctx, batch = loop.ctx, loop.batch
    text = model.tokenize(" ".join(PROMPTS) * 20)
    stream_pos = [0] * STREAMS
    prompt_pos = [PREFIX]

    def decode(n_prompt: int) -> float:
        n = 0
        for seq in range(STREAMS):
            put_token(batch, n, text[stream_pos[seq] % 500], stream_pos[seq], seq, True)
            stream_pos[seq] += 1
            n += 1
        for i in range(n_prompt):
            put_token(batch, n, text[i], prompt_pos[0] + i, STREAMS, i == n_prompt - 1)
            n += 1
        batch.n_tokens = n
        started = time.perf_counter()
        assert llama_cpp.llama_decode(ctx, batch) == 0
        elapsed = time.perf_counter() - started
        llama_cpp.llama_memory_seq_rm(loop.mem, STREAMS, PREFIX, -1)
        return elapsed

    _fill(ctx, batch, text, STREAMS, PREFIX)
    for _ in range(STEPS):  # warm up
        decode(64)
    times: dict[int, list[float]] = {size: [] for size in SIZES}
    for _ in range(args.rounds):
        for size in SIZES:
            times[size].append(statistics.median(decode(size) for _ in range(STEPS)))
    base = statistics.median(times[0])
    print(f"{STREAMS} generating sequences + B prompt rows in one llama_decode, "
          f"median of {args.rounds} rounds x {STEPS} steps\n")
    print("| B | step ms | x step without prompt rows | prompt tokens/s |\n|---|---|---|---|")
    for size in SIZES:
        step = statistics.median(times[size])
        rate = size / (step - base) if size and step > base else float("nan")
        print(f"| {size} | {step * 1e3:.1f} | {step / base:.2f} | {rate:.0f} |")
    loop.close()
    model.close()


def _fill(ctx: llama_cpp.llama_context_p, batch: llama_cpp.llama_batch, text: list[int],
          seq: int, n: int) -> None:
    """Evaluate `n` tokens of `text` into sequence `seq` (the long prompt's first part)."""
    for start in range(0, n, 512):
        chunk = text[start:min(n, start + 512)]
        for i, token in enumerate(chunk):
            put_token(batch, i, token, start + i, seq, False)
        batch.n_tokens = len(chunk)
        assert llama_cpp.llama_decode(ctx, batch) == 0


if __name__ == "__main__":
    main()
