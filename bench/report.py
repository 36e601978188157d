"""What the measured runs mean: the metrics, the markdown tables, the target ratios, the plot.

Every system's numbers come from the same definitions (see bench/README.md):

- aggregate tok/s: all tokens of a trial's streams / (last token's arrival in any stream -
  earliest request start), so it includes prompt evaluation, queueing for a slot and the time
  the slowest stream takes;
- per-stream tok/s: the mean over streams of (tokens - 1) / (last arrival - first arrival),
  decode only;
- TTFT: first token's arrival - that stream's request start; p50/p95 over the trial's streams
  (linear interpolation between ranks).

A trial is one configuration's streams in one round; each configuration keeps its best round
(highest aggregate tok/s; for the chat, lowest total time to first token over the turns).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from operator import attrgetter
from pathlib import Path
from typing import Callable

import numpy as np
from common import Run
from matplotlib.figure import Figure  # no pyplot: a PNG is rendered with Agg, no display needed

LIMIT = "limit: bare llama.cpp loop"
LLAMA = "llama-cpp-python Llama"
OLLAMALITE_1 = "ollamalite NUM_PARALLEL=1"
OLLAMALITE_4 = "ollamalite NUM_PARALLEL=4"
LLAMA_SERVER_1 = "llama-server -np 1"
LLAMA_SERVER_4 = "llama-server -np 4"
# With --speculative: ollamalite with its n-gram drafts, and llama-server with the n-gram
# settings issue measurements found best for it (ngram-mod at its defaults; ngram-simple
# matching 4 tokens and drafting 8), each with 1 and 4 slots.
SPEC = ", n-gram drafts"
OLLAMALITE_1_SPEC = OLLAMALITE_1 + SPEC
OLLAMALITE_4_SPEC = OLLAMALITE_4 + SPEC
LLAMA_SPECS: dict[str, tuple[str, ...]] = {
    "ngram-mod": ("--spec-type", "ngram-mod"),
    "ngram-simple n=4 m=8": ("--spec-type", "ngram-simple", "--spec-ngram-simple-size-n", "4",
                             "--spec-ngram-simple-size-m", "8"),
}


def llama_spec(n_parallel: int, setting: str) -> str:
    """The system name of llama-server with `-np n_parallel` and a LLAMA_SPECS setting."""
    return f"llama-server -np {n_parallel}, {setting}"


# With --deterministic: ollamalite's batch-invariant mode (OLLAMALITE_DETERMINISTIC=1), 4 slots.
DETERMINISTIC = OLLAMALITE_4 + ", deterministic"
SYSTEM_ORDER = (LIMIT, LLAMA, OLLAMALITE_1, OLLAMALITE_1_SPEC, OLLAMALITE_4, OLLAMALITE_4_SPEC,
                DETERMINISTIC,
                LLAMA_SERVER_1, *(llama_spec(1, s) for s in LLAMA_SPECS),
                LLAMA_SERVER_4, *(llama_spec(4, s) for s in LLAMA_SPECS))
IN_PROCESS = "harness process"  # where the bare loops and `Llama` run

REUSE = "ollamalite, reuse on"
NO_REUSE = "ollamalite, reuse off"
LLAMA_SERVER_CHAT = "llama-server -np 4"
CHAT_COLUMNS = (REUSE, NO_REUSE, LLAMA_SERVER_CHAT)

Key = tuple[str, int]  # (system, clients) or (chat column, conversations)


@dataclass(frozen=True)
class Trial:
    """One configuration's concurrent streams in one round."""

    runs: list[Run]

    @property
    def aggregate_tps(self) -> float:
        end = max(r.arrivals[-1] for r in self.runs if r.arrivals)
        return sum(r.tokens for r in self.runs) / (end - min(r.started for r in self.runs))

    @property
    def per_stream_tps(self) -> float:
        return float(np.mean([r.decode_tps for r in self.runs]))

    def ttft_ms(self, percentile: float) -> float:
        return float(np.percentile([r.ttft_ms for r in self.runs], percentile))


def best_trials(trials: dict[Key, list[Trial]]) -> dict[Key, Trial]:
    """Each configuration's round with the highest aggregate tok/s, in table order."""
    keys = sorted(trials, key=lambda key: (SYSTEM_ORDER.index(key[0]), key[1]))
    return {key: max(trials[key], key=lambda t: t.aggregate_tps) for key in keys}


def best_chats(rounds: dict[Key, list[list[float]]]) -> dict[Key, list[float]]:
    """Each chat configuration's round with the lowest total time to first token."""
    return {key: min(ttfts, key=sum) for key, ttfts in rounds.items()}


def _fmt(value: float | None, digits: int = 1) -> str:
    return "–" if value is None or math.isnan(value) else f"{value:.{digits}f}"


