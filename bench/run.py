"""ollamalite beside its limit and its peers, side by side in one run, on the bundled model.

Systems, all with the bundled SmolLM2-135M, `THREADS` threads, greedy decoding, the same prompts:

- the limit: a bare decode loop through llama-cpp-python's low-level API (bare_loop.py), one
  sequence, and four decoded together in one batch, with ollamalite's context settings;
- llama-cpp-python's high-level `Llama.create_completion(stream=True)`, one stream, in process;
- llama.cpp's own `llama-server` (`-np 1` and `-np 4`), streaming `/completion`, built from the
  llama.cpp sources our bindings were compiled from (build_llama_server.sh), if it can be built;
- ollamalite with `OLLAMA_NUM_PARALLEL=1` and `=4`, streaming `/api/generate` with `raw: true`.

The HTTP servers get 1, 2, 4, 8 concurrent clients, each with a different prompt (a different
story opening), so no system gains from a prompt shared between clients. Then a chat test: time
to first token per turn of a conversation whose history (~1,500 tokens) grows each turn, on
ollamalite with prefix reuse on and off and on llama-server; once alone, once as three
conversations taking turns (fewer than the four slots, so each can keep its own).

Why it measures this way:

- Everything is started first; then rounds interleave the systems (limit, Llama, then each
  client count on every server) after one warm-up round, and each configuration keeps its best
  round: a shared machine's speed drifts, and interleaving spreads the drift over all systems.
- Times are taken at the client as each token's bytes arrive (clients.py), so the numbers
  include everything a client sees; metrics are defined once for all systems (report.py).
- No generation prompt is ever sent twice (each trial numbers its story openings), so no
  system finds one in a cache: TTFT is the evaluation of a short new prompt plus per-request
  overhead, the same work in every system whatever its slot and cache policy. (single_stream.py
  measures TTFT with the prompt cached instead.)
- Each chat conversation is new to the server (conversation.py), so its first turn evaluates
  the whole history and later turns show what prefix reuse saves.
- Every server is a subprocess in its own process group, stopped when the run ends, however
  it ends; memory (RSS) is read from /proc after all runs.

`--workload code-edit` sends a pasted ~60-line Python file and an edit instruction instead of the
story openings (code_edit.py). ollamalite runs at its defaults (n-gram speculative decoding on);
`--speculative` runs it with drafts off and on (OLLAMALITE_SPECULATIVE=0 and 1) and adds
llama-server with its n-gram settings (report.LLAMA_SPECS), all side by side. `--chat-turns 0`
skips the chat test. `--deterministic` adds ollamalite's 4-slot server in its batch-invariant
mode (OLLAMALITE_DETERMINISTIC=1), to price it beside the default.

Run: python bench/run.py [--tokens 128] [--rounds 3] [--clients 1,2,4,8] [--chat-turns 8]
                         [--skip-llama-server] [--quick] [--workload story|code-edit]
                         [--speculative] [--deterministic]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import os
import socket
import sys
import tempfile
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Awaitable, Callable

import aiohttp
import code_edit
import llama_cpp
import report
from bare_loop import BareLoop, BareModel
from clients import (
    LLAMA_SERVER_COMPLETION,
    OLLAMA_CHAT,
    OLLAMA_GENERATE,
    OPENAI_CHAT,
    Api,
    chat,
    concurrent,
    new_session,
)
from common import (
    MODEL,
    N_CTX,
    PROMPTS,
    THREADS,
    Run,
    Server,
    exit_on_sigterm,
    llama_server,
    llama_server_binary,
    load_llama,
    ollamalite_server,
    rss_mb,
    run_llama,
    write_config,
)
from conversation import opening, questions
from report import (
    DETERMINISTIC,
    LIMIT,
    LLAMA,
    LLAMA_SERVER_1,
    LLAMA_SERVER_4,
    LLAMA_SERVER_CHAT,
    LLAMA_SPECS,
    NO_REUSE,
    OLLAMALITE_1,
    OLLAMALITE_4,
    REUSE,
    SPEC,
    Key,
    Trial,
    llama_spec,
)

from ollamalite.registry.models_file import bundled_model_path

BENCH = Path(__file__).resolve().parent
RESULTS = BENCH / "results"
CHAT_ANSWER_TOKENS = 32
# A code edit returns the whole file: a few hundred tokens.
WORKLOAD_TOKENS = {"story": 128, "code-edit": 320}
DEFAULTS = {"tokens": 128, "rounds": 3, "clients": "1,2,4,8", "chat_turns": 8}
QUICK = {"tokens": 32, "rounds": 1, "clients": "1,4", "chat_turns": 3}
def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, help="tokens per stream (default 128)")
    parser.add_argument("--rounds", type=int, help="measured rounds after a warm-up (default 3)")
    parser.add_argument("--clients", help="concurrent HTTP clients, comma-separated "
                                          "(default 1,2,4,8)")
    parser.add_argument("--chat-turns", type=int,
                        help="turns of the chat test (default 8; 0: no chat test)")
    parser.add_argument("--skip-llama-server", action="store_true",
                        help="measure without llama-server (no build attempt)")
    parser.add_argument("--quick", action="store_true", help="a smoke run: 1 round, 32 tokens, "
                        "clients 1,4, 3 chat turns (explicit flags still win)")
    parser.add_argument("--workload", choices=("story", "code-edit"), default="story",
                        help="story openings to continue (default), or a file to edit and "
                        "return (default 320 tokens)")
    parser.add_argument("--speculative", action="store_true",
                        help="also ollamalite and llama-server with n-gram speculative "
                        "decoding on")
    parser.add_argument("--deterministic", action="store_true",
                        help="also ollamalite's 4-slot server with OLLAMALITE_DETERMINISTIC=1")
    args = parser.parse_args()
    preset = QUICK if args.quick else {**DEFAULTS, "tokens": WORKLOAD_TOKENS[args.workload]}
    for name, value in preset.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    args.clients = sorted({int(c) for c in args.clients.split(",")})
    if args.tokens < 2 or args.rounds < 1 or args.chat_turns < 0:
        parser.error("--tokens must be at least 2, --rounds at least 1, --chat-turns at least 0")
    most = len(code_edit.INSTRUCTIONS if args.workload == "code-edit" else PROMPTS)
    if not 1 <= args.clients[0] <= args.clients[-1] <= most:
        parser.error(f"--clients must be between 1 and {most} (one prompt each)")
    return args


# -- the systems --------------------------------------------------------------------------------

@dataclass(frozen=True)
class Systems:
    """Everything under test, started: in-process engines and server subprocesses."""

    model: BareModel
    loops: dict[int, BareLoop]  # bare loops by number of sequences
    llm: llama_cpp.Llama
    servers: dict[str, Server]  # by system name; the reuse-off server under NO_REUSE


def start_systems(stack: ExitStack, binary: str | None, folder: Path,
                  args: argparse.Namespace) -> Systems:
    """Start every system; `stack` stops and frees them all when it closes."""
    config = write_config(folder)
    model = BareModel(bundled_model_path())
    stack.callback(model.close)
    loops = {n: BareLoop(model, n) for n in (1, 4)}
    for loop in loops.values():
        stack.callback(loop.close)
    starting = [ollamalite_server(name, config, env)
                for name, env in ollamalite_systems(args).items()]
    if binary is not None:
        starting += [llama_server(name, binary, n, extra)
                     for name, (n, extra) in llama_server_systems(args.speculative).items()]
    servers = {}
    for server_cm in starting:
        server = stack.enter_context(server_cm)
        print(f"started {server.name} on port {server.port} (pid {server.proc.pid})",
              file=sys.stderr)
        servers[server.name] = server
    llm = load_llama()
    stack.callback(llm.close)
    return Systems(model, loops, llm, servers)


def ollamalite_systems(args: argparse.Namespace) -> dict[str, dict[str, str]]:
    """Each ollamalite server's environment by system name: 1 and 4 slots at ollamalite's
    defaults (drafts on), or under --speculative with drafts off and on side by side; the
    deterministic mode's, with --deterministic; and prefix reuse off for the chat test."""
    plain = {"OLLAMALITE_SPECULATIVE": "0"} if args.speculative else {}
    systems = {}
    for name, slots in ((OLLAMALITE_1, "1"), (OLLAMALITE_4, "4")):
        env = {"OLLAMA_NUM_PARALLEL": slots, "OLLAMALITE_PREFIX_CACHE": "1"}
        systems[name] = {**env, **plain}
        if args.speculative:
            systems[name + SPEC] = {**env, "OLLAMALITE_SPECULATIVE": "1"}
    if args.deterministic:
        systems[DETERMINISTIC] = {"OLLAMA_NUM_PARALLEL": "4", "OLLAMALITE_PREFIX_CACHE": "1",
                                  "OLLAMALITE_DETERMINISTIC": "1", **plain}
    if args.chat_turns:
        systems[NO_REUSE] = {"OLLAMA_NUM_PARALLEL": "4", "OLLAMALITE_PREFIX_CACHE": "0", **plain}
    return systems


