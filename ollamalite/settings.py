"""Server settings from flags and the OLLAMA_* / OLLAMALITE_* environment, read once.

No other module reads `os.environ`: everything it needs arrives in one frozen `Settings`.
"""

from __future__ import annotations

import ipaddress
import logging
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Mapping
from urllib.parse import urlsplit

from ollamalite.durations import keep_alive_seconds, parse_go_duration
from ollamalite.errors import ConfigError

log = logging.getLogger(__name__)

DEFAULT_PORT = 11434
DEFAULT_KEEP_ALIVE = 300.0
DEFAULT_CONFIG = "models.yaml"
DEFAULT_HOME = Path("~/.ollamalite")
DEFAULT_OLLAMA_MODELS = Path("~/.ollama/models")
DEFAULT_MAX_BODY = 64 << 20  # room for a few base64 images in one request
DEFAULT_MAX_TRANSFER = 64 << 30  # bytes: the largest download or upload unless told otherwise
# The KV cache types Ollama offers (OLLAMA_KV_CACHE_TYPE): the quantised ones need flash attention.
KV_CACHE_TYPES = ("f16", "q8_0", "q4_0")


@dataclass(frozen=True)
class Settings:
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    config_path: Path = Path(DEFAULT_CONFIG)
    config_explicit: bool = False  # named by flag or env, so its absence is an error
    origins: tuple[str, ...] = ()
    keep_alive: float = DEFAULT_KEEP_ALIVE
    max_loaded_models: int = 1
    num_parallel: int = 4
    max_queue: int = 512  # requests waiting beyond those the loaded slots can serve
    load_timeout: float = 300.0  # longest wait for a model to load (or for room to load it)
    num_threads: int = 0
    prefix_cache: bool = True
    # The host-memory prompt cache's bound in bytes (OLLAMALITE_CACHE_RAM, MiB); None: a quarter
    # of the memory free at start, at most DEFAULT_CACHE_RAM; 0: off.
    cache_ram: int | None = None
    # The bound of the prompt cache's files under `data_dir`/prompt-cache in bytes
    # (OLLAMALITE_CACHE_DISK, MiB); 0: off, nothing is written.
    cache_disk: int = 0
    speculative: bool = True  # n-gram speculative decoding (models.yaml may say otherwise)
    # Every request's tokens independent of its neighbours and of the prefix cache, at a cost
    # (docs/engine.md).
    deterministic: bool = False
    # llama.cpp's extra CPU buffer types (AMX, repacked weights): auto (probed), on or off.
    repack: str = "auto"
    kv_cache_type: str = "f16"  # one of KV_CACHE_TYPES; a models.yaml entry may set its own
    flash_attention: str = "auto"  # auto (llama.cpp decides per model), on or off
    debug: bool = False
    # Files ollamalite creates: blobs/sha256-<hex> (uploads), models/ (GGUFs it made or fetched).
    data_dir: Path = DEFAULT_HOME.expanduser()
    # An Ollama model store whose models are offered too (read only).
    ollama_models: Path = DEFAULT_OLLAMA_MODELS.expanduser()
    # The gate (docs/security.md): the key every route but `/` then needs (kept out of repr, so
    # out of logs), and the largest JSON request body.
    api_key: str = field(default="", repr=False)
    max_body: int = DEFAULT_MAX_BODY
    # Files and URLs from callers. /api/create's `from` may name a file only inside the model
    # folders, unless any path is allowed (a single-user machine).
    allow_any_path: bool = False
    # Pulls may connect to loopback and private addresses (a LAN mirror); never to link-local
    # or cloud metadata ones.
    pull_private: bool = True
    max_download: int = DEFAULT_MAX_TRANSFER  # bytes; 0: no cap
    max_upload: int = DEFAULT_MAX_TRANSFER  # bytes; 0: no cap
    # Observability (docs/operations.md): GET /metrics, behind the API key when one is set.
    metrics: bool = True

    @property
    def blobs_dir(self) -> Path:
        return self.data_dir / "blobs"

    @property
    def models_dir(self) -> Path:
        return self.data_dir / "models"

    @property
    def prompt_cache_dir(self) -> Path:
        return self.data_dir / "prompt-cache"


def env_var(env: Mapping[str, str], key: str) -> str:
    """Ollama's `Var()`: trim white space, then one pair of surrounding quotes."""
    return env.get(key, "").strip().strip("\"'").strip()


