"""What the benchmarks share: the model and settings, the prompts, a timed stream, server processes.

Every benchmark runs the bundled SmolLM2-135M with the same thread count and greedy sampling,
so differences between systems come from the serving path, not from the settings. Servers are
real subprocesses on free loopback ports, each in its own process group, stopped however the
benchmark ends.
"""

from __future__ import annotations

import http.client
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import IO, Iterator

import llama_cpp

from ollamalite.registry.models_file import bundled_model_path
from ollamalite.runtime.engine.cpu import CpuPlan, CpuPolicy
from ollamalite.settings import current

REPO = Path(__file__).resolve().parent.parent

MODEL = "smollm2:135m"  # the bundled model's name in models.yaml
THREADS = 2
N_CTX = 4096  # context tokens per sequence (slot), in every system
HOST = "127.0.0.1"
BUILD_SCRIPT = Path(__file__).resolve().parent / "build_llama_server.sh"
STARTUP_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 10.0

# Story openings that SmolLM2-135M continues past 128 tokens without an end-of-sequence at
# temperature 0, also under run.py's "(104) " numbering (it checks, and notes a stream that
# stops early). They differ from the first word, so concurrent clients share no prompt prefix.
PROMPTS = (
    "Once upon a time, in a small village at the edge of a great forest, there lived an "
    "old clockmaker named Elias. Every morning he",
    "The storm had been raging for three days when the lighthouse keeper finally saw a small "
    "boat struggling against the waves. She",
    "Deep beneath the city, in tunnels forgotten for a hundred years, a young engineer named "
    "Mara found a door that",
    "When the last train left the station that winter evening, the old conductor noticed a "
    "suitcase that nobody had claimed. Inside it",
    "My grandmother kept a garden behind her house where nothing ever grew in straight lines. "
    "Every spring she would",
    "Captain Reyes had sailed the northern sea for twenty years, but she had never seen the "
    "water turn silver at night. That evening",
    "In the mountain town of Kestrel, the baker rose before dawn to light his ovens. One cold "
    "morning he discovered that",
    "Professor Adaeze Okafor opened the envelope from the museum and read the letter twice. "
    "The ancient map it described",
    "Every night at midnight the old piano in the empty hall began to play by itself. The "
    "caretaker, a quiet man named Tomas,",
    "The twins had never been allowed into the attic, but on the morning of their tenth "
    "birthday the door stood open, and inside they saw",
    "Nobody in the valley remembered who had built the stone bridge, but the children said "
    "that on foggy mornings",
    "After forty years at sea, the retired captain opened a small bookshop by the harbour. "
    "On its first morning",
    "High in the desert, an astronomer named Lina pointed her telescope at a star that had "
    "not been there the night before. She",
    "The robot had been built to sweep the floors of the library, but one evening it opened "
    "a book and",
    "Grandfather's radio crackled to life during the blackout, and a voice none of us knew "
    "began to",
    "When the circus came to the little port town, the youngest acrobat noticed that the old "
    "elephant could",
)


@dataclass(frozen=True)
class Run:
    """One streamed completion, timed at the client (`time.perf_counter` seconds)."""

    started: float
    arrivals: list[float]  # when each text-bearing chunk arrived (one token each, normally)
    tokens: int  # tokens generated, as the system counts them
    finish_reason: str  # "length" when the token budget was reached, "stop" at end-of-sequence
    text: str = ""
    eval_count: int | None = None  # ollamalite's own counters, from its final line
    eval_duration_ns: int | None = None

    @property
    def decode_tps(self) -> float:
        """Decode speed: tokens after the first over the time between first and last."""
        if len(self.arrivals) < 2:
            return float("nan")
        return (self.tokens - 1) / (self.arrivals[-1] - self.arrivals[0])

    @property
    def ttft_ms(self) -> float:
        return (self.arrivals[0] - self.started) * 1e3 if self.arrivals else float("nan")


# -- the CPU kernels every system runs ----------------------------------------------------------

@lru_cache(maxsize=None)
def cpu_plan() -> CpuPlan:
    """ollamalite's decision on this machine (OLLAMALITE_REPACK, else its cached probe), which
    every system then follows: the same llama.cpp build and the same extra buffer types (AMX,
    repacked weights), or the comparison would measure kernels instead of serving."""
    settings = current()
    plan = CpuPolicy(settings.repack, settings.data_dir).plan(bundled_model_path())
    print(plan.describe(), file=sys.stderr)
    return plan


def repack_env() -> dict[str, str]:
    """For an ollamalite server: the plan, forced, so it needs no probe of its own."""
    return {"OLLAMALITE_REPACK": "on" if cpu_plan().extra_bufts else "off"}


# -- llama-cpp-python's high-level API, in process ----------------------------------------------

def load_llama() -> llama_cpp.Llama:
    """`Llama` as a user would create it (flash attention stays off, its default). It takes
    no extra-buffer-types argument, so its default model parameters carry the plan's."""
    defaults = llama_cpp.llama_cpp.llama_model_default_params

    def planned_defaults() -> llama_cpp.llama_model_params:
        params = defaults()
        params.use_extra_bufts = cpu_plan().extra_bufts
        return params

    llama_cpp.llama_cpp.llama_model_default_params = planned_defaults
    try:
        return llama_cpp.Llama(model_path=str(bundled_model_path()), n_ctx=N_CTX,
                               n_threads=THREADS, n_threads_batch=THREADS, verbose=False)
    finally:
        llama_cpp.llama_cpp.llama_model_default_params = defaults