def llama_server_systems(speculative: bool) -> dict[str, tuple[int, tuple[str, ...]]]:
    """Each llama-server's slots and extra arguments by system name."""
    systems: dict[str, tuple[int, tuple[str, ...]]] = {LLAMA_SERVER_1: (1, ()),
                                                       LLAMA_SERVER_4: (4, ())}
    for setting, extra in LLAMA_SPECS.items() if speculative else ():
        systems |= {llama_spec(n, setting): (n, extra) for n in (1, 4)}
    return systems


async def load_ollamalite_models(session: aiohttp.ClientSession, systems: Systems) -> None:
    """ollamalite loads a model on its first request: an empty prompt loads it, untimed."""
    for name in (n for n in systems.servers if api_of(n) is OLLAMA_GENERATE):
        async with session.post(systems.servers[name].url + "/api/generate",
                                json={"model": MODEL, "prompt": ""}) as resp:
            resp.raise_for_status()


# -- configurations -----------------------------------------------------------------------------

@dataclass(frozen=True)
class GenConfig:
    """One system at one number of clients: `run(round)` makes one trial."""

    system: str
    clients: int
    run: Callable[[int], Awaitable[list[Run]]]


@dataclass(frozen=True)
class ChatConfig:
    """One chat column with one or several conversations: `run(round)` gives TTFT per turn."""

    column: str
    conversations: int
    run: Callable[[int], Awaitable[list[float]]]


