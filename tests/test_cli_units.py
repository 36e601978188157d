"""Pure logic of the client commands: human formats, Modelfiles, progress, answer printing."""

from __future__ import annotations

import argparse
import hashlib
import io
from datetime import datetime, timedelta, timezone
from pathlib import Path

import llama_cpp
import pytest

from ollamalite import __version__, cli
from ollamalite.client.api import ClientError, server_url
from ollamalite.client.commands import processor, short_id, until
from ollamalite.client.create import CreateError, create_request
from ollamalite.client.humanize import (
    go_duration,
    human_bytes,
    human_number,
    human_time,
    parse_time,
    table,
)
from ollamalite.client.progress import Progress, follow
from ollamalite.client.run import (
    AnswerPrinter,
    Session,
    format_value,
    keep_alive_value,
    print_stats,
    think_value,
)
from ollamalite.client.show_info import print_show
from ollamalite.runtime.engine.cpu import build_features

NOW = datetime(2026, 1, 1, 12, 0, 0, tzinfo=timezone.utc)


@pytest.mark.parametrize("n, text", [
    (0, "0 B"), (999, "999 B"), (1000, "1 KB"), (1500, "1.5 KB"), (98_000_000, "98 MB"),
    (97_600_000, "97 MB"), (1_000_000_000, "1 GB"), (4_700_000_000, "4.7 GB"),
    (12_345_678_901, "12 GB"), (2 * 10**12, "2 TB"),
])
def test_human_bytes(n: int, text: str) -> None:
    assert human_bytes(n) == text


@pytest.mark.parametrize("n, text", [
    (999, "999"), (1_500, "2K"), (135_000_000, "135M"), (134_515_008, "134.52M"),
    (7_000_000_000, "7B"), (1_240_000_000, "1.2B"),
])
def test_human_number(n: int, text: str) -> None:
    assert human_number(n) == text


@pytest.mark.parametrize("delta, text", [
    (timedelta(seconds=-0.5), "Less than a second ago"),
    (timedelta(seconds=-1), "1 second ago"),
    (timedelta(seconds=-45), "45 seconds ago"),
    (timedelta(seconds=-90), "About a minute ago"),
    (timedelta(minutes=-2, seconds=-10), "2 minutes ago"),
    (timedelta(minutes=-70), "About an hour ago"),
    (timedelta(hours=-5), "5 hours ago"),
    (timedelta(days=-3), "3 days ago"),
    (timedelta(days=-20), "2 weeks ago"),
    (timedelta(days=-100), "3 months ago"),
    (timedelta(days=-800), "2 years ago"),
    (timedelta(minutes=4, seconds=59), "4 minutes from now"),
    (timedelta(days=365 * 292), "Forever"),
])
def test_human_time(delta: timedelta, text: str) -> None:
    assert human_time(NOW + delta, "Never", NOW) == text


def test_human_time_of_nothing_is_the_zero_word() -> None:
    assert human_time(None, "Never", NOW) == "Never"


def test_parse_time_reads_ollama_timestamps() -> None:
    local = parse_time("2025-05-10T08:06:48.639712648-07:00")
    assert local == datetime(2025, 5, 10, 15, 6, 48, 639712, tzinfo=timezone.utc)
    assert parse_time("2025-10-26T17:21:21.196249Z") == datetime(
        2025, 10, 26, 17, 21, 21, 196249, tzinfo=timezone.utc)
    assert parse_time("") is None


def test_until_column() -> None:
    assert until((NOW - timedelta(seconds=1)).isoformat(), NOW) == "Stopping..."
    assert until((NOW + timedelta(minutes=4, seconds=30)).isoformat(), NOW) == (
        "4 minutes from now")
    assert until("2318-01-01T00:00:00+00:00", NOW) == "Forever"


@pytest.mark.parametrize("size, vram, text", [
    (100, 0, "100% CPU"), (100, 100, "100% GPU"), (100, 25, "75%/25% CPU/GPU"),
    (100, 200, "Unknown"),
])
def test_processor_column(size: int, vram: int, text: str) -> None:
    assert processor(size, vram) == text


def test_short_id_is_twelve_hex() -> None:
    assert short_id("sha256:" + "ab" * 32) == "abababababab"
    assert short_id("0123456789abcdef") == "0123456789ab"


@pytest.mark.parametrize("ns, text", [
    (0, "0s"), (999, "999ns"), (1_500, "1.5µs"), (12_300_000, "12.3ms"),
    (385_314_006, "385.314006ms"), (1_000_000_000, "1s"), (1_234_567_891, "1.234567891s"),
    (62_500_000_000, "1m2.5s"), (3_600_000_000_000, "1h0m0s"),
])
def test_go_duration(ns: int, text: str) -> None:
    assert go_duration(ns) == text