def parse_host(value: str) -> tuple[str, int]:
    """OLLAMA_HOST forms: `host`, `host:port`, `:port`, `[::1]`, `http(s)://host[:port]/path`."""
    if not value:
        return "127.0.0.1", DEFAULT_PORT
    scheme, _, rest = value.rpartition("://")
    default_port = {"http": 80, "https": 443}.get(scheme, DEFAULT_PORT)
    netloc = urlsplit(f"//{rest}").netloc or rest.split("/", 1)[0]
    host, port = _split_host_port(netloc, default_port)
    return host or "0.0.0.0", port


def _split_host_port(netloc: str, default_port: int) -> tuple[str, int]:
    if netloc.startswith("["):
        host, _, tail = netloc[1:].partition("]")
        port_text = tail[1:] if tail.startswith(":") else ""
    elif netloc.count(":") > 1:
        return netloc, default_port
    else:
        host, _, port_text = netloc.partition(":")
    try:
        port = int(port_text) if port_text else default_port
    except ValueError:
        port = default_port
    return host, port if 0 <= port <= 65535 else default_port


def is_loopback(host: str) -> bool:
    """Whether a bind address serves this machine only (`localhost` counts); beyond it, the
    API key is what keeps strangers out (docs/security.md)."""
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return host.lower() == "localhost"


def _uint(env: Mapping[str, str], key: str, default: int) -> int:
    text = env_var(env, key)
    if not text:
        return default
    try:
        value = int(text)
        if value < 0:
            raise ValueError
        return value
    except ValueError:
        log.warning("invalid %s=%r, using %d", key, text, default)
        return default


def _mebibytes(env: Mapping[str, str], key: str) -> int | None:
    """A size in MiB as bytes; None when unset or invalid (the caller's default)."""
    text = env_var(env, key)
    if text.isdigit():
        return int(text) << 20
    if text:
        log.warning("invalid %s=%r (a number of MiB), using the default", key, text)
    return None


def _bool(env: Mapping[str, str], key: str, default: bool) -> bool:
    """Ollama's rule: unset is the default, and anything but a false word counts as true."""
    text = env_var(env, key)
    if not text:
        return default
    return text.lower() not in ("0", "f", "false", "no", "off")


def _duration(env: Mapping[str, str], key: str, default: float) -> float:
    """Seconds as a number or a Go duration (`5m`); zero or less means the default."""
    text = env_var(env, key)
    if not text:
        return default
    try:
        value = float(text) if text.replace(".", "", 1).isdigit() else parse_go_duration(text)
    except ValueError:
        log.warning("invalid %s=%r, using %gs", key, text, default)
        return default
    return value if value > 0 else default


def _switch(env: Mapping[str, str], key: str) -> str:
    """`auto`, or a forced `on`/`off` (Ollama's boolean words count too)."""
    text = env_var(env, key).lower()
    if text in ("", "auto"):
        return "auto"
    if text in ("1", "t", "true", "yes", "on"):
        return "on"
    if text in ("0", "f", "false", "no", "off"):
        return "off"
    log.warning("invalid %s=%r (auto, on or off), using auto", key, text)
    return "auto"


def _kv_cache_type(env: Mapping[str, str]) -> str:
    """Ollama's spelling, any case; anything else is logged and the default kept, as Ollama
    does, so that a typo costs memory rather than the server."""
    text = env_var(env, "OLLAMA_KV_CACHE_TYPE").lower()
    if not text or text in KV_CACHE_TYPES:
        return text or KV_CACHE_TYPES[0]
    log.warning("invalid OLLAMA_KV_CACHE_TYPE=%r (%s), using %s", text,
                ", ".join(KV_CACHE_TYPES), KV_CACHE_TYPES[0])
    return KV_CACHE_TYPES[0]


def _keep_alive(env: Mapping[str, str]) -> float:
    text = env_var(env, "OLLAMA_KEEP_ALIVE")
    if not text:
        return DEFAULT_KEEP_ALIVE
    try:
        value: object = int(text) if text.lstrip("-").isdigit() else parse_go_duration(text)
        return keep_alive_seconds(value)
    except ValueError:
        log.warning("invalid OLLAMA_KEEP_ALIVE=%r, using 5m", text)
        return DEFAULT_KEEP_ALIVE


