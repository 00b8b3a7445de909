"""Identities and rights against attackers: a real broker with an ACL file, real peers of
its owner, and raw zmq clients with no key, an unknown key, or a valid key with few
rights (``mallory``), each trying what the issue lists. Every attack is refused, counted
and audited, and the owner's peers go on working."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import msgpack
import pytest
import zmq
from clients.ready import connect as connect_and_wait
from clients.ready import curve, publisher
from conftest import (
    SAMPLE_TOOLS,
    Proc,
    broker_stats,
    eventually,
    free_tcp_endpoint,
    make_header,
    run_loom,
    start_broker,
    start_worker,
    until,
    wait_for,
)

from loom import Actor, Event, on
from loom.errors import (
    AuthenticationError,
    OverloadedError,
    PermissionDeniedError,
    ToolDeniedError,
)
from loom.keys import new_keypair
from loom.protocol import (
    APPROVALS,
    DIRECTORY,
    HELLO,
    REPLAY,
    STATS,
    VERSION,
    decode_control,
    encode_control,
)
from loom.session import ToolClient, ask
from loom.tools import ToolContext, Worker, tool

pytestmark = pytest.mark.timeout(120)

ACL = """
[identities.mallory]
key_file = "mallory.key"
groups = ["guests"]

[groups.guests]
publish = ["chat.**"]
subscribe = ["chat.**", "svc.**"]
reply = []
call = ["sample.add", "who.*", "desktop.clipboard.*"]
durable = ["mallory-*"]
rate = {{ events = {rate}, calls = {rate} }}
"""


class Site:
    """A broker with an ACL enrolling ``mallory``, on loopback TCP."""

    def __init__(self, spawn: Callable[..., Proc], tmp: Path, rate: int = 100_000) -> None:
        self.dir = tmp
        self.mallory = new_keypair("mallory", tmp).path  # mallory.key_secret
        self.stranger = new_keypair("stranger", tmp).path  # enrolled nowhere
        self.acl = tmp / "acl.toml"
        self.acl.write_text(ACL.format(rate=rate))
        self.audit = tmp / "audit.jsonl"
        self.endpoint = free_tcp_endpoint()
        self.proc = start_broker(
            spawn,
            self.endpoint,
            "--acl",
            str(self.acl),
            "--audit-log",
            str(self.audit),
            "--data-dir",
            str(tmp / "data"),
        )
        self.hello = self.control(HELLO, {"version": VERSION, "name": "probe"})[1]

    def control(
        self, command: bytes, body: dict[str, Any], key: str | Path = "local"
    ) -> tuple[bytes, dict[str, Any]]:
        """One control command on a raw DEALER presenting ``key``; the answer."""
        with zmq.Context() as ctx, curve(ctx.socket(zmq.DEALER), key) as sock:
            sock.linger = 0
            sock.connect(self.endpoint)
            sock.send_multipart(encode_control(command, {**body, "rid": 1}))
            assert sock.poll(5000), f"no answer to {command!r}"
            return decode_control(sock.recv_multipart())

    def security(self) -> dict[str, Any]:
        stats: dict[str, Any] = broker_stats(self.endpoint)["security"]
        return stats

    def audited(self, event: str, **fields: Any) -> list[dict[str, Any]]:
        if not self.audit.exists():
            return []
        records = [json.loads(line) for line in self.audit.read_text().splitlines()]
        return [
            r
            for r in records
            if r["event"] == event and all(r.get(k) == v for k, v in fields.items())
        ]


@pytest.fixture
def site(spawn: Callable[..., Proc], short_tmp: Path) -> Iterator[Site]:
    made = Site(spawn, short_tmp)
    yield made
    assert made.proc.stop() == 0, made.proc.output


def test_no_key_or_an_unknown_key_gets_nowhere_on_any_socket(site: Site) -> None:
    """Without CURVE, or with a key the broker does not know, no socket answers: the
    control plane says nothing, a publisher's events reach no one, a subscriber gets
    nothing. The unknown key is refused by the authenticator and audited."""
    with zmq.Context() as ctx:
        plain = ctx.socket(zmq.DEALER)
        plain.linger = 0
        plain.connect(site.endpoint)
        plain.send_multipart(encode_control(HELLO, {"version": VERSION, "name": "x", "rid": 1}))
        stranger = curve(ctx.socket(zmq.DEALER), site.stranger)
        stranger.linger = 0
        monitor = stranger.get_monitor_socket(zmq.EVENT_HANDSHAKE_FAILED_AUTH)
        stranger.connect(site.endpoint)
        stranger.send_multipart(encode_control(HELLO, {"version": VERSION, "name": "y"}))
        assert monitor.poll(5000), "the unknown key was not refused at the handshake"
        assert not plain.poll(500) and not stranger.poll(0)
        # the pub/sub sockets: a stranger's publisher and subscriber see nothing
        pub = curve(ctx.socket(zmq.XPUB), site.stranger)
        pub.connect(site.hello["pub"])
        sub = curve(ctx.socket(zmq.SUB), site.stranger)
        sub.subscribe(b"")
        sub.connect(site.hello["sub"])
        assert not pub.poll(1000), "a stranger's publisher got the broker's subscribe-all"
        for sock in (plain, stranger, pub, sub, monitor):
            sock.close(0)
    assert wait_for(lambda: site.audited("connection refused"))
    assert wait_for(lambda: site.audited("handshake failed"))  # the one without CURVE
    assert site.security()["failed_handshakes"] >= 1
    asyncio.run(_refused_at_once(site))


async def _refused_at_once(site: Site) -> None:
    """A Loom client with the unknown key fails at once with AuthenticationError."""
    started = time.monotonic()
    with pytest.raises(AuthenticationError, match="not enrolled"):
        await ToolClient.connect(site.endpoint, key=site.stranger, timeout=10)
    assert time.monotonic() - started < 5, "the refusal waited for the timeout"


def test_forged_system_events_and_spoofed_senders_are_dropped(
    spawn: Callable[..., Proc], site: Site
) -> None:
    """mallory may publish on chat.** only: `$sys.*` (as "loom-broker"), a topic outside
    its rights, and its rights' topic under the name of the owner's live actor are all
    dropped; its own name on chat.* goes through, stamped with its identity."""

    async def body() -> list[Event]:
        got: list[Event] = []
        watcher = Actor(name="watcher", broker=site.endpoint)
        await watcher.subscribe("$sys.**", got.append)
        await watcher.subscribe("chat.**", got.append)
        await watcher.subscribe("orders.**", got.append)
        await watcher.start()
        try:
            with zmq.Context() as ctx:
                pub = publisher(ctx, site.hello["pub"], key=site.mallory)
                forged = [
                    (b"$sys.actor.left", make_header(sender="loom-broker")),
                    (b"orders.new", make_header(sender="mallory")),
                    (b"chat.room", make_header(sender="watcher")),  # the owner's actor
                    (b"chat.room", make_header(sender="mallory")),
                ]
                for topic, header in forged:
                    pub.send_multipart([topic, header, msgpack.packb({"forged": True})])
                # the last one sent: anything forwarded before it arrived before it
                await until(lambda: any(e.sender == "mallory" for e in got), 10)
                pub.close(0)
            return list(got)
        finally:
            await watcher.stop()

    got = asyncio.run(body())
    forged = [(e.topic, e.sender, e.origin) for e in got if _forged(e)]
    assert forged == [("chat.room", "mallory", "mallory")], forged
    denied = wait_for(lambda: site.security()["denied"])
    assert denied.get("publish", 0) >= 2 and denied.get("send as", 0) >= 1, denied
    assert site.audited("denied", identity="mallory", right="publish")


def _forged(event: Event) -> bool:
    return isinstance(event.data, dict) and event.data.get("forged") is True


def test_the_owners_events_carry_its_identity(site: Site) -> None:
    """Every event's origin is the identity the broker authenticated (here the owner's
    `local`), whatever the sender field says; a peer cannot write it itself."""

    async def body() -> tuple[Event, int]:
        got: list[Event] = []
        sink = Actor(name="sink", broker=site.endpoint)
        await sink.subscribe("note.*", got.append)
        await sink.start()
        source = Actor(name="source", broker=site.endpoint)
        await source.start()
        try:
            await source.emit("note.a", 1)
            await until(lambda: got, 10)
            with zmq.Context() as ctx:
                pub = publisher(ctx, site.hello["pub"])
                pub.send_multipart([b"note.b", make_header(origin="root"), msgpack.packb(2)])
                pub.close(0)
            return got[0], await _denials(site, "write")
        finally:
            await source.stop()
            await sink.stop()

    event, refused = asyncio.run(body())
    assert event.origin == "local" and event.sender == "source"
    assert refused >= 1


async def _denials(site: Site, right: str) -> int:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        count: int = (await ask(site.endpoint, STATS))["security"]["denied"].get(right, 0)
        if count:
            return count
        await asyncio.sleep(0.05)
    return 0


def test_subscriptions_are_granted_by_right(site: Site) -> None:
    """mallory subscribing to everything (`""`), to `$sys.`, to another actor's inbox or
    to orders gets nothing of them; its `chat.` subscription works. A Loom actor of
    mallory's whose patterns reach past its rights is refused at HELLO, typed."""

    async def body() -> tuple[list[bytes], int]:
        seen: list[bytes] = []
        with zmq.Context() as ctx:
            sub = curve(ctx.socket(zmq.SUB), site.mallory)
            for prefix in (b"", b"$sys.", b"$inbox.", b"orders.", b"chat."):
                sub.subscribe(prefix)
            sub.connect(site.hello["sub"])
            owner = Actor(name="owner", broker=site.endpoint)
            await owner.start()
            try:
                deadline = time.monotonic() + 10
                while b"chat.x" not in seen and time.monotonic() < deadline:
                    await owner.emit("orders.secret", {"card": "4111"})
                    await owner.emit("chat.x", "hi")
                    await asyncio.sleep(0.05)
                    while sub.poll(0):
                        seen.append(sub.recv_multipart()[0])
            finally:
                await owner.stop()
            sub.close(0)
        refused = 0
        spy = Actor(name="spy", broker=site.endpoint, key=site.mallory, connect_timeout=5)
        await spy.subscribe("orders.**", lambda e: None)
        with pytest.raises(PermissionDeniedError, match="subscribe"):
            await spy.start()
        refused += 1
        return seen, refused

    seen, refused = asyncio.run(body())
    assert b"chat.x" in seen
    assert not [t for t in seen if not t.startswith(b"chat.")], set(seen)
    assert refused == 1
    assert site.security()["denied"].get("subscribe", 0) >= 4


