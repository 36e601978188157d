"""Every snippet of the guides runs against a live server, so none of them rots.

The conventions, for docs/quickstart.md, jetbrains.md, continue.md and clients.md:

- A fenced block ```sh or ```python runs: sh with bash (`-eo pipefail`) in the repository's
  folder, python with this venv's interpreter, each in a subprocess of its own against a
  server of this module's (the bundled `smollm2:135m`, its answers capped at 24 tokens so that
  `ollamalite run`, which has no limit of its own, stays quick). It must exit 0.
- The guides address the server as Ollama's default, `http://127.0.0.1:11434` (or
  `localhost:11434`); the test puts its server's address there, and in OLLAMA_HOST.
- `# expect: REGEX` lines say what the block prints: stdout must match each of them
  (`re.search`, multi-line). They assert shape (a field, a status), never the tiny model's
  words. A block with no `# expect:` must print something.
- ```sh keyed: runs against a second server, started with an API key that the block finds in
  $OLLAMALITE_API_KEY (the troubleshooting of a 401).
- ```sh norun / ```python norun: shown only (it needs an IDE, another machine, a fresh clone).
- Configuration blocks are parsed: ```json with json, ```yaml with YAML, ```yaml models.yaml
  with the project's own models.yaml loader, ```yaml continue as Continue's config.yaml (the
  keys it expects). Anything else (```text, output) is shown only.

docs/architecture.md is checked against the tree instead: it names every package, and every
package and module it names exists.
"""

from __future__ import annotations

import configparser
import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest
from ruamel.yaml import YAML

from ollamalite.registry.models_file import parse as parse_models_file
from tests.conftest import MODEL, REPO, LiveServer, serving

DOCS = REPO / "docs"
GUIDES = ("quickstart.md", "jetbrains.md", "continue.md", "clients.md")
RUNNERS = {"sh": ["bash", "-eo", "pipefail", "-c"], "python": [sys.executable, "-c"]}
CONFIGS = ("json", "yaml")
SHOWN = ("text", "mermaid")  # output and diagrams
FLAGS = {"norun", "keyed", "models.yaml", "continue"}
DEFAULT_ADDRESS = re.compile(r"http://(?:127\.0\.0\.1|localhost):11434")
FENCE = re.compile(r"^```(\w*)[ \t]*([^\n]*)\n(.*?)^```[ \t]*$", re.M | re.S)
EXPECT = re.compile(r"^\s*# expect: (.+)$", re.M)
TIMEOUT = 180  # a hung snippet, not a slow one: a loaded 2-core machine is slow
KEY = "guide-key"
CONFIG_TEXT = f"""\
models:
  {MODEL}:
    path: bundled
    num_ctx: 2048
    options: {{num_predict: 24}}
"""
# One llama.cpp thread: the snippets need answers, not speed, and where other processes share
# the two cores a second thread waiting at llama.cpp's barriers makes each token many times slower.
SERVER_ENV = {"OLLAMALITE_NUM_THREADS": "1"}
KEY_VARS = ("OLLAMALITE_API_KEY", "ANTHROPIC_", "OPENAI_")  # none of the developer's own
# Continue's config.yaml (docs.continue.dev, "config.yaml Reference"): the top-level keys a
# local config needs, a model block's required keys, and the roles a model may take.
CONTINUE_TOP = {"name", "version", "schema", "models"}
CONTINUE_MODEL = {"name", "provider", "model"}
CONTINUE_ROLES = {"chat", "autocomplete", "edit", "apply", "embed", "rerank", "summarize"}


@dataclass(frozen=True)
class Block:
    guide: str
    line: int
    lang: str
    flags: tuple[str, ...]
    code: str

    @property
    def id(self) -> str:
        return f"{self.guide}:{self.line}"


def blocks(guide: str) -> list[Block]:
    text = (DOCS / guide).read_text()
    return [Block(guide, text.count("\n", 0, m.start()) + 1, m.group(1),
                  tuple(m.group(2).split()), m.group(3)) for m in FENCE.finditer(text)]


ALL = [b for guide in GUIDES for b in blocks(guide)]
RUNNABLE = [b for b in ALL if b.lang in RUNNERS and "norun" not in b.flags]
CONFIG = [b for b in ALL if b.lang in CONFIGS]


@pytest.fixture(scope="module")
def guide_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    with serving(tmp_path_factory.mktemp("guides"), CONFIG_TEXT, env=SERVER_ENV) as live:
        yield live