def run_llama(llm: llama_cpp.Llama, prompt: str, n: int) -> Run:
    """Every chunk before the final one carries one token's text (no stop strings are set)."""
    arrivals: list[float] = []
    parts: list[str] = []
    finish = ""
    started = time.perf_counter()
    for chunk in llm.create_completion(prompt, max_tokens=n, temperature=0, stream=True):
        now = time.perf_counter()
        choice = chunk["choices"][0]
        if choice["finish_reason"] is None:
            arrivals.append(now)
            parts.append(choice["text"])
        else:
            finish = choice["finish_reason"]
    return Run(started, arrivals, len(arrivals), finish, "".join(parts))


# -- server subprocesses ------------------------------------------------------------------------

@dataclass(frozen=True)
class Server:
    """A running server subprocess and where it listens."""

    name: str
    port: int
    proc: subprocess.Popen[bytes]

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def rss_mb(self) -> float:
        return rss_mb(self.proc.pid)

    def counter(self, name: str) -> float:
        """The sum of a Prometheus counter's series on the server's /metrics (0 if absent)."""
        with urllib.request.urlopen(self.url + "/metrics", timeout=30) as resp:
            text = resp.read().decode()
        return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                   if line.startswith(name + "{") or line.startswith(name + " "))


def rss_mb(pid: int) -> float:
    """A process's resident memory now, from /proc/<pid>/status (VmRSS, in kB)."""
    status = Path(f"/proc/{pid}/status").read_text()
    line = next(line for line in status.splitlines() if line.startswith("VmRSS:"))
    return int(line.split()[1]) / 1024


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def answers(port: int, path: str) -> bool:
    conn = http.client.HTTPConnection(HOST, port, timeout=2)
    try:
        conn.request("GET", path)
        return conn.getresponse().status == 200
    except OSError:
        return False
    finally:
        conn.close()


def wait_until_ready(name: str, proc: subprocess.Popen[bytes], port: int, path: str,
                     log: IO[bytes]) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while not answers(port, path):
        if proc.poll() is not None or time.monotonic() > deadline:
            log.seek(0)
            raise RuntimeError(f"{name} did not come up on port {port}:\n"
                               + log.read().decode(errors="replace")[-4000:])
        time.sleep(0.1)


def stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM to the process group the server leads, SIGKILL if it lingers."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        try:
            proc.wait(timeout=STOP_TIMEOUT_S)
            break
        except subprocess.TimeoutExpired:
            continue
    proc.wait()


@contextmanager
def serving(name: str, cmd: list[str], port: int, ready_path: str,
            env: dict[str, str] | None = None) -> Iterator[Server]:
    """Start `cmd` in a new process group, wait until `GET ready_path` answers 200, yield it;
    stop the whole group however the block exits. Its output goes to a temp file, shown if it
    fails to start."""
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:
            wait_until_ready(name, proc, port, ready_path, log)
            yield Server(name, port, proc)
        finally:
            stop(proc)


def exit_on_sigterm() -> None:
    """Turn SIGTERM (`timeout`, a closed terminal) into SystemExit, so that the `with` blocks
    holding server subprocesses stop them instead of leaving them running."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))


def write_config(folder: Path) -> Path:
    """A models.yaml with the bundled model at `N_CTX` per slot, never unloaded."""
    config = folder / "models.yaml"
    config.write_text(f"models:\n  {MODEL}:\n    path: bundled\n    num_ctx: {N_CTX}\n"
                      "    keep_alive: -1\n")
    return config


def ollamalite_server(name: str, config: Path,
                      env: dict[str, str] | None = None) -> AbstractContextManager[Server]:
    """`python -m ollamalite serve` with `THREADS` threads, plus any extra environment."""
    port = free_port()
    cmd = [sys.executable, "-m", "ollamalite", "serve", "--host", HOST, "--port", str(port),
           "--config", str(config)]
    full_env = {**os.environ, "OLLAMALITE_NUM_THREADS": str(THREADS), **repack_env(),
                **(env or {})}
    return serving(name, cmd, port, "/", full_env)


def llama_server_binary(skip: bool) -> tuple[str | None, str]:
    """The cached llama-server binary (built on first use), or None and why not."""
    if skip:
        return None, "llama-server skipped (--skip-llama-server)"
    if not BUILD_SCRIPT.exists():
        return None, f"llama-server skipped: {BUILD_SCRIPT.relative_to(REPO)} is missing"
    print("llama-server: asking build_llama_server.sh (the first build takes minutes)",
          file=sys.stderr)
    done = subprocess.run(["bash", str(BUILD_SCRIPT)], stdout=subprocess.PIPE, text=True,
                          check=False)
    binary = done.stdout.strip()
    if done.returncode != 0 or not binary:
        return None, (f"llama-server skipped: {BUILD_SCRIPT.name} exited {done.returncode} "
                      "(its reason is on stderr above)")
    version = subprocess.run([binary, "--version"], capture_output=True, text=True, check=False)
    first = (version.stdout + version.stderr).strip().splitlines()
    return binary, f"llama-server: {binary} ({first[0] if first else 'version unknown'})"


def llama_server(name: str, binary: str, n_parallel: int,
                 extra: tuple[str, ...] = ()) -> AbstractContextManager[Server]:
    """`-c` is llama-server's total context, split evenly over its `-np` slots; `extra`
    arguments go last (a speculative decoding setting)."""
    port = free_port()
    cmd = [binary, "-m", str(bundled_model_path()), "--host", HOST, "--port", str(port),
           "-np", str(n_parallel), "-t", str(THREADS), "-tb", str(THREADS),
           "-c", str(N_CTX * n_parallel), *extra]
    if not cpu_plan().extra_bufts:
        cmd.append("--no-repack")  # llama-server's name for the same switch
    return serving(name, cmd, port, "/health")
