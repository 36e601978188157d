"""Reading a GGUF header: ollamalite's reader against the `gguf` package's GGUFReader.

Each reader runs in a process of its own (so the peak RSS is its own) on the bundled model:
the wall time of the first read and the best of three, tracemalloc's peak over one read, and
how much the process's peak RSS grew. The numbers decided registry/gguf_header.py's reader.

    .venv/bin/python bench/gguf_header.py
"""

from __future__ import annotations

import resource
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ollamalite.registry import gguf_header  # noqa: E402
from ollamalite.registry.models_file import bundled_model_path  # noqa: E402

READERS = ("cached", "arrays", "gguf")


def reader(name: str, path: Path) -> Callable[[], Any]:
    """One fresh read: the cached header (long arrays skipped), every array, or GGUFReader
    with its fields' values."""
    if name == "gguf":
        from gguf import GGUFReader

        return lambda: {f.name: f.contents() for f in GGUFReader(path).fields.values()}
    if name == "arrays":
        return lambda: gguf_header.read_header(path, arrays=True)

    def cached() -> Any:
        gguf_header._read_header_cached.cache.clear()
        return gguf_header.read_header(path)

    return cached


def measure(name: str) -> str:
    read = reader(name, bundled_model_path())
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.perf_counter()
    read()
    first = time.perf_counter() - started
    rss_growth = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before
    tracemalloc.start()
    read()
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    times = []
    for _ in range(3):
        started = time.perf_counter()
        read()
        times.append(time.perf_counter() - started)
    return (f"| {name} | {first * 1e3:.0f} | {min(times) * 1e3:.0f} | {peak / 2**10:,.0f} | "
            f"{rss_growth / 1024:.1f} |")


def main() -> None:
    if len(sys.argv) > 1:
        print(measure(sys.argv[1]))
        return
    print("| reader | first read (ms) | best of 3 (ms) | tracemalloc peak (KiB) "
          "| RSS growth (MiB) |")
    print("|---|---|---|---|---|")
    for name in READERS:
        subprocess.run([sys.executable, __file__, name], check=True)


if __name__ == "__main__":
    main()
