"""Where ``http.fetch`` may connect: a URL checked against the call's network policy.

The host is resolved here and every address it resolves to is checked; the request then
connects to those addresses only (``web._PinnedBackend``), so a second DNS answer cannot
move it elsewhere (DNS rebinding).
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from dataclasses import dataclass

import httpx

from loom.errors import (
    FetchError,
    FetchTimeoutError,
    HostRefusedError,
    InvalidParamsError,
)
from loom.tools._tool import ToolContext
from loom.tools.sandbox._policy import NetRules

__all__ = ["FetchError", "FetchTimeoutError", "HostRefusedError", "Target", "check", "rules_of"]

_DEFAULT_PORTS = {"http": 80, "https": 443}
_IP = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True)
class Target:
    """A URL that passed the policy.

    Attributes:
        url: the URL.
        addresses: the IP addresses its host resolved to, all allowed.
    """

    url: httpx.URL
    addresses: tuple[str, ...]


def rules_of(ctx: ToolContext) -> NetRules:
    """The call's network rules.

    Raises:
        HostRefusedError: the call has no sandbox policy.
    """
    if ctx.sandbox is None:
        raise HostRefusedError(
            f"{ctx.tool} needs a network policy and this call has none: serve it with a "
            "sandbox whose net.mode is 'loopback' or 'hosts'"
        )
    return ctx.sandbox.net


async def check(net: NetRules, url: httpx.URL) -> Target:
    """Check ``url`` against ``net`` and resolve its host.

    Raises:
        InvalidParamsError: the URL is not ``http`` or ``https`` or has no host.
        HostRefusedError: the network is off, or the policy does not allow the URL's
            host, port or addresses.
        FetchError: the host cannot be resolved.
    """
    if net.mode == "none":
        raise HostRefusedError("network access is off (net.mode is 'none')")
    if url.scheme not in _DEFAULT_PORTS:
        raise InvalidParamsError(f"{url}: only http and https URLs can be fetched")
    host = url.raw_host.decode("ascii").rstrip(".").lower()
    if not host:
        raise InvalidParamsError(f"{url}: the URL has no host")
    port = url.port or _DEFAULT_PORTS[url.scheme]
    wildcard = False
    if net.mode == "hosts":
        entry = _listed(host, url.host.rstrip(".").lower(), net.hosts)
        if entry is None:
            listed = (
                ", ".join(net.hosts)
                or 'none: operators list them in [tools."http.fetch".sandbox.net] hosts'
            )

            raise HostRefusedError(f"host {host!r} is not an allowed host (allowed: {listed})")
        wildcard = entry.startswith("*.")
    ports = net.tcp_ports()
    if ports and port not in ports:
        allowed = ", ".join(map(str, ports))
        raise HostRefusedError(f"port {port} of {host!r} is not allowed (allowed: {allowed})")
    addresses = await _resolve(host, port)
    for address in addresses:
        ip = _ip(address)
        if net.mode == "loopback" and not ip.is_loopback:
            raise HostRefusedError(
                f"{host!r} resolves to {address}, not a loopback address (net.mode is 'loopback')"
            )
        if wildcard and not ip.is_global:
            raise HostRefusedError(
                f"{host!r} matched an allowed host by wildcard but resolves to {address}, "
                "which is not a public address: list the name itself to allow it"
            )
    return Target(url, addresses)


def _listed(host: str, unicode_host: str, entries: tuple[str, ...]) -> str | None:
    """The entry of ``entries`` that allows ``host`` (exact name, ``*.`` wildcard for
    subdomains, or the same IP address), or ``None``."""
    literal = _parse_ip(host)
    names = (host, unicode_host)
    for entry in entries:
        name = entry.rstrip(".").lower()
        if literal is not None:
            allowed = literal == _parse_ip(name)
        else:
            wildcard = name.startswith("*.") and any(each.endswith(name[1:]) for each in names)
            allowed = name in names or wildcard
        if allowed:
            return entry
    return None


async def _resolve(host: str, port: int) -> tuple[str, ...]:
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise FetchError(f"cannot resolve {host!r}: {exc.strerror}") from exc
    addresses = dict.fromkeys(str(info[4][0]) for info in infos)
    if not addresses:
        raise FetchError(f"cannot resolve {host!r}: no addresses")
    return tuple(addresses)


def _parse_ip(text: str) -> _IP | None:
    try:
        return ipaddress.ip_address(text.strip("[]"))
    except ValueError:
        return None


def _ip(address: str) -> _IP:
    """An address as resolved, an IPv4-mapped IPv6 address as its IPv4 address."""
    ip = ipaddress.ip_address(address.partition("%")[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip
