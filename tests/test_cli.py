"""The `ollamalite` client commands as a user runs them: a subprocess against the live server,
asserting on what it prints (pipes, and a pseudo-terminal for the interactive chat)."""

from __future__ import annotations

import os
import re
import select
import signal
import subprocess
import sys
import time
from typing import Any

import httpx
import pytest

from ollamalite.registry import modelfile
from tests.conftest import MODEL, PIRATE, PIRATE_SYSTEM, REPO, LiveServer, free_port

HEX12 = re.compile(r"^[0-9a-f]{12}$")
PROMPT_TOKENS = re.compile(r"slot \d+: (\d+) prompt tokens")


def cli(url: str, *args: str, stdin: str | None = None,
        timeout: float = 180) -> subprocess.CompletedProcess[str]:
    """Runs `python -m ollamalite ARGS` with OLLAMA_HOST at `url`; stdin is never a TTY."""
    return subprocess.run(
        [sys.executable, "-m", "ollamalite", *args], cwd=REPO, text=True, timeout=timeout,
        env={**os.environ, "OLLAMA_HOST": url}, capture_output=True,
        input=stdin, stdin=subprocess.DEVNULL if stdin is None else None)


def columns(stdout: str) -> tuple[str, list[dict[str, str]]]:
    """The header and the rows of a table, cut at the header's column starts."""
    lines = stdout.splitlines()
    header = lines[0]
    starts = [m.start() for m in re.finditer(r"\S+", header)]
    names = header.split()
    rows = []
    for line in lines[1:]:
        cells = [line[a:b].strip() for a, b in zip(starts, [*starts[1:], None], strict=True)]
        rows.append(dict(zip(names, cells, strict=True)))
    return header, rows


def wait_for_log(server: LiveServer, since: int, text: str, timeout: float = 15) -> bool:
    deadline = time.monotonic() + timeout
    while text not in server.log()[since:]:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def prompt_token_counts(server: LiveServer, since: int) -> list[int]:
    return [int(n) for n in PROMPT_TOKENS.findall(server.log()[since:])]


@pytest.fixture(scope="module")
def tags(base_url: str) -> dict[str, dict[str, Any]]:
    return {m["name"]: m for m in httpx.get(base_url + "/api/tags").json()["models"]}


# -- list, ps, show, stop -----------------------------------------------------------------------

@pytest.mark.parametrize("command", ["list", "ls"])
def test_list_shows_models_like_ollama(base_url: str, tags: dict, command: str) -> None:
    out = cli(base_url, command)
    assert out.returncode == 0 and out.stderr == ""
    header, rows = columns(out.stdout)
    assert header.split() == ["NAME", "ID", "SIZE", "MODIFIED"]
    by_name = {row["NAME"]: row for row in rows}
    assert set(by_name) == set(tags)
    row = by_name[MODEL]
    assert HEX12.match(row["ID"]) and row["ID"] == tags[MODEL]["digest"][:12]
    assert re.fullmatch(r"\d+ MB", row["SIZE"])
    assert row["MODIFIED"].endswith(" ago")


def test_list_filters_by_prefix(base_url: str) -> None:
    _, rows = columns(cli(base_url, "list", "pir").stdout)
    assert [row["NAME"] for row in rows] == [PIRATE]


def test_ps_shows_a_loaded_model_until_stop(base_url: str, tags: dict) -> None:
    assert cli(base_url, "run", "pirate", "Hi", "--keepalive", "10m").returncode == 0
    out = cli(base_url, "ps")
    header, rows = columns(out.stdout)
    assert header.split() == ["NAME", "ID", "SIZE", "PROCESSOR", "CONTEXT", "UNTIL"]
    row = {r["NAME"]: r for r in rows}[PIRATE]
    assert row["ID"] == tags[PIRATE]["digest"][:12]
    assert row["PROCESSOR"] == "100% CPU" and row["CONTEXT"] == "1024"
    assert re.fullmatch(r"\d+ MB", row["SIZE"])
    assert row["UNTIL"] in ("9 minutes from now", "10 minutes from now")

    stop = cli(base_url, "stop", "pirate")
    assert (stop.returncode, stop.stdout, stop.stderr) == (0, "", "")
    assert PIRATE not in cli(base_url, "ps").stdout


def test_ps_says_forever_for_a_negative_keepalive(base_url: str) -> None:
    assert cli(base_url, "run", "pirate", "Hi", "--keepalive=-1m").returncode == 0
    _, rows = columns(cli(base_url, "ps").stdout)
    assert {r["NAME"]: r for r in rows}[PIRATE]["UNTIL"] == "Forever"
    assert cli(base_url, "stop", "pirate").returncode == 0


