"""Exceptions that carry their HTTP meaning.

Raised deep (config, scheduler, engine) and turned into Ollama's `{"error": ...}` body in one
middleware, so handlers never format errors themselves.
"""

from __future__ import annotations


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