def trial_prompts(round_: int, clients: int, workload: str = "story") -> list[str]:
    """Client k's prompt: story opening k (or code edit k), numbered so that no earlier trial
    sent the same text. No cache holds it, so every system evaluates the whole prompt: TTFT is
    the same work everywhere, whatever a server's slot and cache policy."""
    if workload == "code-edit":
        return code_edit.prompts(round_ * 100 + clients, clients)
    return [f"({round_ * 100 + clients}) {p}" for p in PROMPTS[:clients]]


def on_this_thread(run: Callable[[list[str]], list[Run]], clients: int, workload: str
                   ) -> Callable[[int], Awaitable[list[Run]]]:
    """An in-process system runs on the event loop's own thread, which has nothing else to do
    meanwhile. Not in a worker thread: once llama.cpp (an OpenMP build) has computed from two
    threads of one process, decoding stays ~2.5x slower on either (libgomp keeps a thread team
    per calling thread; with more OpenMP threads than cores its barriers stop spinning)."""
    async def in_process(round_: int) -> list[Run]:
        return run(trial_prompts(round_, clients, workload))
    return in_process


def generation_configs(systems: Systems, session: aiohttp.ClientSession, tokens: int,
                       clients: list[int], workload: str) -> list[GenConfig]:
    """In-process systems first, then every server at each client count, in the order a round
    runs them (servers side by side for each client count)."""
    def bare(n_seq: int) -> Callable[[int], Awaitable[list[Run]]]:
        loop, tokenize = systems.loops[n_seq], systems.model.tokenize
        return on_this_thread(lambda prompts: loop.run([tokenize(p) for p in prompts], tokens),
                              n_seq, workload)

    def http(url: str, api: Api, n_clients: int) -> Callable[[int], Awaitable[list[Run]]]:
        return lambda round_: concurrent(session, url, api,
                                         trial_prompts(round_, n_clients, workload), tokens)

    configs = [GenConfig(LIMIT, 1, bare(1)), GenConfig(LIMIT, 4, bare(4)),
               GenConfig(LLAMA, 1, on_this_thread(
                   lambda prompts: [run_llama(systems.llm, prompts[0], tokens)], 1, workload))]
    for n_clients in clients:
        configs += [GenConfig(name, n_clients, http(server.url, api_of(name), n_clients))
                    for name, server in systems.servers.items() if name != NO_REUSE]
    return configs