def test_table_pads_columns_by_four_spaces() -> None:
    assert table([["NAME", "ID"], ["smollm2:135m", "abc"]]) == [
        "NAME            ID", "smollm2:135m    abc"]
    assert table([["", "key", "v"]]) == ["    key    v"]


@pytest.mark.parametrize("value, url", [
    ("", "http://127.0.0.1:11434"),
    ("example.com", "http://example.com:11434"),
    ("10.0.0.2:8080", "http://10.0.0.2:8080"),
    ("http://example.com", "http://example.com:80"),
    ("https://example.com:8443/", "https://example.com:8443"),
    ("0.0.0.0:11500", "http://127.0.0.1:11500"),
    (":11500", "http://127.0.0.1:11500"),
    ("[::1]:9000", "http://[::1]:9000"),
])
def test_server_url_follows_ollama_host(value: str, url: str) -> None:
    assert server_url({"OLLAMA_HOST": value}) == url


# -- Modelfiles -> /api/create ------------------------------------------------------------------

MODELFILE = '''\
# a comment
FROM llama3.2:1b
PARAMETER temperature 0.5
PARAMETER num_ctx 4096
PARAMETER stop "<|im_end|>"
PARAMETER stop <|eot|>
parameter use_mmap false
SYSTEM """You are
a "helpful" assistant."""
TEMPLATE "{{ .Prompt }}"
MESSAGE user Hi there
MESSAGE assistant "Hello!"
LICENSE MIT
'''


def test_create_request_is_ollamas_json_form(tmp_path: Path) -> None:
    plan = create_request(MODELFILE, tmp_path)
    assert plan.uploads == {}
    assert plan.body == {
        "from": "llama3.2:1b",
        "parameters": {"temperature": 0.5, "num_ctx": 4096, "stop": ["<|im_end|>", "<|eot|>"],
                       "use_mmap": False},
        "system": 'You are\na "helpful" assistant.',
        "template": "{{ .Prompt }}",
        "messages": [{"role": "user", "content": "Hi there"},
                     {"role": "assistant", "content": "Hello!"}],
        "license": ["MIT"],
    }


def test_create_request_uploads_a_local_gguf_relative_to_the_modelfile(tmp_path: Path) -> None:
    (tmp_path / "weights.gguf").write_bytes(b"GGUF fake")
    plan = create_request("FROM ./weights.gguf\nSYSTEM hi\n", tmp_path)
    digest = "sha256:" + hashlib.sha256(b"GGUF fake").hexdigest()
    assert plan.body == {"files": {"weights.gguf": digest}, "system": "hi"}
    assert plan.uploads == {(tmp_path / "weights.gguf").resolve(): digest}


@pytest.mark.parametrize("text, message", [
    ("SYSTEM hi\n", "no FROM line"),
    ("FROM x\nBOGUS y\n", "command must be one of"),
    ("FROM x\nPARAMETER nonsense 1\n", "unknown parameter 'nonsense'"),
    ("FROM x\nPARAMETER num_ctx big\n", "invalid int value [big]"),
    ("FROM x\nPARAMETER temperature hot\n", "invalid float value [hot]"),
    ("FROM x\nPARAMETER use_mmap maybe\n", "invalid bool value [maybe]"),
])
def test_bad_modelfiles_are_refused(text: str, message: str) -> None:
    with pytest.raises(CreateError) as err:
        create_request(text, Path("."))
    assert message in str(err.value)


# -- run options and output ---------------------------------------------------------------------

def test_run_option_values() -> None:
    assert format_value(None) is None and format_value("json") == "json"
    assert format_value('{"type": "object"}') == {"type": "object"}
    with pytest.raises(ClientError, match="invalid format"):
        format_value("yaml")
    assert think_value("true") is True and think_value("false") is False
    assert think_value("high") == "high" and think_value(None) is None
    assert keep_alive_value("10m") == "10m" and keep_alive_value(None) is None
    with pytest.raises(ClientError, match='missing unit in duration "-1"'):
        keep_alive_value("-1")


def test_session_body_sends_only_what_was_asked() -> None:
    assert Session("m").body(prompt="hi") == {"model": "m", "prompt": "hi"}
    session = Session("m", format="json", think=False, keep_alive="5m",
                      options={"seed": 1})
    assert session.body(prompt="") == {"model": "m", "prompt": "", "format": "json",
                                       "think": False, "keep_alive": "5m",
                                       "options": {"seed": 1}}


def test_answer_printer_frames_thinking() -> None:
    out = io.StringIO()
    printer = AnswerPrinter(out, hide_thinking=False)
    for thinking, content in [("Let me", ""), (" think", ""), ("", "Answer"), ("", ".")]:
        printer.feed(thinking, content)
    assert out.getvalue() == "Thinking...\nLet me think\n...done thinking.\n\nAnswer."
    hidden = io.StringIO()
    printer = AnswerPrinter(hidden, hide_thinking=True)
    printer.feed("secret", "")
    printer.feed("", "Answer")
    assert hidden.getvalue() == "Answer"


