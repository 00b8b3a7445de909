"""The broker's queue-group table on its own: what a member's ANNOUNCE may hold, who
gets what, and what happens to remembered requests (hostile announcers included)."""

from __future__ import annotations

from typing import Any

import pytest

from loom.broker._groups import MAX_BINDINGS, Groups


def table() -> tuple[Groups, list[bytes], list[tuple[str, bytes, dict[str, Any]]]]:
    groups = Groups()
    sent: list[bytes] = []
    failed: list[tuple[str, bytes, dict[str, Any]]] = []

    def send(topic: bytes, header: bytes, payload: bytes) -> bool:
        sent.append(topic)
        return True

    groups.send = send
    groups.fail = lambda reply_to, request, data: failed.append((reply_to, request, data))
    return groups, sent, failed


def test_round_robin_and_one_turn_per_binding() -> None:
    groups, sent, _ = table()
    binding = [("g", "job.*", False)]
    assert groups.join(b"a", "a", "alice", "1", binding * 3) is None  # duplicates: one turn
    assert groups.join(b"b", "b", "bob", "2", binding) is None
    for _ in range(4):
        groups.deliver(b"job.x", b"h", b"p", None, None)
    assert sent == [b"$q.alice.1.g.job.x", b"$q.bob.2.g.job.x"] * 2
    assert groups.deliver(b"other.x", b"h", b"p", None, None) == 0 and len(sent) == 4


def test_an_announce_is_bounded_and_checked() -> None:
    groups, _, _ = table()
    many = [("g", f"t{i}.*", False) for i in range(MAX_BINDINGS + 1)]
    assert "at most" in (groups.join(b"a", "a", "alice", "1", many) or "")
    assert "group g" in (groups.join(b"a", "a", "alice", "1", [("g", "a..b", False)]) or "")
    assert groups.lanes == {}


def test_a_request_is_done_only_by_a_reply_on_its_reply_topic() -> None:
    groups, _, failed = table()
    groups.join(b"a", "a", "alice", "1", [("g", "job.*", False)])
    groups.deliver(b"job.x", b"h", b"p", b"r1", "$inbox.carol.9", deadline=None)
    groups.answered(b"r1", b"chat.elsewhere")  # a forged "reply" somewhere else
    assert b"r1" in groups.sent
    groups.answered(b"r1", b"$inbox.carol.9")
    assert groups.sent == {} and failed == []


def test_requests_past_their_deadline_are_forgotten() -> None:
    groups, _, _ = table()
    groups.join(b"a", "a", "alice", "1", [("g", "job.*", False)])
    groups.deliver(b"job.x", b"h", b"p", b"r1", "$inbox.c.9", deadline=100.0)
    groups.deliver(b"job.y", b"h", b"p", b"r2", "$inbox.c.9", deadline=300.0)
    groups.prune(200.0)
    assert list(groups.sent) == [b"r2"]


@pytest.mark.parametrize("redeliver", [True, False])
def test_a_member_leaving_hands_on_or_fails_its_requests(redeliver: bool) -> None:
    """Redelivered to the lane as it is now (the other member re-announced meanwhile),
    else MemberLostError to the requester; a reply topic that cannot be a topic does
    not stop the others."""
    groups, sent, failed = table()
    groups.join(b"a", "a", "alice", "1", [("g", "job.*", redeliver)])
    groups.join(b"b", "b", "bob", "2", [("g", "job.*", redeliver)])
    groups.deliver(b"job.x", b"h", b"p", b"r1", "$inbox.c.9")  # to a
    groups.deliver(b"job.y", b"h", b"p", b"r2", "$inbox.c.9")  # to b
    groups.join(b"b", "b", "bob", "2", [("g", "job.*", redeliver), ("h", "x.*", False)])
    groups.leave(b"a")
    if redeliver:
        assert sent[-1] == b"$q.bob.2.g.job.x" and failed == []
        assert set(groups.sent) == {b"r1", b"r2"}
    else:
        assert [(f[0], f[1], f[2]["type"]) for f in failed] == [
            ("$inbox.c.9", b"r1", "MemberLostError")
        ]
        assert set(groups.sent) == {b"r2"}