def generation_table(best: dict[Key, Trial], rss_mb: dict[str, float]) -> str:
    lines = ["| system | clients | aggregate tok/s | per-stream tok/s | TTFT p50 ms | "
             "TTFT p95 ms | RSS MB |", "|---|---|---|---|---|---|---|"]
    for (system, clients), trial in best.items():
        lines.append(f"| {system} | {clients} | {_fmt(trial.aggregate_tps)} | "
                     f"{_fmt(trial.per_stream_tps)} | {_fmt(trial.ttft_ms(50))} | "
                     f"{_fmt(trial.ttft_ms(95))} | {_fmt(rss_mb.get(system), 0)} |")
    return "\n".join(lines)


def chat_table(best: dict[Key, list[float]], conversations: int) -> str:
    columns = [c for c in CHAT_COLUMNS if (c, conversations) in best]
    lines = ["| turn | " + " | ".join(f"TTFT ms, {c}" for c in columns) + " |",
             "|---" * (len(columns) + 1) + "|"]
    turns = len(best[columns[0], conversations])
    for turn in range(turns):
        cells = " | ".join(_fmt(best[c, conversations][turn]) for c in columns)
        lines.append(f"| {turn + 1} | {cells} |")
    return "\n".join(lines)


def _ratio(label: str, a_name: str, a: float | None, b_name: str, b: float | None,
           unit: str) -> str:
    if a is None or b is None:
        return f"- {label}: n/a (not measured in this run)"
    return (f"- {label}: {a_name} {a:.1f} {unit} / {b_name} {b:.1f} {unit} = "
            f"**{a / b:.2f}**")


def _ttft_p50(trial: Trial) -> float:
    return trial.ttft_ms(50)


# (label, metric, unit, ollamalite's configuration, the one it is compared with)
TARGETS: tuple[tuple[str, Callable[[Trial], float], str, Key, Key], ...] = (
    ("single stream over HTTP, decode", attrgetter("per_stream_tps"), "tok/s",
     (OLLAMALITE_1, 1), (LLAMA_SERVER_1, 1)),
    ("4 clients, aggregate vs the bare 4-sequence loop", attrgetter("aggregate_tps"), "tok/s",
     (OLLAMALITE_4, 4), (LIMIT, 4)),
    ("4 clients, aggregate vs llama-server", attrgetter("aggregate_tps"), "tok/s",
     (OLLAMALITE_4, 4), (LLAMA_SERVER_4, 4)),
    ("short-prompt TTFT p50, 1 client, 1 slot (lower is better)", _ttft_p50, "ms",
     (OLLAMALITE_1, 1), (LLAMA_SERVER_1, 1)),
    ("short-prompt TTFT p50, 1 client, 4 slots (lower is better)", _ttft_p50, "ms",
     (OLLAMALITE_4, 1), (LLAMA_SERVER_4, 1)),
)


def _value(best: dict[Key, Trial], key: Key, metric: Callable[[Trial], float]) -> float | None:
    return metric(best[key]) if key in best else None


def speculative_lines(best: dict[Key, Trial]) -> list[str]:
    """Issue 14's ratios: ollamalite's drafts against its plain decoding, llama-server without
    drafts, and llama-server's best n-gram setting in this run (single stream: decode tok/s;
    4 clients: aggregate tok/s)."""
    lines = []
    for clients, mine, plain, theirs, metric, unit in (
            (1, OLLAMALITE_1_SPEC, OLLAMALITE_1, LLAMA_SERVER_1, attrgetter("per_stream_tps"),
             "decode tok/s"),
            (4, OLLAMALITE_4_SPEC, OLLAMALITE_4, LLAMA_SERVER_4, attrgetter("aggregate_tps"),
             "aggregate tok/s")):
        ours = _value(best, (mine, clients), metric)
        if ours is None:
            continue
        lines.append(_ratio(f"{clients} client(s), drafts on vs off", mine, ours, plain,
                            _value(best, (plain, clients), metric), unit))
        lines.append(_ratio(f"{clients} client(s), drafts vs llama-server without", mine, ours,
                            theirs, _value(best, (theirs, clients), metric), unit))
        specs = [(v, llama_spec(clients, s)) for s in LLAMA_SPECS  # -np = clients here
                 if (v := _value(best, (llama_spec(clients, s), clients), metric)) is not None]
        if specs:
            value, name = max(specs)
            lines.append(_ratio(f"{clients} client(s), drafts vs llama-server's best n-gram "
                                "setting", mine, ours, name, value, unit))
    return lines


def deterministic_lines(best: dict[Key, Trial]) -> list[str]:
    """What the deterministic mode costs: its aggregate tok/s against the default 4-slot
    server's at each client count measured."""
    counts = sorted(clients for name, clients in best if name == DETERMINISTIC)
    return [_ratio(f"{n} client(s), deterministic mode vs default", DETERMINISTIC,
                   _value(best, (DETERMINISTIC, n), attrgetter("aggregate_tps")), OLLAMALITE_4,
                   _value(best, (OLLAMALITE_4, n), attrgetter("aggregate_tps")),
                   "aggregate tok/s") for n in counts]