def test_stats_as_ollama_prints_them() -> None:
    out = io.StringIO()
    print_stats({"total_duration": 1_500_000_000, "load_duration": 0,
                 "prompt_eval_count": 20, "prompt_eval_duration": 200_000_000,
                 "eval_count": 8, "eval_duration": 400_000_000}, out)
    assert out.getvalue() == (
        "total duration:       1.5s\n"
        "prompt eval count:    20 token(s)\n"
        "prompt eval duration: 200ms\n"
        "prompt eval rate:     100.00 tokens/s\n"
        "eval count:           8 token(s)\n"
        "eval duration:        400ms\n"
        "eval rate:            20.00 tokens/s\n")


def test_show_summary_sections() -> None:
    out = io.StringIO()
    print_show({"details": {"family": "llama", "parameter_size": "135M",
                            "quantization_level": "Q4_1"},
                "model_info": {"general.architecture": "llama", "llama.context_length": 8192,
                               "llama.embedding_length": 576},
                "capabilities": ["completion", "tools"],
                "parameters": 'num_ctx                        1024\n'
                              'stop                           "<|im_end|>"',
                "system": "line one\nline two\nline three", "license": "MIT"}, False, out)
    assert out.getvalue() == (
        "  Model\n"
        "    architecture        llama\n"
        "    parameters          135M\n"
        "    context length      8192\n"
        "    embedding length    576\n"
        "    quantization        Q4_1\n\n"
        "  Capabilities\n    completion\n    tools\n\n"
        "  Parameters\n    num_ctx    1024\n    stop       \"<|im_end|>\"\n\n"
        "  System\n    line one\n    line two\n    ...\n\n"
        "  License\n    MIT\n\n")


def test_progress_without_a_terminal_prints_each_status_once() -> None:
    out = io.StringIO()
    follow([{"status": "pulling manifest"}, {"status": "pulling manifest"},
            {"status": "pulling abc", "digest": "sha256:abc", "total": 2000},
            {"status": "pulling abc", "digest": "sha256:abc", "total": 2000, "completed": 1000},
            {"status": "pulling abc", "digest": "sha256:abc", "total": 2000, "completed": 1500},
            {"status": "pulling abc", "digest": "sha256:abc", "total": 2000, "completed": 2000},
            {"status": "success"}], Progress(out))
    lines = out.getvalue().splitlines()
    assert lines[0] == "pulling manifest" and lines[-1] == "success"
    assert len(lines) == 4
    assert lines[1].startswith("pulling abc  50% ▕") and lines[1].endswith("1 KB/2 KB")
    assert lines[2].startswith("pulling abc 100% ▕█") and lines[2].endswith("2 KB/2 KB")


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_on_a_terminal_redraws_the_line() -> None:
    out = _Tty()
    progress = Progress(out)
    progress.status("pulling manifest")
    progress.bar("d", "pulling d", 1, 2)
    progress.bar("d", "pulling d", 2, 2)
    progress.close()
    text = out.getvalue()
    assert text.startswith("\rpulling manifest\x1b[K\npulling d  50%")
    assert "\rpulling d 100%" in text and text.endswith("\n")


def test_version_names_ollamalite_and_the_llama_cpp_build(capsys: pytest.CaptureFixture[str]
                                                          ) -> None:
    with pytest.raises(SystemExit) as exited:
        cli.main(["--version"])
    assert exited.value.code == 0
    first, second = capsys.readouterr().out.splitlines()
    assert first == f"ollamalite {__version__}"
    assert second.startswith(f"llama-cpp-python {llama_cpp.__version__} (llama.cpp: ")
    assert all(feature in second for feature in build_features())


def _commands() -> dict[str, argparse.ArgumentParser]:
    """Each subcommand's parser, by name (aliases included)."""
    [sub] = [action for action in cli._parser()._actions
             if isinstance(action, argparse._SubParsersAction)]
    return dict(sub.choices)


@pytest.mark.parametrize("command", sorted(_commands()))
def test_help_documents_every_argument(command: str, capsys: pytest.CaptureFixture[str]
                                       ) -> None:
    with pytest.raises(SystemExit) as exited:
        cli.main([command, "--help"])
    assert exited.value.code == 0
    shown = " ".join(capsys.readouterr().out.split())  # argparse wraps long lines
    for action in _commands()[command]._actions:
        assert action.help and action.help != argparse.SUPPRESS, action.dest
        assert " ".join(action.help.split()) in shown
        for name in action.option_strings or [action.metavar or action.dest]:
            assert name in shown


def test_top_level_help_lists_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    shown = capsys.readouterr().out
    assert all(command in shown for command in _commands())
    assert "--version" in shown


def test_an_unknown_serve_flag_exits_2_naming_it(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        cli.main(["serve", "--port", "1", "--bogus"])
    assert exited.value.code == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "unrecognized arguments: --bogus" in captured.err
