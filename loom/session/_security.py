"""Which CURVE keys a peer connects with, and how a failed handshake is explained.

A peer presents a keypair (its identity) and needs the broker's public key. By default
both come from this user's Loom home: ``keys/local.key_secret`` and ``keys/broker.key``,
made on first use (``loom.keys.local_keys``), so peers of the broker's own user need no
set-up. A remote peer is given its key file (``key=``, ``--key``, ``$LOOM_KEY``) and the
broker's public key (``broker_key=``, ``$LOOM_BROKER_KEY``: a ``.key`` file or the 40
Z85 characters, else the home's ``keys/broker.key``).

``NO_KEY`` (``"none"``) connects without CURVE: only a broker started ``--insecure``
accepts that, and a secure broker refuses it (a client never downgrades by itself).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import zmq

from loom.errors import AuthenticationError, KeyFileError
from loom.keys import (
    BROKER_KEY,
    LOCAL_KEY,
    Keypair,
    key_dir,
    load_keypair,
    local_keys,
    public_key,
)

__all__ = ["NO_KEY", "KeySpec", "PeerKey", "handshake_failure", "peer_key", "secure_client"]

NO_KEY = "none"
"""The key spec that connects without CURVE (to a broker started ``--insecure``)."""


@dataclass(frozen=True)
class PeerKey:
    """The keys a peer's sockets present (Z85 text, 40 characters each).

    Attributes:
        public: this peer's public key (what the broker enrols).
        secret: this peer's secret key.
        server: the broker's public key.
        source: where the pair came from (for messages).
    """

    public: bytes
    secret: bytes
    server: bytes
    source: str


KeySpec = str | os.PathLike[str] | PeerKey | None
"""What ``key=`` takes: a key file, ``"none"``, a :class:`PeerKey`, or ``None`` (the
default: ``$LOOM_KEY``, else the Loom home's local identity)."""


def peer_key(
    key: KeySpec = None,
    *,
    broker_key: str | os.PathLike[str] | None = None,
) -> PeerKey | None:
    """The keys to connect with: ``None`` for ``"none"`` (no CURVE).

    ``key`` is a key file (``NAME.key_secret``, or ``NAME.key`` with its secret beside
    it), ``"none"``, a :class:`PeerKey`, or ``None``: ``$LOOM_KEY``, else the home's
    local identity.

    Raises:
        KeyFileError: a key file is missing, unreadable, unsafe or holds no secret key;
            the broker's public key cannot be found.
    """
    if isinstance(key, PeerKey):
        return key
    spec = os.fspath(key) if key is not None else os.environ.get("LOOM_KEY") or None
    if spec is not None and spec.strip().lower() == NO_KEY:
        return None
    server_spec = broker_key if broker_key is not None else os.environ.get("LOOM_BROKER_KEY")
    server = None if server_spec is None else _public_key(os.fspath(server_spec))
    if spec is None:
        directory = key_dir()
        broker_public = directory / f"{BROKER_KEY}.key"
        if server is None and not broker_public.exists():
            broker, pair = local_keys()  # the broker of this home will use the same pair
            server = broker.public
        else:
            pair = _secret_pair(directory / f"{LOCAL_KEY}.key_secret")
    else:
        pair = _secret_pair(Path(spec).expanduser())
    if server is None:
        server = load_keypair(key_dir() / f"{BROKER_KEY}.key").public
    assert pair.secret is not None
    return PeerKey(pair.public, pair.secret, server, str(pair.path))


def _secret_pair(path: Path) -> Keypair:
    if not path.name.endswith(".key_secret") and path.with_name(path.name + "_secret").exists():
        path = path.with_name(path.name + "_secret")  # NAME.key given: its secret beside it
    if not path.exists():
        raise KeyFileError(f"{path}: no such key file (make one with `loom keys new NAME`)")
    pair = load_keypair(path)
    if pair.secret is None:
        raise KeyFileError(f"{path}: holds a public key only; a peer needs its .key_secret file")
    return pair


def _public_key(spec: str) -> bytes:
    """The broker's public key from 40 Z85 characters or a key file."""
    text = spec.strip()
    if len(text) == 40 and not Path(text).exists():
        return public_key(text)
    return load_keypair(Path(text).expanduser()).public


def secure_client(sock: zmq.Socket[Any], key: PeerKey | None) -> None:
    """Make ``sock`` a CURVE client presenting ``key`` (nothing for ``None``)."""
    if key is None:
        return
    sock.setsockopt(zmq.CURVE_SERVERKEY, key.server)
    sock.setsockopt(zmq.CURVE_PUBLICKEY, key.public)
    sock.setsockopt(zmq.CURVE_SECRETKEY, key.secret)


_MISMATCH = zmq.PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH


def handshake_failure(
    event: int, value: int, address: str, key: PeerKey | None
) -> AuthenticationError | None:
    """The error a failed handshake (a socket monitor's event and value) means."""
    if event == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
        who = f"this peer's key ({key.public.decode()}, from {key.source})" if key else "this peer"
        return AuthenticationError(
            f"the broker at {address} refused {who}: the key is not enrolled there"
            " (its owner adds it to the broker's ACL file)"
        )
    if event == zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL and value == _MISMATCH:
        if key is None:
            return AuthenticationError(
                f"the broker at {address} requires CURVE, and this peer connects without"
                " (key 'none'): drop --key none / LOOM_KEY=none"
            )
        return AuthenticationError(
            f"the broker at {address} runs without CURVE (started --insecure?): connect"
            " with --key none (or LOOM_KEY=none) if you mean to"
        )
    if key is None:
        return AuthenticationError(
            f"the handshake with {address} failed: the broker requires CURVE, and this"
            " peer connects without (key 'none'): drop --key none / LOOM_KEY=none"
        )
    if event in (zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL, zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL):
        # libzmq rarely says more: the broker hung up during the handshake
        return AuthenticationError(
            f"the CURVE handshake with {address} failed (the broker hung up): it runs"
            " without CURVE (started --insecure: connect with --key none), or its public"
            f" key is not {key.server.decode()} (keys/broker.key, $LOOM_BROKER_KEY)"
        )
    return None
