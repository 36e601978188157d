"""keep_alive values: Ollama's `api.Duration` (numbers are seconds, strings are Go durations)."""

from __future__ import annotations

import math
import re

FOREVER = math.inf
# The longest Go duration (int64 nanoseconds, about 292 years): Ollama's own "forever". A longer
# keep_alive is forever too, which also keeps every expiry a date that Python can represent.
GO_MAX_SECONDS = (2**63 - 1) / 1e9

_UNIT_SECONDS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_PART_RE = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")


def parse_go_duration(text: str) -> float:
    """Seconds in a Go duration string such as `5m`, `1h30m`, `-1m` or `0`."""
    s = text.strip()
    sign = -1.0 if s.startswith("-") else 1.0
    body = s.lstrip("+-")
    if body == "0":
        return 0.0
    if not body:
        raise ValueError(f'time: invalid duration "{text}"')
    total, pos = 0.0, 0
    for match in _PART_RE.finditer(body):
        if match.start() != pos:
            break
        total += float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
        pos = match.end()
    if pos != len(body) or total > GO_MAX_SECONDS:  # Go refuses durations it cannot hold
        missing_unit = re.fullmatch(r"[\d.]+", body) is not None
        reason = "missing unit in duration" if missing_unit else "invalid duration"
        raise ValueError(f'time: {reason} "{text}"')
    return sign * total


def keep_alive_seconds(value: object) -> float:
    """Seconds to keep a model loaded; negative or beyond Go's longest duration means forever
    (returned as infinity)."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ValueError(f"Unsupported type: '{type(value).__name__}'")
    try:
        seconds = float(value) if not isinstance(value, str) else parse_go_duration(value)
    except OverflowError:  # an integer beyond any float: as huge as it is, it means forever
        return FOREVER
    if math.isnan(seconds):
        raise ValueError("keep_alive must be a number")
    return FOREVER if seconds < 0 or seconds >= GO_MAX_SECONDS else seconds
