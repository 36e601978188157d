"""Single-stream decode speed: ollamalite over real HTTP beside raw llama-cpp-python.

Why it measures this way:

- Decode speed is timed at the client, from the arrival of each token: the first token's
  arrival time includes prompt evaluation, so decode tok/s = (tokens - 1) / (last - first)
  covers only the decode steps, while time to first token (TTFT) is reported on its own.
- The server is a real subprocess reached over loopback HTTP, and its NDJSON stream is read
  as bytes arrive (`http.client`'s `read1`), so the numbers include everything a client sees:
  the engine, the event loop hand-off, JSON encoding and the socket, but no client buffering.
- Both systems get the same raw prompt text (no chat template, so the same prompt tokens),
  the same token budget and greedy sampling; the run checks that each produced exactly
  `--tokens` tokens (no early end-of-sequence) and says where the two texts part (llama-cpp-
  python's `Llama` turns flash attention off, ollamalite keeps llama.cpp's automatic default,
  and the different numerics flip near-ties after a few dozen tokens).
- This shared machine's speed drifts, so rounds alternate (raw, server, raw, server, ...)
  after a warm-up of each, and each system keeps its best round.

Run: python bench/single_stream.py [--tokens 128] [--rounds 3]
"""

from __future__ import annotations

import argparse
import http.client
import json
import sys
import time
from typing import Any, Callable, Iterator

from common import (
    HOST,
    MODEL,
    PROMPTS,
    REPO,
    THREADS,
    Run,
    load_llama,
    ollamalite_server,
    run_llama,
)

RAW, SERVER = "raw llama-cpp-python", "ollamalite"
PROMPT = PROMPTS[0]


def ndjson_lines(resp: http.client.HTTPResponse) -> Iterator[tuple[float, dict[str, Any]]]:
    """Each line with the time its last bytes arrived; `read1` returns what the socket has."""
    pending = b""
    while data := resp.read1(65536):
        now = time.perf_counter()
        *lines, pending = (pending + data).split(b"\n")
        for line in lines:
            if line.strip():
                yield now, json.loads(line)


def run_server(port: int, prompt: str, n: int) -> Run:
    body = json.dumps({"model": MODEL, "prompt": prompt, "raw": True,
                       "options": {"num_predict": n, "temperature": 0}})
    conn = http.client.HTTPConnection(HOST, port, timeout=600)
    try:
        started = time.perf_counter()
        conn.request("POST", "/api/generate", body, {"Content-Type": "application/json"})
        resp = conn.getresponse()
        if resp.status != 200:
            raise RuntimeError(f"/api/generate: HTTP {resp.status}: {resp.read()!r}")
        arrivals: list[float] = []
        parts: list[str] = []
        for now, obj in ndjson_lines(resp):
            if "error" in obj:
                raise RuntimeError(f"/api/generate: {obj['error']}")
            if obj["done"]:
                return Run(started, arrivals, obj["eval_count"], obj["done_reason"],
                           "".join(parts), obj["eval_count"], obj["eval_duration"])
            arrivals.append(now)
            parts.append(obj["response"])
    finally:
        conn.close()
    raise RuntimeError("/api/generate: stream ended without a final line")


# -- rounds and report --------------------------------------------------------------------------

def measure(systems: dict[str, Callable[[], Run]], rounds: int) -> dict[str, list[Run]]:
    """A warm-up of each system, then `rounds` interleaved rounds (warm-ups not kept)."""
    for run in systems.values():
        run()
    results: dict[str, list[Run]] = {name: [] for name in systems}
    for i in range(rounds):
        for name, run in systems.items():
            results[name].append(run())
            print(f"round {i + 1} {name}: {results[name][-1].decode_tps:.1f} tok/s",
                  file=sys.stderr)
    return results


def best(runs: list[Run]) -> Run:
    return max(runs, key=lambda r: r.decode_tps)


def problems(results: dict[str, list[Run]], n: int) -> list[str]:
    """Runs that did not decode exactly `n` tokens, and texts that differ."""
    notes = [f"{name} round {i}: {run.tokens} tokens (finish: {run.finish_reason}), not {n}"
             for name, runs in results.items() for i, run in enumerate(runs, 1)
             if run.tokens != n or run.finish_reason != "length"]
    notes += [f"{name} round {i}: {run.tokens} tokens arrived in {len(run.arrivals)} chunks"
              for name, runs in results.items() for i, run in enumerate(runs, 1)
              if len(run.arrivals) != run.tokens]
    notes += [f"{name}: the rounds did not all produce the same text"
              for name, runs in results.items() if len({run.text for run in runs}) > 1]
    raw, server = results[RAW][0].text, results[SERVER][0].text
    if raw != server:
        at = next((i for i, (a, b) in enumerate(zip(raw, server, strict=False)) if a != b),
                  min(len(raw), len(server)))
        notes.append(f"the texts differ from character {at} on: raw {raw[at:at + 24]!r}, "
                     f"server {server[at:at + 24]!r}")
    return notes


def report(results: dict[str, list[Run]], n: int) -> str:
    lines = ["| system | decode tok/s (best) | all rounds | TTFT ms |", "|---|---|---|---|"]
    for name, runs in results.items():
        rounds = ", ".join(f"{r.decode_tps:.1f}" for r in runs)
        ttft = min(r.ttft_ms for r in runs)
        lines.append(f"| {name} | {best(runs).decode_tps:.1f} | {rounds} | {ttft:.1f} |")
    server = best(results[SERVER])
    assert server.eval_count is not None and server.eval_duration_ns is not None
    engine_tps = (server.eval_count - 1) / (server.eval_duration_ns / 1e9)
    lines += ["", f"ollamalite's own counters (best round): eval_count={server.eval_count}, "
                  f"eval_duration={server.eval_duration_ns / 1e6:.1f} ms, "
                  f"i.e. {engine_tps:.1f} tok/s inside the engine"]
    lines += [f"note: {note}" for note in problems(results, n)]
    ratio = server.decode_tps / best(results[RAW]).decode_tps
    lines += ["", f"server/raw decode ratio: {ratio:.3f}"]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=128, help="tokens to decode (default 128)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    args = parser.parse_args()
    if args.tokens < 2 or args.rounds < 1:
        parser.error("--tokens must be at least 2 and --rounds at least 1")
    llm = load_llama()
    with ollamalite_server(SERVER, REPO / "models.yaml") as server:
        results = measure({
            RAW: lambda: run_llama(llm, PROMPT, args.tokens),
            SERVER: lambda: run_server(server.port, PROMPT, args.tokens),
        }, args.rounds)
    print(f"{args.tokens} tokens, {args.rounds} rounds, {THREADS} threads, prompt: {PROMPT!r}\n")
    print(report(results, args.tokens))


if __name__ == "__main__":
    main()