@pytest.fixture(scope="module")
def keyed_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    with serving(tmp_path_factory.mktemp("keyed"), CONFIG_TEXT,
                 env={**SERVER_ENV, "OLLAMALITE_API_KEY": KEY}) as live:
        yield live


def run(block: Block, url: str) -> subprocess.CompletedProcess[str]:
    code = DEFAULT_ADDRESS.sub(url, block.code)
    env = {name: value for name, value in os.environ.items() if not name.startswith(KEY_VARS)}
    env["OLLAMA_HOST"] = url
    if "keyed" in block.flags:
        env["OLLAMALITE_API_KEY"] = KEY
    return subprocess.run([*RUNNERS[block.lang], code], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=TIMEOUT)


@pytest.mark.parametrize("block", RUNNABLE, ids=lambda b: b.id)
def test_snippet_runs_and_prints_what_the_guide_says(block: Block,
                                                      request: pytest.FixtureRequest) -> None:
    live = request.getfixturevalue("keyed_server" if "keyed" in block.flags else "guide_server")
    done = run(block, live.url)
    where = f"{block.id}\n--- stdout:\n{done.stdout[-3000:]}\n--- stderr:\n{done.stderr[-3000:]}"
    assert done.returncode == 0, where
    expected = EXPECT.findall(block.code)
    assert expected or done.stdout.strip(), where
    for pattern in expected:
        assert re.search(pattern, done.stdout, re.M), f"no match for {pattern!r} in {where}"


@pytest.mark.parametrize("block", CONFIG, ids=lambda b: b.id)
def test_configuration_block_parses(block: Block, tmp_path: Path) -> None:
    if block.lang == "json":
        json.loads(block.code)
        return
    doc = YAML(typ="safe").load(block.code)
    if "models.yaml" in block.flags:
        registry = parse_models_file(tmp_path / "models.yaml", block.code, need_files=())
        assert registry.models, block.id
    if "continue" in block.flags:
        assert_continue_config(doc, block.id)


def assert_continue_config(doc: dict, where: str) -> None:
    assert CONTINUE_TOP <= doc.keys() and doc["schema"] == "v1", where
    for model in doc["models"]:
        assert CONTINUE_MODEL <= model.keys(), (where, model)
        assert set(model.get("roles", ["chat"])) <= CONTINUE_ROLES, (where, model)
        if model["provider"] == "ollama":
            assert DEFAULT_ADDRESS.fullmatch(model.get("apiBase", "http://localhost:11434"))


def test_every_block_follows_the_conventions() -> None:
    """A block in another language (```bash) or with a misspelt flag would silently not run."""
    for block in ALL:
        assert block.lang in (*RUNNERS, *CONFIGS, *SHOWN), block.id
        assert set(block.flags) <= FLAGS, block.id


def test_every_guide_has_runnable_snippets_and_is_linked_from_the_readme() -> None:
    readme = (REPO / "README.md").read_text()
    for guide in (*GUIDES, "architecture.md"):
        assert f"(docs/{guide})" in readme, guide
    for guide in GUIDES:
        assert any(b.guide == guide for b in RUNNABLE), guide


# -- docs/architecture.md -------------------------------------------------------------------

def packages() -> set[str]:
    """Every package under ollamalite/, as `runtime/engine`."""
    root = REPO / "ollamalite"
    return {str(p.parent.relative_to(root)) for p in root.rglob("__init__.py")} - {"."}


def test_architecture_names_every_package_and_only_real_ones() -> None:
    text = (DOCS / "architecture.md").read_text()
    named = set(re.findall(r"`([a-z_]+(?:/[a-z_]+)*)/`", text))
    assert named == packages()
    for module in re.findall(r"`([a-z_]+(?:/[a-z_]+)*\.py)`", text):
        assert (REPO / "ollamalite" / module).is_file() or (REPO / module).is_file(), module


def test_architecture_states_the_layers_of_setup_cfg() -> None:
    cfg = configparser.ConfigParser()
    cfg.read(REPO / "setup.cfg")
    layers = cfg["importlinter:contract:layers"]["layers"].split()
    text = (DOCS / "architecture.md").read_text()
    for layer in layers:
        if layer not in (":", "|"):
            name = layer.removeprefix("ollamalite.")
            assert f"`{name}" in text, layer