def test_tools_calls_approvals_and_reads_need_rights(
    spawn: Callable[..., Proc], site: Site
) -> None:
    """mallory cannot serve a tool (taking half of another worker's calls), call one
    outside its rights, list or decide approvals, or read the directory, stats or
    traces; it may call `sample.add`. Each refusal is typed, counted and audited."""
    start_worker(spawn, site.endpoint, "w1")

    async def body() -> None:
        thief = Worker([_stolen], broker=site.endpoint, name="thief", key=site.mallory)
        with pytest.raises(PermissionDeniedError, match="serve"):
            await thief.start()
        await thief.stop()
        client = await ToolClient.connect(site.endpoint, key=site.mallory, name="m")
        try:
            assert await client.call("sample.add", {"a": 1, "b": 2}) == 3
            with pytest.raises(ToolDeniedError, match="may not call"):
                await client.call("sample.whoami", {})
        finally:
            client.close()
        for command in (APPROVALS, DIRECTORY, STATS, REPLAY):
            with pytest.raises(PermissionDeniedError):
                await ask(site.endpoint, command, {"pattern": "**"}, key=site.mallory)

    asyncio.run(body())
    denied = site.security()["denied"]
    for right in ("serve", "call", "approve", "read", "replay"):
        assert denied.get(right, 0) >= 1, (right, denied)
    assert site.audited("tools served", identity="local", worker="w1")
    assert site.audited("denied", identity="mallory", right="call")


