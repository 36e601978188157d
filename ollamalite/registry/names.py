"""Model names the way Ollama spells them: `[host/][namespace/]model[:tag]`.

Lookups are case-insensitive and a missing tag means `latest`; the display name always
carries its tag, as `/api/tags` does.
"""

from __future__ import annotations

import re

from ollamalite.errors import BadRequest

_PART = r"[A-Za-z0-9_][A-Za-z0-9_.\-]{0,79}"
NAME_RE = re.compile(rf"^(?:[A-Za-z0-9_.\-:]{{1,350}}/)?(?:{_PART}/)?{_PART}(?::{_PART})?$")
DEFAULT_TAG = "latest"


def is_valid(name: str) -> bool:
    return bool(NAME_RE.match(name))


def display_name(name: str) -> str:
    """`llama3` -> `llama3:latest`; names that already carry a tag are kept as written."""
    last = name.rsplit("/", 1)[-1]
    return name if ":" in last else f"{name}:{DEFAULT_TAG}"


def normalize(name: str) -> str:
    """The key a name is looked up by: tagged and lower-cased."""
    if not is_valid(name):
        raise BadRequest("invalid model name")
    return display_name(name).lower()
