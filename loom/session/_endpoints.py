"""Endpoint rules: which forms a broker address may take, and how an endpoint a broker
announces is reached from here."""

from __future__ import annotations

from loom.errors import EndpointError

__all__ = ["announced_endpoint", "check_endpoint", "reachable_endpoint"]

_WILDCARD_HOSTS = ("*", "0.0.0.0", "[::]", "::")
FORMS = "tcp://HOST:PORT (tcp://127.0.0.1:7700), ipc:///PATH or inproc://NAME"
"""The accepted forms, as said in every error about an endpoint."""


def check_endpoint(endpoint: str, *, bind: bool = False) -> str:
    """``endpoint`` if it has an accepted form; a bound TCP port may be ``*`` (any).

    Raises:
        EndpointError: it does not (a missing scheme, host or port, another transport);
            the message names it and the accepted forms.
    """
    if not isinstance(endpoint, str):
        raise EndpointError(f"broker address {endpoint!r} is not text; use {FORMS}")
    scheme, sep, rest = endpoint.partition("://")
    if not sep:
        raise EndpointError(f"broker address {endpoint!r} has no transport; use {FORMS}")
    if scheme == "tcp":
        host, colon, port = rest.rpartition(":")
        port_ok = (port.isdigit() and 0 < int(port) < 65536) or (bind and port == "*")
        if not colon or not host or not port_ok:
            raise EndpointError(f"broker address {endpoint!r} needs a host and port; use {FORMS}")
    elif scheme in ("ipc", "inproc"):
        if not rest:
            raise EndpointError(f"broker address {endpoint!r} has no path; use {FORMS}")
    else:
        raise EndpointError(f"broker address {endpoint!r}: transport {scheme!r}; use {FORMS}")
    return endpoint


def announced_endpoint(announced: str, control: str) -> str:
    """Make an endpoint the broker announced reachable from here.

    A broker bound to a wildcard host (``tcp://0.0.0.0:41000``) announces that host;
    the client substitutes the host it reached the control endpoint at.
    """
    return reachable_endpoint(announced, control.partition("://")[2].rpartition(":")[0])


def reachable_endpoint(endpoint: str, host: str = "127.0.0.1") -> str:
    """``endpoint`` with a wildcard host (``*``, ``0.0.0.0``, ``::``) replaced by
    ``host``, so that a client can connect to what a broker bound."""
    scheme, _, rest = endpoint.partition("://")
    if scheme != "tcp":
        return endpoint
    bound, _, port = rest.rpartition(":")
    if bound not in _WILDCARD_HOSTS:
        return endpoint
    return f"tcp://{host}:{port}"