@tool(name="sample.add")
async def _stolen(a: int, b: int = 1) -> int:
    return -1


@tool(name="who.calls")
async def _who(context: ToolContext) -> str | None:
    return context.caller


def test_a_tool_knows_its_callers_identity_and_the_clipboard_is_the_owners(
    site: Site, tmp_path: Path
) -> None:
    """The broker tells the worker who calls (``ToolContext.caller``); the desktop's
    clipboard tools use it: mallory may call them by the broker's rights, but only the
    owner may read the clipboard (its default ``readers``)."""
    from loom.desktop import Desktop, DesktopSettings, MemoryClipboard

    async def body() -> None:
        worker = Worker([_who], broker=site.endpoint, name="who")
        clipboard = MemoryClipboard()
        desktop = Desktop(DesktopSettings(), broker=site.endpoint, clipboard=clipboard)
        await worker.start()
        await desktop.start()
        owner = await ToolClient.connect(site.endpoint, name="owner")
        guest = await ToolClient.connect(site.endpoint, key=site.mallory, name="m")
        try:
            assert await owner.call("who.calls", {}) == "local"
            assert await guest.call("who.calls", {}) == "mallory"
            await clipboard.write("the owner's secret")
            assert (await owner.call("desktop.clipboard.get", {}))["text"] == "the owner's secret"
            with pytest.raises(ToolDeniedError, match="mallory may not read the clipboard"):
                await guest.call("desktop.clipboard.get", {})
            with pytest.raises(ToolDeniedError, match="mallory may not write the clipboard"):
                await guest.call("desktop.clipboard.set", {"text": "planted"})
            assert clipboard.text == "the owner's secret"
        finally:
            owner.close()
            guest.close()
            await desktop.stop()
            await worker.stop()

    asyncio.run(body())


