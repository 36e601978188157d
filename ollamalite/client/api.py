"""A small blocking HTTP client for the server's /api routes (stdlib `http.client` only).

Streams are read line by line as they arrive, so tokens print as soon as they are decoded.
"""

from __future__ import annotations

import http.client
import json
import os
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator, Mapping
from urllib.parse import quote

from ollamalite import __version__
from ollamalite.settings import api_key, env_var, parse_host

USER_AGENT = f"ollamalite/{__version__}"


class ClientError(Exception):
    """Anything the CLI reports as `Error: <message>` and exit status 1."""


class ServerError(ClientError):
    """The server answered `{"error": ...}` (with a 4xx/5xx status, or mid-stream)."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


class NotRunning(ClientError):
    def __init__(self, url: str) -> None:
        super().__init__(f"could not connect to ollamalite server at {url}; "
                         'start it with "ollamalite serve"')


def server_url(env: Mapping[str, str] | None = None) -> str:
    """OLLAMA_HOST as a URL to connect to; a wildcard bind address means this machine."""
    value = env_var(os.environ if env is None else env, "OLLAMA_HOST")
    scheme = value.split("://", 1)[0] if "://" in value else "http"
    host, port = parse_host(value)
    host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)
    if ":" in host:
        host = f"[{host}]"
    return f"{scheme}://{host}:{port}"


@dataclass
class Client:
    url: str
    api_key: str = field(default="", repr=False)  # sent as `Authorization: Bearer`

    @classmethod
    def from_env(cls) -> Client:
        return cls(server_url(), api_key(os.environ))

    def _connect(self) -> http.client.HTTPConnection:
        scheme, _, netloc = self.url.partition("://")
        kind = http.client.HTTPSConnection if scheme == "https" else http.client.HTTPConnection
        return kind(netloc)

    def _send(self, method: str, path: str, payload: Any = None,
              raw: bytes | Iterable[bytes] | None = None, headers: Mapping[str, str] | None = None,
              ) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
        """Sends one request (a JSON `payload` or a `raw` body); the caller reads and closes."""
        conn = self._connect()
        all_headers = {"User-Agent": USER_AGENT, "Accept": "application/x-ndjson",
                       **(headers or {})}
        if self.api_key:
            all_headers["Authorization"] = f"Bearer {self.api_key}"
        body = raw
        if payload is not None:
            body = json.dumps(payload).encode()
            all_headers["Content-Type"] = "application/json"
        try:
            conn.connect()
        except OSError:
            conn.close()
            raise NotRunning(self.url) from None
        try:
            conn.request(method, path, body=body, headers=all_headers)
            resp = conn.getresponse()
        except (OSError, http.client.HTTPException) as exc:
            conn.close()
            raise ClientError(f"request to {self.url}{path} failed: {exc}") from None
        if resp.status >= 400:
            text = resp.read().decode("utf-8", "replace")
            conn.close()
            raise ServerError(_error_text(text, resp), resp.status)
        return conn, resp

    def request(self, method: str, path: str, payload: Any = None,
                raw: bytes | Iterable[bytes] | None = None,
                headers: Mapping[str, str] | None = None) -> Any:
        """One JSON answer (None for an empty body)."""
        conn, resp = self._send(method, path, payload, raw, headers)
        try:
            data = resp.read()
        finally:
            conn.close()
        return json.loads(data) if data.strip() else None

    def status(self, method: str, path: str) -> int:
        """Just the status code (HEAD /api/blobs/...): errors are not raised."""
        try:
            self._send(method, path)[0].close()
        except ServerError as exc:
            return exc.status
        return 200

    def stream(self, path: str, payload: dict[str, Any]) -> Iterator[dict[str, Any]]:
        """NDJSON objects as they arrive; an `error` line raises. Closing the iterator (or
        Ctrl-C) closes the connection, which makes the server stop generating."""
        conn, resp = self._send("POST", path, payload)
        try:
            while line := resp.readline():
                if not line.strip():
                    continue
                obj = json.loads(line)
                if obj.get("error"):
                    raise ServerError(str(obj["error"]), resp.status)
                yield obj
        except (http.client.HTTPException, ConnectionError) as exc:
            raise ClientError(f"connection to {self.url} lost: {exc}") from None
        finally:
            conn.close()


def _error_text(text: str, resp: http.client.HTTPResponse) -> str:
    try:
        message = json.loads(text).get("error")
    except (ValueError, AttributeError):
        message = None
    return str(message or text.strip() or f"{resp.status} {resp.reason}")


def blob_path(digest: str) -> str:
    return "/api/blobs/" + quote(digest)
