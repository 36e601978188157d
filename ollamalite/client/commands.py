"""Model commands: `list`, `ps`, `show`, `pull`, `create`, `cp`, `rm`, `stop`."""

from __future__ import annotations

import argparse
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

from ollamalite.client.api import Client, ClientError, ServerError, blob_path
from ollamalite.client.create import CreateError, create_request
from ollamalite.client.humanize import human_bytes, human_time, parse_time, table
from ollamalite.client.progress import Progress, follow
from ollamalite.client.show_info import print_show

SHOW_FIELDS = ("license", "modelfile", "parameters", "template", "system")


def print_table(header: list[str], rows: list[list[str]]) -> None:
    for line in table([header, *rows]):
        print(line)


def short_id(digest: str) -> str:
    return digest.removeprefix("sha256:")[:12]


def list_models(client: Client, args: argparse.Namespace) -> None:
    prefix = (args.prefix or "").lower()
    rows = [[m["name"], short_id(m.get("digest", "")), human_bytes(int(m.get("size", 0))),
             human_time(parse_time(m.get("modified_at")), "Never")]
            for m in client.request("GET", "/api/tags")["models"]
            if m["name"].lower().startswith(prefix)]
    print_table(["NAME", "ID", "SIZE", "MODIFIED"], rows)


def processor(size: int, size_vram: int) -> str:
    """Where a loaded model's weights are, as `ollama ps` says it."""
    if size_vram == 0:
        return "100% CPU"
    if size_vram == size:
        return "100% GPU"
    if size_vram > size or size == 0:
        return "Unknown"
    cpu = round((size - size_vram) / size * 100)
    return f"{cpu}%/{100 - cpu}% CPU/GPU"


def until(expires_at: str | None, now: datetime | None = None) -> str:
    when = parse_time(expires_at)
    now = now or datetime.now(timezone.utc)
    if when is not None and when < now:
        return "Stopping..."
    return human_time(when, "Never", now)


def list_running(client: Client, args: argparse.Namespace) -> None:
    rows = []
    for m in client.request("GET", "/api/ps")["models"]:
        if not m["name"].startswith(args.prefix or ""):
            continue
        size = int(m.get("size", 0))
        rows.append([m["name"], short_id(m.get("digest", "")), human_bytes(size),
                     processor(size, int(m.get("size_vram", 0))),
                     str(m.get("context_length", 0)), until(m.get("expires_at"))])
    print_table(["NAME", "ID", "SIZE", "PROCESSOR", "CONTEXT", "UNTIL"], rows)


def show(client: Client, args: argparse.Namespace) -> None:
    wanted = [f for f in SHOW_FIELDS if getattr(args, f)]
    if len(wanted) > 1:
        raise ClientError("only one of '--license', '--modelfile', '--parameters', '--system', "
                          "or '--template' can be specified")
    resp = client.request("POST", "/api/show", {"model": args.model, "verbose": args.verbose})
    if not wanted:
        print_show(resp, args.verbose, sys.stdout)
        return
    text = str(resp.get(wanted[0]) or "")
    # Ollama ends license/modelfile/parameters with a newline, system/template as they are
    print(text, end="" if wanted[0] in ("system", "template") else "\n")


def pull_model(client: Client, name: str, insecure: bool = False) -> None:
    progress = Progress()
    try:
        follow(client.stream("/api/pull", {"model": name, "insecure": insecure}), progress)
    finally:
        progress.close()


def pull(client: Client, args: argparse.Namespace) -> None:
    pull_model(client, args.model, args.insecure)


def create(client: Client, args: argparse.Namespace) -> None:
    path = Path(args.file or "Modelfile")
    if not path.is_file():
        raise ClientError(f"no Modelfile at {path} (name one with -f)")
    progress = Progress()
    try:
        progress.status("gathering model components")
        plan = create_request(path.read_text(encoding="utf-8"), path.resolve().parent)
        for file, digest in plan.uploads.items():
            upload_blob(client, file, digest, progress)
        follow(client.stream("/api/create", {"model": args.model, **plan.body}), progress)
    except CreateError as exc:
        raise ClientError(str(exc)) from None
    finally:
        progress.close()


def upload_blob(client: Client, file: Path, digest: str, progress: Progress) -> None:
    """`HEAD` first: a blob the server already holds is not sent again."""
    if client.status("HEAD", blob_path(digest)) == 200:
        return
    size = file.stat().st_size
    label = f"copying file {digest}"

    def chunks() -> Iterator[bytes]:
        sent = 0
        with open(file, "rb") as f:
            while chunk := f.read(1 << 20):
                sent += len(chunk)
                progress.bar(digest, label, sent, size)
                yield chunk

    client.request("POST", blob_path(digest), raw=chunks(),
                   headers={"Content-Length": str(size),
                            "Content-Type": "application/octet-stream"})


def copy(client: Client, args: argparse.Namespace) -> None:
    client.request("POST", "/api/copy", {"source": args.source, "destination": args.destination})
    print(f"copied '{args.source}' to '{args.destination}'")


def unload(client: Client, name: str) -> Any:
    return client.request("POST", "/api/generate", {"model": name, "keep_alive": 0})


def remove(client: Client, args: argparse.Namespace) -> None:
    for name in args.models:
        try:
            unload(client, name)
        except ServerError as exc:
            if "not found" not in str(exc).lower():
                print(f"Warning: unable to stop model '{name}'", file=sys.stderr)
        client.request("DELETE", "/api/delete", {"model": name})
        print(f"deleted '{name}'")


def stop(client: Client, args: argparse.Namespace) -> None:
    try:
        unload(client, args.model)
    except ServerError as exc:
        if "not found" in str(exc):
            raise ClientError(f'couldn\'t find model "{args.model}" to stop') from None
        raise


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """The client subcommands; each sets `handler(client, args)`."""
    p = sub.add_parser("list", aliases=["ls"], help="list models")
    p.add_argument("prefix", nargs="?", help="only names starting with this")
    p.set_defaults(handler=list_models)
    p = sub.add_parser("ps", help="list running models")
    p.add_argument("prefix", nargs="?", help="only names starting with this")
    p.set_defaults(handler=list_running)
    p = sub.add_parser("show", help="show information for a model")
    p.add_argument("model", help="the model's name")
    for field in SHOW_FIELDS:
        p.add_argument(f"--{field}", action="store_true", help=f"show the model's {field}")
    p.add_argument("--verbose", "-v", action="store_true", help="also list the GGUF metadata")
    p.set_defaults(handler=show)
    p = sub.add_parser("pull", help="pull a model")
    p.add_argument("model", help="hf.co/USER/REPO[:QUANT] or the URL of a GGUF file")
    p.add_argument("--insecure", action="store_true", help="allow an insecure registry")
    p.set_defaults(handler=pull)
    p = sub.add_parser("create", help="create a model from a Modelfile")
    p.add_argument("model", help="the new model's name")
    p.add_argument("--file", "-f", help='the Modelfile (default "Modelfile")')
    p.set_defaults(handler=create)
    p = sub.add_parser("cp", help="copy a model")
    p.add_argument("source", help="the model to copy")
    p.add_argument("destination", help="the copy's name")
    p.set_defaults(handler=copy)
    p = sub.add_parser("rm", help="remove models")
    p.add_argument("models", nargs="+", metavar="model", help="the models to remove")
    p.set_defaults(handler=remove)
    p = sub.add_parser("stop", help="unload a running model")
    p.add_argument("model", help="the model's name")
    p.set_defaults(handler=stop)