def test_show_prints_the_sectioned_summary(base_url: str) -> None:
    out = cli(base_url, "show", "pirate")
    assert out.returncode == 0
    sections = re.findall(r"^  (\w+)$", out.stdout, re.M)
    assert sections == ["Model", "Capabilities", "Parameters", "System", "License"]
    model = dict(re.findall(r"^    (\w[\w ]*?)\s{4,}(\S+)$", out.stdout, re.M))
    assert model["architecture"] == "llama" and model["parameters"] == "135M"
    assert model["context length"] == "8192" and model["embedding length"] == "576"
    assert model["quantization"] == "Q4_1"
    assert re.search(r"^    completion$", out.stdout, re.M)
    assert re.search(r"^    num_predict\s+8$", out.stdout, re.M)
    assert f"    {PIRATE_SYSTEM}\n" in out.stdout


def test_show_verbose_adds_metadata(base_url: str) -> None:
    out = cli(base_url, "show", MODEL, "--verbose").stdout
    assert "  Metadata\n" in out
    assert re.search(r"^    general\.architecture\s+llama$", out, re.M)


def test_show_modelfile_round_trips_through_the_parser(base_url: str) -> None:
    out = cli(base_url, "show", "pirate", "--modelfile")
    assert out.returncode == 0
    assert out.stdout.startswith('# Modelfile generated by "ollama show"\n')
    parsed = modelfile.parse(out.stdout)
    assert parsed["system"] == PIRATE_SYSTEM and parsed["parameters"]["num_predict"] == "8"
    assert parsed["from"].endswith(".gguf") and "<|im_start|>" in parsed["template"]


@pytest.mark.parametrize("flag, expected", [
    ("--system", PIRATE_SYSTEM), ("--parameters", "num_predict"), ("--template", "{%"),
    ("--license", "apache-2.0"),
])
def test_show_single_fields(base_url: str, flag: str, expected: str) -> None:
    out = cli(base_url, "show", "pirate", flag)
    assert out.returncode == 0 and expected in out.stdout and "  Model" not in out.stdout


def test_show_refuses_two_fields(base_url: str) -> None:
    out = cli(base_url, "show", "pirate", "--system", "--license")
    assert out.returncode == 1 and out.stderr.startswith("Error: only one of")


# -- run ----------------------------------------------------------------------------------------

def test_run_prints_the_models_answer(base_url: str) -> None:
    prompt = "What is your favourite ship?"
    out = cli(base_url, "run", "pirate", prompt)
    assert out.returncode == 0 and out.stderr == ""
    assert out.stdout.endswith("\n\n") and out.stdout.strip()
    api = httpx.post(base_url + "/api/generate", timeout=120,
                     json={"model": "pirate", "prompt": prompt, "stream": False}).json()
    assert out.stdout == api["response"] + "\n\n"


def test_run_reads_piped_stdin_as_the_prompt(base_url: str) -> None:
    out = cli(base_url, "run", "pirate", stdin="What is your name?\n")
    assert out.returncode == 0 and out.stdout.strip()
    api = httpx.post(base_url + "/api/generate", timeout=120,
                     json={"model": "pirate", "prompt": "What is your name?\n",
                           "stream": False}).json()
    assert out.stdout == api["response"] + "\n\n"


def test_run_verbose_prints_timings(base_url: str) -> None:
    out = cli(base_url, "run", "pirate", "Hello", "--verbose")
    assert out.returncode == 0 and out.stdout.strip()
    for label in ("total duration", "prompt eval count", "prompt eval rate", "eval count",
                  "eval duration", "eval rate"):
        assert re.search(rf"^{label}:\s+\S", out.stderr, re.M), label
    assert re.search(r"^eval count:\s+[1-8] token\(s\)$", out.stderr, re.M)
    assert re.search(r"^eval rate:\s+\d+\.\d\d tokens/s$", out.stderr, re.M)


