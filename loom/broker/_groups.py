"""Queue groups: each event or request on a group's pattern goes to one live member.

Members announce ``[group, pattern, redeliver]`` bindings (ANNOUNCE) once they are
subscribed to their member topic ``$q.<identity>.<member>.``; a *lane* is one
``(group, pattern)`` and its members, in join order. For each publish the lanes whose
pattern matches are found (cached per topic, linear in the lanes once per new topic),
and each lane's next member, round robin, gets a copy on
``$q.<identity>.<member>.<group>.<topic>``.

Requests sent to a member are remembered (id -> the copy) until a reply or error with
that correlation id passes, their deadline passes, or bounds are reached. When a member
leaves, its remembered requests are offered to another member of the lane if the member
said its handlers may run again (``redeliver``; at most 3 deliveries), else the
requester gets an error reply, ``MemberLostError``.
"""

from __future__ import annotations

import collections
import heapq
import time
from collections.abc import Callable
from typing import Any

from loom.errors import PatternError
from loom.protocol import Pattern, decode_topic

__all__ = ["Groups", "Member"]

MAX_LANES = 1000
MAX_BINDINGS = 64
"""Queue-group bindings one peer may hold (then its ANNOUNCE is refused)."""
MAX_REMEMBERED = 10_000
"""Requests remembered for redelivery at once (then new ones are not)."""
MAX_REMEMBERED_BYTES = 64 << 20
MAX_DELIVERIES = 3
_CACHE = 2000
"""Topics whose matching lanes are kept (each list at most MAX_LANES long)."""
DEFAULT_AGE = 600.0
"""Seconds a request without a deadline is remembered."""


class Member:
    """One actor's binding of one lane."""

    __slots__ = ("name", "peer", "prefix", "redeliver")

    def __init__(self, peer: bytes, name: str, prefix: bytes, redeliver: bool) -> None:
        self.peer = peer
        self.name = name
        self.prefix = prefix
        """``$q.<identity>.<member>.<group>.``: the topic a copy is sent on, then the topic."""
        self.redeliver = redeliver


class Lane:
    __slots__ = ("group", "members", "next", "pattern")

    def __init__(self, group: str, pattern: Pattern) -> None:
        self.group = group
        self.pattern = pattern
        self.members: list[Member] = []
        self.next = 0

    def pick(self, avoid: bytes | None = None) -> Member | None:
        """The next member, round robin (not ``avoid``'s when another is there)."""
        members = self.members
        for _ in range(len(members)):
            member = members[self.next % len(members)]
            self.next = (self.next + 1) % len(members)
            if member.peer != avoid:
                return member
        return None


class Sent:
    __slots__ = (
        "deliveries",
        "expires",
        "header",
        "lane",
        "member",
        "payload",
        "reply_to",
        "topic",
    )

    def __init__(
        self,
        lane: Lane,
        member: Member,
        message: tuple[bytes, bytes, bytes],
        reply_to: str,
        expires: float,
    ) -> None:
        topic, header, payload = message
        self.expires = expires
        self.lane = lane
        self.member = member
        self.topic = topic
        self.header = header
        self.payload = payload
        self.reply_to = reply_to
        self.deliveries = 1


Send = Callable[[bytes, bytes, bytes], bool]
"""Sends ``(topic, header, payload)`` to subscribers now; False if it could not."""
Fail = Callable[[str, bytes, dict[str, Any]], None]
"""Publishes an error reply: ``(reply topic, correlation id, error data)``."""


