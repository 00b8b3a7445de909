"""Rights: what each identity may do, read from the ACL file, and checked on every
message (each answer cached per identity, so the hot path costs a dict lookup).

An ACL file is TOML::

    [identities.alice]                 # a name: letters, digits, '_' or '-'
    key = "rq:rM>}U?@Lns47E1%kR.o@n%FcmmsL/@{H8]yf7"   # or key_file = "alice.key"
    groups = ["researchers"]
    publish = ["notes.alice.**"]        # rights may be given here too

    [groups.researchers]
    publish = ["research.**"]           # topic patterns it may publish on
    subscribe = ["research.**"]         # topic subtrees it may subscribe to
    reply = ["research.**"]             # requests it may answer (default: subscribe)
    serve = ["search.*"]                # tools it may serve (shell-style patterns)
    call = ["search.*", "fs.read"]      # tools it may call
    approve = ["shell.*"]               # tools whose calls it may approve or deny
    read = ["directory", "stats", "traces"]
    durable = ["research-*"]            # durable subscription names it may own
    replay = false                      # REPLAY the durable log
    names = ["researcher-*"]            # peer names it may take (default: any)
    rate = { events = 2000, calls = 200 }   # per second (default: no limit)

The broker's own user (the Loom home's ``local`` key) is the owner, with every right,
unless the file has an ``[identities.local]`` table. ``$sys.*``, ``$approval.*`` and
``$q.*`` (queue-group deliveries) are published by the broker alone; every identity may
use its own inbox, probe and queue-group topics (``$inbox.<identity>.**``,
``$probe.<identity>.**``, ``$q.<identity>.**``) and answer the requests its ``reply``
rights cover. ``docs/security.md`` explains each right.
"""

from __future__ import annotations

import re
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Literal, TypeVar

import msgpack
from pydantic import Field, field_validator, model_validator

from loom.config import Section, read_settings, validated
from loom.errors import ConfigError, KeyFileError, PatternError
from loom.keys import BROKER_KEY, LOCAL_KEY, load_keypair, public_key
from loom.protocol import Pattern

__all__ = [
    "ANONYMOUS",
    "LINK",
    "OWNER",
    "Acl",
    "Rights",
    "load_acl",
    "subtree",
]

OWNER = LOCAL_KEY
"""The identity of the Loom home's ``local`` key: the broker's own user."""
LINK = BROKER_KEY
"""The identity of the broker's own key: its federation link (every right, and it may
publish and call for the remote identities it carries)."""
ANONYMOUS = "anonymous"
"""Every peer's identity on a broker started ``--insecure`` (each has every right)."""
IDENTITY = re.compile(r"[A-Za-z0-9_-]{1,64}")
BROKER_ONLY = ("$sys", "$approval", "$q")
"""Topics whose first token only the broker publishes under."""
CACHE = 4096
"""Decisions cached per identity and kind (past it, the cache starts again)."""

K = TypeVar("K")
V = TypeVar("V")


def remember(cache: dict[K, V], key: K, value: V) -> V:
    """Keep ``value`` under ``key`` in a cache of at most ``CACHE`` entries (a full one
    starts again); returns ``value``."""
    if len(cache) >= CACHE:
        cache.clear()
    cache[key] = value
    return value


def subtree(pattern: str) -> str:
    """The prefix a subscribe right grants: ``a.b.**`` grants ``a.b.`` and below; ``**``
    grants everything (but ``$`` topics, which are named).

    Raises:
        ValueError: the pattern is not ``**`` or literal tokens then ``**``.
    """
    Pattern(pattern)  # the general rules first
    tokens = pattern.split(".")
    if tokens[-1] != "**" or any("*" in t for t in tokens[:-1]):
        raise ValueError(
            f"{pattern!r}: a subscribe right is a subtree, literal tokens then '**'"
            " (a subscription is a prefix: 'a.b.**' grants 'a.b.' and below)"
        )
    return ".".join(tokens[:-1]) + "." if len(tokens) > 1 else ""


