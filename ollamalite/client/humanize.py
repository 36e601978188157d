"""Human-readable sizes, counts, times and tables, spelled the way the `ollama` CLI prints them."""

from __future__ import annotations

import re
from datetime import datetime, timezone
from typing import Sequence

_BYTE_UNITS = (("TB", 10**12), ("GB", 10**9), ("MB", 10**6), ("KB", 10**3))


def human_bytes(n: int) -> str:
    """Decimal units: `98 MB`, `1.5 GB`, `512 B` (whole numbers from 10 up)."""
    for unit, size in _BYTE_UNITS:
        if n >= size:
            value = n / size
            if value >= 10 or value == int(value):
                return f"{int(value)} {unit}"
            return f"{value:.1f} {unit}"
    return f"{n} B"


def human_number(n: int) -> str:
    """Parameter counts: `135M`, `1.24B`... as Ollama's `format.HumanNumber`."""
    if n >= 10**9:
        value = n / 10**9
        return f"{value:.0f}B" if value == int(value) else f"{value:.1f}B"
    if n >= 10**6:
        value = n / 10**6
        return f"{value:.0f}M" if value == int(value) else f"{value:.2f}M"
    if n >= 10**3:
        return f"{n / 10**3:.0f}K"
    return str(n)


def human_duration(seconds: float) -> str:
    """An approximate span: `Less than a second`, `2 minutes`, `About an hour`, `3 days`."""
    whole = int(seconds)
    if whole < 1:
        return "Less than a second"
    if whole == 1:
        return "1 second"
    if whole < 60:
        return f"{whole} seconds"
    minutes = whole // 60
    if minutes == 1:
        return "About a minute"
    if minutes < 60:
        return f"{minutes} minutes"
    hours = round(seconds / 3600)
    if hours == 1:
        return "About an hour"
    for limit, divisor, unit in ((48, 1, "hours"), (24 * 14, 24, "days"),
                                 (24 * 60, 24 * 7, "weeks"), (24 * 730, 24 * 30, "months")):
        if hours < limit:
            return f"{hours // divisor} {unit}"
    return f"{int(seconds // 3600) // 24 // 365} years"


def parse_time(text: str | None) -> datetime | None:
    """RFC 3339 as Ollama writes it (nanosecond fractions, `Z` or an offset)."""
    if not text:
        return None
    text = re.sub(r"(\.\d{6})\d+", r"\1", text.replace("Z", "+00:00"))
    when = datetime.fromisoformat(text)
    return when if when.tzinfo else when.replace(tzinfo=timezone.utc)


def human_time(when: datetime | None, zero: str, now: datetime | None = None) -> str:
    """`2 minutes ago`, `4 minutes from now`, or `Forever` for dates decades ahead."""
    if when is None:
        return zero
    delta = ((now or datetime.now(timezone.utc)) - when).total_seconds()
    if delta < -20 * 365 * 86400:
        return "Forever"
    if delta < 0:
        return human_duration(-delta) + " from now"
    return human_duration(delta) + " ago"


def go_duration(ns: int) -> str:
    """Go's `time.Duration.String()`: `1.234567s`, `12.3ms`, `1m2.5s`, `0s`."""
    if ns == 0:
        return "0s"
    sign, ns = ("-", -ns) if ns < 0 else ("", ns)
    if ns < 1000:
        return f"{sign}{ns}ns"
    if ns < 10**6:
        return f"{sign}{_trim(ns, 3)}µs"
    if ns < 10**9:
        return f"{sign}{_trim(ns, 6)}ms"
    hours, rest = divmod(ns, 3600 * 10**9)
    minutes, rest = divmod(rest, 60 * 10**9)
    text = f"{hours}h" if hours else ""
    text += f"{minutes}m" if hours or minutes else ""
    return f"{sign}{text}{_trim(rest, 9)}s"


def _trim(value: int, decimals: int) -> str:
    """`value / 10**decimals` with no trailing zeros, exact (no float rounding)."""
    whole, frac = divmod(value, 10**decimals)
    digits = str(frac).rjust(decimals, "0").rstrip("0")
    return f"{whole}.{digits}" if digits else str(whole)


def table(rows: Sequence[Sequence[str]], padding: int = 4) -> list[str]:
    """Left-aligned columns separated by `padding` spaces, no borders (Ollama's tables)."""
    if not rows:
        return []
    widths = [max(len(row[i]) if i < len(row) else 0 for row in rows)
              for i in range(max(len(row) for row in rows))]
    sep = " " * padding
    return [sep.join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip()
            for row in rows]
