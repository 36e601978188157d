"""Draft settings replayed on real answers: how `draft.py`'s choices would pay, in seconds.

Running the model once per setting would take minutes each and measure a shared machine's
drift as much as the setting. At temperature 0 what a draft keeps depends only on the answer's
tokens, so this generates each workload's greedy answers once (one engine, one slot, no
speculation) and then replays them through the drafter and `draft.plan` under each setting,
pricing every step with the cost model (`draft.Prices`' defaults, a micro-batch and a row each,
measured by step_cost.py): the printed speed-up is plain decoding's cost over the drafting one's, with the
drafted and kept counts. bench/speculative.py and run.py then check the chosen setting on the
model for real.

Settings are the module's own constants, set per row: NGRAM, MAX_DRAFT, PRIOR_RATE, DECAY.

Run: PYTHONPATH=. python bench/draft_replay.py [--tokens 320] [--prompts 8]
"""

from __future__ import annotations

import argparse
import itertools
import queue

import code_edit
from common import PROMPTS, cpu_plan

from ollamalite.options import SamplingParams
from ollamalite.registry.models_file import bundled_model_path
from ollamalite.runtime.engine import draft
from ollamalite.runtime.engine.draft import Candidate, Drafter, plan
from ollamalite.runtime.engine.engine import Engine
from ollamalite.runtime.engine.jobs import Finished, Job
from ollamalite.runtime.engine.llama import LlamaModel

GRID = {"NGRAM": (3, 4, 5), "MAX_DRAFT": (8, 16), "PRIOR_RATE": (0.6,), "DECAY": (0.8, 0.9)}
Answer = tuple[list[int], list[int]]  # (prompt tokens, greedy answer tokens)


def answers(tokens: int, count: int) -> dict[str, list[Answer]]:
    """Each workload's prompts with their greedy answers, from one plain engine."""
    model = LlamaModel(bundled_model_path(), extra_bufts=cpu_plan().extra_bufts)
    engine = Engine(model, n_slots=1, slot_ctx=4096, n_threads=2, prefix_cache=False)
    texts = {"code-edit": code_edit.prompts(0, count),
             "story": [f"<|im_start|>user\nContinue this story: {p}<|im_end|>\n"
                       "<|im_start|>assistant\n" for p in PROMPTS[:count]]}
    try:
        return {name: [_generate(engine, model.tokenize(p), tokens) for p in prompts]
                for name, prompts in texts.items()}
    finally:
        engine.close()
        model.close()


def _generate(engine: Engine, prompt: list[int], tokens: int) -> Answer:
    events: queue.Queue = queue.Queue()
    engine.submit(Job(prompt=prompt, sampling=SamplingParams(temperature=0), emit=events.put,
                      num_predict=tokens))
    while not isinstance(event := events.get(timeout=600), Finished):
        pass
    return prompt, list(event.tokens[len(prompt):])  # `tokens` starts with the prompt


def replay(prompt: list[int], answer: list[int], oracle: bool = False
           ) -> tuple[float, float, int, int]:
    """(plain cost, drafting cost, drafted, kept) of decoding `answer` after `prompt` alone;
    an `oracle` drafts exactly the guessed tokens that will be kept (the ceiling of any length
    policy on this lookup)."""
    drafter = Drafter(prompt)
    drafter.add(answer[0])  # from the prompt's evaluation: no decode step of its own
    prices = draft.Prices()
    step = prices.step(1, 1)
    t, cost, drafted, kept = 1, 0.0, 0, 0
    while t < len(answer):
        guess = drafter.continuation(min(draft.MAX_DRAFT, len(answer) - t))
        k = plan([Candidate(guess, drafter.rate, False)], 1, step, prices)[0]
        run = next((i for i in range(len(guess) if oracle else k)
                    if guess[i] != answer[t + i]), len(guess) if oracle else k)
        k = run if oracle else k
        cost += step + k * draft.ROW
        for token in answer[t:t + run + 1]:
            drafter.add(token)
        t += run + 1
        drafted, kept = drafted + k, kept + run
    return (len(answer) - 1) * step, cost, drafted, kept


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=320)
    parser.add_argument("--prompts", type=int, default=8)
    args = parser.parse_args()
    workloads = answers(args.tokens, args.prompts)
    names = list(GRID)
    print("| " + " | ".join(names) + " | " + " | ".join(
        f"{w} speed-up | {w} kept/drafted" for w in workloads) + " |")
    print("|---" * (len(names) + 2 * len(workloads)) + "|")
    for values in [*itertools.product(*GRID.values()), None]:
        oracle = values is None  # last row: the ceiling, with the module's own NGRAM
        values = values or ("oracle",) * len(names)
        for name, value in zip(names, values):
            if not oracle:
                setattr(draft, name, value)
        cells = []
        for runs in workloads.values():
            plain, spec, drafted, kept = (sum(x) for x in zip(*(replay(*a, oracle) for a in runs)))
            cells += [f"{plain / spec:.2f}", f"{kept}/{drafted}"]
        print("| " + " | ".join(map(str, values)) + " | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
