"""Running on this CPU: the engine decodes here (the gate: in a child process, so a crash is a
failure with its cause, not a dead pytest), and the extra-buffer-types policy decides as
docs/cpu.md says (its probe faked for the decision logic, real for the child it runs)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from ollamalite.registry.models_file import bundled_model_path
from ollamalite.runtime.engine.cpu import (
    CACHE_FILE,
    Cpu,
    CpuPolicy,
    ProbeResult,
    interpret,
    parse_system_info,
    read_cpu,
    run_probe,
    signal_name,
)
from ollamalite.settings import from_env
from tests.conftest import MODEL, PLAN, REPO, serving

AMX_CPU = Cpu("Test Xeon", frozenset({"avx2", "avx512f", "amx_tile", "amx_int8"}))
PLAIN_CPU = Cpu("Test Core", frozenset({"avx2", "fma"}))
AMX_BUILD = ("AVX2", "AVX512", "AMX_INT8")

# One token through the real engine, as a server's first request makes it.
DECODE_ONE = """
import os, queue
from ollamalite.registry.models_file import bundled_model_path
from ollamalite.runtime.engine.engine import Engine
from ollamalite.runtime.engine.jobs import Job
from ollamalite.runtime.engine.llama import LlamaModel
from ollamalite.options import SamplingParams

model = LlamaModel(bundled_model_path(), extra_bufts=os.environ["OLLAMALITE_REPACK"] == "on")
engine = Engine(model, n_slots=2, slot_ctx=128, n_batch=64)
events = queue.Queue()
prompt = model.tokenize("The sky is blue because " * 6)
engine.submit(Job(prompt=prompt, sampling=SamplingParams(temperature=0), emit=events.put,
                  num_predict=1))
while type(event := events.get(timeout=120)).__name__ == "TextChunk":
    pass
