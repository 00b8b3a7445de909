"""Tools across the federation: each link announces the tools its broker serves, offers
its broker the tools the others serve, and carries calls both ways.

A call from here: the broker gives it to the link (a worker serving the remote tools),
which requests it on ``<prefix>.tool.<tool>`` in the queue group ``loom`` with a reply
subject of its own. The link that takes it answers ``accept`` (its broker, its call id),
calls the tool on its broker for the remote caller, and sends back ``progress``, then
``result`` or ``fail``. A cancel from here goes to ``<prefix>.fed.cancel.<broker>``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import time
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import TYPE_CHECKING, Any

import msgpack
import msgspec

from loom.errors import LoomError
from loom.federation._outbox import LinkCore
from loom.federation._subjects import encode_token, tool_subject
from loom.protocol import (
    CALL,
    CANCEL,
    DIRECTORY,
    FAIL,
    FEDERATION_WORKER,
    MAX_CONCURRENCY,
    MAX_TOOLS,
    PROGRESS,
    READY,
    RESULT,
    Empty,
    ToolSpec,
    decode_call,
    decode_ref,
    encode_call,
    encode_failure,
    encode_ref,
)

if TYPE_CHECKING:
    from loom.session import Session

__all__ = ["WORKER_NAME", "ToolBridge"]

_packb = msgpack.packb
_unpackb = msgpack.unpackb
QUEUE_GROUP = "loom"
WORKER_NAME = FEDERATION_WORKER
"""The link's worker name in its broker's directory."""
MAX_BROKERS = 1000
"""Other brokers remembered at once (announcements from more are ignored)."""
MAX_INCOMING = 10_000
"""Calls from other brokers running here at once (more are answered OVERLOADED)."""
MAX_CANCELLED = 10_000
_SPEC_FIELDS = ("description", "schema", "returns", "timeout", "idempotent", "annotations")
_IDENTITY = re.compile(r"[A-Za-z0-9_-]{1,64}")


@dataclass
class _Outgoing:
    """A call from this broker to a tool of another."""

    tool: str
    broker: str | None = None
    """The broker that took it (its ``accept``), once known."""
    ref: int | None = None


@dataclass
class _Remote:
    """What one other broker announced lately."""

    tools: dict[str, dict[str, Any]]
    heard: float
    boot: str


class ToolBridge:
    """The link's tool side (see the module's description)."""

    def __init__(self, link: LinkCore) -> None:
        self.link = link
        root = link.settings.subject_prefix
        self._root = root
        self._tools_root = f"{root}.tool"
        self._hello_subject = f"{root}.fed.hello"
        self.bye_subject = f"{root}.fed.bye"
        self._cancel_subject = ""
        self._served: dict[str, Any] = {}
        """Local tools -> the NATS queue subscription that takes their calls."""
        self.local: dict[str, dict[str, Any]] = {}
        """Local tools (exported) -> their specs, as announced."""
        self.remote: dict[str, _Remote] = {}
        self._offered: list[dict[str, Any]] | None = None
        """The tool specs last READY'd to the broker."""
        self._outgoing: dict[int, _Outgoing] = {}
        self._cancelled: dict[int, None] = {}
        """Calls cancelled before another broker took them (a late accept is cancelled)."""
        self._incoming: dict[int, str] = {}
        """Calls taken for other brokers: our call id -> the reply subject."""
        self._ids = 0
        self._inbox = ""
        self._session: Session | None = None

    def attach(self, session: Session) -> None:
        """Serve and call on ``session`` (the link's worker session)."""
        self._session = session
        session.handlers[CALL] = self._on_call_out
        session.handlers[CANCEL] = self._on_cancel_out
        session.handlers[RESULT] = self._on_local_result
        session.handlers[FAIL] = self._on_local_fail
        session.handlers[PROGRESS] = self._on_local_progress
        session.restored_hooks.append(self._reannounce)
        session.lost_hooks.append(self._local_broker_lost)

    def close(self) -> None:
        if self._session is not None:
            self._session.close()

    async def connected(self, nc: Any) -> None:
        """Subscribe to what the tool side hears on NATS."""
        self._cancel_subject = f"{self._root}.fed.cancel.{encode_token(self.link.name)}"
        self._inbox = nc.new_inbox()
        await nc.subscribe(f"{self._inbox}.*", cb=self._on_reply)
        await nc.subscribe(self._hello_subject, cb=self._on_hello)
        await nc.subscribe(self.bye_subject, cb=self._on_bye)
        await nc.subscribe(self._cancel_subject, cb=self._on_cancel_in)

    # --- the catalog ----------------------------------------------------------------------

    async def announce(self) -> None:
        """Every interval: read the local tools, serve and announce them; forget brokers
        gone quiet; tell the broker how the link stands."""
        interval = self.link.settings.announce_interval
        while True:
            try:
                await self._read_local_tools()
                await self._publish_hello()
                await self._expire(time.monotonic() - 3 * interval)
                await self.link.report()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a broker slow to answer: next time
                self.link.drops.drop("announce", f"{type(exc).__name__}: {exc}")
            await asyncio.sleep(interval)

    async def _read_local_tools(self) -> None:
        assert self._session is not None
        answer = await self._session.request(DIRECTORY, {}, timeout=5.0)
        local: dict[str, dict[str, Any]] = {}
        for tool in answer.get("tools", []):
            name = tool.get("name")
            workers = tool.get("workers", [])
            if not isinstance(name, str) or not any(w != WORKER_NAME for w in workers):
                continue
            if not any(fnmatchcase(name, p) for p in self.link.settings.export_tools):
                continue
            spec = {k: tool[k] for k in _SPEC_FIELDS if tool.get(k) is not None}
            spec["capacity"] = tool.get("capacity", 1)
            local[name] = spec
        self.local = local
        nc = self.link.nc
        if nc is None:
            return
        for name in [n for n in self._served if n not in local]:
            with contextlib.suppress(Exception):
                await self._served.pop(name).unsubscribe()
        for name in local:
            if name not in self._served:
                subject = tool_subject(self._tools_root, name)
                self._served[name] = await nc.subscribe(
                    subject, queue=QUEUE_GROUP, cb=self._on_call_in
                )

    async def _publish_hello(self) -> None:
        nc = self.link.nc
        if nc is None or not self.link.up:
            return
        body = {"broker": self.link.name, "boot": self.link.boot, "tools": self.local}
        await nc.publish(self._hello_subject, _packb(body))

    async def _on_hello(self, msg: Any) -> None:
        """Another broker's tools. Each spec is checked as READY would check it; the
        ones that fail are left out (counted), not the broker."""
        try:
            body = _unpackb(msg.data)
            broker, tools, boot = body["broker"], body["tools"], body["boot"]
            if not (
                isinstance(broker, str)
                and 0 < len(broker) <= 256
                and isinstance(tools, dict)
                and isinstance(boot, str)
            ):
                raise TypeError("broker, boot and tools")
        except Exception:
            self.link.drop("malformed", "an unreadable hello from NATS")
            return
        if broker == self.link.name:
            if boot != self.link.boot:
                self.link.drops.drop(
                    "name", f"another broker federates under this broker's name {broker!r}"
                )
            return
        known = self.remote.get(broker)
        if known is None and len(self.remote) >= MAX_BROKERS:
            self.link.drop("brokers", f"more than {MAX_BROKERS} brokers announce tools")
            return
        checked = self._checked(broker, tools)
        fresh = known is None or known.tools != checked or known.boot != boot
        if known is not None and known.boot != boot:  # it restarted: its calls are gone
            self._fail_calls_at(broker, "restarted")
        self.remote[broker] = _Remote(checked, time.monotonic(), boot)
        if fresh:
            if known is None:
                self.link.log.info("broker joined the federation", peer=broker)
                await self.link.report()
            await self._offer_remote()

    def _checked(self, broker: str, tools: dict[Any, Any]) -> dict[str, dict[str, Any]]:
        checked: dict[str, dict[str, Any]] = {}
        for name, spec in tools.items():
            if len(checked) >= MAX_TOOLS:
                self.link.drop("tools", f"{broker} announces more than {MAX_TOOLS} tools")
                break
            try:
                if not isinstance(spec, dict):
                    raise TypeError("a spec is a map")
                made = self._ready_spec(name, spec, 1, [broker])
                msgspec.convert(made, ToolSpec)
            except Exception as exc:
                self.link.drop("tools", f"{broker}: a bad spec for {str(name)[:80]!r}: {exc}")
                continue
            checked[name] = spec
        return checked

    @staticmethod
    def _ready_spec(
        name: str, spec: dict[str, Any], capacity: int, brokers: list[str]
    ) -> dict[str, Any]:
        return {
            "name": name,
            **{k: spec[k] for k in _SPEC_FIELDS if k in spec},
            "schema": spec.get("schema") or {},
            "concurrency": max(1, min(capacity, MAX_CONCURRENCY)),
            "brokers": brokers,
        }

    async def _on_bye(self, msg: Any) -> None:
        with contextlib.suppress(Exception):
            broker = _unpackb(msg.data)["broker"]
            if isinstance(broker, str) and broker in self.remote:
                await self._forget(broker, "left")

    async def _expire(self, horizon: float) -> None:
        for broker in [b for b, r in self.remote.items() if r.heard < horizon]:
            await self._forget(broker, "silent")

    async def _forget(self, broker: str, why: str) -> None:
        if self.remote.pop(broker, None) is None:
            return
        self.link.log.warning("broker gone from the federation", peer=broker, reason=why)
        self._fail_calls_at(broker, why)
        await self._offer_remote()
        await self.link.report()

    async def _offer_remote(self) -> None:
        """READY the tools other brokers serve (those this broker imports)."""
        merged: dict[str, tuple[dict[str, Any], int, list[str]]] = {}
        for broker, remote in sorted(self.remote.items()):
            for name, spec in remote.tools.items():
                if not any(fnmatchcase(name, p) for p in self.link.settings.import_tools):
                    continue
                capacity = spec.get("capacity")
                capacity = capacity if isinstance(capacity, int) and capacity > 0 else 1
                first, total, brokers = merged.get(name, (spec, 0, []))
                if len(brokers) < 256:
                    brokers.append(broker)
                merged[name] = (first, total + capacity, brokers)
        specs = [
            self._ready_spec(name, spec, capacity, brokers)
            for name, (spec, capacity, brokers) in sorted(merged.items())[:MAX_TOOLS]
        ]
        await self.offer(specs)

    async def offer(self, specs: list[dict[str, Any]]) -> None:
        """Tell the broker the remote tools (READY), unless it knows them already."""
        if specs == self._offered:
            return
        assert self._session is not None
        body = {"name": WORKER_NAME, "pid": os.getpid(), "tools": specs}
        try:
            await self._session.request(READY, body, Empty, timeout=5.0)
        except LoomError as exc:
            self.link.drops.drop("ready", f"the broker refused the remote tools: {exc}")
            return
        self._offered = specs
        self.link.log.info("remote tools offered", tools=[s["name"] for s in specs])

    async def _reannounce(self) -> None:
        """The broker came back (or forgot us): READY again."""
        offered, self._offered = self._offered, None
        await self.offer(offered or [])

    def _local_broker_lost(self) -> None:
        """Our broker went quiet: the calls taken for other brokers cannot end here."""
        for ref in list(self._incoming):
            self._answer_in(ref, "fail", encode_failure("WORKER_LOST", "the serving broker left"))

    # --- calls from here to other brokers ------------------------------------------------

    def _on_call_out(self, meta: bytes, args: bytes) -> None:
        """The broker gives the link a call to a remote tool: request it on NATS."""
        token, tool, timeout, trace, _, caller = decode_call(meta)
        if not self.link.up:
            self._fail_out(token, "WORKER_LOST", f"{tool}: the federation is down")
            return
        body = {
            "tool": tool,
            "args": args,
            "timeout": timeout,
            "trace": trace,
            "caller": caller,
            "broker": self.link.name,
        }
        subject = tool_subject(self._tools_root, tool)
        if not self.link.outbox.put(subject, _packb(body), f"{self._inbox}.{token}"):
            self._fail_out(token, "OVERLOADED", f"{tool}: the link's queue to NATS is full")
            return
        self.link.counts.calls_out += 1
        self._outgoing[token] = _Outgoing(tool)

    def _on_cancel_out(self, meta: bytes, _: bytes) -> None:
        """The caller gave up (or its deadline passed): answer CANCELLED at once (the
        broker frees the slot), and cancel on the broker that took it."""
        token = decode_ref(meta)
        call = self._outgoing.get(token)
        if call is None:
            return
        self._fail_out(token, "CANCELLED", f"{call.tool}: cancelled")
        if call.broker is None:  # not taken yet: a late accept is cancelled then
            self._cancelled[token] = None
            if len(self._cancelled) > MAX_CANCELLED:
                del self._cancelled[next(iter(self._cancelled))]
            return
        self._cancel_remote(call.broker, call.ref)

    def _cancel_remote(self, broker: str, ref: int | None) -> None:
        subject = f"{self._root}.fed.cancel.{encode_token(broker)}"
        if ref is not None and not self.link.outbox.put(subject, _packb({"ref": ref})):
            self.link.drop("outbox", "a cancel not sent: the link's queue to NATS is full")

    async def _on_reply(self, msg: Any) -> None:
        """An answer from the broker serving one of our calls."""
        try:
            token = int(msg.subject.rpartition(".")[2])
        except ValueError:
            return
        call = self._outgoing.get(token)
        late = call is None and token in self._cancelled
        if call is None and not late:
            return
        headers = msg.headers or {}
        if headers.get("Status") == "503":  # no responders: nobody serves it now
            self._cancelled.pop(token, None)
            if call is not None:
                self._fail_out(token, "UNKNOWN_TOOL", f"{call.tool}: no broker serves it now")
            return
        try:
            kind, *rest = _unpackb(msg.data)
            if kind == "accept":
                broker, ref = rest
                if not (isinstance(broker, str) and isinstance(ref, int)):
                    raise TypeError("accept")
                if late:
                    del self._cancelled[token]
                    self._cancel_remote(broker, ref)
                elif call is not None:
                    call.broker, call.ref = broker, ref
                return
            (body,) = rest
            if type(body) is not bytes or kind not in ("progress", "result", "fail"):
                raise TypeError("body")
        except Exception:
            if call is not None:
                self._fail_out(token, "MALFORMED", f"{call.tool}: an unreadable answer")
            return
        if call is None:
            return
        session = self._session
        assert session is not None
        if kind == "progress":
            session.send(encode_ref(PROGRESS, token, body))  # a full queue: one less
            return
        self._outgoing.pop(token, None)
        frames = encode_ref(RESULT if kind == "result" else FAIL, token, body)
        if not session.send(frames):
            await session.send_waiting(frames)

    def _fail_out(self, token: int, code: str, message: str) -> None:
        self._outgoing.pop(token, None)
        if self._session is not None:
            self._session.send(encode_ref(FAIL, token, encode_failure(code, message)))

    def _fail_calls_at(self, broker: str, why: str) -> None:
        for token, call in list(self._outgoing.items()):
            if call.broker == broker:
                self._fail_out(token, "WORKER_LOST", f"{call.tool}: broker {broker} {why}")

    def too_large(self, reply: str, message: str) -> None:
        """NATS refused our request for a call: fail it."""
        token = int(reply.rpartition(".")[2])
        call = self._outgoing.get(token)
        self._fail_out(token, "TOO_LARGE", f"{call.tool if call else 'a call'}: {message}")

    def answer_too_large(self, subject: str, message: str) -> bool:
        """NATS refused an answer to another broker's call on ``subject``: cancel the
        call here, and fail it there. False: ``subject`` is no call's."""
        for ref, reply in list(self._incoming.items()):
            if reply == subject:
                self._incoming.pop(ref)
                if self._session is not None:
                    self._session.send(encode_ref(CANCEL, ref))
                fail = encode_failure("TOO_LARGE", f"the answer: {message}")
                self.link.outbox.put(subject, _packb(("fail", fail)))
                return True
        return False

    # --- calls from other brokers to here -------------------------------------------------

    async def _on_call_in(self, msg: Any) -> None:
        """Another broker's call to one of our tools: ``accept``, then call it here for
        the remote caller (the broker checks that identity's rights)."""
        try:
            body = _unpackb(msg.data)
            tool, args, timeout, trace, caller = (
                body["tool"],
                body["args"],
                body["timeout"],
                body["trace"],
                body["caller"],
            )
            if not (
                isinstance(tool, str)
                and tool in self.local
                and msg.subject == tool_subject(self._tools_root, tool)
                and type(args) is bytes
                and (timeout is None or (isinstance(timeout, float | int) and 0 < timeout <= 1e9))
                and (trace is None or (type(trace) is bytes and len(trace) <= 64))
                and isinstance(caller, str)
                and _IDENTITY.fullmatch(caller)
                and isinstance(msg.reply, str)
                and 0 < len(msg.reply) <= 256
            ):
                raise TypeError("a field of the wrong type")
        except Exception:
            self.link.drop("malformed", "an unreadable or misdirected call from NATS")
            return
        if len(self._incoming) >= MAX_INCOMING:
            fail = encode_failure("OVERLOADED", f"{tool}: {MAX_INCOMING} remote calls run")
            self.link.outbox.put(msg.reply, _packb(("fail", fail)))
            return
        self._ids += 1
        ref = self._ids
        if not self.link.outbox.put(msg.reply, _packb(("accept", self.link.name, ref))):
            self.link.drop("outbox", "a call not taken: the link's queue to NATS is full")
            return
        self._incoming[ref] = msg.reply
        self.link.counts.calls_in += 1
        frames = encode_call(
            ref, tool, float(timeout) if timeout else None, trace, args, caller=caller
        )
        session = self._session
        assert session is not None
        if not session.send(frames):
            await session.send_waiting(frames)

    async def _on_cancel_in(self, msg: Any) -> None:
        """The caller's broker cancelled: cancel here, and answer it (the broker here
        answers nothing to a cancelled call)."""
        with contextlib.suppress(Exception):
            ref = _unpackb(msg.data)["ref"]
            if isinstance(ref, int) and ref in self._incoming and self._session is not None:
                self._session.send(encode_ref(CANCEL, ref))
                self._answer_in(ref, "fail", encode_failure("CANCELLED", "cancelled"))

    def _on_local_result(self, meta: bytes, body: bytes) -> None:
        self._answer_in(decode_ref(meta), "result", body)

    def _on_local_fail(self, meta: bytes, body: bytes) -> None:
        self._answer_in(decode_ref(meta), "fail", body)

    def _on_local_progress(self, meta: bytes, body: bytes) -> None:
        reply = self._incoming.get(decode_ref(meta))
        if reply is not None and not self.link.outbox.put(reply, _packb(("progress", body))):
            self.link.drop("outbox", "a progress report not sent: the queue to NATS is full")

    def _answer_in(self, ref: int, kind: str, body: bytes) -> None:
        reply = self._incoming.pop(ref, None)
        if reply is not None and not self.link.outbox.put(reply, _packb((kind, body))):
            self.link.drop("outbox", "an answer not sent: the link's queue to NATS is full")
