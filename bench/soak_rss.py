"""Memory under a long mixed load: server RSS after 50 requests against after 1,000.

A leak in the serving path (sampler chains, KV slots, per-request buffers, cancelled streams)
shows up as RSS that keeps growing once the model and caches are warm. The requests mix
streamed and whole generate and chat calls of varying length, clients that hang up
mid-stream and requests that are refused with a 400, four at a time against one server.

Run: python bench/soak_rss.py [--requests 1000] [--concurrency 4]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import tempfile
from pathlib import Path

import aiohttp
from common import MODEL, PROMPTS, ollamalite_server, write_config

CHECKPOINTS = (50, 250, 500, 750, 1000)
TIME_LIMIT_S = 1800


def request_for(i: int, rng: random.Random) -> tuple[str, dict, str]:
    """(path, body, how to read it): the i-th request of the mix."""
    prompt = PROMPTS[i % len(PROMPTS)]
    options = {"num_predict": rng.randint(4, 40), "temperature": rng.choice([0, 0.7]),
               "seed": i}
    kind = i % 10
    if kind == 9:
        return "/api/generate", {"model": MODEL, "prompt": prompt,
                                 "options": {"temperature": "hot"}}, "error"
    if kind in (7, 8):
        return "/api/generate", {"model": MODEL, "prompt": prompt,
                                 "options": {"num_predict": 200}}, "hang_up"
    if kind % 2:
        history = [{"role": "user", "content": prompt},
                   {"role": "assistant", "content": "I see."},
                   {"role": "user", "content": f"Go on, part {i}."}]
        return "/api/chat", {"model": MODEL, "messages": history, "options": options,
                             "stream": kind % 3 == 0}, "read"
    return "/api/generate", {"model": MODEL, "prompt": prompt, "options": options,
                             "stream": kind % 4 == 0}, "read"


async def send(session: aiohttp.ClientSession, url: str, i: int, rng: random.Random) -> None:
    path, body, how = request_for(i, rng)
    async with session.post(url + path, json=body) as resp:
        if how == "error":
            assert resp.status == 400, resp.status
        elif how == "hang_up":
            await resp.content.readline()
            await resp.content.readline()
            resp.close()  # drop the connection mid-stream
        else:
            assert resp.status == 200, await resp.text()
            await resp.read()


async def soak(url: str, total: int, concurrency: int, rss) -> list[tuple[int, float]]:
    rng = random.Random(7)
    samples: list[tuple[int, float]] = []
    done = 0
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(total):
        queue.put_nowait(i)

    async def worker(session: aiohttp.ClientSession) -> None:
        nonlocal done
        while not queue.empty():
            await send(session, url, queue.get_nowait(), rng)
            done += 1
            if done in CHECKPOINTS:
                await asyncio.sleep(0.5)  # let a hung-up stream's slot be freed first
                samples.append((done, rss()))
                print(f"{done} requests: RSS {samples[-1][1]:.1f} MB", file=sys.stderr)

    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        await asyncio.wait_for(asyncio.gather(*(worker(session) for _ in range(concurrency))),
                               TIME_LIMIT_S)
    return samples


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=4)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder, \
            ollamalite_server("ollamalite", write_config(Path(folder))) as server:
        samples = asyncio.run(soak(server.url, args.requests, args.concurrency, server.rss_mb))
    print("| requests | RSS MB |\n|---|---|")
    for count, mb in samples:
        print(f"| {count} | {mb:.1f} |")
    first, last = samples[0][1], samples[-1][1]
    print(f"\nRSS after {samples[-1][0]} vs after {samples[0][0]}: {last / first:.3f}x "
          f"({last - first:+.1f} MB); target: within 5%")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