class Slow(Actor):
    """Answers svc.ping once ``release`` is set: after the forger's reply."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.release = asyncio.Event()

    @on("svc.ping")
    async def ping(self, event: Event) -> str:
        await self.release.wait()
        return "real"


def test_a_request_is_answered_only_by_those_who_may(site: Site) -> None:
    """mallory hears requests on svc.* but has no right to answer them: its forged reply
    (the right correlation id, on the asker's inbox) is dropped, and the real
    responder's answer is the one the asker gets, though it comes later."""

    async def body() -> Any:
        responder = Slow(name="svc", broker=site.endpoint)
        asker = Actor(name="asker", broker=site.endpoint)
        await responder.start()
        await asker.start()
        with zmq.Context() as ctx:
            spy = curve(ctx.socket(zmq.SUB), site.mallory)
            spy.subscribe(b"svc.")
            spy.connect(site.hello["sub"])
            pub = publisher(ctx, site.hello["pub"], key=site.mallory)
            try:
                deadline = time.monotonic() + 10
                while not spy.poll(0):  # until the spy's subscription holds
                    assert time.monotonic() < deadline, "the spy never heard svc.*"
                    await asker.emit("svc.warmup", None)
                    await asyncio.sleep(0.05)
                while spy.poll(100):
                    spy.recv_multipart()
                asking = asyncio.ensure_future(asker.request("svc.ping", "x", timeout=10))
                await until(lambda: spy.poll(0), 10)
                _, head, _ = spy.recv_multipart()
                fields = msgpack.unpackb(head)
                forged = make_header(kind=2, sender="mallory", correlation_id=fields[2])
                pub.send_multipart([fields[6].encode(), forged, msgpack.packb("forged")])
                assert await _denials(site, "reply")  # refused before the real one exists
                responder.release.set()
                return await asking
            finally:
                spy.close(0)
                pub.close(0)
                await asker.stop()
                await responder.stop()

    assert asyncio.run(body()) == "real"
    assert site.security()["denied"].get("reply", 0) >= 1


def test_durable_names_belong_to_their_identity(site: Site) -> None:
    """A durable subscription the owner created cannot be taken over by mallory (nor a
    name outside its `durable` rights); one of its own it may create."""

    async def body() -> None:
        owner = Actor(name="owner", broker=site.endpoint)
        await owner.subscribe("chat.**", lambda e: None, durable="ledger")
        await owner.start()
        await owner.stop()
        thief = Actor(name="thief", broker=site.endpoint, key=site.mallory)
        await thief.subscribe("chat.**", lambda e: None, durable="ledger")
        with pytest.raises(PermissionDeniedError, match="durable"):
            await thief.start()
        mine = Actor(name="mine", broker=site.endpoint, key=site.mallory)
        await mine.subscribe("chat.**", lambda e: None, durable="mallory-log")
        await mine.start()
        await mine.stop()

    asyncio.run(body())
    assert site.security()["denied"].get("use the durable name", 0) >= 1


def test_rate_limits_hold(spawn: Callable[..., Proc], short_tmp: Path) -> None:
    """mallory may publish 20 events and make 20 calls a second: of 300 events sent at
    once about the burst gets through, the rest are dropped and counted (`rate`); of 100
    calls at once about as many succeed, the rest are answered OVERLOADED."""
    site = Site(spawn, short_tmp, rate=20)
    start_worker(spawn, site.endpoint, "w1")

    async def body() -> tuple[int, int, int]:
        got: list[Event] = []
        sink = Actor(name="sink", broker=site.endpoint)
        await sink.subscribe("chat.**", got.append)
        await sink.start()
        try:
            with zmq.Context() as ctx:
                pub = publisher(ctx, site.hello["pub"], key=site.mallory)
                for _ in range(300):
                    pub.send_multipart([b"chat.flood", make_header(sender="m"), b"\xc0"])
                row = await eventually(lambda: _flood_done(site), 20)
                pub.close(0)
            await until(lambda: len(got) == row["forwarded"], 10)  # all of them arrived
        finally:
            await sink.stop()
        client = await ToolClient.connect(site.endpoint, key=site.mallory, name="m")
        try:
            calls = [client.call("sample.add", {"a": i}) for i in range(100)]
            outcomes = await asyncio.gather(*calls, return_exceptions=True)
        finally:
            client.close()
        ok = sum(1 for o in outcomes if not isinstance(o, BaseException))
        overloaded = sum(1 for o in outcomes if isinstance(o, OverloadedError))
        return len(got), ok, overloaded

    delivered, ok, overloaded = asyncio.run(body())
    assert 1 <= delivered <= 40, delivered
    assert 1 <= ok <= 40 and ok + overloaded == 100, (ok, overloaded)
    assert wait_for(lambda: site.security()["denied"]["rate"] >= 250 + overloaded)
    assert site.proc.stop() == 0


async def _flood_done(site: Site) -> dict[str, int] | None:
    """The flood's counters once the broker has read all 300 messages."""
    row: dict[str, int] | None = (await ask(site.endpoint, STATS))["topics"].get("chat.flood")
    return row if row is not None and row["published"] == 300 else None


def test_sighup_reloads_rights_without_dropping_peers(site: Site) -> None:
    """mallory's client cannot call `team.work`; the ACL gains it, SIGHUP: the same
    client, still connected, may call it now. A broken ACL on reload keeps the old
    rights (and says so)."""
    worker = Worker([_work], broker=site.endpoint, name="w")

    async def body() -> None:
        await worker.start()
        client = await ToolClient.connect(site.endpoint, key=site.mallory, name="m")
        try:
            with pytest.raises(ToolDeniedError):
                await client.call("team.work", {})
            site.acl.write_text(site.acl.read_text().replace('"sample.add"', '"team.*"'))
            site.proc.popen.send_signal(signal.SIGHUP)
            deadline = time.monotonic() + 10
            while True:
                try:
                    assert await client.call("team.work", {}) == "done"
                    break
                except ToolDeniedError:
                    assert time.monotonic() < deadline, "the reload did not take"
                    await asyncio.sleep(0.05)
            site.acl.write_text("[identities.mallory\n")  # broken: the rights stay
            site.proc.popen.send_signal(signal.SIGHUP)
            await until(lambda: site.audited("acl reload failed"), 10)
            assert await client.call("team.work", {}) == "done"
        finally:
            client.close()
            await worker.stop()

    asyncio.run(body())
    assert site.audited("acl reloaded")


@tool(name="team.work")
async def _work() -> str:
    return "done"


def test_an_insecure_broker_says_so(spawn: Callable[..., Proc]) -> None:
    """--insecure: no CURVE; HELLO says so, `loom list` says so, and peers connect with
    key 'none' (a Loom peer with a key is told why it cannot)."""
    endpoint = free_tcp_endpoint()
    proc = start_broker(spawn, endpoint, "--insecure")
    assert "INSECURE" in proc.output

    async def body() -> None:
        answer = await ask(endpoint, HELLO, {"version": VERSION, "name": "p"}, key="none")
        assert answer["insecure"] is True and answer["identity"] == "anonymous"
        with pytest.raises(AuthenticationError, match="insecure"):
            await ToolClient.connect(endpoint, timeout=10)

    asyncio.run(body())
    listed = run_loom("list", "--broker", endpoint, "--key", "none")
    assert listed.returncode == 0 and "insecure" in listed.stdout + listed.stderr
    assert proc.stop() == 0


def test_peers_of_the_owner_need_no_set_up(
    spawn: Callable[..., Proc], short_tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In a Loom home never used before, with no ACL and no key given anywhere, the
    broker makes its keys on first start (the secret 0600 in a 0700 directory) and the
    owner's worker and client connect with them."""
    home = short_tmp / "fresh-home"
    monkeypatch.setenv("LOOM_HOME", str(home))
    endpoint = free_tcp_endpoint()
    broker = spawn(sys.executable, "-m", "loom.cli.broker", "--endpoint", endpoint)
    broker.wait_line("broker ready")
    keys = home / "keys"
    assert (keys / "broker.key_secret").stat().st_mode & 0o777 == 0o600
    assert keys.stat().st_mode & 0o777 == 0o700
    start_worker(spawn, endpoint, "w1", target=SAMPLE_TOOLS)

    async def body() -> int:
        async with await ToolClient.connect(endpoint) as client:
            result: int = await client.call("sample.add", {"a": 2, "b": 3})
            return result

    assert asyncio.run(body()) == 5
    assert broker.stop() == 0


def test_ipc_endpoints_live_in_a_private_directory(
    spawn: Callable[..., Proc], short_tmp: Path
) -> None:
    """A broker makes its ipc directory 0700 when it is missing, and refuses one other
    users may enter (such as /tmp itself), saying where to put it instead."""
    made = short_tmp / "made" / "deeper"
    proc = start_broker(spawn, f"ipc://{made}/broker")
    assert made.stat().st_mode & 0o777 == 0o700
    assert proc.stop() == 0
    open_dir = short_tmp / "open"
    open_dir.mkdir(mode=0o755)
    open_dir.chmod(0o755)
    for endpoint in (f"ipc://{open_dir}/broker", "ipc:///tmp/loom-test-open.sock"):
        refused = spawn(sys.executable, "-m", "loom.cli.broker", "--endpoint", endpoint)
        assert refused.popen.wait(30) == 1
        refused.wait_line("only you can enter")


def test_a_subscription_made_at_run_time_is_checked_too(site: Site) -> None:
    """A running actor of mallory's subscribing past its rights gets PermissionDenied
    at once (not a timeout), and keeps its other subscriptions."""

    async def body() -> None:
        got: list[Event] = []
        actor = Actor(name="m-actor", broker=site.endpoint, key=site.mallory)
        await actor.subscribe("chat.**", got.append)
        await actor.start()
        owner = Actor(name="owner", broker=site.endpoint)
        await owner.start()
        try:
            started = time.monotonic()
            with pytest.raises(PermissionDeniedError, match="subscribe"):
                await actor.subscribe("orders.**", got.append)
            assert time.monotonic() - started < 5
            await actor.subscribe("chat.more.**", got.append)
            await owner.emit("chat.more.x", 1)
            await until(lambda: got, 10)
        finally:
            await owner.stop()
            await actor.stop()

    asyncio.run(body())


@pytest.mark.parametrize(
    ("acl", "named"),
    [
        ('[identities.bob]\nkey = "short"\n', "identities.bob.key"),
        ('[identities.bob]\nkey_file = "bob.key"\ngroups = ["nope"]\n', "identities.bob.groups"),
        ('[identities."b.o.b"]\nkey_file = "bob.key"\n', "identities.b.o.b"),
        ('[groups.g]\nsubscribe = ["a.*"]\n', "groups.g.subscribe"),
        ('[groups.g]\npublish = ["a.b*"]\n', "groups.g.publish"),
        ('[groups.g]\ncal = ["x"]\n', "groups.g.cal"),
        ("[identities.bob\n", "not valid TOML"),
        (
            '[identities.a]\nkey_file = "bob.key"\n[identities.b]\nkey_file = "./bob.key"\n',
            "identities.b: the same key as a",
        ),
    ],
)
def test_a_bad_acl_file_is_refused_naming_the_file_and_key(
    spawn: Callable[..., Proc], short_tmp: Path, acl: str, named: str
) -> None:
    """Each mistake in an ACL file stops the broker before it binds (exit 1), with the
    file and the key in the message."""
    new_keypair("bob", short_tmp)
    path = short_tmp / "acl.toml"
    path.write_text(acl)
    argv = ["--endpoint", free_tcp_endpoint(), "--acl", str(path)]
    proc = spawn(sys.executable, "-m", "loom.cli.broker", *argv)
    assert proc.popen.wait(30) == 1
    proc.wait_line(named)
    assert str(path) in proc.output


def test_the_command_line_takes_a_key_and_loom_audit_reads_the_log(
    spawn: Callable[..., Proc], site: Site
) -> None:
    """`--key` on any command: mallory's `loom call` of its tool works, its `loom list`
    is refused (exit 1, DENIED); `loom audit` shows that denial, filtered, as text or
    JSON."""
    start_worker(spawn, site.endpoint, "w1")
    call = run_loom(
        "call", "sample.add", '{"a": 1, "b": 2}', "--broker", site.endpoint,
        "--key", str(site.mallory),
    )  # fmt: skip
    assert call.returncode == 0 and call.stdout.strip() == "3", call.stderr
    listed = run_loom("list", "--broker", site.endpoint, "--key", str(site.mallory))
    assert listed.returncode == 1 and "DENIED" not in listed.stdout
    assert "may not read directory" in listed.stderr
    audit = ["audit", "--file", str(site.audit)]
    text = run_loom(*audit, "--identity", "mallory", "--event", "denied")
    assert text.returncode == 0 and "denied mallory" in text.stdout
    assert 'right="read"' in text.stdout and "tools served" not in text.stdout
    records = [json.loads(line) for line in run_loom(*audit, "--json").stdout.splitlines()]
    assert {"connected", "denied", "tools served"} <= {r["event"] for r in records}
    assert all(r["time"] > 0 and r["identity"] for r in records)


def test_a_stray_frame_to_the_subscribe_socket_bans_its_sender(site: Site) -> None:
    """libzmq queues a subscriber's non-subscription frames without their pipe, which
    would shift later subscriptions onto other subscribers: the broker applies none
    until its queue is empty again, and bans the sender (refused at the handshake from
    then on, audited). The owner's peers subscribe as before."""

    async def body() -> None:
        with zmq.Context() as ctx:
            raw = curve(ctx.socket(zmq.XSUB), site.mallory)
            connect_and_wait(raw, site.hello["sub"])
            raw.send(b"\x02junk")
            raw.send(b"\x01chat.")
            await until(lambda: site.audited("banned", identity="mallory"), 10)
            raw.close(0)
        with pytest.raises(AuthenticationError):
            await ToolClient.connect(site.endpoint, key=site.mallory, timeout=5)
        got: list[Event] = []
        owner = Actor(name="owner", broker=site.endpoint)
        await owner.subscribe("chat.**", got.append)
        await owner.start()
        try:
            await owner.emit("chat.x", 1)
            await until(lambda: got, 10)
        finally:
            await owner.stop()

    asyncio.run(body())


def test_a_durable_stream_or_replay_reads_only_where_a_subscription_could(site: Site) -> None:
    """mallory may own durable names `mallory-*`, but a stream of one on topics it may
    not read is refused, and so is a REPLAY of them."""

    async def body() -> None:
        sneak = Actor(name="sneak", broker=site.endpoint, key=site.mallory)
        await sneak.subscribe("orders.**", lambda e: None, durable="mallory-x")
        with pytest.raises(PermissionDeniedError, match="subscribe"):
            await sneak.start()
        with pytest.raises(PermissionDeniedError, match="replay"):
            await ask(site.endpoint, REPLAY, {"pattern": "orders.**"}, key=site.mallory)

    asyncio.run(body())
