"""Whether model loads may use llama.cpp's extra CPU buffer types, decided once per process.

llama.cpp built for a CPU that reports AMX copies quantized weights into
AMX tiles' layout ("extra buffer types", also the home of the other repacked kernels) and
multiplies them with AMX instructions. Some VMs report AMX and grant it to the process
(`arch_prctl`) yet trap the instruction: the whole server then dies with SIGILL on its first
decode. No check in the parent process can tell such a VM from a working one, so the answer is
measured: a child process loads a model with the extra buffer types and decodes a batch. If the
child dies from a signal, loads here turn them off (llama-server's `--no-repack`).

The verdict is cached per CPU and llama.cpp build in `<OLLAMALITE_HOME>/cpu-probe.json`, and
the probe only runs where it can matter (the build has AMX kernels and the CPU reports AMX), so
other machines pay nothing and an AMX machine pays one child once.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Literal

import llama_cpp

log = logging.getLogger(__name__)

MODES = ("auto", "on", "off")
CACHE_FILE = "cpu-probe.json"
# Loading plus decoding a 64-token batch takes about a second for the bundled model; a big
# model read cold from disk takes far longer, but never this long.
PROBE_TIMEOUT_S = 300.0
PROBE_BATCH = 64  # tokens in the probe's batch: enough rows for AMX's tile kernels
# What /proc/cpuinfo says of AMX, and what llama.cpp's system info says of the build.
CPU_AMX_FLAGS = ("amx_tile", "amx_int8")
BUILD_AMX_FEATURE = "AMX_INT8"


@dataclass(frozen=True)
class Cpu:
    """What the processor reports about itself."""

    name: str
    flags: frozenset[str]

    @property
    def has_amx(self) -> bool:
        return all(flag in self.flags for flag in CPU_AMX_FLAGS)

    def key(self, llama_version: str, build: tuple[str, ...]) -> str:
        """Identifies a verdict: the same CPU model and flags under the same llama.cpp, built
        for the same instruction sets."""
        text = "\n".join([self.name, " ".join(sorted(self.flags)), llama_version, *build])
        return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class ProbeResult:
    """How the probe child ended: `works` (decoded), `traps` (killed by a signal) or
    `unknown` (it failed some other way: a bad model, a timeout)."""

    verdict: Literal["works", "traps", "unknown"]
    detail: str


@dataclass(frozen=True)
class CpuPlan:
    """The decision every model load of this process follows, and why, for the log."""

    extra_bufts: bool
    reason: str
    cpu: Cpu
    build: tuple[str, ...]

    def describe(self) -> str:
        amx = "reports AMX" if self.cpu.has_amx else "no AMX"
        state = "on" if self.extra_bufts else "off"
        return (f"cpu: {self.cpu.name or platform.machine()} ({amx}); llama.cpp "
                f"{llama_cpp.__version__} build: {' '.join(self.build) or 'baseline'}; "
                f"extra buffer types (AMX, repacked weights) {state}: {self.reason}")


Probe = Callable[[Path], ProbeResult]


class CpuPolicy:
    """Decides, once per process and safely from any thread, whether loads use extra buffer
    types. `mode` forces it (`on`, `off`) or leaves it to the build, the CPU and the probe."""

    def __init__(self, mode: str, cache_dir: Path, probe: Probe | None = None,
                 cpu: Cpu | None = None, build: tuple[str, ...] | None = None) -> None:
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}: one of {', '.join(MODES)}")
        self.mode = mode
        self.cache_path = cache_dir / CACHE_FILE
        self._probe = probe or run_probe
        self._cpu = cpu
        self._build = build
        self._lock = threading.Lock()
        self._plan: CpuPlan | None = None

    def plan(self, probe_model: Path) -> CpuPlan:
        """The decision, made on the first call (which may run the probe on `probe_model`:
        blocking, so call it off the event loop)."""
        with self._lock:
            if self._plan is None:
                self._plan = self._decide(probe_model)
                log.info("%s", self._plan.describe())
            return self._plan

    def _decide(self, probe_model: Path) -> CpuPlan:
        cpu = self._cpu or read_cpu()
        build = self._build if self._build is not None else build_features()

        def plan(extra_bufts: bool, reason: str) -> CpuPlan:
            return CpuPlan(extra_bufts, reason, cpu, build)

        if self.mode != "auto":
            return plan(self.mode == "on", f"set by OLLAMALITE_REPACK={self.mode}")
        if BUILD_AMX_FEATURE not in build:
            return plan(True, "the build has no AMX kernels, nothing to probe")
        if not cpu.has_amx:
            return plan(True, "the CPU does not report AMX, nothing to probe")
        key = cpu.key(llama_cpp.__version__, build)
        cached = self._read_cache().get(key)
        if cached is not None:
            verdict = cached["verdict"]
            return plan(verdict == "works",
                        f"probe {verdict} (cached {cached['at']}: {cached['detail']})")
        started = time.perf_counter()
        result = self._probe(probe_model)
        took = f"{time.perf_counter() - started:.1f}s"
        if result.verdict == "unknown":
            log.warning("the AMX probe failed (%s): extra buffer types off for safety, "
                        "not cached; OLLAMALITE_REPACK=on|off decides without it", result.detail)
            return plan(False, f"probe inconclusive in {took}: {result.detail}")
        self._write_cache(key, cpu, result)
        return plan(result.verdict == "works", f"probe {result.verdict} in {took}: "
                    f"{result.detail}")

    def _read_cache(self) -> dict[str, dict[str, str]]:
        try:
            data = json.loads(self.cache_path.read_text())
        except (OSError, ValueError):
            return {}
        if not isinstance(data, dict):
            return {}
        return {k: v for k, v in data.items() if isinstance(v, dict)
                and v.get("verdict") in ("works", "traps") and {"at", "detail"} <= v.keys()}

    def _write_cache(self, key: str, cpu: Cpu, result: ProbeResult) -> None:
        """Atomically, keeping other CPUs' verdicts (a home folder may be shared)."""
        data = self._read_cache()
        data[key] = {"verdict": result.verdict, "detail": result.detail, "cpu": cpu.name,
                     "llama_cpp": llama_cpp.__version__,
                     "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        tmp = self.cache_path.with_name(f".{CACHE_FILE}.{os.getpid()}.tmp")
        try:
            self.cache_path.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
            os.replace(tmp, self.cache_path)
        except OSError as exc:
            log.warning("cannot cache the AMX probe's verdict in %s: %s", self.cache_path, exc)


def read_cpu(cpuinfo: Path = Path("/proc/cpuinfo")) -> Cpu:
    """The first processor's model name and flags (Linux); elsewhere a name and no flags,
    which means no probe: AMX is an x86 Linux server feature."""
    try:
        text = cpuinfo.read_text(errors="replace")
    except OSError:
        return Cpu(platform.processor() or platform.machine(), frozenset())
    fields: dict[str, str] = {}
    for line in text.split("\n\n", 1)[0].splitlines():
        name, sep, value = line.partition(":")
        if sep:
            fields.setdefault(name.strip(), value.strip())
    return Cpu(fields.get("model name", platform.machine()),
               frozenset(fields.get("flags", "").split()))


def build_features() -> tuple[str, ...]:
    """The CPU features llama.cpp was compiled for (`AVX2`, `AVX512`, `AMX_INT8`, ...)."""
    return parse_system_info(llama_cpp.llama_print_system_info().decode(errors="replace"))


def parse_system_info(info: str) -> tuple[str, ...]:
    """The `X = 1` entries of llama.cpp's system info (`CPU : SSE3 = 1 | AVX = 1 | ...`)."""
    features = []
    for item in info.replace("CPU :", "|").split("|"):
        name, sep, value = item.partition("=")
        if sep and value.strip() == "1":
            features.append(name.strip())
    return tuple(dict.fromkeys(features))


def run_probe(model: Path, timeout: float = PROBE_TIMEOUT_S) -> ProbeResult:
    """Load `model` with the extra buffer types and decode one batch, in a child process."""
    command = [sys.executable, "-m", "ollamalite.runtime.engine.cpu", str(model)]
    try:
        child = subprocess.run(command, capture_output=True, text=True, timeout=timeout,
                               stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        return ProbeResult("unknown", f"no answer in {timeout:.0f}s")
    except OSError as exc:
        return ProbeResult("unknown", f"cannot start {sys.executable}: {exc}")
    return interpret(child.returncode, child.stderr)


def interpret(returncode: int, stderr: str) -> ProbeResult:
    """A signal means the CPU refused an instruction (SIGILL) or the kernels crashed: either way
    the extra buffer types are unsafe here. Any other failure says nothing about the CPU."""
    if returncode == 0:
        return ProbeResult("works", "decoded a batch with the extra buffer types")
    if returncode < 0:
        return ProbeResult("traps", f"the decoding child died with {signal_name(-returncode)}")
    last = stderr.strip().splitlines()[-1:] or ["no message"]
    return ProbeResult("unknown", f"the child exited {returncode}: {last[0][:300]}")


def signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def _probe_child(path: Path) -> None:
    """In the child: decode one batch of `PROBE_BATCH` tokens and one more, as serving does
    (the batch takes AMX's tile kernels, the single token the vector ones)."""
    from ollamalite.runtime.engine.llama import LlamaModel, decode_once

    model = LlamaModel(path, extra_bufts=True)
    decode_once(model, PROBE_BATCH)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m ollamalite.runtime.engine.cpu MODEL.gguf")
    _probe_child(Path(sys.argv[1]))
