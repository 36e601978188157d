"""Exceptions that carry their HTTP meaning.

Raised deep (config, scheduler, engine) and turned into Ollama's `{"error": ...}` body in one
middleware, so handlers never format errors themselves.
"""

from __future__ import annotations

from typing import Any


class ApiError(Exception):
    """An error with the HTTP status the client should see."""

    status = 500

    def __init__(self, message: str, status: int | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.headers = headers or {}
        if status is not None:
            self.status = status


class BadRequest(ApiError):
    status = 400


class NotFound(ApiError):
    status = 404


class Busy(ApiError):
    """The server cannot take the request now; `Retry-After` says when to try again."""

    status = 503

    def __init__(self, message: str, retry_after: int = 1) -> None:
        super().__init__(message, headers={"Retry-After": str(retry_after)})


class ModelNotFound(NotFound):
    def __init__(self, name: str) -> None:
        super().__init__(f'model "{name}" not found, try pulling it first')


class ConfigError(Exception):
    """A start-up problem in models.yaml or the environment, shown without a traceback."""


def describe(messages: Any, prefix: str = "") -> str:
    """marshmallow's nested error dict -> `field.sub: message; other: message`, for the one
    readable 400 message of a request or a Modelfile's parameters."""
    if isinstance(messages, dict):
        parts = []
        for key, value in messages.items():
            path = prefix if key == "_schema" else (f"{prefix}.{key}" if prefix else str(key))
            parts.append(describe(value, path))
        return "; ".join(parts)
    if isinstance(messages, list):
        text = " ".join(str(m) for m in messages if not isinstance(m, (dict, list)))
        nested = [describe(m, prefix) for m in messages if isinstance(m, (dict, list))]
        head = f"{prefix}: {text}" if prefix and text else text
        return "; ".join([p for p in [head, *nested] if p])
    return f"{prefix}: {messages}" if prefix else str(messages)
