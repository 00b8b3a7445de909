"""`loom trace`: one trace's messages and tool calls, from the broker's buffer."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable

from clients.ready import curve
from conftest import Proc, loom_at, spawn_actor, start_worker, until, wait_for

from loom import Actor, Event


def test_a_trace_shows_the_chain_of_messages_and_tool_calls(
    mesh: str, spawn: Callable[..., Proc]
) -> None:
    """A request to the echo actor, its pong event, and a tool call made while handling
    the pong share one trace; `loom trace` prints them as a tree with the call."""
    start_worker(spawn, mesh, "w1")
    spawn_actor(spawn, "echo", mesh)
    traced: list[str] = []

    class Caller(Actor):
        async def on_pong(self, event: Event) -> None:
            await self.tool("sample.add", a=1, b=2)  # inside the handler: same trace
            traced.append(event.trace_id or "")

    async def run() -> None:
        actor = Caller(name="caller", broker=mesh)
        await actor.subscribe("pong.*", actor.on_pong)
        await actor.start()
        try:
            await actor.request("ping.x", {"n": 1}, timeout=10)
            await until(lambda: traced, timeout=10)
        finally:
            await actor.stop()

    asyncio.run(run())
    shown = loom_at(mesh, "trace", traced[0])
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    ping = next(line for line in lines if "ping.x" in line)
    pong = next(line for line in lines if "pong.x" in line)
    assert "(request from caller)" in ping and "(event from echo)" in pong
    assert pong.index("pong.x") > ping.index("ping.x")  # nested under the request
    calls = [line for line in lines if "sample.add  by caller" in line]
    assert len(calls) == 1 and calls[0].endswith("ok"), shown.stdout
    found = json.loads(loom_at(mesh, "trace", traced[0], "--json").stdout)
    assert found["trace"] == traced[0] and len(found["calls"]) == 1
    assert {m["topic"] for m in found["messages"]} >= {"ping.x", "pong.x"}
    kinds = {m["topic"]: m["kind"] for m in found["messages"]}
    assert kinds["ping.x"] == "request" and kinds["pong.x"] == "event"  # names, as in tap


def test_an_unknown_trace_is_exit_1_and_a_bad_one_exit_2(mesh: str) -> None:
    """A trace the broker never saw: exit 1; not hex: exit 2 with the broker's message."""
    assert loom_at(mesh, "trace", "00" * 16).returncode == 1
    bad = loom_at(mesh, "trace", "not-hex")
    assert bad.returncode == 2 and "hex" in bad.stderr


def test_a_malformed_header_cannot_spoil_a_trace(mesh: str) -> None:
    """A raw publisher's message in trace T with an id that is not bytes is forwarded
    but not recorded: `loom trace T` still answers (nothing well formed: exit 1), and a
    well-formed message of T that follows is shown."""
    import zmq
    from conftest import make_header

    from loom.protocol import HELLO, VERSION
    from loom.session import ask

    trace = bytes.fromhex("ab" * 16)
    hello = {"version": VERSION, "name": "raw", "role": "client", "pid": 1}
    answer = asyncio.run(ask(mesh, HELLO, hello))
    context = zmq.Context()
    pub = curve(context.socket(zmq.PUB))
    pub.connect(answer["pub"])
    try:

        def send(**fields: object) -> None:
            pub.send_multipart([b"raw.topic", make_header(**fields), b"\xc0"])

        def recorded() -> bool:
            send(id=5, trace_id=trace)  # a slow joiner may miss the first: send until seen
            send(id=b"\x01" * 16, trace_id=trace)
            return loom_at(mesh, "trace", trace.hex()).returncode == 0

        wait_for(recorded, timeout=20, interval=0.1)
        shown = loom_at(mesh, "trace", trace.hex(), "--json")
        found = json.loads(shown.stdout)
        assert found["messages"] and {m["id"] for m in found["messages"]} == {"01" * 16}
    finally:
        pub.close(linger=0)
        context.term()
