"""Command line: `ollamalite serve` runs the server; the other commands (`list`, `ps`, `show`,
`run`, `pull`, `create`, `cp`, `rm`, `stop`) talk to a running one at OLLAMA_HOST."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from ollamalite import __version__, logs
from ollamalite.client import commands, run
from ollamalite.client.api import Client, ClientError
from ollamalite.errors import ConfigError
from ollamalite.settings import (DEFAULT_CONFIG, Settings, current, is_loopback,
                                 with_server_section)

if TYPE_CHECKING:
    from ollamalite.registry import models_file

log = logging.getLogger("ollamalite")


class _Version(argparse.Action):
    """`--version`: ollamalite's, then llama-cpp-python's and the CPU features its llama.cpp was
    built with (imported only here, so other commands start without loading llama.cpp)."""

    def __call__(self, parser: argparse.ArgumentParser, *_: object) -> None:
        import llama_cpp

        from ollamalite.runtime.engine.cpu import build_features

        print(f"ollamalite {__version__}\nllama-cpp-python {llama_cpp.__version__} "
              f"(llama.cpp: {' '.join(build_features()) or 'no CPU features'})")
        parser.exit()


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ollamalite", description=__doc__)
    parser.add_argument("--version", action=_Version, nargs=0,
                        help="print ollamalite's version and the llama.cpp build it runs on")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="start the server",
                           description="Start the server. Everything else is set in the "
                                       "environment (OLLAMA_HOST, OLLAMALITE_API_KEY, ...: "
                                       "docs/configuration.md).")
    serve.add_argument("--host", help="address to bind (default from OLLAMA_HOST, else the "
                                      "models file's server.host, else 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port (default from OLLAMA_HOST, else the models "
                                                "file's server.port, else 11434)")
    serve.add_argument("--config",
                       help=f"models file (default OLLAMALITE_CONFIG or {DEFAULT_CONFIG})")
    serve.add_argument("--verbose", "-v", action="store_true", help="debug logging")
    serve.add_argument("--log-format", choices=logs.FORMATS, default="text",
                       help="text lines, or one JSON object per line (default text)")
    commands.add_parsers(sub)
    run.add_parser(sub)
    return parser


def client_command(args: argparse.Namespace) -> int:
    """Runs one client command; server errors print `Error: ...` and exit 1, as ollama's do."""
    try:
        return args.handler(Client.from_env(), args) or 0
    except (ClientError, ConfigError) as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return 130


def models_path(settings: Settings) -> Path:
    """The models file named by flag or env; else ./models.yaml if present; else the one in
    the data folder (which, until the first edit writes it, means the bundled model alone)."""
    path = settings.config_path
    if settings.config_explicit or path.exists():
        return path
    return settings.data_dir / DEFAULT_CONFIG


def load_registry(settings: Settings) -> models_file.Registry:
    """models.yaml plus the models found in `model_dirs` and the Ollama store."""
    from ollamalite.registry import discovery, models_file  # here: client commands start fast

    path = models_path(settings)
    if not settings.config_explicit and not path.exists():
        log.info("no %s yet: serving the bundled model as smollm2:135m", path)
        registry = models_file.load_or_default(path)
    else:
        registry = models_file.load(path)
    return discovery.extend(registry, settings.ollama_models)


def warn_if_exposed(settings: Settings) -> None:
    """Binding beyond loopback without an API key, whichever setting asked for it, puts every
    endpoint (model edits included) within reach of the network: say so at start-up."""
    if not settings.api_key and not is_loopback(settings.host):
        log.warning("listening on %s:%d, beyond this machine: anyone who can reach this port "
                    "can use the API, including creating, copying and deleting models; set "
                    "OLLAMALITE_API_KEY (docs/security.md)", settings.host, settings.port)


def startup(args: argparse.Namespace) -> tuple[Settings, models_file.Registry]:
    """Flags and environment name the models file; its `server:` section then fills the
    address they leave unset (see `with_server_section`)."""
    flags = {"host": args.host, "port": args.port}
    settings = current(**flags, config=args.config)
    logs.configure(logging.DEBUG if args.verbose or settings.debug else logging.INFO,
                   args.log_format)
    registry = load_registry(settings)
    settings = with_server_section(settings, registry.server, **flags)
    warn_if_exposed(settings)
    return settings, registry


async def serve(settings: Settings, registry: models_file.Registry) -> None:
    from aiohttp import web

    from ollamalite.server.app import create_app
    from ollamalite.server.keys import LIBRARY

    # Streams still running at shutdown get 3 s, then their handlers are cancelled.
    app = create_app(settings, registry)
    # The access log is the app's own (server/observe.py), with the generation's fields.
    runner = web.AppRunner(app, handler_cancellation=True, shutdown_timeout=3.0,
                           access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, settings.host, settings.port)
    await site.start()
    log.info("ollamalite %s listening on http://%s:%d (%d models)", __version__, settings.host,
             settings.port, len(registry.models))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, app[LIBRARY].reload_soon)
    await stop.wait()
    log.info("shutting down")
    await runner.cleanup()


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command != "serve":
        return client_command(args)
    try:
        settings, registry = startup(args)
    except (ConfigError, FileNotFoundError) as exc:
        print(f"ollamalite: {exc}", file=sys.stderr)
        return 1
    try:
        asyncio.run(serve(settings, registry))
    except OSError as exc:
        print(f"ollamalite: cannot listen on {settings.host}:{settings.port}: {exc}",
              file=sys.stderr)
        return 1
    return 0