def api_of(system: str) -> Api:
    """How a generation system is asked: ollamalite's /api/generate, llama-server's
    /completion."""
    return OLLAMA_GENERATE if system.startswith("ollamalite") else LLAMA_SERVER_COMPLETION


def chat_configs(systems: Systems, session: aiohttp.ClientSession,
                 turns: int) -> list[ChatConfig]:
    """One conversation, then three taking turns, on each chat column that is running (none
    when `turns` is 0)."""
    if not turns:
        return []
    columns = {REUSE: (OLLAMALITE_4, OLLAMA_CHAT), NO_REUSE: (NO_REUSE, OLLAMA_CHAT),
               LLAMA_SERVER_CHAT: (LLAMA_SERVER_4, OPENAI_CHAT)}

    def conversations(url: str, api: Api, count: int) -> Callable[[int], Awaitable[list[float]]]:
        def run(round_: int) -> Awaitable[list[float]]:
            histories = [opening(f"{round_}.{count}.{k}", systems.model.tokenize)
                         for k in range(count)]
            return chat(session, url, api, histories, questions(turns), CHAT_ANSWER_TOKENS)
        return run

    # Reuse off is measured with one conversation only: without reuse every turn evaluates
    # the whole history anyway, and three of them would add minutes to every round.
    return [ChatConfig(column, count, conversations(systems.servers[server].url, api, count))
            for count in (1, 3) for column, (server, api) in columns.items()
            if server in systems.servers and (column, count) != (NO_REUSE, 3)]


# -- rounds -------------------------------------------------------------------------------------

async def measure(gen: list[GenConfig], chats: list[ChatConfig], rounds: int
                  ) -> tuple[dict[Key, list[Trial]], dict[Key, list[list[float]]]]:
    """A warm-up round of the generation configurations (not kept), then `rounds` rounds of
    everything, interleaved."""
    trials: dict[Key, list[Trial]] = {(c.system, c.clients): [] for c in gen}
    chat_rounds: dict[Key, list[list[float]]] = {(c.column, c.conversations): [] for c in chats}
    for round_ in range(rounds + 1):
        label = f"round {round_}" if round_ else "warm-up"
        for config in gen:
            trial = Trial(await config.run(round_))
            print(f"{label}: {config.system} x{config.clients}: "
                  f"{trial.aggregate_tps:.1f} tok/s aggregate, "
                  f"TTFT p50 {trial.ttft_ms(50):.0f} ms", file=sys.stderr)
            if round_:
                trials[config.system, config.clients].append(trial)
        if not round_:
            continue
        for chat_config in chats:
            ttfts = await chat_config.run(round_)
            print(f"{label}: chat {chat_config.column} x{chat_config.conversations}: TTFT ms "
                  + ", ".join(f"{t:.0f}" for t in ttfts), file=sys.stderr)
            chat_rounds[chat_config.column, chat_config.conversations].append(ttfts)
    return trials, chat_rounds