def test_ctrl_c_stops_the_stream(server: LiveServer) -> None:
    since = len(server.log())
    proc = subprocess.Popen(
        [sys.executable, "-m", "ollamalite", "run", MODEL, "Write a very long story about a "
         "dragon who learns to sail across all the seas of the world."],
        cwd=REPO, env={**os.environ, "OLLAMA_HOST": server.url}, stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert os.read(proc.stdout.fileno(), 64)  # the answer has started
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130 and b"Traceback" not in err
    assert wait_for_log(server, since, "client went away, generation cancelled")


# -- errors -------------------------------------------------------------------------------------

@pytest.mark.parametrize("args, message", [
    (["show", "nosuch"], 'Error: model "nosuch" not found'),
    (["run", "nosuch", "hi"], "Error: "),
    (["stop", "nosuch"], 'Error: couldn\'t find model "nosuch" to stop'),
    (["pull", "nosuch"], "Error: "),
    (["run", "pirate", "hi", "--keepalive", "-1"], 'Error: time: missing unit in duration "-1"'),
])
def test_errors_print_error_and_exit_1(base_url: str, args: list[str], message: str) -> None:
    out = cli(base_url, *args)
    assert out.returncode == 1 and out.stdout == ""
    assert out.stderr.startswith(message) and "Traceback" not in out.stderr


def test_pull_of_a_local_model_reports_success(base_url: str) -> None:
    out = cli(base_url, "pull", MODEL)
    assert out.returncode == 0 and out.stderr.splitlines()[-1] == "success"


@pytest.mark.parametrize("args", [["list"], ["run", "pirate", "hi"]])
def test_no_server_is_a_clear_error(args: list[str]) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    out = cli(url, *args)
    assert out.returncode == 1
    assert out.stderr == (f"Error: could not connect to ollamalite server at {url}; "
                          'start it with "ollamalite serve"\n')


# -- interactive --------------------------------------------------------------------------------

class Terminal:
    """`ollamalite run MODEL` on a pseudo-terminal, as a person would type into it."""

    def __init__(self, url: str, *args: str) -> None:
        self.master, slave = os.openpty()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "ollamalite", "run", *args], cwd=REPO,
            env={**os.environ, "OLLAMA_HOST": url, "TERM": "dumb"},
            stdin=slave, stdout=slave, stderr=slave)
        os.close(slave)
        self.output = ""

    def expect(self, text: str, timeout: float = 120) -> str:
        """Reads until `text` appears; returns what came before it and consumes both."""
        deadline = time.monotonic() + timeout
        while text not in self.output:
            assert time.monotonic() < deadline, f"no {text!r} in {self.output!r}"
            if select.select([self.master], [], [], 0.2)[0]:
                self.output += os.read(self.master, 4096).decode(errors="replace")
        before, _, self.output = self.output.partition(text)
        return before

    def line(self, text: str) -> None:
        os.write(self.master, (text + "\n").encode())

    def close(self) -> int:
        try:
            return self.proc.wait(timeout=30)
        finally:
            os.close(self.master)


@pytest.fixture
def terminal(base_url: str) -> Terminal:
    term = Terminal(base_url, "pirate")
    yield term
    if term.proc.poll() is None:
        term.proc.kill()
        term.close()


def test_interactive_chat_keeps_history_until_clear(server: LiveServer,
                                                     terminal: Terminal) -> None:
    terminal.expect(">>> ")
    since = len(server.log())
    terminal.line('"""')
    terminal.expect("... ")
    terminal.line("Tell me, what is")
    terminal.line('your name and your ship?"""')
    answer = terminal.expect(">>> ").split('ship?"""', 1)[1]
    assert answer.strip()

    terminal.line("Hi")
    terminal.expect(">>> ")
    terminal.line("/clear")
    assert "Cleared session context" in terminal.expect(">>> ")
    terminal.line("Hi")
    terminal.expect(">>> ")
    first, second, after_clear = prompt_token_counts(server, since)
    assert second > first > after_clear  # turn 2 carries turn 1; after /clear only "Hi"

    terminal.line("/bye")
    assert terminal.close() == 0


def test_interactive_commands(terminal: Terminal) -> None:
    terminal.expect(">>> ")
    terminal.line("/?")
    assert 'Use """ to begin a multi-line message.' in terminal.expect(">>> ")
    terminal.line("/set parameter num_predict 4")
    assert "Set parameter 'num_predict' to '4'" in terminal.expect(">>> ")
    terminal.line("/set parameter num_predict many")
    assert "Couldn't set parameter: invalid int value [many]" in terminal.expect(">>> ")
    terminal.line('/set system """You are')
    terminal.line('a cat."""')
    assert "Set system message." in terminal.expect(">>> ")
    terminal.line("/show system")
    assert "You are\na cat." in terminal.expect(">>> ").replace("\r\n", "\n")
    terminal.line("/show info")
    shown = terminal.expect(">>> ")
    assert "  Model" in shown and re.search(r"architecture\s+llama", shown)
    terminal.line("/nonsense")
    assert "Unknown command '/nonsense'. Type /? for help" in terminal.expect(">>> ")
    terminal.line("/bye")
    assert terminal.close() == 0


def test_interactive_ctrl_c_stops_the_answer_and_keeps_the_session(
        server: LiveServer, terminal: Terminal) -> None:
    terminal.expect(">>> ")
    terminal.line("/set parameter num_predict 1000")
    terminal.expect(">>> ")
    since = len(server.log())
    terminal.line("Tell me a very long story about the sea and all its ships.")
    terminal.expect("ships.")
    time.sleep(0.5)
    terminal.proc.send_signal(signal.SIGINT)
    terminal.expect(">>> ")
    assert wait_for_log(server, since, "client went away, generation cancelled")
    terminal.line("/set parameter num_predict 4")
    terminal.expect(">>> ")
    terminal.line("Hi")
    assert terminal.expect(">>> ").split("Hi", 1)[1].strip()  # the session goes on
    os.write(terminal.master, b"\x04")  # Ctrl-D on an empty line ends it
    assert terminal.close() == 0
