"""The public names each package exports are pinned here."""

from __future__ import annotations

import loom
import loom.actor
import loom.broker
import loom.cognition
import loom.dashboard
import loom.session
import loom.tools
import loom.tools.sandbox
from loom import errors


def test_top_level_exports() -> None:
    """`loom` exports what a script writes (the rest is in its packages); the names are
    imported when first used."""
    assert set(loom.__all__) == {
        "PROTOCOL_VERSION",
        "Actor",
        "Directory",
        "Event",
        "LoomError",
        "RemoteError",
        "RequestTimeoutError",
        "Sandbox",
        "Tool",
        "ToolClient",
        "ToolContext",
        "ToolError",
        "Worker",
        "__version__",
        "on",
        "tool",
    }
    for name in loom.__all__:
        assert hasattr(loom, name), name
    assert set(dir(loom)) >= set(loom.__all__)


def test_subpackage_exports() -> None:
    """Each package exposes a small face; its modules are private (``_name``)."""
    assert set(loom.actor.__all__) == {
        "Actor",
        "ActorStats",
        "Assembled",
        "Awarded",
        "Event",
        "Gathered",
        "current_event",
        "on",
    }
    assert set(loom.broker.__all__) == {"Broker", "BrokerSettings", "SecuritySettings"}
    assert set(loom.session.__all__) == {
        "NO_KEY",
        "ActorInfo",
        "Directory",
        "KeySpec",
        "PeerKey",
        "Session",
        "ToolClient",
        "ToolInfo",
        "WorkerInfo",
        "announced_endpoint",
        "ask",
        "broker_answers",
        "check_endpoint",
        "peer_key",
        "reachable_endpoint",
        "secure_client",
        "serve_until_signalled",
        "wait_for_broker",
    }
    assert set(loom.tools.__all__) == {
        "ActorInfo",
        "Directory",
        "SchemaTool",
        "Tool",
        "ToolClient",
        "ToolContext",
        "ToolInfo",
        "ToolSettings",
        "Worker",
        "WorkerInfo",
        "WorkerSettings",
        "WorkerStats",
        "configure_tools",
        "load_tools",
        "tool",
    }
    assert set(loom.tools.sandbox.__all__) == {
        "EnvRules",
        "FsRules",
        "Limits",
        "NetRules",
        "Sandbox",
        "check_host",
        "confined_command",
    }
    assert set(loom.dashboard.__all__) == {"Dashboard", "DashboardThread", "MeshView"}
    for package in (loom.actor, loom.broker, loom.session, loom.tools, loom.dashboard):
        for name in package.__all__:
            assert hasattr(package, name), (package, name)


def test_mcp_exports() -> None:
    """The MCP package: both directions and the settings; the SDK loads on first use."""
    import loom.mcp

    assert set(loom.mcp.__all__) == {
        "McpBridge",
        "McpServerSettings",
        "McpSettings",
        "McpToolSettings",
        "MeshServer",
        "mesh_name",
        "serve_mesh",
    }
    for name in loom.mcp.__all__:
        assert hasattr(loom.mcp, name), name


def test_desktop_exports_and_lazy_backends() -> None:
    """The desktop package: the runner, the settings, the injectable sources and the
    virtual session; importing it loads no desktop library (each backend loads its own
    when chosen), so `loom` starts as fast without the extra."""
    import subprocess
    import sys

    import loom.desktop

    assert set(loom.desktop.__all__) == {
        "Choice",
        "Clipboard",
        "ClipboardSettings",
        "Combo",
        "ComboTracker",
        "Desktop",
        "DesktopSettings",
        "FilesSettings",
        "HotkeySettings",
        "Hotkeys",
        "MemoryClipboard",
        "MemoryNotifier",
        "NotifySettings",
        "Notifier",
        "Refused",
        "Schedule",
        "ScriptedKeys",
        "TimerSettings",
        "Timers",
        "TimersSettings",
        "VirtualDesktop",
        "WatchSettings",
        "check",
        "parse_combo",
    }
    for name in loom.desktop.__all__:
        assert hasattr(loom.desktop, name), name
    probe = "import sys, loom.desktop; print(sorted(set(sys.modules) & {LIBS}))".format(
        LIBS=repr({"Xlib", "jeepney", "watchfiles", "cronsim", "keyboard", "evdev", "plyer"})
    )
    loaded = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True
    )
    assert loaded.stdout.strip() == "[]", loaded.stdout


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
    assert issubclass(errors.RequestTimeoutError, TimeoutError)
    assert issubclass(errors.EncodeError, TypeError)
    assert issubclass(errors.TopicError, ValueError)
    assert issubclass(errors.BrokerUnavailableError, ConnectionError)
    assert issubclass(errors.ToolTimeoutError, TimeoutError)
    assert issubclass(errors.InvalidParamsError, ValueError)
    assert issubclass(errors.ToolDeniedError, PermissionError)
    for name in errors.__all__:
        cls = getattr(errors, name)
        if issubclass(cls, errors.ToolError) and cls is not errors.ToolError:
            assert errors.tool_error(cls.code, "m").__class__ is cls, name
        if issubclass(cls, errors.RefusedError) and cls is not errors.RefusedError:
            assert errors.refusal(cls.code, "m").__class__ is cls, name
    assert errors.refusal("TOO_MANY", "m").__class__ is errors.DurableError


def test_federation_exports() -> None:
    """The federation package: the link and the topic-to-subject mapping."""
    import loom.federation

    assert set(loom.federation.__all__) == {
        "Link",
        "pattern_subjects",
        "prefix_subjects",
        "subject_topic",
        "tool_subject",
        "topic_subject",
    }
    for name in loom.federation.__all__:
        assert hasattr(loom.federation, name), name
