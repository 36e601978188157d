"""Does unloading give memory back? A server's RSS before a load, loaded, and after expiry.

Starts `python -m ollamalite serve` with the bundled model (4 slots), then prints its resident
memory: idle before any request; after a generation loads the model with `keep_alive` of a few
seconds; and once the keep-alive timer has unloaded it (`/api/ps` empty again). Then the same
for an explicit unload (`keep_alive: 0`).

    .venv/bin/python bench/rss_lifecycle.py
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from common import MODEL, Server, ollamalite_server, write_config

KEEP_ALIVE_S = 3


def post(server: Server, path: str, body: dict[str, Any]) -> dict[str, Any]:
    request = urllib.request.Request(server.url + path, json.dumps(body).encode(),
                                     {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=120) as resp:
        return json.loads(resp.read())


def loaded(server: Server) -> list[str]:
    with urllib.request.urlopen(server.url + "/api/ps", timeout=10) as resp:
        return [m["name"] for m in json.loads(resp.read())["models"]]


def generate(server: Server, keep_alive: Any) -> None:
    post(server, "/api/generate", {"model": MODEL, "prompt": "Tell me a story.", "stream": False,
                                   "keep_alive": keep_alive,
                                   "options": {"num_predict": 64, "temperature": 0}})


def wait_unloaded(server: Server, timeout: float) -> float:
    started = time.monotonic()
    while loaded(server):
        if time.monotonic() - started > timeout:
            raise RuntimeError("the model was not unloaded in time")
        time.sleep(0.2)
    return time.monotonic() - started


def main() -> int:
    rows: list[tuple[str, float]] = []
    with tempfile.TemporaryDirectory() as folder, \
            ollamalite_server("ollamalite", write_config(Path(folder)),
                              {"OLLAMA_NUM_PARALLEL": "4"}) as server:
        time.sleep(1.0)  # start-up digest hashing finishes
        rows.append(("idle, nothing loaded", server.rss_mb()))
        generate(server, f"{KEEP_ALIVE_S}s")
        rows.append((f"loaded, after a generation (keep_alive {KEEP_ALIVE_S}s)", server.rss_mb()))
        waited = wait_unloaded(server, KEEP_ALIVE_S + 10)
        rows.append((f"keep-alive expired ({waited:.1f} s later, /api/ps empty)",
                     server.rss_mb()))
        generate(server, -1)
        rows.append(("loaded again (keep_alive -1)", server.rss_mb()))
        post(server, "/api/generate", {"model": MODEL, "keep_alive": 0})
        wait_unloaded(server, 10)
        rows.append(("unloaded with keep_alive 0", server.rss_mb()))
    print("| state | RSS MB |\n|---|---|")
    for state, mb in rows:
        print(f"| {state} | {mb:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
