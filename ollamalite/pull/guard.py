"""Which addresses a pull may connect to.

Link-local and cloud metadata addresses are never reached: a pull URL (or a redirect) must not
make the server fetch its own cloud credentials. Loopback and private addresses are reached
only when `private` is set (the default: a LAN mirror or a local file host is a fair source).
The rule is applied to the socket each connection really opens, after every DNS lookup, so a
name that answers differently the second time (DNS rebinding) or a redirect cannot get round it.
"""

from __future__ import annotations

import socket
from ipaddress import IPv4Address, IPv6Address, ip_address
from typing import Callable

from aiohttp.connector import AddrInfoType

from ollamalite.errors import BadRequest

METADATA_ADDRESSES = frozenset(ip_address(a) for a in ("169.254.169.254", "fd00:ec2::254"))
METADATA_NAMES = frozenset({"metadata.google.internal"})
NEVER = "link-local and cloud metadata addresses"
PRIVATE = "loopback and private addresses (OLLAMALITE_PULL_PRIVATE=0)"


class Forbidden(OSError):
    """The address a pull was about to connect to is not allowed; the message says why."""


def refusal(address: str, private: bool) -> str | None:
    """What kind of address `address` is, if a pull may not connect to it."""
    ip: IPv4Address | IPv6Address = ip_address(address.partition("%")[0])
    if isinstance(ip, IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if ip in METADATA_ADDRESSES or ip.is_link_local:
        return NEVER
    if not private and not ip.is_global:
        return PRIVATE
    return None


def check_host(host: str) -> None:
    """Before any network: refuse a metadata name, or an address that is never allowed."""
    name = host.strip("[]").rstrip(".").lower()
    if name in METADATA_NAMES:
        raise BadRequest(f"pulls never connect to {NEVER}: {host}")
    try:
        reason = refusal(name, private=True)
    except ValueError:  # a name: checked once it is resolved
        return
    if reason is not None:
        raise BadRequest(f"pulls never connect to {reason}: {host}")


def socket_factory(private: bool) -> Callable[[AddrInfoType], socket.socket]:
    """For aiohttp's TCPConnector: opens a socket only for an allowed address."""
    def open_socket(addr_info: AddrInfoType) -> socket.socket:
        family, kind, proto, _, address = addr_info
        reason = refusal(address[0], private)
        if reason is not None:
            # One message per kind, so that happy eyeballs reports it as it is when every
            # address of a name is refused.
            raise Forbidden(f"pulls never connect to {reason}")
        return socket.socket(family=family, type=kind, proto=proto)

    return open_socket
