"""Peers on other hosts: a broker bound to a wildcard announces its pub and sub endpoints
at the host it advertises (`--advertise`), or leaves the wildcard for each peer to fill
with the host it reached the control endpoint at. Loopback stands in for the network:
every 127.x address reaches this host, so a peer that dials 127.0.0.1 and is told
127.0.0.2 shows which one it used."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import LOOM, SAMPLE_TOOLS, Proc, start_broker, until

from loom import Actor
from loom.protocol import HELLO, VERSION
from loom.session import announced_endpoint, ask

pytestmark = pytest.mark.timeout(60)


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _hello(control: str) -> dict[str, Any]:
    answer = asyncio.run(ask(control, HELLO, {"version": VERSION, "name": "probe"}))
    return dict(answer)


def _round_trip(control: str) -> list[Any]:
    """An event from one actor to another through the broker reached at ``control``."""

    async def go() -> list[Any]:
        got: list[Any] = []
        reader, writer = Actor(name="reader", broker=control), Actor(name="writer", broker=control)
        await reader.subscribe("hosts.*", lambda e: got.append(e.data))
        await reader.start()
        await writer.start()
        try:
            await writer.emit("hosts.ping", {"n": 1})
            await until(lambda: got)
        finally:
            await writer.stop()
            await reader.stop()
        return got

    return asyncio.run(go())


def test_an_advertised_host_is_where_peers_dial_pub_and_sub(
    spawn: Callable[..., Proc],
) -> None:
    port = _port()
    start_broker(spawn, f"tcp://0.0.0.0:{port}", "--advertise", "127.0.0.2")
    control = f"tcp://127.0.0.1:{port}"
    hello = _hello(control)
    assert hello["pub"].startswith("tcp://127.0.0.2:")
    assert hello["sub"].startswith("tcp://127.0.0.2:")
    assert _round_trip(control) == [{"n": 1}]


def test_without_one_a_wildcard_is_filled_with_the_host_the_peer_reached(
    spawn: Callable[..., Proc],
) -> None:
    port = _port()
    start_broker(spawn, f"tcp://0.0.0.0:{port}")
    control = f"tcp://127.0.0.3:{port}"
    hello = _hello(control)
    assert hello["pub"].startswith("tcp://0.0.0.0:")  # announced as bound
    pub_port = hello["pub"].rpartition(":")[2]
    assert announced_endpoint(hello["pub"], control) == f"tcp://127.0.0.3:{pub_port}"
    assert _round_trip(control) == [{"n": 1}]


@pytest.mark.parametrize("bad", ["tcp://host", "a b", "host:7700", ""])
def test_an_advertised_host_is_a_host_name_or_address(bad: str) -> None:
    command = [sys.executable, "-m", "loom.cli.broker", "--endpoint", "tcp://127.0.0.1:0"]
    refused = subprocess.run(
        [*command, "--advertise", bad], capture_output=True, text=True, timeout=30, check=False
    )
    assert refused.returncode == 2
    assert "advertise" in refused.stderr


def test_a_worker_and_a_client_elsewhere_join_with_keys_of_their_own(
    spawn: Callable[..., Proc], tmp_path: Path
) -> None:
    """Another host holds only alice's secret key and the broker's public key (a Loom
    home of its own, empty): its worker and its client reach the broker over TCP at the
    host it advertises, as alice, with alice's rights (she may serve and call sample.*,
    and read nothing else)."""
    from loom.keys import key_dir, new_keypair

    alice = new_keypair("alice", tmp_path)
    acl = tmp_path / "acl.toml"
    acl.write_text(
        '[identities.alice]\nkey_file = "alice.key"\nserve = ["sample.*"]\ncall = ["sample.*"]\n'
        'read = ["directory"]\n'
    )
    port = _port()
    start_broker(spawn, f"tcp://0.0.0.0:{port}", "--advertise", "127.0.0.2", "--acl", str(acl))
    elsewhere = {
        "LOOM_HOME": str(tmp_path / "other-host"),
        "LOOM_KEY": str(alice.path),
        "LOOM_BROKER_KEY": str(key_dir() / "broker.key"),
    }
    control = f"tcp://127.0.0.2:{port}"
    worker = spawn(*LOOM, "worker", SAMPLE_TOOLS, "--broker", control, env=elsewhere)
    worker.wait_line("worker ready", timeout=15)
    done = subprocess.run(
        [*LOOM, "call", "sample.add", '{"a": 20, "b": 22}', "--broker", control],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
        env={**os.environ, **elsewhere},
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "42"
    assert not (tmp_path / "other-host" / "keys" / "local.key_secret").exists()
