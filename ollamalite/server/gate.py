"""What may reach a handler: the Host check (against DNS rebinding), CORS, the optional API key.

Outermost first. A rebinding page is refused before CORS could vouch for it; a CORS preflight is
answered before a key is asked for (browsers send none with it); and a 401 is labelled for CORS
(see `add_cors_headers`), so a web app can read why it was refused.
"""

from __future__ import annotations

import fnmatch
import hmac
import ipaddress
import logging
import socket

from aiohttp import hdrs, web
from aiohttp.typedefs import Handler, Middleware

from ollamalite.server.errors import error_response
from ollamalite.settings import Settings, is_loopback

log = logging.getLogger(__name__)

CORS_HEADERS = web.RequestKey("cors_headers", dict)
_LOCAL_HOSTS = ("localhost", "127.0.0.1", "0.0.0.0")
DEFAULT_ORIGINS = tuple(
    f"{scheme}://{host}{port}" for host in _LOCAL_HOSTS for scheme in ("http", "https")
    for port in ("", ":*")
) + ("app://*", "file://*", "tauri://*", "vscode-webview://*", "vscode-file://*")
ALLOW_HEADERS = ", ".join([
    "Authorization", "Content-Type", "User-Agent", "Accept", "X-Requested-With", "OpenAI-Beta",
    "x-api-key", "anthropic-version",
    *(f"x-stainless-{h}" for h in ("arch", "async", "custom-poll-interval", "helper-method",
                                   "lang", "os", "package-version", "poll-helper",
                                   "retry-count", "runtime", "runtime-version", "timeout")),
])
ALLOW_METHODS = "GET, POST, PUT, PATCH, DELETE, HEAD, OPTIONS"
# Names no public DNS answers for, so a rebinding attack cannot use them (Ollama's list).
_LOCAL_SUFFIXES = (".localhost", ".local", ".internal")
# Go's netip IsPrivate: RFC 1918 and unique local IPv6 (Python's is_private is wider).
_PRIVATE = tuple(ipaddress.ip_network(net) for net in
                 ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fc00::/7"))
UNAUTHORIZED = "unauthorized: this server needs an API key (Authorization: Bearer <key>)"


# -- Host check ---------------------------------------------------------------------------------

def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """An address literal (an IPv4-mapped IPv6 one as its IPv4 address), else None."""
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        return None
    return getattr(ip, "ipv4_mapped", None) or ip


def _host_name(header: str) -> str:
    """`name:port`, `[v6]:port` or `[v6]` -> the name or address; a bare IPv6 stays whole."""
    if header.startswith("["):
        return header[1:].partition("]")[0]
    return header.partition(":")[0] if header.count(":") == 1 else header


def host_allowed(header: str, hostname: str) -> bool:
    """Ollama's allowed hosts: loopback, private and unspecified addresses, no host, localhost,
    this machine's name, and the local-only suffixes. A rebinding page's Host is its attacker's
    public name, so it is none of these."""
    host = _host_name(header).lower()
    ip = _ip(host)
    if ip is not None:
        return ip.is_loopback or ip.is_unspecified or any(ip in net for net in _PRIVATE)
    return host in ("", "localhost", hostname) or host.endswith(_LOCAL_SUFFIXES)


def host_check(hostname: str) -> Middleware:
    @web.middleware
    async def check_host(request: web.Request, handler: Handler) -> web.StreamResponse:
        if host_allowed(request.headers.get(hdrs.HOST, ""), hostname):
            return await handler(request)
        log.info("%s %s: refused Host %r", request.method, request.path,
                 request.headers.get(hdrs.HOST))
        return web.Response(status=403)

    return check_host


# -- CORS ---------------------------------------------------------------------------------------

def origin_allowed(origin: str, allowed: tuple[str, ...]) -> bool:
    return any(pattern == "*" or fnmatch.fnmatchcase(origin, pattern) for pattern in allowed)


def cors(origins: tuple[str, ...]) -> Middleware:
    """An Origin must be on the list, even one equal to the Host: under DNS rebinding the page's
    origin and the Host it sends are both the attacker's name."""
    allowed = origins + DEFAULT_ORIGINS

    @web.middleware
    async def check_origin(request: web.Request, handler: Handler) -> web.StreamResponse:
        origin = request.headers.get(hdrs.ORIGIN)
        if not origin:
            return await handler(request)
        if not origin_allowed(origin, allowed):
            return web.Response(status=403)
        request[CORS_HEADERS] = {"Access-Control-Allow-Origin": origin, "Vary": "Origin"}
        if request.method == "OPTIONS" and hdrs.ACCESS_CONTROL_REQUEST_METHOD in request.headers:
            return web.Response(status=204, headers={
                "Access-Control-Allow-Methods": ALLOW_METHODS,
                "Access-Control-Allow-Headers": ALLOW_HEADERS, "Access-Control-Max-Age": "43200"})
        return await handler(request)

    return check_origin


async def add_cors_headers(request: web.Request, response: web.StreamResponse) -> None:
    """Runs as every response (streamed ones, refusals by inner middleware) is prepared."""
    response.headers.update(request.get(CORS_HEADERS, {}))


# -- API key ------------------------------------------------------------------------------------

def _presented_keys(request: web.Request) -> list[bytes]:
    """What the SDKs send: OpenAI's and Ollama's `Authorization: Bearer`, Anthropic's
    `x-api-key`."""
    scheme, _, token = request.headers.get(hdrs.AUTHORIZATION, "").partition(" ")
    bearer = token.strip() if scheme.lower() == "bearer" else ""
    keys = (request.headers.get("x-api-key", ""), bearer)
    return [key.encode("utf-8", "surrogateescape") for key in keys if key]


def _open(request: web.Request) -> bool:
    """`GET /` stays open: it is how clients and health checks see the server is up."""
    return request.path == "/" and request.method in (hdrs.METH_GET, hdrs.METH_HEAD)


def auth(key: str) -> Middleware:
    expected = key.encode()

    @web.middleware
    async def check_key(request: web.Request, handler: Handler) -> web.StreamResponse:
        if _open(request) or any([hmac.compare_digest(given, expected)
                                  for given in _presented_keys(request)]):
            return await handler(request)
        response = error_response(request, 401, UNAUTHORIZED)
        response.headers[hdrs.WWW_AUTHENTICATE] = "Bearer"
        return response

    return check_key


def middlewares(settings: Settings) -> list[Middleware]:
    """The gate for these settings, outermost first. Bound beyond loopback, every Host is
    accepted (as Ollama does): the address was chosen to be reached by other names, and the
    API key is then what keeps strangers out."""
    gate = [cors(settings.origins)]
    if is_loopback(settings.host):
        gate.insert(0, host_check(socket.gethostname().lower()))
    if settings.api_key:
        gate.append(auth(settings.api_key))
    return gate