async def run_all(systems: Systems, args: argparse.Namespace
                  ) -> tuple[dict[Key, list[Trial]], dict[Key, list[list[float]]]]:
    async with new_session() as session:
        await load_ollamalite_models(session, systems)
        gen = generation_configs(systems, session, args.tokens, args.clients, args.workload)
        chats = chat_configs(systems, session, args.chat_turns)
        return await measure(gen, chats, args.rounds)


# -- report -------------------------------------------------------------------------------------

def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown CPU"


def header(args: argparse.Namespace, now: datetime.datetime, server_note: str,
           prompt_lengths: list[int], history_tokens: int) -> str:
    return "\n".join([
        f"# ollamalite benchmark, {now:%Y-%m-%d %H:%M}, {socket.gethostname()}",
        "",
        f"- CPU: {cpu_model()}, {os.cpu_count()} cores; {THREADS} threads in every system",
        f"- llama-cpp-python {llama_cpp.__version__}; model: bundled "
        f"{bundled_model_path().name}; {N_CTX} context tokens per sequence (slot)",
        f"- {args.tokens} tokens per stream, greedy; {args.rounds} round(s) after a warm-up, "
        f"best kept; clients {', '.join(map(str, args.clients))}, each with its own "
        f"{'edit of one pasted file' if args.workload == 'code-edit' else 'story opening'}, "
        f"numbered per trial so that no cache holds it "
        f"({min(prompt_lengths)}-{max(prompt_lengths)} tokens)",
        f"- chat: {args.chat_turns} turns; a {history_tokens}-token logbook as the system "
        f"message, answers of up to {CHAT_ANSWER_TOKENS} tokens" if args.chat_turns
        else "- no chat test (--chat-turns 0)",
        "- speculative decoding: " + ("ollamalite's n-gram drafts (OLLAMALITE_SPECULATIVE=1) "
                                      "and llama-server's " + "; ".join(
                                          f"{name} ({' '.join(extra)})"
                                          for name, extra in LLAMA_SPECS.items())
                                      + " beside the plain systems (drafts off)"
                                      if args.speculative else
                                      "ollamalite's defaults (n-gram drafts on); llama-server's "
                                      "(off)"),
        f"- {server_note}",
    ])


def main() -> None:
    args = parse_args()
    exit_on_sigterm()
    binary, server_note = llama_server_binary(args.skip_llama_server)
    if binary is None:
        print(f"note: {server_note}", file=sys.stderr)
    now = datetime.datetime.now()
    with ExitStack() as stack:
        folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-")))
        systems = start_systems(stack, binary, folder, args)
        trials, chat_rounds = asyncio.run(run_all(systems, args))
        rss = {name: server.rss_mb() for name, server in systems.servers.items()}
        drafts = {name: tuple(server.counter(f"ollamalite_{kind}_tokens_total") for kind in (
                      "speculative_drafted", "speculative_accepted", "generated"))
                  for name, server in systems.servers.items() if name.endswith(SPEC)}
        rss[report.IN_PROCESS] = rss_mb(os.getpid())
        tokenize = systems.model.tokenize
        prompt_lengths = [len(tokenize(p))
                          for p in trial_prompts(1, len(PROMPTS), args.workload)]
        history_tokens = len(tokenize(opening("0", tokenize)[0]["content"]))
    RESULTS.mkdir(exist_ok=True)
    stem = RESULTS / f"{now:%Y-%m-%d}-{socket.gethostname()}"
    text = report.markdown(header(args, now, server_note, prompt_lengths, history_tokens),
                           trials, chat_rounds, rss, args.tokens, stem.with_suffix(".png").name,
                           drafts)
    report.plot(trials, stem.with_suffix(".png"),
                f"SmolLM2-135M, {THREADS} threads, {args.tokens} tokens per stream")
    stem.with_suffix(".md").write_text(text + "\n")
    print(text)
    print(f"\nwritten: {stem.with_suffix('.md')} and {stem.with_suffix('.png')}", file=sys.stderr)


if __name__ == "__main__":
    main()