class RightsModel(Section):
    """One ``[groups.NAME]`` table (and the rights part of an identity's)."""

    owner: bool = False
    publish: tuple[str, ...] = ()
    subscribe: tuple[str, ...] = ()
    reply: tuple[str, ...] | None = None
    serve: tuple[str, ...] = ()
    call: tuple[str, ...] = ()
    approve: tuple[str, ...] = ()
    read: tuple[Literal["directory", "stats", "traces"], ...] = ()
    durable: tuple[str, ...] = ()
    replay: bool = False
    names: tuple[str, ...] | None = None
    rate: dict[Literal["events", "calls"], float] = Field(default_factory=dict)

    @field_validator("publish", "reply")
    @classmethod
    def _patterns(cls, value: tuple[str, ...] | None) -> tuple[str, ...] | None:
        for text in value or ():
            try:
                Pattern(text)
            except PatternError as exc:
                raise ValueError(str(exc)) from None
        return value

    @field_validator("subscribe")
    @classmethod
    def _subtrees(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for text in value:
            subtree(text)
        return value

    @field_validator("rate")
    @classmethod
    def _positive(cls, value: dict[str, float]) -> dict[str, float]:
        for kind, rate in value.items():
            if not rate > 0:
                raise ValueError(f"rate.{kind} must be a positive number of per second")
        return value


class IdentityModel(RightsModel):
    """One ``[identities.NAME]`` table: a key, groups, and rights of its own."""

    key: str | None = None
    key_file: str | None = None
    groups: tuple[str, ...] = ()

    @field_validator("key")
    @classmethod
    def _z85(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                public_key(value)
            except KeyFileError:
                raise ValueError("a key is a CURVE public key: 40 Z85 characters") from None
        return value

    @model_validator(mode="after")
    def _one_key(self) -> IdentityModel:
        if self.key is not None and self.key_file is not None:
            raise ValueError("give key or key_file, not both")
        return self


class AclModel(Section):
    identities: dict[str, IdentityModel] = Field(default_factory=dict)
    groups: dict[str, RightsModel] = Field(default_factory=dict)


class Rights:
    """What one identity may do, with each answer cached.

    Args:
        name: the identity.
        grants: its own rights and its groups' (a union), or ``None`` for the owner.
    """

    def __init__(self, name: str, grants: list[RightsModel] | None) -> None:
        self.name = name
        self.owner = grants is None or any(g.owner for g in grants)
        grants = grants or []
        self.publish = [Pattern(p) for g in grants for p in g.publish]
        self.subscribe = [subtree(p) for g in grants for p in g.subscribe]
        replies = [p for g in grants for p in (g.reply if g.reply is not None else g.subscribe)]
        self.reply = [Pattern(p) for p in replies]
        self.serve = [p for g in grants for p in g.serve]
        self.call = [p for g in grants for p in g.call]
        self.approve = [p for g in grants for p in g.approve]
        self.read = {r for g in grants for r in g.read}
        self.durable = [p for g in grants for p in g.durable]
        self.replay = self.owner or any(g.replay for g in grants)
        named = [g.names for g in grants if g.names is not None]
        self.names = None if not named else [p for n in named for p in n]
        """Peer names it may take (``None``: any)."""
        rates: dict[str, float] = {}
        for grant in grants:
            for kind, rate in grant.rate.items():
                rates[kind] = max(rate, rates.get(kind, 0.0))
        self.rate = rates
        own = f"$inbox.{name}.", f"$probe.{name}.", f"$q.{name}."
        self._own = own
        self.inbox = own[0].encode()
        self.origin: bytes = msgpack.packb(name)
        """The name as the header's ``origin`` field (msgpack), written by the broker."""
        self.senders: dict[str, bool] = {}
        """Sender name -> may send under it (cleared when names change hands)."""
        self.published: dict[bytes, bool] = {}
        """Topic -> may publish (the pub/sub hot path reads this dict first)."""
        self.granted: dict[bytes, bytes | None] = {}
        """Prefix asked -> the prefix granted (``None``: refused)."""
        self.replied: dict[bytes, bool] = {}
        self._tools: dict[tuple[str, str], bool] = {}

    def may_publish(self, topic: bytes) -> bool:
        """Whether this identity may publish on ``topic`` (a valid topic); cached."""
        known = self.published.get(topic)
        if known is None:
            text = topic.decode()
            if text.split(".", 1)[0] in BROKER_ONLY:
                known = False
            elif text.startswith(("$inbox.", "$probe.")):
                known = text.startswith(self._own[1]) or text.startswith("$inbox.")
            else:
                known = self.owner or any(p.matches(text) for p in self.publish)
            remember(self.published, topic, known)
        return known

    def may_reply(self, request_topic: bytes) -> bool:
        """Whether this identity may answer a request published on ``request_topic``."""
        known = self.replied.get(request_topic)
        if known is None:
            text = request_topic.decode()
            known = self.owner or any(p.matches(text) for p in self.reply)
            remember(self.replied, request_topic, known)
        return known

    def grant(self, prefix: bytes) -> bytes | None:
        """The subscription this identity gets when it asks for ``prefix`` (cached):
        ``prefix`` itself when every topic beginning with it is one it may read (its own
        inbox and probes; the owner: all); ``prefix + "."`` when only that holds (an
        actor's ``a.**`` asks ``a``, which also matches ``ab``: it gets ``a.``, so the
        topic ``a`` itself is not delivered); else ``None``."""
        if prefix in self.granted:
            return self.granted[prefix]
        granted: bytes | None = None
        if self._covers(prefix):
            granted = prefix
        elif prefix and not prefix.endswith(b".") and self._covers(prefix + b"."):
            granted = prefix + b"."
        return remember(self.granted, prefix, granted)

    def may_subscribe(self, prefix: bytes) -> bool:
        """Whether ``prefix`` (or its narrowing, see :meth:`grant`) is granted."""
        return self.grant(prefix) is not None

    def _covers(self, prefix: bytes) -> bool:
        try:
            text = prefix.decode()
        except UnicodeDecodeError:
            return False
        if text.startswith(self._own) or self.owner:
            return True
        if not text:  # everything, `$` topics included: the owner's alone
            return False
        if text.startswith("$"):  # others' inboxes, $sys, $approval: only when named
            return any(root and text.startswith(root) for root in self.subscribe)
        return any(text.startswith(root) for root in self.subscribe)

    def may(self, right: str, tool: str) -> bool:
        """``serve``, ``call`` or ``approve`` ``tool`` (shell-style patterns); cached."""
        key = (right, tool)
        known = self._tools.get(key)
        if known is None:
            patterns: list[str] = getattr(self, right)
            known = remember(
                self._tools, key, self.owner or any(fnmatchcase(tool, p) for p in patterns)
            )
        return known

    def may_read(self, what: str) -> bool:
        """``directory``, ``stats`` or ``traces``."""
        return self.owner or what in self.read

    def may_own(self, durable: str) -> bool:
        """Whether it may create (and so own) the durable subscription ``durable``."""
        return self.owner or any(fnmatchcase(durable, p) for p in self.durable)

    def may_take(self, name: str) -> bool:
        """Whether it may take the peer name ``name``."""
        return self.owner or self.names is None or any(fnmatchcase(name, p) for p in self.names)

    def may_approve_any(self) -> bool:
        return self.owner or bool(self.approve)


class Acl:
    """The identities a broker accepts and their rights.

    Attributes:
        keys: public key (Z85 bytes) -> identity.
        rights: identity -> its :class:`Rights`.

    Args:
        owner_key: the Loom home's ``local`` public key (the owner, unless enrolled).
        model: the ACL file, checked (none: only the owner is known).
        source: the file's path (``key_file`` paths are relative to it).

    Raises:
        KeyFileError: a ``key_file`` cannot be read.
        ValueError: two identities have the same key.
    """

    def __init__(self, owner_key: bytes, model: AclModel | None = None, source: Path | None = None):
        model = model or AclModel()
        self.keys: dict[bytes, str] = {}
        self.rights: dict[str, Rights] = {}
        for name, entry in model.identities.items():
            grants: list[RightsModel] = [entry, *(model.groups[g] for g in entry.groups)]
            self.rights[name] = Rights(name, grants)
            key = _identity_key(entry, source)
            if key in self.keys:
                raise ValueError(f"identities.{name}: the same key as {self.keys[key]}")
            if key is not None:
                self.keys[key] = name
        if OWNER not in self.rights:
            self.rights[OWNER] = Rights(OWNER, None)
        self.keys.setdefault(owner_key, OWNER)
        if LINK in model.identities:
            raise ValueError(f"identities.{LINK}: the name of the broker's own key (its link)")
        self.denied = Rights("(nobody)", [])
        """The rights of an identity the table does not know (none)."""

    def admit_link(self, key: bytes) -> None:
        """Know the broker's own public key as its federation link."""
        self.keys[key] = LINK
        self.rights[LINK] = Rights(LINK, None)

    def of(self, identity: str) -> Rights:
        return self.rights.get(identity, self.denied)


def _identity_key(entry: IdentityModel, source: Path | None) -> bytes | None:
    if entry.key is not None:
        return entry.key.encode()
    if entry.key_file is None:
        return None
    path = Path(entry.key_file).expanduser()
    if not path.is_absolute() and source is not None:
        path = source.parent / path
    return load_keypair(path).public


def load_acl(path: str | Path, owner_key: bytes) -> Acl:
    """Read and check an ACL file.

    Raises:
        ConfigError: it cannot be read, is not TOML, or a key or value is invalid; the
            message names the file and the key.
    """
    path = Path(path).expanduser()
    data = read_settings(path)
    model = validated(AclModel, data, path)
    for name, entry in model.identities.items():
        if not IDENTITY.fullmatch(name):
            raise ConfigError(
                f"{path}: identities.{name}: an identity's name is 1 to 64 letters, digits,"
                " '_' or '-' (it becomes a topic token)"
            )
        for group in entry.groups:
            if group not in model.groups:
                raise ConfigError(f"{path}: identities.{name}.groups: no group {group!r}")
        if entry.key is None and entry.key_file is None and name != OWNER:
            raise ConfigError(f"{path}: identities.{name}: give its key or key_file")
    try:
        return Acl(owner_key, model, path)
    except (KeyFileError, ValueError) as exc:
        raise ConfigError(f"{path}: {exc}") from exc
