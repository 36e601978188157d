"""Memory under a long mixed load: server RSS after 50 requests against after 1,000.

A leak in the serving path (sampler chains, KV slots, per-request buffers, cancelled streams)
shows up as RSS that keeps growing once the model and caches are warm. The requests mix
streamed and whole generate and chat calls of varying length, clients that hang up
mid-stream and requests that are refused with a 400, four at a time against one server.

The chats carry a system text of their own (a logbook page, ~250 tokens), more of them than
slots, so slots keep giving up prefixes to the host-memory prompt cache: its bound
(`--cache-ram` MiB, OLLAMALITE_CACHE_RAM) is small so that it fills early, and at every
checkpoint the cache's bytes (from /metrics) are read beside the RSS. Targets: the cache
within its bound throughout, and RSS after 1,000 requests within 5% of RSS after 250 (by
then the cache is full).

Run: python bench/soak_rss.py [--requests 1000] [--concurrency 4] [--cache-ram 32]
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
from conversation import entry

CHECKPOINTS = (50, 250, 500, 750, 1000)
CACHE_BYTES = "ollamalite_prompt_cache_bytes"
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
        page = " ".join(entry(day) for day in range(i % 50 * 7, i % 50 * 7 + 7))
        history = [{"role": "system", "content": f"Logbook page {i % 50}. {page}"},
                   {"role": "user", "content": prompt},
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


async def cache_mb(session: aiohttp.ClientSession, url: str) -> float:
    """The host-memory prompt cache's size from /metrics, in MB."""
    async with session.get(url + "/metrics") as resp:
        for line in (await resp.text()).splitlines():
            if line.startswith(CACHE_BYTES + " "):
                return float(line.split()[1]) / 1e6
    return 0.0


async def soak(url: str, total: int, concurrency: int, rss
               ) -> list[tuple[int, float, float]]:
    rng = random.Random(7)
    samples: list[tuple[int, float, float]] = []
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
                samples.append((done, rss(), await cache_mb(session, url)))
                print(f"{done} requests: RSS {samples[-1][1]:.1f} MB, prompt cache "
                      f"{samples[-1][2]:.1f} MB", file=sys.stderr)

    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        await asyncio.wait_for(asyncio.gather(*(worker(session) for _ in range(concurrency))),
                               TIME_LIMIT_S)
    return samples


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--cache-ram", type=int, default=32, help="MiB")
    args = parser.parse_args()
    env = {"OLLAMALITE_CACHE_RAM": str(args.cache_ram)}
    with tempfile.TemporaryDirectory() as folder, \
            ollamalite_server("ollamalite", write_config(Path(folder)), env) as server:
        samples = asyncio.run(soak(server.url, args.requests, args.concurrency, server.rss_mb))
    print("| requests | RSS MB | prompt cache MB |\n|---|---|---|")
    for count, mb, cached in samples:
        print(f"| {count} | {mb:.1f} | {cached:.1f} |")
    bound = args.cache_ram * (1 << 20) / 1e6
    warm = samples[1] if len(samples) > 1 else samples[0]
    print(f"\nprompt cache at most {max(s[2] for s in samples):.1f} MB of its {bound:.1f} MB; "
          f"RSS after {samples[-1][0]} vs after {warm[0]}: {samples[-1][1] / warm[1]:.3f}x "
          f"({samples[-1][1] - warm[1]:+.1f} MB), after {samples[0][0]}: "
          f"{samples[-1][1] - samples[0][1]:+.1f} MB; target: within 5% of the warm RSS")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