def ratio_lines(best: dict[Key, Trial], chat: dict[Key, list[float]]) -> str:
    """The target ratios; n/a where a configuration was not measured (skipped, other clients,
    no chat test)."""
    def last_turn(column: str, conversations: int) -> float | None:
        ttfts = chat.get((column, conversations))
        return ttfts[-1] if ttfts else None

    lines = [_ratio(label, a[0], _value(best, a, metric), b[0], _value(best, b, metric), unit)
             for label, metric, unit, a, b in TARGETS] + speculative_lines(best)
    lines += deterministic_lines(best)
    if not chat:
        return "\n".join(lines)
    turns = len(next(iter(chat.values()), []))
    # Without reuse every turn evaluates the whole history whatever else runs, so the
    # one-conversation run is the baseline for three alternating ones too.
    for conversations, label in ((1, "one conversation"), (3, "3 alternating conversations")):
        lines.append(_ratio(f"chat turn {turns} TTFT, {label}, speed-up from reuse", "reuse off",
                            last_turn(NO_REUSE, 1), "reuse on",
                            last_turn(REUSE, conversations), "ms"))
    return "\n".join(lines)


def plot(trials: dict[Key, list[Trial]], path: Path, title: str) -> None:
    """Aggregate tok/s (best round) against clients, one line per system."""
    best = best_trials(trials)
    fig = Figure(figsize=(8, 5))
    ax = fig.subplots()
    for system in dict.fromkeys(system for system, _ in best):
        points = sorted((c, t.aggregate_tps) for (s, c), t in best.items() if s == system)
        xs, ys = zip(*points, strict=True)
        style = "--" if system == LIMIT else "-" if len(xs) > 1 else "none"
        ax.plot(xs, ys, marker="o", linestyle=style, label=system)
    clients = sorted({c for _, c in best})
    ax.set_xscale("log", base=2)
    ax.set_xticks(clients, [str(c) for c in clients])
    ax.set_xlabel("concurrent clients (sequences for the bare loop)")
    ax.set_ylabel("aggregate tokens/s")
    ax.set_ylim(bottom=0)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def notes(trials: dict[Key, list[Trial]], n: int) -> list[str]:
    """Streams that did not decode exactly `n` tokens, or whose tokens arrived merged."""
    found = []
    for (system, clients), rounds in trials.items():
        for i, trial in enumerate(rounds, 1):
            for k, run in enumerate(trial.runs, 1):
                where = f"{system}, {clients} clients, round {i}, stream {k}"
                if run.tokens != n or run.finish_reason != "length":
                    found.append(f"{where}: {run.tokens} tokens (finish: {run.finish_reason}), "
                                 f"not {n}")
                elif len(run.arrivals) != run.tokens:
                    found.append(f"{where}: {run.tokens} tokens arrived in "
                                 f"{len(run.arrivals)} chunks")
    return found


def chat_section(chat: dict[Key, list[float]], rss_mb: dict[str, float]) -> list[str]:
    return ["## Chat: time to first token per turn", "",
            "One conversation:", "",
            chat_table(chat, 1), "",
            "Three conversations taking turns (mean of the three at each turn):", "",
            chat_table(chat, 3), "",
            f"ollamalite with reuse off runs as a third server (NUM_PARALLEL=4, "
            f"OLLAMALITE_PREFIX_CACHE=0): RSS {rss_mb[NO_REUSE]:.0f} MB.", ""]


def drafts_section(drafts: dict[str, tuple[float, float, float]]) -> list[str]:
    """Each drafting ollamalite server's counts over the whole run (warm-up included)."""
    lines = ["## Drafts (ollamalite's /metrics after all runs)", "",
             "| system | generated | drafted | accepted | accepted / drafted | "
             "accepted / generated |", "|---|---|---|---|---|---|"]
    for name, (drafted, accepted, generated) in drafts.items():
        lines.append(f"| {name} | {generated:.0f} | {drafted:.0f} | {accepted:.0f} | "
                     f"{accepted / max(drafted, 1):.2f} | {accepted / max(generated, 1):.2f} |")
    return [*lines, ""]


def markdown(header: str, trials: dict[Key, list[Trial]], chat_rounds: dict[Key, list[list[float]]],
             rss_mb: dict[str, float], n: int, plot_name: str,
             drafts: dict[str, tuple[float, float, float]]) -> str:
    """The whole report: header, both tables, the target ratios, notes, the plot."""
    best = best_trials(trials)
    chat = best_chats(chat_rounds)
    found = notes(trials, n) or [f"every stream decoded exactly {n} tokens, one per chunk"]
    return "\n".join([
        header, "",
        f"## Generation: {n} tokens per stream", "",
        generation_table(best, rss_mb), "",
        f"The bare loop and `Llama` run inside the harness process (RSS "
        f"{rss_mb[IN_PROCESS]:.0f} MB with both, and the HTTP client). Server RSS is read "
        f"after all runs.", "",
        *(drafts_section(drafts) if drafts else []),
        *(chat_section(chat, rss_mb) if chat else []),
        "## Targets", "",
        ratio_lines(best, chat), "",
        "## Notes", "",
        *[f"- {note}" for note in found], "",
        f"![aggregate tokens/s against clients]({plot_name})",
    ])
