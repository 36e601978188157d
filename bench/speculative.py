"""n-gram speculative decoding on vs off, side by side in one run, on one engine.

Why it measures this way:

- One `Engine` (one slot, greedy) serves every job, and speculation is switched between jobs
  (`Engine.speculative` is read when a job is admitted): one engine thread drives llama.cpp, so
  the OpenMP thread team that a second decoding thread in the process would slow down is never
  involved, and both modes run the same kernels on the same context.
- Workloads: the code-edit prompts (a pasted file to return edited, what drafts are for) and the
  story openings (little to copy: drafting must not cost there).
- Decode speed is the engine's own `eval_count / eval_duration` (prompt evaluation excluded);
  rounds alternate off, on, off, on... per prompt, and each mode keeps its best round, since
  this shared machine's speed drifts.
- Each job starts with an empty memory of earlier answers (`draft.Memory`), so the numbers are
  those of a first request; with `--again`, each timed "on" job follows the same request asked
  once before (regenerate), so it may draft from that answer too.
- It also reports drafted and accepted tokens, and whether each greedy text equals the
  non-speculative one (see docs/engine.md: batch rounding can flip near-ties).

Run: python bench/speculative.py [--tokens 256] [--rounds 3] [--prompts 3] [--again]
"""

from __future__ import annotations

import argparse
import queue
import sys
from dataclasses import dataclass

import code_edit
from common import PROMPTS, cpu_plan

from ollamalite.options import SamplingParams
from ollamalite.registry.models_file import bundled_model_path
from ollamalite.runtime.engine.draft import Memory
from ollamalite.runtime.engine.engine import Engine
from ollamalite.runtime.engine.jobs import Finished, Job, TextChunk
from ollamalite.runtime.engine.llama import LlamaModel


@dataclass
class Result:
    text: str
    tok_s: float
    drafted: int
    accepted: int


def run_job(engine: Engine, model: LlamaModel, prompt: str, tokens: int, speculative: bool,
            remember: bool = False) -> Result:
    """One greedy job of `tokens` tokens (stops allowed) with speculation on or off; unless
    `remember`, with no earlier answer to draft from."""
    engine.speculative = speculative
    if not remember:
        engine.answers = Memory()
    events: queue.Queue = queue.Queue()
    engine.submit(Job(prompt=model.tokenize(prompt), sampling=SamplingParams(temperature=0),
                      emit=events.put, num_predict=tokens))
    text = []
    while True:
        event = events.get(timeout=600)
        if isinstance(event, TextChunk):
            text.append(event.text)
        elif isinstance(event, Finished):
            rate = event.eval_count / max(event.eval_duration / 1e9, 1e-9)
            return Result("".join(text), rate, event.drafted_tokens, event.accepted_tokens)
        else:
            raise RuntimeError(f"job failed: {event}")


def workloads(count: int) -> dict[str, list[str]]:
    return {"code-edit": code_edit.prompts(0, count),
            "story": [f"<|im_start|>user\nContinue this story: {p}<|im_end|>\n"
                      "<|im_start|>assistant\n" for p in PROMPTS[:count]]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--prompts", type=int, default=3)
    parser.add_argument("--again", action="store_true",
                        help="time each prompt asked a second time (drafts from the first "
                        "answer too) instead of a first request")
    args = parser.parse_args()
    model = LlamaModel(bundled_model_path(), extra_bufts=cpu_plan().extra_bufts)
    # Built with drafts on, so that it prices them for this machine (each job then sets them).
    engine = Engine(model, n_slots=1, slot_ctx=4096, n_threads=2, prefix_cache=False,
                    speculative=True)
    try:
        print("| workload | prompt | off tok/s | on tok/s | on/off | drafted | accepted "
              "| same text |\n|---|---|---|---|---|---|---|---|")
        for name, prompts in workloads(args.prompts).items():
            for i, prompt in enumerate(prompts):
                run_job(engine, model, prompt, 8, False)  # warm-up
                best: dict[bool, Result] = {}
                for _ in range(args.rounds):
                    for mode in (False, True):
                        if mode and args.again:  # the first asking, untimed
                            run_job(engine, model, prompt, args.tokens, mode)
                        result = run_job(engine, model, prompt, args.tokens, mode, args.again)
                        if mode not in best or result.tok_s > best[mode].tok_s:
                            best[mode] = result
                off, on = best[False], best[True]
                print(f"| {name} | {i} | {off.tok_s:.1f} | {on.tok_s:.1f} | "
                      f"{on.tok_s / off.tok_s:.2f} | {on.drafted} | {on.accepted} | "
                      f"{'yes' if on.text == off.text else 'no'} |", flush=True)
    finally:
        engine.close()
        model.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
