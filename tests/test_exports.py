"""The public names each package exports are pinned here."""

from __future__ import annotations

import loom
import loom.actor
import loom.broker
import loom.cognition
import loom.tools
import loom.tools.sandbox
from loom import errors


def test_top_level_exports() -> None:
    """`loom` exports the actor surface and every error."""
    assert set(loom.__all__) == {
        "PROTOCOL_VERSION",
        "Actor",
        "ApprovalError",
        "BrokerLostError",
        "BrokerUnavailableError",
        "CallCancelledError",
        "ClosedError",
        "Directory",
        "DurableError",
        "EncodeError",
        "Event",
        "HopLimitError",
        "InvalidParamsError",
        "LoomError",
        "NoReplyToError",
        "OverloadedError",
        "PatternError",
        "PayloadTooLargeError",
        "ProtocolError",
        "RemoteError",
        "RequestTimeoutError",
        "ResultTooLargeError",
        "Sandbox",
        "Tool",
        "ToolClient",
        "ToolContext",
        "ToolDefinitionError",
        "ToolDeniedError",
        "ToolError",
        "ToolFailedError",
        "ToolLimitError",
        "ToolTimeoutError",
        "TopicError",
        "UnknownToolError",
        "VersionMismatchError",
        "Worker",
        "WorkerLostError",
        "__version__",
        "on",
        "tool",
    }
    for name in loom.__all__:
        assert hasattr(loom, name), name


def test_subpackage_exports() -> None:
    """The actor, broker and tools packages expose a small face."""
    assert set(loom.actor.__all__) == {"Actor", "ActorStats", "Event", "Pattern", "on"}
    assert set(loom.broker.__all__) == {
        "Broker",
        "ControlPlane",
        "PubSubProxy",
        "ToolRouter",
        "TopicStats",
        "derive_endpoints",
    }
    assert set(loom.tools.__all__) == {
        "ActorInfo",
        "Directory",
        "Tool",
        "ToolClient",
        "ToolContext",
        "ToolInfo",
        "Worker",
        "WorkerInfo",
        "WorkerStats",
        "tool",
    }
    assert set(loom.tools.sandbox.__all__) == {
        "EnvRules",
        "FsRules",
        "Limits",
        "NetRules",
        "Sandbox",
    }


def test_cognition_exports() -> None:
    """The cognition package exposes the agent, the provider, memory and their errors."""
    assert {"CognitiveActor", "AgentLoop", "AgentResult", "ChatClient", "LLMSettings"} <= set(
        loom.cognition.__all__
    )
    for name in loom.cognition.__all__:
        assert hasattr(loom.cognition, name), name
        value = getattr(loom.cognition, name)
        if isinstance(value, type) and issubclass(value, Exception):
            assert issubclass(value, loom.LoomError), name


def test_every_error_derives_from_loom_error() -> None:
    """One error root; timeouts are also TimeoutError, bad values also ValueError."""
    for name in errors.__all__:
        assert issubclass(getattr(errors, name), loom.LoomError), name
    assert issubclass(loom.RequestTimeoutError, TimeoutError)
    assert issubclass(loom.EncodeError, TypeError)
    assert issubclass(loom.TopicError, ValueError)
    assert issubclass(loom.BrokerUnavailableError, ConnectionError)
    assert issubclass(loom.ToolTimeoutError, TimeoutError)
    assert issubclass(loom.InvalidParamsError, ValueError)
    assert issubclass(loom.ToolDeniedError, PermissionError)
    for name in errors.__all__:
        cls = getattr(errors, name)
        if issubclass(cls, errors.ToolError) and cls is not errors.ToolError:
            assert errors.tool_error(cls.code, "m").__class__ is cls, name
