"""`ollamalite create NAME -f Modelfile`: the JSON `/api/create` body Ollama's CLI sends.

The Modelfile text is parsed by the same parser the server uses for the legacy `modelfile`
field (`ollamalite.registry.modelfile`). What the client adds, as `ollama create` does: PARAMETER
values typed as their options are, and a FROM that names a GGUF file on this machine uploaded
as a blob (`files`) rather than sent as a path the server may not see.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from marshmallow import fields as mf

from ollamalite.errors import ApiError
from ollamalite.options import OptionsSchema
from ollamalite.registry import modelfile
from ollamalite.registry.gguf_header import file_digest


class CreateError(ValueError):
    """A Modelfile that cannot be turned into a create request (message as Ollama's)."""


_OPTION_FIELDS = OptionsSchema().fields
_GO_TYPES = ((mf.Integer, int, "int"), (mf.Float, float, "float"), (mf.Boolean, None, "bool"))


def parameter_value(name: str, raw: str) -> Any:
    """A PARAMETER's (or `/set parameter`'s) text typed as the option is: Ollama's
    `FormatParams`; `stop` is always a list."""
    field = _OPTION_FIELDS.get(name)
    if field is None:
        raise CreateError(f"unknown parameter '{name}'")
    for kind, parse, word in _GO_TYPES:
        if isinstance(field, kind):
            try:
                return (parse or _go_bool)(raw)
            except ValueError:
                raise CreateError(f"invalid {word} value [{raw}]") from None
    return [raw] if name == "stop" else raw


def _go_bool(raw: str) -> bool:
    if raw in ("1", "t", "T", "TRUE", "true", "True"):
        return True
    if raw in ("0", "f", "F", "FALSE", "false", "False"):
        return False
    raise ValueError(raw)


@dataclass
class CreatePlan:
    """The JSON body, and the local files to upload before it is sent (path -> digest)."""

    body: dict[str, Any]
    uploads: dict[Path, str]


def create_request(text: str, folder: Path) -> CreatePlan:
    """`folder` is the Modelfile's: a relative FROM path is read from there."""
    try:
        parsed = modelfile.parse(text)
    except ApiError as exc:
        raise CreateError(exc.message) from None
    body = {k: v for k, v in parsed.items() if v and k != "parameters"}
    params = {name: _typed(name, value) for name, value in parsed["parameters"].items()}
    if params:
        body["parameters"] = params
    uploads: dict[Path, str] = {}
    path = Path(os.path.expanduser(parsed["from"]))
    path = (path if path.is_absolute() else folder / path).resolve()
    if path.is_file():
        digest = "sha256:" + file_digest(path)
        uploads[path] = digest
        del body["from"]
        body["files"] = {path.name: digest}
    return CreatePlan(body, uploads)


def _typed(name: str, value: str | list[str]) -> Any:
    values = value if isinstance(value, list) else [value]
    typed = [parameter_value(name, v) for v in values]
    return [s for v in typed for s in v] if name == "stop" else typed[-1]