print(type(event).__name__, getattr(event, "eval_count", event))
engine.close()
"""


@pytest.mark.gate
def test_the_engine_decodes_one_token_on_this_machine(pytestconfig: pytest.Config) -> None:
    plan = pytestconfig.stash[PLAN].describe()
    child = subprocess.run([sys.executable, "-c", DECODE_ONE], cwd=REPO, capture_output=True,
                           text=True, timeout=300)
    if child.returncode < 0:
        cause = ("llama.cpp ran an instruction this CPU or VM cannot run"
                 if child.returncode == -signal.SIGILL else "llama.cpp crashed")
        pytest.fail(f"the engine died with {signal_name(-child.returncode)} decoding one token "
                    f"on this machine ({plan}): {cause}. See docs/cpu.md: OLLAMALITE_REPACK=off, "
                    f"or a build for this CPU.\n{child.stderr[-2000:]}", pytrace=False)
    assert child.returncode == 0, f"the engine failed to decode ({plan}):\n{child.stderr}"
    assert child.stdout.split() == ["Finished", "1"]


class FakeProbe:
    """Answers as told and counts its calls; `hold` keeps it inside the call until set."""

    def __init__(self, verdict: str = "works") -> None:
        self.verdict = verdict
        self.calls: list[Path] = []
        self.entered = threading.Event()
        self.hold = threading.Event()
        self.hold.set()

    def __call__(self, model: Path) -> ProbeResult:
        self.calls.append(model)
        self.entered.set()
        self.hold.wait(10)
        return ProbeResult(self.verdict, f"faked {self.verdict}")  # type: ignore[arg-type]


def policy(tmp_path: Path, probe: FakeProbe, mode: str = "auto", cpu: Cpu = AMX_CPU,
           build: tuple[str, ...] = AMX_BUILD) -> CpuPolicy:
    return CpuPolicy(mode, tmp_path, probe=probe, cpu=cpu, build=build)


@pytest.mark.parametrize("mode, expected", [("on", True), ("off", False)])
def test_a_forced_mode_decides_without_probing(tmp_path: Path, mode: str,
                                               expected: bool) -> None:
    probe = FakeProbe("traps")
    plan = policy(tmp_path, probe, mode).plan(Path("m.gguf"))
    assert plan.extra_bufts is expected and probe.calls == []
    assert plan.reason == f"set by OLLAMALITE_REPACK={mode}"
    assert not (tmp_path / CACHE_FILE).exists()


@pytest.mark.parametrize("cpu, build, why", [
    (AMX_CPU, ("AVX2", "AVX512"), "the build has no AMX kernels"),
    (PLAIN_CPU, AMX_BUILD, "the CPU does not report AMX"),
])
def test_no_probe_where_amx_cannot_run(tmp_path: Path, cpu: Cpu, build: tuple[str, ...],
                                       why: str) -> None:
    probe = FakeProbe("traps")
    plan = policy(tmp_path, probe, cpu=cpu, build=build).plan(Path("m.gguf"))
    assert plan.extra_bufts is True and probe.calls == [] and plan.reason.startswith(why)


@pytest.mark.parametrize("verdict, extra_bufts", [("traps", False), ("works", True)])
def test_a_probe_verdict_is_cached_per_cpu(tmp_path: Path, verdict: str,
                                           extra_bufts: bool) -> None:
    probe = FakeProbe(verdict)
    first = policy(tmp_path, probe).plan(Path("m.gguf"))
    assert first.extra_bufts is extra_bufts and probe.calls == [Path("m.gguf")]
    assert first.reason.startswith(f"probe {verdict} in ") and "faked" in first.reason
    again = policy(tmp_path, probe).plan(Path("m.gguf"))  # a new process, the same home
    assert again.extra_bufts is extra_bufts and len(probe.calls) == 1
    assert again.reason.startswith(f"probe {verdict} (cached ")
    policy(tmp_path, probe, build=(*AMX_BUILD, "AVX512_BF16")).plan(Path("m.gguf"))
    assert len(probe.calls) == 2  # another build is probed on its own, and so is...
    other = Cpu("Other Xeon", AMX_CPU.flags | {"avx512_fp16"})
    policy(tmp_path, probe, cpu=other).plan(Path("m.gguf"))
    assert len(probe.calls) == 3  # ...another CPU...
    saved = json.loads((tmp_path / CACHE_FILE).read_text())
    assert sorted(v["cpu"] for v in saved.values()) == ["Other Xeon", "Test Xeon",
                                                        "Test Xeon"]  # ...each one kept
    assert {v["verdict"] for v in saved.values()} == {verdict}


def test_an_inconclusive_probe_turns_them_off_without_caching(tmp_path: Path) -> None:
    probe = FakeProbe("unknown")
    plan = policy(tmp_path, probe).plan(Path("m.gguf"))
    assert plan.extra_bufts is False and plan.reason.startswith("probe inconclusive")
    assert not (tmp_path / CACHE_FILE).exists()
    policy(tmp_path, probe).plan(Path("m.gguf"))
    assert len(probe.calls) == 2


def test_a_damaged_cache_is_probed_again_and_rewritten(tmp_path: Path) -> None:
    (tmp_path / CACHE_FILE).write_text('{"abc": {"verdict": "maybe"}, "x": [')
    probe = FakeProbe("traps")
    assert policy(tmp_path, probe).plan(Path("m.gguf")).extra_bufts is False
    assert len(probe.calls) == 1
    assert [v["verdict"] for v in json.loads((tmp_path / CACHE_FILE).read_text()).values()] \
        == ["traps"]


def test_threads_asking_at_once_share_one_probe(tmp_path: Path) -> None:
    probe = FakeProbe("works")
    probe.hold.clear()
    shared = policy(tmp_path, probe)
    plans = []
    first = threading.Thread(target=lambda: plans.append(shared.plan(Path("a.gguf"))))
    first.start()
    assert probe.entered.wait(10)  # the first caller is inside the probe...
    second = threading.Thread(target=lambda: plans.append(shared.plan(Path("b.gguf"))))
    second.start()
    probe.hold.set()  # ...and the second, asking meanwhile, gets its answer
    first.join(10)
    second.join(10)
    assert probe.calls == [Path("a.gguf")] and len(plans) == 2 and plans[0] is plans[1]


def test_an_unknown_mode_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown mode 'maybe'"):
        CpuPolicy("maybe", tmp_path)


@pytest.mark.parametrize("text, mode", [("", "auto"), ("AUTO", "auto"), ("off", "off"),
                                        ("0", "off"), ("false", "off"), ("on", "on"),
                                        ("1", "on"), ("yes", "on"), ("sometimes", "auto")])
def test_the_setting_reads_ollama_style_words(text: str, mode: str) -> None:
    assert from_env({"OLLAMALITE_REPACK": text}).repack == mode


@pytest.mark.parametrize("returncode, stderr, verdict, detail", [
    (0, "", "works", "decoded a batch"),
    (-4, "", "traps", "died with SIGILL"),
    (-11, "", "traps", "died with SIGSEGV"),
    (1, "Traceback\nModelLoadError: llama.cpp could not load x\n", "unknown",
     "exited 1: ModelLoadError: llama.cpp could not load x"),
])
def test_how_a_probe_child_ended(returncode: int, stderr: str, verdict: str,
                                 detail: str) -> None:
    result = interpret(returncode, stderr)
    assert result.verdict == verdict and detail in result.detail


def test_cpu_and_build_are_read_from_their_reports(tmp_path: Path) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nmodel name\t: Intel(R) Xeon(R) Processor\n"
                       "flags\t\t: fpu avx2 amx_tile amx_int8\n\nprocessor\t: 1\n"
                       "model name\t: another\nflags\t\t: fpu\n")
    cpu = read_cpu(cpuinfo)
    assert cpu == Cpu("Intel(R) Xeon(R) Processor", frozenset({"fpu", "avx2", "amx_tile",
                                                                "amx_int8"}))
    assert cpu.has_amx and not PLAIN_CPU.has_amx
    assert read_cpu(tmp_path / "absent").flags == frozenset()
    info = "CPU : SSE3 = 1 | AVX512 = 1 | AMX_INT8 = 1 | LLAMAFILE = 0 | REPACK = 1 | "
    assert parse_system_info(info) == ("SSE3", "AVX512", "AMX_INT8", "REPACK")


def test_the_real_probe_answers_on_this_machine() -> None:
    """The child runs for real: it decodes (`works`) or dies from a signal (`traps`); any
    other end would mean the probe itself is broken."""
    result = run_probe(bundled_model_path())
    assert result.verdict in ("works", "traps"), result.detail
    if not read_cpu().has_amx:
        assert result.verdict == "works"


def test_the_real_probe_reports_a_bad_model_as_inconclusive(tmp_path: Path) -> None:
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF" + bytes(64))
    result = run_probe(bad)
    assert result.verdict == "unknown" and "exited 1" in result.detail


def test_a_server_decides_at_start_up_and_says_why(tmp_path: Path) -> None:
    """Left to itself (auto), a real server logs its plan once and then answers a chat."""
    import urllib.request

    env = {"OLLAMALITE_REPACK": "auto"}
    with serving(tmp_path, f"models:\n  {MODEL}: bundled\n", env=env) as live:
        body = json.dumps({"model": MODEL, "prompt": "Hi", "stream": False,
                           "options": {"num_predict": 2}}).encode()
        with urllib.request.urlopen(urllib.request.Request(live.url + "/api/generate", body),
                                    timeout=120) as resp:
            reply = json.load(resp)
        log = live.log()
    assert reply["done"] is True and reply["eval_count"] >= 1
    lines = [line for line in log.splitlines() if "extra buffer types (AMX" in line]
    assert len(lines) == 1 and " INFO " in lines[0], log
    probed = (tmp_path / "home" / CACHE_FILE).exists()
    assert probed == ("probe " in lines[0] and "nothing to probe" not in lines[0])
    assert os.environ["OLLAMALITE_REPACK"] in ("on", "off")  # the others' setting is untouched
