"""Identity and rights across the federation: the origin identity rides with each
event and call, and the receiving broker applies its own ACL to it."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import nkeys
import pytest
from conftest import (
    Proc,
    broker_stats,
    eventually,
    free_tcp_endpoint,
    start_broker,
    start_worker,
    until,
    wait_for,
)
from federation_helpers import NATS_SERVER, Cluster, federated, nats_node, until_heard

from loom import Actor, Event, on
from loom.errors import ToolDeniedError
from loom.keys import new_keypair
from loom.session import ToolClient

__all__ = ["nats_node"]  # the fixture, imported for pytest

pytestmark = pytest.mark.timeout(120)

GENEROUS = """
[identities.mallory]
key_file = "{key}"
publish = ["fed.**"]
subscribe = ["fed.**"]
call = ["*"]
"""
STRICT = """
[identities.mallory]
key_file = "{key}"
publish = ["fed.ok"]
subscribe = ["fed.**"]
call = []
"""


class Recorder(Actor):
    def __init__(self, name: str, broker: str) -> None:
        super().__init__(name=name, broker=broker)
        self.got: list[tuple[str, str | None]] = []

    @on("fed.*")
    async def record(self, event: Event) -> None:
        self.got.append((event.topic, event.envelope.origin))


def test_the_receiving_broker_applies_its_rights_to_the_origin(
    spawn: Callable[..., Proc], nats_node: Cluster, tmp_path: Path
) -> None:
    """mallory may publish fed.** and call anything on A; on B only publish fed.ok and
    call nothing. What mallory sends from A reaches B as mallory's, and B refuses what
    B's ACL refuses mallory: fed.no is not delivered, and B's tool is DENIED."""
    key = new_keypair("mallory", tmp_path)
    assert key.secret is not None
    acls = {}
    for name, text in (("A", GENEROUS), ("B", STRICT)):
        acls[name] = tmp_path / f"acl-{name}.toml"
        acls[name].write_text(text.format(key=tmp_path / "mallory.key"))
    url = nats_node.urls
    a, _ = federated(spawn, "A", url, "--acl", str(acls["A"]))
    b, _ = federated(spawn, "B", url, "--acl", str(acls["B"]))
    start_worker(spawn, b, "tools-b")

    async def body() -> None:
        mallory = Actor(name="mallory", broker=a, key=key.path)
        await mallory.start()
        reader = Recorder("reader", b)
        await reader.start()
        try:
            await until_heard(lambda: mallory.emit("fed.ok", 1), lambda: bool(reader.got))
            await mallory.emit("fed.no", 2)
            await mallory.emit("fed.ok", 3)
            await until(lambda: reader.got.count(("fed.ok", "mallory")) >= 2)
            assert ("fed.no", "mallory") not in reader.got  # it went before fed.ok 3
            assert {origin for _, origin in reader.got} == {"mallory"}
            async with await ToolClient.connect(a) as owner:  # the owner may, on both
                await eventually(lambda: listed(owner, "sample.add"), timeout=15)
                assert await owner.call("sample.add", {"a": 1, "b": 2}) == 3
            async with await ToolClient.connect(a, key=key.path) as client:
                with pytest.raises(ToolDeniedError):  # A lets it through, B does not
                    await client.call("sample.add", {"a": 1, "b": 2})
        finally:
            await reader.stop()
            await mallory.stop()

    asyncio.run(body())
    federation = wait_for(lambda: broker_stats(b)["federation"], 5)
    assert federation["refused"] >= 1
    assert broker_stats(b)["security"]["denied"].get("publish", 0) >= 1


async def listed(client: ToolClient, tool: str) -> Any:
    directory = await client.directory()
    return any(t.name == tool for t in directory.tools)


def test_each_broker_joins_nats_with_credentials_of_its_own(
    spawn: Callable[..., Proc], tmp_path: Path
) -> None:
    """A NATS server that admits two NKey users: brokers A and B, each given its own
    seed, federate (an event crosses); a broker without one never joins."""
    seeds = {}
    users = []
    for name in ("A", "B"):
        seed = nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_USER)
        users.append(nkeys.from_seed(bytearray(seed)).public_key.decode())
        seeds[name] = tmp_path / f"{name}.nk"
        seeds[name].write_bytes(seed + b"\n")
        seeds[name].chmod(0o600)
    port = int(free_tcp_endpoint().rpartition(":")[2])
    config = tmp_path / "nats.conf"
    nkeys_list = ", ".join(f'{{nkey: "{u}"}}' for u in users)
    config.write_text(f"port: {port}\nauthorization {{ users = [{nkeys_list}] }}\n")
    spawn(NATS_SERVER, "-c", str(config)).wait_line("Server is ready", timeout=20)
    url = f"nats://127.0.0.1:{port}"
    endpoints = {}
    for name, seed_file in seeds.items():
        settings = tmp_path / f"{name}.toml"
        settings.write_text(f'[federation]\nnkey = "{seed_file}"\n')
        endpoints[name], _ = federated(spawn, name, url, "--config", str(settings))
    stranger = free_tcp_endpoint()
    proc = start_broker(spawn, stranger, "--name", "C", "--federate", url)

    async def body() -> None:
        sender = Actor(name="sender", broker=endpoints["A"])
        reader = Recorder("reader", endpoints["B"])
        await sender.start()
        await reader.start()
        try:
            await until_heard(lambda: sender.emit("fed.ok", 1), lambda: bool(reader.got))
        finally:
            await reader.stop()
            await sender.stop()

    asyncio.run(body())
    proc.wait_line("Authorization Violation", timeout=20)  # NATS refused C's link
    assert broker_stats(stranger)["federation"]["state"] != "up"
    assert not any("federation up" in line for line in proc.lines)
