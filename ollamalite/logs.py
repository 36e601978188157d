"""The server's log output: readable lines, or one JSON object per line for log shippers.

Records may carry structured fields (`extra={FIELDS: {...}}`, as the access log does): the
JSON format writes them as keys of the record's object; the text format shows the message,
which spells them out already.
"""

from __future__ import annotations

import json
import logging
from datetime import datetime, timezone
from typing import Any

FORMATS = ("text", "json")
FIELDS = "fields"  # the record attribute holding a record's structured fields
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class JsonFormatter(logging.Formatter):
    """time (ISO 8601, UTC), level, logger, message, the record's fields, and the traceback if
    any."""

    def format(self, record: logging.LogRecord) -> str:
        time = datetime.fromtimestamp(record.created, timezone.utc).isoformat()
        body: dict[str, Any] = {"time": time, "level": record.levelname,
                                "logger": record.name, "message": record.getMessage()}
        body.update(getattr(record, FIELDS, {}))
        if record.exc_info:
            body["exc_info"] = self.formatException(record.exc_info)
        return json.dumps(body, default=str)


def configure(level: int, fmt: str) -> None:
    """Every record of the process goes to stderr in `fmt` (one of FORMATS)."""
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    logging.basicConfig(level=level, handlers=[handler])
