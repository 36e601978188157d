"""What extra rows cost a decode step: the measurement behind PREFILL_BUDGET and the drafts.

While streams are generating, every engine step decodes one token per stream; a prompt being
evaluated adds its chunk to that same `llama_decode`, and the streams wait for the whole step.
This times one step of three generating sequences plus B prompt rows of a fourth, for several
B, on a context made as the engine makes its own (bare_loop.py), and prints each step's time
and its ratio to the step without prompt rows: the largest B whose ratio stays within the
target (2x) is the per-step budget for prompt tokens beside running streams.

With `--streams 0 --sizes 1,2,3,4,6,8 --all-logits` it times one sequence decoding 1 + k rows,
each with logits: a speculative step checking a k-token draft (draft.py's cost model).

Why it measures this way: rows are timed inside one process, B values interleaved over
`--rounds` rounds, each keeping its median, so a shared machine's drift spreads over all of
them; the prompt rows go at positions after a 1,000-token prefix, like a long prompt half way.

Run: PYTHONPATH=. python bench/step_cost.py [--rounds 5] [--streams 3] [--sizes 0,8,...]
                                           [--prefix 1000] [--all-logits]
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

SIZES = "0,8,16,32,48,64,96,128,256,509"  # 509 + 3 streams: a full 512-token batch
STEPS = 8  # timed steps per size and round


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--streams", type=int, default=3, help="generating sequences (3)")
    parser.add_argument("--sizes", default=SIZES, help="values of B, comma-separated")
    parser.add_argument("--prefix", type=int, default=1000,
                        help="cells the B rows' sequence holds before them (1000)")
    parser.add_argument("--all-logits", action="store_true",
                        help="logits at every row, as a draft asks (default: the last only)")
    args = parser.parse_args()
    sizes = [int(size) for size in args.sizes.split(",")]
    streams, prefix = args.streams, args.prefix
    model = BareModel(bundled_model_path())
    loop = BareLoop(model, streams + 1)  # the engine's context settings
    ctx, batch = loop.ctx, loop.batch
    text = model.tokenize(" ".join(PROMPTS) * 20)
    stream_pos = [0] * streams

    def decode(rows: int) -> float:
        n = 0
        for seq in range(streams):
            put_token(batch, n, text[stream_pos[seq] % 500], stream_pos[seq], seq, True)
            stream_pos[seq] += 1
            n += 1
        for i in range(rows):
            put_token(batch, n, text[i], prefix + i, streams, args.all_logits or i == rows - 1)
            n += 1
        batch.n_tokens = n
        started = time.perf_counter()
        assert llama_cpp.llama_decode(ctx, batch) == 0
        elapsed = time.perf_counter() - started
        llama_cpp.llama_memory_seq_rm(loop.mem, streams, prefix, -1)
        return elapsed

    _fill(ctx, batch, text, streams, prefix)
    for _ in range(STEPS):  # warm up
        decode(max(sizes))
    times: dict[int, list[float]] = {size: [] for size in sizes}
    for _ in range(args.rounds):
        for size in sizes:
            times[size].append(statistics.median(decode(size) for _ in range(STEPS)))
    base_size = sizes[0]
    base = statistics.median(times[base_size])
    print(f"{streams} generating sequences + B rows of another in one llama_decode "
          f"(after {prefix} cells; logits {'at every row' if args.all_logits else 'at the last'})"
          f", median of {args.rounds} rounds x {STEPS} steps\n")
    print(f"| B | step ms | x step with B={base_size} | tokens/s of the rows past B={base_size} "
          "|\n|---|---|---|---|")
    for size in sizes:
        step = statistics.median(times[size])
        rate = (size - base_size) / (step - base) if size > base_size and step > base \
            else float("nan")
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
