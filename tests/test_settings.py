"""Settings files: parsed once, validated, errors name the file and the key."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import ROOT, Proc, start_broker

from loom.cli.settings import ConfigError, load_settings


def test_shipped_config_is_valid() -> None:
    """configs/loom.toml parses to the documented defaults."""
    settings = load_settings(ROOT / "configs" / "loom.toml")
    assert settings.broker.endpoint == "tcp://127.0.0.1:7700"
    assert settings.broker.max_payload == 1 << 20
    assert settings.log.level == "info" and settings.log.json_lines is False
    llms = settings.llm
    assert llms["openai"].api_key_env == "OPENAI_API_KEY" and "local" in llms


def test_the_shipped_desktop_file_writes_the_defaults_out() -> None:
    """configs/desktop.toml: every key at its default, besides the examples it names."""
    from loom.cli.desktop import load_desktop
    from loom.desktop import ClipboardSettings, DesktopSettings, NotifySettings

    settings = load_desktop(ROOT / "configs" / "desktop.toml")
    defaults = DesktopSettings()
    assert settings.clipboard == ClipboardSettings()
    assert settings.notify == NotifySettings()
    assert settings.hotkeys.model_copy(update={"keys": {}}) == defaults.hotkeys
    assert settings.files.model_copy(update={"watch": {}}) == defaults.files
    assert settings.timers == defaults.timers
    assert settings.hotkeys.keys == {"ask": "ctrl+alt+a"}
    assert settings.files.watch["downloads"].path == Path("~/Downloads").expanduser()
    assert settings.timer["evening"].cron == "0 18 * * mon-fri"


def test_the_shipped_federation_file_writes_the_defaults_out() -> None:
    """configs/federation.toml: every key at its default, but the one server it names;
    loom-broker reads it (its [federation] table) as loom federate does."""
    from loom.cli.federate import federation_settings
    from loom.config import FederationSettings

    settings = federation_settings(ROOT / "configs" / "federation.toml", None)
    assert settings.servers == ("nats://127.0.0.1:4222",)
    assert settings.model_copy(update={"servers": ()}) == FederationSettings()
    assert federation_settings(
        ROOT / "configs" / "federation.toml", "nats://a:1,nats://b:2"
    ).servers == (
        "nats://a:1",
        "nats://b:2",
    )


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("[desktop.hotkeys.keys]\na = 'ctrl+alt+nope'\n", "desktop.hotkeys.keys"),
        ("[desktop.timer.t]\nevery = 0\n", "desktop.timer.t.every"),
        ("[broker]\nhwm = -1\n", "broker.hwm"),
        ("[federation]\nservers = ['http://x']\n", "federation.servers"),
        ("[federation]\nexport = ['a.b*']\n", "federation.export"),
        ("[federation]\ndurable = 'disk'\n", "federation.durable"),
        ("[broker]\nbogus = 1\n", "broker.bogus"),
        ("[log]\nlevel = 'loud'\n", "log.level"),
        ("[broker\n", "not valid TOML"),
        ("[llm.x]\nmodel = 'm'\n", "x.base_url"),
        ("[llm.x]\nbase_url = 'ftp://h'\nmodel = 'm'\n", "x.base_url"),
        ("[tools.'fs.read'.sandbox.limits]\ncpu_seconds = -1\n", "cpu_seconds"),
    ],
)
def test_bad_settings_name_file_and_key(tmp_path: Path, text: str, needle: str) -> None:
    """An invalid file raises ConfigError naming the file and the offending key."""
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_settings(path)
    assert str(path) in str(info.value) and needle in str(info.value)


def test_broker_reads_config_and_flags_override(
    spawn: Callable[..., Proc], short_tmp: Path
) -> None:
    """`loom-broker --config` uses the file's values; a flag overrides the file."""
    config = short_tmp / "loom.toml"
    config.write_text(f'[broker]\nendpoint = "ipc://{short_tmp}/a"\nname = "from-file"\n')
    proc = start_broker(spawn, f"ipc://{short_tmp}/b", "--config", str(config))
    assert f"control=ipc://{short_tmp}/b" in proc.output and "broker=from-file" in proc.output
    assert proc.stop() == 0


def test_broker_rejects_a_bad_config(spawn: Callable[..., Proc], tmp_path: Path) -> None:
    """A bad config file stops the broker with exit 2 and a message naming the key."""
    config = tmp_path / "bad.toml"
    config.write_text("[broker]\nstall_timeout = 0\n")
    proc = spawn(sys.executable, "-m", "loom.cli.broker", "--config", str(config))
    assert proc.popen.wait(10) == 2
    proc.wait_line("broker.stall_timeout")
