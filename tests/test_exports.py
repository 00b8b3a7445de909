"""The public names each package exports are pinned here."""

from __future__ import annotations

import loom
import loom.actor
import loom.broker
from loom import errors


def test_top_level_exports() -> None:
    """`loom` exports the actor surface and every error."""
    assert set(loom.__all__) == {
        "PROTOCOL_VERSION",
        "Actor",
        "BrokerUnavailableError",
        "ClosedError",
        "EncodeError",
        "Event",
        "HopLimitError",
        "LoomError",
        "NoReplyToError",
        "PatternError",
        "PayloadTooLargeError",
        "ProtocolError",
        "RemoteError",
        "RequestTimeoutError",
        "TopicError",
        "VersionMismatchError",
        "__version__",
        "on",
    }
    for name in loom.__all__:
        assert hasattr(loom, name), name


def test_subpackage_exports() -> None:
    """The actor and broker packages expose a small face."""
    assert set(loom.actor.__all__) == {"Actor", "ActorStats", "Event", "Pattern", "on"}
    assert set(loom.broker.__all__) == {
        "Broker",
        "ControlPlane",
        "PubSubProxy",
        "TopicStats",
        "derive_endpoints",
    }


def test_every_error_derives_from_loom_error() -> None:
    """One error root; timeouts are also TimeoutError, bad values also ValueError."""
    for name in errors.__all__:
        assert issubclass(getattr(errors, name), loom.LoomError), name
    assert issubclass(loom.RequestTimeoutError, TimeoutError)
    assert issubclass(loom.EncodeError, TypeError)
    assert issubclass(loom.TopicError, ValueError)
    assert issubclass(loom.BrokerUnavailableError, ConnectionError)