class Groups:
    """The lanes, their members, and the requests sent to members."""

    def __init__(self) -> None:
        self.lanes: dict[tuple[str, str], Lane] = {}
        self._by_peer: dict[bytes, list[tuple[Lane, Member]]] = {}
        self._cache: dict[bytes, list[Lane]] = {}
        self.sent: dict[bytes, Sent] = {}
        self._sent_bytes = 0
        self._by_member: dict[bytes, set[bytes]] = collections.defaultdict(set)
        self._expiry: list[tuple[float, bytes]] = []
        self._bindings: dict[bytes, list[tuple[str, str, bool]]] = {}
        self.counts = {"delivered": 0, "redelivered": 0, "lost": 0, "unremembered": 0}
        self.send: Send = lambda topic, header, payload: False
        self.fail: Fail = lambda reply_to, correlation, data: None

    # --- membership --------------------------------------------------------------

    def join(
        self,
        peer: bytes,
        name: str,
        identity: str,
        member: str,
        bindings: list[tuple[str, str, bool]],
    ) -> str | None:
        """``peer``'s bindings from now on (replacing the ones it had); an error message
        when one cannot be taken (an invalid pattern, too many bindings or lanes)."""
        bindings = list(dict.fromkeys(bindings))  # a binding twice is one turn, not two
        if len(bindings) > MAX_BINDINGS:
            return f"{len(bindings)} queue-group bindings (at most {MAX_BINDINGS} a peer)"
        if self._bindings.get(peer) == bindings:
            return None  # unchanged (a re-announce): nothing to do
        wanted: list[tuple[str, Pattern, bool]] = []
        for group, text, redeliver in bindings:
            try:
                wanted.append((group, Pattern(text), redeliver))
            except PatternError as exc:
                return f"group {group}: {exc}"
        new = sum((g, p.text) not in self.lanes for g, p, _ in wanted)
        if len(self.lanes) + new > MAX_LANES:
            return f"the broker already has {MAX_LANES} queue-group lanes"
        self._drop_peer(peer)  # its requests in flight stay remembered: it still answers
        joined: list[tuple[Lane, Member]] = []
        for group, pattern, redeliver in wanted:
            lane = self.lanes.get((group, pattern.text))
            if lane is None:
                lane = self.lanes[(group, pattern.text)] = Lane(group, pattern)
            prefix = f"$q.{identity}.{member}.{group}.".encode()
            one = Member(peer, name, prefix, redeliver)
            lane.members.append(one)
            joined.append((lane, one))
        if joined:
            self._by_peer[peer] = joined
            self._bindings[peer] = bindings
        self._cache.clear()
        return None

    def leave(self, peer: bytes) -> None:
        """``peer`` is gone: its lanes lose it, and its requests in flight go to another
        member (``redeliver``) or fail back to their requesters."""
        self._drop_peer(peer)
        for request in sorted(self._by_member.pop(peer, ())):
            sent = self.sent.get(request)
            if sent is not None:
                self._reoffer(request, sent)  # each on its own: fail() never raises

    def _drop_peer(self, peer: bytes) -> None:
        self._bindings.pop(peer, None)
        for lane, member in self._by_peer.pop(peer, ()):
            lane.members.remove(member)
            if not lane.members:
                del self.lanes[(lane.group, lane.pattern.text)]
        self._cache.clear()

    # --- delivery ----------------------------------------------------------------

    def lanes_for(self, topic: bytes) -> list[Lane]:
        """The lanes whose pattern matches ``topic`` (a valid topic frame)."""
        found = self._cache.get(topic)
        if found is None:
            text = decode_topic(topic)
            found = [lane for lane in self.lanes.values() if lane.pattern.matches(text)]
            if len(self._cache) >= _CACHE:
                self._cache.clear()
            self._cache[topic] = found
        return found

    def deliver(
        self,
        topic: bytes,
        header: bytes,
        payload: bytes,
        request: bytes | None,
        reply_to: str | None,
        *,
        deadline: float | None = None,
    ) -> int:
        """A copy to one member of each lane ``topic`` matches; remembers a request
        (``request``: its id) to offer it again if that member dies. Returns the copies
        that could not be sent (a member's queue full)."""
        failed = 0
        for lane in self.lanes_for(topic):
            member = lane.pick()
            if member is None:
                continue
            if not self.send(member.prefix + topic, header, payload):
                failed += 1
                continue
            self.counts["delivered"] += 1
            if request is not None and reply_to is not None:
                expires = deadline if deadline is not None else time.time() + DEFAULT_AGE
                sent = Sent(lane, member, (topic, header, payload), reply_to, expires)
                self._remember(request, sent)
        return failed

    def answered(self, correlation_id: bytes | None, topic: bytes) -> None:
        """A reply (or error) passed on ``topic``: the request it answers is done when
        that is the request's reply topic."""
        if correlation_id is not None:
            sent = self.sent.get(correlation_id)
            if sent is not None and sent.reply_to.encode() == topic:
                del self.sent[correlation_id]
                self._forget(correlation_id, sent)

    def prune(self, now: float) -> None:
        """Forget the requests whose deadline has passed (nobody waits for them)."""
        expiry = self._expiry
        while expiry and expiry[0][0] <= now:
            _, request = heapq.heappop(expiry)
            sent = self.sent.get(request)
            if sent is not None and sent.expires <= now:
                del self.sent[request]
                self._forget(request, sent)

    def _remember(self, request: bytes, sent: Sent) -> None:
        size = len(sent.payload) + len(sent.header)
        if (
            len(self.sent) >= MAX_REMEMBERED
            or self._sent_bytes + size > MAX_REMEMBERED_BYTES
            or request in self.sent
        ):
            self.counts["unremembered"] += 1
            return
        self.sent[request] = sent
        self._sent_bytes += size
        self._by_member[sent.member.peer].add(request)
        heapq.heappush(self._expiry, (sent.expires, request))
        if len(self._expiry) > 4 * MAX_REMEMBERED:  # stale entries of answered requests
            self._expiry = [(e, r) for e, r in self._expiry if r in self.sent]
            heapq.heapify(self._expiry)

    def _forget(self, request: bytes, sent: Sent) -> None:
        self._sent_bytes -= len(sent.payload) + len(sent.header)
        requests = self._by_member.get(sent.member.peer)
        if requests is not None:
            requests.discard(request)
            if not requests:
                del self._by_member[sent.member.peer]

    def _reoffer(self, request: bytes, sent: Sent) -> None:
        del self.sent[request]
        self._forget(request, sent)
        lost = sent.member
        lane = self.lanes.get((sent.lane.group, sent.lane.pattern.text))  # as it is now
        other = lane.pick(avoid=lost.peer) if lost.redeliver and lane is not None else None
        if (
            other is not None
            and sent.deliveries < MAX_DELIVERIES
            and self.send(other.prefix + sent.topic, sent.header, sent.payload)
        ):
            self.counts["redelivered"] += 1
            assert lane is not None
            sent.lane = lane
            sent.member = other
            sent.deliveries += 1
            self._remember(request, sent)
            return
        self.counts["lost"] += 1
        why = "it may not run twice" if not lost.redeliver else "no other member could take it"
        message = (
            f"{lost.name} left its queue group {sent.lane.group} while handling a request"
            f" on {sent.topic.decode(errors='replace')}; not offered again: {why}"
        )
        self.fail(sent.reply_to, request, {"type": "MemberLostError", "message": message})

    def snapshot(self) -> dict[str, Any]:
        return {
            "lanes": [
                {
                    "group": lane.group,
                    "pattern": lane.pattern.text,
                    "members": [m.name for m in lane.members],
                }
                for lane in list(self.lanes.values())[:1000]
            ],
            "remembered": len(self.sent),
            **self.counts,
        }
