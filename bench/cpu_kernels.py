"""The CPU code llama.cpp runs here: builds and extra buffer types side by side (docs/cpu.md).

For each interpreter given (each a virtualenv with its own llama-cpp-python build) and each
setting of llama.cpp's extra buffer types (AMX, repacked weights: on, off), a child process
loads the model and measures the bare greedy loop of `bare_loop.py` on one sequence: prompt
tok/s (one batch of `--prompt` tokens) and decode tok/s (`--tokens` tokens after it). A child
that dies from a signal is reported as such: that is what the setting would do to a server.
Configurations run interleaved, `--rounds` times, best round kept; then the start-up cost of
ollamalite's decision (the probe child once, then its cached verdict) is timed.

    .venv/bin/python bench/cpu_kernels.py [--python OTHER/bin/python ...] [--quantize q4_0]

`--quantize q4_0` also measures a Q4_0 copy of the bundled model (made in a temp folder by
llama.cpp's quantizer), a type that has repacked kernels on x86, unlike the bundled Q4_1.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bare_loop import BareLoop, BareModel
from common import THREADS

from ollamalite.registry.models_file import bundled_model_path
from ollamalite.runtime.engine.cpu import CpuPolicy, signal_name

FTYPES = {"q4_0": 2}  # llama_ftype values of the types --quantize accepts


def child(model_path: Path, extra_bufts: bool, prompt_tokens: int, tokens: int) -> None:
    """Best of three: prompt tok/s and decode tok/s, one JSON line."""
    model = BareModel(model_path, extra_bufts)
    loop = BareLoop(model, 1)
    text = "The history of the lighthouse keepers of the northern coast. " * 200
    prompt = model.tokenize(text)[:prompt_tokens]
    best = {"prompt_tps": 0.0, "decode_tps": 0.0}
    for _ in range(3):
        run = loop.run([prompt], tokens)[0]
        best["prompt_tps"] = max(best["prompt_tps"],
                                 len(prompt) / (run.arrivals[0] - run.started))
        best["decode_tps"] = max(best["decode_tps"], run.decode_tps)
    print(json.dumps(best))


def measure(python: str, model: Path, extra_bufts: bool, args: argparse.Namespace
            ) -> dict[str, float] | str:
    cmd = [python, __file__, "--child", str(model), "--extra-bufts",
           "on" if extra_bufts else "off", "--prompt", str(args.prompt), "--tokens",
           str(args.tokens)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    if done.returncode < 0:
        return f"dies ({signal_name(-done.returncode)})"
    if done.returncode != 0:
        return f"fails: {(done.stderr.strip().splitlines() or ['?'])[-1][:80]}"
    return json.loads(done.stdout.strip().splitlines()[-1])


def quantized(kind: str, folder: Path) -> Path:
    import llama_cpp

    out = folder / f"smollm2-135m.{kind}.gguf"
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = FTYPES[kind]
    params.allow_requantize = True
    params.nthread = THREADS
    if llama_cpp.llama_model_quantize(str(bundled_model_path()).encode(), str(out).encode(),
                                      params) != 0:
        raise SystemExit(f"cannot quantize to {kind}")
    return out


def startup_cost(folder: Path) -> list[str]:
    """What ollamalite's decision adds to a start: the first (probing) and a cached one."""
    lines = []
    for what in ("first start (probe, if the CPU reports AMX)", "later starts (cached)"):
        started = time.perf_counter()
        plan = CpuPolicy("auto", folder).plan(bundled_model_path())
        lines.append(f"- {what}: {time.perf_counter() - started:.2f} s: {plan.describe()}")
    return lines


def report(results: dict[tuple[str, str, bool], dict[str, float] | str]) -> list[str]:
    lines = ["| build (python) | model | extra buffer types | prompt tok/s | decode tok/s |",
             "|---|---|---|---|---|"]
    for (python, model, extra), value in results.items():
        cells = (f"{value['prompt_tps']:.0f} | {value['decode_tps']:.1f}"
                 if isinstance(value, dict) else f"{value} | -")
        lines.append(f"| {python} | {model} | {'on' if extra else 'off'} | {cells} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--python", action="append", help="an interpreter (repeatable; "
                        "default: this one)")
    parser.add_argument("--quantize", choices=sorted(FTYPES), action="append", default=[])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--prompt", type=int, default=400, help="prompt tokens (max 500)")
    parser.add_argument("--tokens", type=int, default=128, help="decoded tokens")
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--extra-bufts", choices=("on", "off"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.extra_bufts == "on", args.prompt, args.tokens)
        return
    with tempfile.TemporaryDirectory() as tmp:
        models = {"Q4_1 (bundled)": bundled_model_path()}
        models.update({kind.upper(): quantized(kind, Path(tmp)) for kind in args.quantize})
        results: dict[tuple[str, str, bool], dict[str, float] | str] = {}
        for round_ in range(args.rounds):
            for python in args.python or [sys.executable]:
                for name, path in models.items():
                    for extra in (True, False):
                        value = measure(python, path, extra, args)
                        print(f"round {round_ + 1}: {python} {name} extra={extra}: {value}",
                              file=sys.stderr)
                        key = (python, name, extra)
                        results[key] = best_of(results.get(key), value)
        print("\n".join(report(results) + ["", "Start-up cost of the decision:"]
                        + startup_cost(Path(tmp) / "home")))


def best_of(old: dict[str, float] | str | None, new: dict[str, float] | str
            ) -> dict[str, float] | str:
    if not isinstance(old, dict) or not isinstance(new, dict):
        return new if old is None or isinstance(new, str) else old
    return {k: max(old[k], new[k]) for k in old}


if __name__ == "__main__":
    main()
