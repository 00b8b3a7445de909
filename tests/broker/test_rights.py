"""Rights and the guard's per-message checks, in process: what a subscription prefix is
granted, and how replies are tied to the requests they answer."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from conftest import make_header

from loom.broker import SecuritySettings
from loom.broker._rights import Rights, RightsModel
from loom.broker._security import Guard
from loom.errors import ConfigError
from loom.keys import new_keypair
from loom.logs import get_logger
from loom.protocol import REPLY, REQUEST, decode_header

pytestmark = pytest.mark.timeout(30)


def rights(**granted: Any) -> Rights:
    return Rights("mallory", [RightsModel(**granted)])


def test_a_subscription_is_granted_only_where_every_topic_under_it_may_be_read() -> None:
    """`**` grants every prefix but the empty one (which would deliver `$` topics too);
    a subtree grants itself and below, and narrows its root (`a.**` asks `a`, gets
    `a.`); its own inbox and probes are always granted, others' never."""
    everything = rights(subscribe=("**",))
    assert everything.grant(b"") is None
    assert everything.grant(b"a") == b"a"
    assert everything.grant(b"$sys.") is None
    assert everything.grant(b"$inbox.local.") is None
    assert everything.grant(b"$inbox.mallory.abc") == b"$inbox.mallory.abc"
    subtree = rights(subscribe=("chat.**",))
    assert subtree.grant(b"chat.room") == b"chat.room"
    assert subtree.grant(b"chat") == b"chat."  # "chat" would also deliver "chatter"
    assert subtree.grant(b"cha") is None
    assert subtree.grant(b"orders.") is None
    assert subtree.grant(b"\xff") is None
    assert Rights("local", None).grant(b"") == b""  # the owner reads everything


def test_queue_group_deliveries_are_the_brokers_to_send_and_the_members_to_read() -> None:
    """`$q.<identity>.` is read by that identity alone; no peer may publish on `$q`."""
    member = rights(subscribe=("**",), publish=("**",))
    assert member.grant(b"$q.mallory.0a1b.") == b"$q.mallory.0a1b."
    assert member.grant(b"$q.alice.0a1b.") is None
    assert not member.may_publish(b"$q.alice.0a1b.researchers.research.ask")
    assert not member.may_publish(b"$q.mallory.0a1b.researchers.research.ask")


@pytest.fixture
def guard(tmp_path: Path) -> Guard:
    pair = new_keypair("mallory", tmp_path)
    acl = tmp_path / "acl.toml"
    acl.write_text(
        '[identities.mallory]\nkey_file = "mallory.key"\n'
        'publish = ["own.**"]\nsubscribe = ["secret.**", "own.**"]\nreply = ["own.**"]\n'
    )
    assert pair.secret is not None
    settings = SecuritySettings(acl=str(acl), audit_log="off")
    return Guard(settings, "loom-broker", get_logger("test"), home=tmp_path / "home")


def admit(guard: Guard, topic: bytes, identity: str, **fields: Any) -> bytes | None:
    header = make_header(**fields)
    return guard.admit(topic, header, decode_header(header), identity)


def test_a_reply_must_answer_a_request_its_identity_may_answer(guard: Guard) -> None:
    """mallory may not answer a request on secret.q, and cannot make it answerable by
    publishing a request of its own under the same id: an id belongs to its first
    requester. A reply to a request it may answer, on that request's reply topic, goes
    through, stamped with its origin."""
    inbox = "$inbox.local.abc"
    asked = admit(guard, b"secret.q", "local", kind=REQUEST, id=b"r1" * 8, reply_to=inbox)
    assert asked is not None and decode_header(asked).origin == "local"
    forged = {"kind": REPLY, "sender": "mallory", "correlation_id": b"r1" * 8}
    assert admit(guard, inbox.encode(), "mallory", **forged) is None
    stolen = admit(guard, b"own.q", "mallory", kind=REQUEST, id=b"r1" * 8, reply_to="$inbox.x")
    assert stolen is None and guard.denied["reuse"] == 1
    assert admit(guard, inbox.encode(), "mallory", **forged) is None
    admit(guard, b"own.q", "local", kind=REQUEST, id=b"r2" * 8, reply_to=inbox)
    elsewhere = {**forged, "correlation_id": b"r2" * 8}
    assert admit(guard, b"$inbox.local.other", "mallory", **elsewhere) is None
    answer = admit(guard, inbox.encode(), "mallory", **elsewhere)
    assert answer is not None and decode_header(answer).origin == "mallory"
    assert guard.denied["reply"] == 3


def test_a_banned_identity_loses_every_right_until_the_acl_is_reloaded(guard: Guard) -> None:
    """ban() takes mallory's rights (the owner's never); a reload gives them back."""
    assert admit(guard, b"own.x", "mallory", sender="m") is not None
    guard.ban("mallory", "a test")
    guard.ban("local", "never the owner")
    assert admit(guard, b"own.x", "mallory", sender="m") is None
    assert "local" not in guard.banned and admit(guard, b"any.x", "local") is not None
    assert guard.reload()
    assert admit(guard, b"own.x", "mallory", sender="m") is not None


def test_the_brokers_own_key_is_its_link_and_no_acl_may_name_it(tmp_path: Path) -> None:
    """The guard knows the broker's own key as the identity ``broker`` (its federation
    link); an ACL naming an identity so is refused; an empty table denies strangers."""
    from loom.broker._rights import LINK, Acl, load_acl
    from loom.keys import load_keypair

    guard = Guard(SecuritySettings(audit_log="off"), "b", get_logger("test"), tmp_path / "h")
    assert guard.keypair is not None
    assert guard.acl.keys[guard.keypair.public] == LINK
    assert guard.rights(LINK).owner
    assert not Acl(b"").of("stranger").may_publish(b"x")
    new_keypair("other", tmp_path)
    acl = tmp_path / "acl.toml"
    acl.write_text('[identities.broker]\nkey_file = "other.key"\n')
    owner = load_keypair(tmp_path / "other.key").public
    with pytest.raises(ConfigError, match="broker"):
        load_acl(acl, owner)
