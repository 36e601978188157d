"""Where an ollamalite server's time goes while N clients stream: py-spy on the live process.

Starts `python -m ollamalite serve` (4 slots, 2 threads, the bundled model), loads the model,
then samples the server with py-spy (native frames, per thread, idle frames dropped) while
`--clients` clients stream `--tokens` tokens each, `--rounds` times over. It prints the
aggregate tokens/s of those rounds and, per thread, the share of samples where that thread was
busy and the functions it spent them in (leaf frames, self time), and writes the raw collapsed
stacks (`--out`) for a flame graph. Needs py-spy on PATH and permission to ptrace the child.

    .venv/bin/python bench/profile_http.py --clients 4 --tokens 128 --rounds 5
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
from clients import OLLAMA_GENERATE, concurrent, new_session
from common import PROMPTS, Server, ollamalite_server, write_config

THREAD = re.compile(r"^(?:process \d+:\"[^\"]*\";)?thread \((0x[0-9A-Fa-f]+)\)(?:\s*\"([^\"]*)\")?")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--top", type=int, default=12, help="functions listed per thread")
    parser.add_argument("--native", action="store_true",
                        help="sample native frames too (pauses the process: slower)")
    parser.add_argument("--out", type=Path, default=Path("profile_http.txt"),
                        help="collapsed stacks (flamegraph.pl / speedscope input)")
    return parser.parse_args()


async def drive(session: aiohttp.ClientSession, url: str, args: argparse.Namespace,
                tag: str) -> float:
    """`args.rounds` rounds of `args.clients` concurrent streams; aggregate tokens/s."""
    started, total = time.perf_counter(), 0
    for round_ in range(args.rounds):
        prompts = [f"({tag}{round_}) {p}" for p in PROMPTS[:args.clients]]
        runs = await concurrent(session, url, OLLAMA_GENERATE, prompts, args.tokens)
        total += sum(run.tokens for run in runs)
    return total / (time.perf_counter() - started)


async def measure(server: Server, args: argparse.Namespace) -> None:
    """An unprofiled pass with each thread's CPU time, then the same under py-spy."""
    async with new_session() as session:
        await concurrent(session, server.url, OLLAMA_GENERATE, list(PROMPTS[:args.clients]), 8)
        before = thread_cpu(server.proc.pid)
        started = time.perf_counter()
        tps = await drive(session, server.url, args, "a")
        wall = time.perf_counter() - started
        after = thread_cpu(server.proc.pid)
        print(f"{args.clients} clients x {args.tokens} tokens x {args.rounds} rounds: "
              f"{tps:.1f} tok/s aggregate, {wall:.1f} s; CPU per thread:")
        for name, seconds in sorted(after.items(), key=lambda kv: before.get(kv[0], 0) - kv[1]):
            used = seconds - before.get(name, 0.0)
            if used >= 0.01:
                print(f"  {name:40s} {used:6.2f} s  ({100 * used / wall:5.1f}% of a core)")
        profiler = subprocess.Popen(
            ["py-spy", "record", "--pid", str(server.proc.pid), "--threads", "--format", "raw",
             "--rate", "100", "--output", str(args.out)] + (["--native"] if args.native else
                                                             ["--nonblocking"]),
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        await asyncio.sleep(1.0)  # py-spy attaches
        tps = await drive(session, server.url, args, "b")
        profiler.send_signal(signal.SIGINT)  # py-spy writes its output and exits
        _, err = profiler.communicate(timeout=60)
        if not args.out.exists():
            raise RuntimeError(f"py-spy wrote nothing: {err.decode(errors='replace')}")
        print(f"\nunder py-spy: {tps:.1f} tok/s aggregate; samples where a thread ran Python "
              f"(or native code, with --native):")


def thread_cpu(pid: int) -> dict[str, float]:
    """CPU seconds (user + system) each thread of `pid` has used, by thread name and id."""
    ticks = os.sysconf("SC_CLK_TCK")
    usage = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            stat = (task / "stat").read_text()
        except OSError:  # the thread ended meanwhile
            continue
        name = stat[stat.index("(") + 1:stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2:].split()
        usage[f"{name} ({task.name})"] = (int(fields[11]) + int(fields[12])) / ticks
    return usage


def summarize(collapsed: Path, top: int) -> str:
    """Per thread: samples, and the leaf functions that took them."""
    threads: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    for line in collapsed.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames = stack.split(";")
        match = THREAD.match(stack)
        name = (match.group(2) or match.group(1)) if match else frames[0]
        leaf = re.sub(r" \(.*?\)$", "", frames[-1])
        threads[name][leaf] += int(count)
    total = sum(sum(c.values()) for c in threads.values())
    lines = []
    for name, counter in sorted(threads.items(), key=lambda kv: -sum(kv[1].values())):
        busy = sum(counter.values())
        lines.append(f"\n{name}: {busy} samples ({100 * busy / total:.1f}% of all busy samples)")
        for leaf, n in counter.most_common(top):
            lines.append(f"  {100 * n / busy:5.1f}%  {leaf}")
    return "\n".join(lines)


def main() -> int:
    args = parse_args()
    with tempfile.TemporaryDirectory() as folder, \
            ollamalite_server("ollamalite", write_config(Path(folder)),
                              {"OLLAMA_NUM_PARALLEL": "4"}) as server:
        asyncio.run(measure(server, args))
    print(summarize(args.out, args.top))
    return 0


if __name__ == "__main__":
    sys.exit(main())