def api_key(env: Mapping[str, str]) -> str:
    """OLLAMALITE_API_KEY, or OLLAMALITE_API_KEY_FILE's contents (a file keeps the key out of
    the process list and of child environments): the server's key, and the one the client
    commands send. A file that yields no usable key stops
    start-up: serving without the key the operator meant to set would be silently open."""
    key, path = env_var(env, "OLLAMALITE_API_KEY"), env_var(env, "OLLAMALITE_API_KEY_FILE")
    if key and path:
        raise ConfigError("set OLLAMALITE_API_KEY or OLLAMALITE_API_KEY_FILE, not both")
    if path:
        try:
            key = Path(path).expanduser().read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"OLLAMALITE_API_KEY_FILE: cannot read {path}: {exc}") from None
        if not key:
            raise ConfigError(f"OLLAMALITE_API_KEY_FILE: {path} is empty")
    if not all("!" <= c <= "~" for c in key):
        raise ConfigError("the API key must be printable ASCII without spaces (it travels in "
                          "an HTTP header)")
    return key


def from_env(
    env: Mapping[str, str],
    host: str | None = None,
    port: int | None = None,
    config: str | None = None,
) -> Settings:
    """Flags win over the environment, which wins over the defaults."""
    env_host, env_port = parse_host(env_var(env, "OLLAMA_HOST"))
    config_text = config or env_var(env, "OLLAMALITE_CONFIG")
    origins = tuple(o.strip() for o in env_var(env, "OLLAMA_ORIGINS").split(",") if o.strip())
    return Settings(
        host=host or env_host,
        port=port if port is not None else env_port,
        config_path=Path(config_text or DEFAULT_CONFIG),
        config_explicit=bool(config_text),
        origins=origins,
        keep_alive=_keep_alive(env),
        max_loaded_models=_uint(env, "OLLAMA_MAX_LOADED_MODELS", 0) or 1,
        num_parallel=_uint(env, "OLLAMA_NUM_PARALLEL", 0) or 4,
        max_queue=_uint(env, "OLLAMA_MAX_QUEUE", 512),
        load_timeout=_duration(env, "OLLAMA_LOAD_TIMEOUT", 300.0),
        num_threads=_uint(env, "OLLAMALITE_NUM_THREADS", 0),
        prefix_cache=_bool(env, "OLLAMALITE_PREFIX_CACHE", True),
        cache_ram=_mebibytes(env, "OLLAMALITE_CACHE_RAM"),
        cache_disk=_mebibytes(env, "OLLAMALITE_CACHE_DISK") or 0,
        speculative=_bool(env, "OLLAMALITE_SPECULATIVE", True),
        deterministic=_bool(env, "OLLAMALITE_DETERMINISTIC", False),
        repack=_switch(env, "OLLAMALITE_REPACK"),
        kv_cache_type=_kv_cache_type(env),
        flash_attention=_switch(env, "OLLAMA_FLASH_ATTENTION"),
        debug=_bool(env, "OLLAMA_DEBUG", False),
        data_dir=_path(env, "OLLAMALITE_HOME", DEFAULT_HOME),
        ollama_models=_path(env, "OLLAMA_MODELS", DEFAULT_OLLAMA_MODELS),
        api_key=api_key(env),
        max_body=_uint(env, "OLLAMALITE_MAX_BODY", 0) or DEFAULT_MAX_BODY,
        allow_any_path=_bool(env, "OLLAMALITE_ALLOW_ANY_PATH", False),
        pull_private=_bool(env, "OLLAMALITE_PULL_PRIVATE", True),
        max_download=_uint(env, "OLLAMALITE_MAX_DOWNLOAD", DEFAULT_MAX_TRANSFER),
        max_upload=_uint(env, "OLLAMALITE_MAX_UPLOAD", DEFAULT_MAX_TRANSFER),
        metrics=_bool(env, "OLLAMALITE_METRICS", True),
    )


def _path(env: Mapping[str, str], key: str, default: Path) -> Path:
    return Path(env_var(env, key) or default).expanduser().absolute()


@dataclass(frozen=True)
class ServerSection:
    """models.yaml's `server:` section: where `serve` listens unless told otherwise."""

    host: str | None = None
    port: int | None = None


def with_server_section(settings: Settings, section: ServerSection, host: str | None = None,
                        port: int | None = None, env: Mapping[str, str] = os.environ
                        ) -> Settings:
    """`settings` with the models file's address under OLLAMA_HOST (a whole address) and the
    `host` and `port` flags: the file is only found once flags and environment are read."""
    if env_var(env, "OLLAMA_HOST"):
        return settings
    return replace(settings, host=host or section.host or settings.host,
                   port=port if port is not None else section.port or settings.port)


def current(**flags: object) -> Settings:
    return from_env(os.environ, **flags)  # type: ignore[arg-type]
