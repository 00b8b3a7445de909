"""The tool router: Majordomo over the broker's ROUTER, with leases and bounded queues.

Per tool, the worker slots with free capacity are kept least recently used first; a call
goes to the first, or waits in the tool's bounded queue. Every call has a deadline; a
worker's PROGRESS pushes it out by the call's timeout (the lease), so a slow tool and a
dead worker differ. When a worker dies or leaves, its idempotent calls are dispatched
again and the others answered WORKER_LOST.
"""

from __future__ import annotations

import bisect
import heapq
import time
from collections.abc import Callable
from fnmatch import fnmatchcase as fnmatch
from typing import TYPE_CHECKING, Any

import msgpack
import msgspec

from loom.broker._approvals import ApprovalDesk
from loom.broker._peers import Peers
from loom.broker._records import Call, Slot, ToolEntry, WorkerState, last_used
from loom.broker._rights import ANONYMOUS, LINK
from loom.broker._settings import BrokerSettings
from loom.broker._tool_metrics import ToolMetrics
from loom.broker._traces import TraceBuffer
from loom.errors import ProtocolError
from loom.logs import DropCounter
from loom.protocol import (
    CALL,
    CANCEL,
    ERROR_CODES,
    FAIL,
    MAX_SCHEMA_BYTES,
    PROGRESS,
    RESET,
    RESULT,
    Ready,
    decode_call,
    decode_failure,
    decode_ref,
    encode_body,
    encode_control,
    encode_failure,
    encode_ref,
)

if TYPE_CHECKING:
    from loom.broker._security import Guard

__all__ = ["ToolRouter"]

Send = Callable[[bytes, list[bytes]], bool]
"""Sends frames to a peer identity; False if it could not be routed or queued."""

_packb = msgpack.packb
MAX_TOOL_ENTRIES = 10_000
"""Distinct tools the broker knows at once (READY announcing more is refused)."""
MAX_SPEC_BYTES = 16 << 20
"""Bytes of tool specs (schemas, descriptions) the broker keeps in all."""


class ToolRouter:
    """Routes tool calls between clients and workers on one ROUTER socket.

    Args:
        settings: the broker's settings: ``call_timeout`` (a call's timeout when
            neither the caller nor the tool gives one), ``max_queue`` (calls waiting per
            tool before OVERLOADED), ``max_attempts`` (dispatches of an idempotent call
            before WORKER_LOST), ``max_payload``, ``max_call_timeout``,
            ``max_call_bytes`` (arguments held at once), ``require_approval`` (tool name
            patterns whose calls need approval whatever the workers announce) and
            ``approval_timeout``.
        send: sends frames to an identity (the peers', which counts failures).
        name_of: a peer's name from its identity.
        traces: where answered calls are recorded.
        publish: publishes the broker's events (the approval desk's requests).
        log: a structlog logger.
        guard: identities and rights: a CALL needs its caller's ``call`` right
            (``None``: the broker runs insecure).
        clock: monotonic seconds; ``wall``: Unix seconds (for traced calls).
    """

    def __init__(
        self,
        settings: BrokerSettings,
        *,
        send: Send,
        name_of: Callable[[bytes], str],
        traces: TraceBuffer,
        publish: Callable[[str, dict[str, Any]], None],
        log: Any,
        guard: Guard | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self._send = send
        self.guard = guard
        self._log = log
        self.default_timeout = settings.call_timeout
        self.max_queue = settings.max_queue
        self.max_attempts = settings.max_attempts
        self.max_payload = settings.max_payload
        self.max_timeout = settings.max_call_timeout
        self.max_call_bytes = settings.max_call_bytes
        self.call_bytes = 0
        """Bytes of arguments of the calls held now (queued, awaiting approval, running)."""
        self.require_approval = settings.require_approval
        self._clock = clock
        self._wall = wall
        self.tools: dict[str, ToolEntry] = {}
        self.workers: dict[bytes, WorkerState] = {}
        self._live: dict[int, Call] = {}
        """Calls whose caller still waits, by token."""
        self._by_client: dict[bytes, dict[int, Call]] = {}
        self._deadlines: list[tuple[float, int]] = []
        self._tokens = 0
        self.doomed: set[bytes] = set()
        """Workers a send failed to reach: the control plane forgets them at its next tick
        (not in the middle of the dispatch that noticed)."""
        self.traces = traces
        """Where answered calls are recorded."""
        self.name_of = name_of
        self.metrics = ToolMetrics()
        """Outcomes and latencies by tool, for the broker's Prometheus endpoint."""
        self.approvals = ApprovalDesk(
            release=self.release,
            refuse=self.refuse,
            ping=self.ping,
            publish=publish,
            name_of=name_of,
            timeout=settings.approval_timeout,
            clock=clock,
            wall=wall,
        )
        """Where calls to tools that need approval wait."""
        self.drops = DropCounter(log)
        self.counts = {"calls": 0, "results": 0, "failures": 0, "late": 0, "redispatched": 0}
        self.spec_bytes = 0
        """Encoded bytes of the specs of the tools known now."""

    # --- workers -----------------------------------------------------------------

    def ready(self, identity: bytes, body: Ready) -> str | None:
        """A worker announces (or re-announces) its tools; returns an error message if the
        announcement cannot be taken (a spec too large, or no room for more tools). Tools
        naming ``brokers`` make it the federation link (the control plane checks it may)."""
        specs: list[tuple[dict[str, Any], int]] = []
        growth = 0
        for tool in body.tools:
            size = len(encode_body(tool))
            if size > MAX_SCHEMA_BYTES:
                return f"READY: the spec of {tool.name} is {size} bytes (limit {MAX_SCHEMA_BYTES})"
            entry = self.tools.get(tool.name)
            growth += size - (entry.size if entry is not None else 0)
            if entry is None and len(self.tools) + len(specs) >= MAX_TOOL_ENTRIES:
                return f"READY: the broker already knows {MAX_TOOL_ENTRIES} tools"
            specs.append((msgspec.structs.asdict(tool), size))
        if growth > 0 and self.spec_bytes + growth > MAX_SPEC_BYTES:
            return f"READY: tool specs would take more than {MAX_SPEC_BYTES} bytes"
        now = self._clock()
        worker = self.workers.get(identity)
        if worker is None:
            worker = WorkerState(identity, body.name, body.pid, now)
            self.workers[identity] = worker
        was_remote = worker.remote
        worker.brokers = {t.name: list(t.brokers) for t in body.tools if t.brokers}
        remote = worker.remote
        if remote != was_remote:  # its slots rank elsewhere now
            for name in worker.slots:
                self.tools[name].free.sort(key=last_used)
        announced = {tool.name for tool in body.tools}
        for name in [name for name in worker.slots if name not in announced]:
            self._withdraw(worker, name)  # a READY names the worker's whole set
        for spec, size in specs:
            name, capacity = spec["name"], spec["concurrency"]
            entry = self.tools.get(name)
            if entry is None:
                entry = self.tools[name] = ToolEntry(name, spec)
            elif entry.spec.get("schema") != spec["schema"]:
                self._log.warning("tool schema changed", tool=name, worker=worker.name)
            required = entry.approval or any(fnmatch(name, p) for p in self.require_approval)
            relaxed = required and spec.get("approval") is not True
            if relaxed:  # once a tool needs approval, no worker can take that back
                self._log.info("approval required here", tool=name, worker=worker.name)
            local = any(not s.worker.remote for s in entry.slots.values() if s.worker is not worker)
            if not (remote and local):  # a local worker's spec is the one that holds
                entry.spec = {**spec, "approval": True} if relaxed else spec
                self.spec_bytes += size - entry.size
                entry.size = size
            slot = worker.slots.get(name)
            if slot is None:
                slot = worker.slots[name] = Slot(worker, name, capacity)
                entry.slots[identity] = slot
            slot.capacity = capacity
            if slot.busy >= capacity and slot in entry.free:  # capacity lowered
                entry.free.remove(slot)
            self._make_free(entry, slot)
            self._pump(entry)
        self._log.info("worker ready", worker=worker.name, tools=[t.name for t in body.tools])
        return None

    def _withdraw(self, worker: WorkerState, name: str) -> None:
        """``worker`` serves ``name`` no more; its calls in flight still end normally."""
        slot = worker.slots.pop(name)
        entry = self.tools.get(name)
        if entry is not None:
            entry.slots.pop(worker.identity, None)
            if slot in entry.free:
                entry.free.remove(slot)
            self._drop_if_unserved(name)
        self._log.info("tool withdrawn", tool=name, worker=worker.name)

    def drain(self, identity: bytes) -> None:
        """Send the worker no more calls (it is shutting down)."""
        worker = self.workers.get(identity)
        if worker is None:
            return
        worker.draining = True
        for name, slot in worker.slots.items():
            free = self.tools[name].free
            if slot in free:
                free.remove(slot)
        self._log.info("worker draining", worker=worker.name, in_flight=len(worker.calls))

    def worker_gone(self, identity: bytes, reason: str) -> None:
        """A worker left or died: retry its idempotent calls, fail the others."""
        worker = self.workers.pop(identity, None)
        if worker is None:
            return
        self.doomed.discard(identity)
        now = self._clock()
        for name, slot in worker.slots.items():
            served = self.tools.get(name)
            if served is not None:
                served.slots.pop(identity, None)
                if slot in served.free:
                    served.free.remove(slot)
        lost = [call for call in worker.calls.values() if not call.answered]
        for call in lost:
            call.slot = None
            owner = self.tools.get(call.tool)
            if owner is None or not owner.idempotent:
                why = "not idempotent"
            elif call.attempts >= self.max_attempts or call.deadline <= now:
                why = "no retry left"
            else:
                self.counts["redispatched"] += 1
                self._renew_token(call)  # the old run may go on somewhere: never confuse them
                owner.queue.appendleft(call)
                self._pump(owner)
                continue
            message = f"worker {worker.name} {reason} running {call.tool} ({why})"
            self._answer_fail(call, "WORKER_LOST", message)
        for name in worker.slots:
            self._drop_if_unserved(name)
        level = self._log.info if reason == "left" else self._log.warning
        level("worker gone", worker=worker.name, reason=reason, calls_lost=len(lost))

    def client_gone(self, identity: bytes) -> None:
        """A caller left or died: cancel its calls."""
        for call in list(self._by_client.get(identity, {}).values()):
            self._cancel_call(call)

    # --- messages ----------------------------------------------------------------

    def on_call(self, client: bytes, meta: bytes, args: bytes, who: str = "") -> None:
        """A CALL from ``client``, whose connection's identity is ``who``."""
        try:
            call_id, name, timeout, trace, _, for_whom = decode_call(meta)
        except ProtocolError as exc:
            self._malformed(client, meta, exc)
            return
        self.counts["calls"] += 1
        link = self.workers.get(client)
        local_only = link is not None and link.remote
        if who == LINK and self.guard is not None:  # the link calls for a remote caller
            if for_whom is None or for_whom == LINK:
                self._reply_fail(client, call_id, "DENIED", "the link calls for a caller only")
                return
            who = for_whom  # whose rights apply here
        if self.guard is not None:
            refused = self.guard.may_call(who, name)
            if refused is not None:
                self._reply_fail(client, call_id, *refused, name)
                return
        if len(args) > self.max_payload:
            message = f"arguments of {len(args)} bytes exceed the limit of {self.max_payload}"
            self._reply_fail(client, call_id, "TOO_LARGE", message)
            return
        entry = self.tools.get(name)
        if entry is None or (local_only and all(s.worker.remote for s in entry.slots.values())):
            self._reply_fail(client, call_id, "UNKNOWN_TOOL", f"no worker serves {name!r}", name)
            return
        if not entry.free and len(entry.queue) >= self.max_queue:
            message = f"{name}: every worker is busy and {len(entry.queue)} calls wait"
            self._reply_fail(client, call_id, "OVERLOADED", message, name)
            return
        if entry.approval and self.approvals.full():
            message = f"{name}: {self.approvals.max_held} calls already wait for approval"
            self._reply_fail(client, call_id, "OVERLOADED", message, name)
            return
        if self.call_bytes + len(args) > self.max_call_bytes:
            message = f"{name}: the broker holds {self.call_bytes} bytes of calls' arguments"
            self._reply_fail(client, call_id, "OVERLOADED", message, name)
            return
        timeout = float(timeout or entry.spec.get("timeout") or self.default_timeout)
        timeout = min(timeout, self.max_timeout)
        self._tokens += 1
        now = self._clock()
        call = Call(
            self._tokens,
            client,
            call_id,
            name,
            args,
            timeout,
            now + timeout,
            trace,
            who or ANONYMOUS,
        )
        call.local_only = local_only
        self._live[call.token] = call
        self.call_bytes += len(args)
        calls = self._by_client.get(client)
        if calls is None:  # not setdefault: that builds a dict on every call
            calls = self._by_client[client] = {}
        calls[call_id] = call
        self._push_deadline(call)
        if entry.approval:
            self.approvals.hold(call)
        elif _takes(entry, call):
            self._dispatch(entry, call, now)
        else:
            entry.queue.append(call)

    def on_cancel(self, client: bytes, meta: bytes, _: bytes) -> None:
        try:
            call_id = decode_ref(meta)
        except ProtocolError as exc:
            self.drops.drop(exc.reason, str(exc), plane="tools")
            return
        call = self._by_client.get(client, {}).get(call_id)
        if call is not None:
            self._cancel_call(call)

    def on_result(self, worker_id: bytes, meta: bytes, body: bytes) -> None:
        call = self._finished(worker_id, meta, body, "result")
        if call is None:
            return
        self.counts["results"] += 1
        self._answer(call, RESULT, body, "ok")

    def on_fail(self, worker_id: bytes, meta: bytes, body: bytes) -> None:
        call = self._finished(worker_id, meta, body, "failure")
        if call is None:
            return
        try:
            code = decode_failure(body)["code"]  # validates it is a failure map
            code = code if code in ERROR_CODES else "TOOL_ERROR"  # a bounded label
        except ProtocolError as exc:
            self.drops.drop(exc.reason, str(exc), plane="tools")
            self._answer_fail(call, "MALFORMED", f"worker sent an unreadable failure: {exc}")
            return
        self._count_failure(call)
        self._answer(call, FAIL, body, code)

    def on_progress(self, worker_id: bytes, meta: bytes, body: bytes) -> None:
        worker = self._worker(worker_id)
        if worker is None:
            return
        try:
            token = decode_ref(meta)
        except ProtocolError as exc:
            self.drops.drop(exc.reason, str(exc), plane="tools")
            return
        call = worker.calls.get(token)
        if call is None or call.answered:
            return
        if len(body) > self.max_payload:
            self.drops.drop("too_large", f"progress of {len(body)} bytes", plane="tools")
            body = b""
        call.deadline = max(call.deadline, self._clock() + call.timeout)
        self._send(call.client, encode_ref(PROGRESS, call.call_id, body))

    def release(self, call: Call, approver: str) -> None:
        """Dispatch (or queue) a call its approver let through."""
        call.approved_by = approver
        entry = self.tools.get(call.tool)
        if entry is None:
            self._answer_fail(call, "UNKNOWN_TOOL", f"no worker serves {call.tool!r} any more")
            return
        now = self._clock()
        call.deadline = now + call.timeout
        self._push_deadline(call)
        if _takes(entry, call):
            self._dispatch(entry, call, now)
        else:
            entry.queue.append(call)

    def refuse(self, call: Call, message: str) -> None:
        """Answer DENIED: the approver said no, or nobody answered in time."""
        self._answer_fail(call, "DENIED", message)
        self._drop_if_unserved(call.tool)

    def ping(self, call: Call, data: dict[str, Any]) -> None:
        """A progress report to a call's caller (from the approval desk)."""
        self._send(call.client, encode_ref(PROGRESS, call.call_id, _packb(data)))

    def tick(self) -> float | None:
        """Answer TIMEOUT to calls past their deadline; returns the next deadline, if any."""
        wake = self.approvals.tick()
        now = self._clock()
        deadlines = self._deadlines
        while deadlines and deadlines[0][0] <= now:
            _, token = heapq.heappop(deadlines)
            call = self._live.get(token)
            if call is None:
                continue
            if call.deadline > now:  # extended by progress
                heapq.heappush(deadlines, (call.deadline, token))
                continue
            entry = self.tools.get(call.tool)
            if call.slot is None:
                if entry is not None and call in entry.queue:
                    entry.queue.remove(call)
                message = f"{call.tool}: no worker was free within {call.timeout:g}s"
            else:
                self._send(call.slot.worker.identity, encode_ref(CANCEL, call.token))
                message = f"{call.tool}: no result or progress within {call.timeout:g}s"
            self._answer_fail(call, "TIMEOUT", message)
            self._drop_if_unserved(call.tool)
        if len(deadlines) > 2 * len(self._live) + 1000:  # answered calls' entries pile up
            self._deadlines = [(c.deadline, t) for t, c in self._live.items()]
            heapq.heapify(self._deadlines)
            deadlines = self._deadlines
        if deadlines and (wake is None or deadlines[0][0] < wake):
            return deadlines[0][0]
        return wake

    # --- internals ---------------------------------------------------------------

    def _dispatch(self, entry: ToolEntry, call: Call, now: float) -> None:
        if entry.approval and call.approved_by is None:  # queued before a worker said so
            if self.approvals.full():
                message = f"{call.tool}: {self.approvals.max_held} calls already wait for approval"
                self._answer_fail(call, "OVERLOADED", message)
            else:
                self.approvals.hold(call)
            return
        free = entry.free
        slot = free.pop(0)
        slot.busy += 1
        slot.last_used = now
        if slot.busy < slot.capacity:  # now the most recently used of its kind
            if free and free[-1].worker.remote and not slot.worker.remote:
                bisect.insort(free, slot, key=last_used)
            else:
                free.append(slot)
        call.slot = slot
        call.attempts += 1
        worker = slot.worker
        worker.calls[call.token] = call
        meta = _packb(
            (call.token, call.tool, call.timeout, call.trace, call.approved_by, call.caller)
        )
        if not self._send(worker.identity, [CALL, meta, call.args]):
            self.doomed.add(worker.identity)  # its calls are retried or failed at the tick

    def _pump(self, entry: ToolEntry) -> None:
        """Dispatch queued calls while some worker of the tool has room."""
        now = self._clock()
        queue = entry.queue
        while queue and _takes(entry, queue[0]):
            self._dispatch(entry, queue.popleft(), now)

    def _make_free(self, entry: ToolEntry, slot: Slot) -> None:
        if (
            slot.busy < slot.capacity
            and not slot.worker.draining
            and entry.slots.get(slot.worker.identity) is slot  # not withdrawn
            and slot not in entry.free
        ):
            bisect.insort(entry.free, slot, key=last_used)

    def _worker(self, worker_id: bytes) -> WorkerState | None:
        """The worker a RESULT, FAIL or PROGRESS comes from; one the broker does not know
        (restarted, or declared dead) is counted and told to introduce itself (RESET)."""
        worker = self.workers.get(worker_id)
        if worker is None:
            self.drops.drop("unknown_worker", "a message from a worker that is not ready")
            self._send(worker_id, encode_control(RESET, {}))
        return worker

    def _finished(self, worker_id: bytes, meta: bytes, body: bytes, what: str) -> Call | None:
        """The call a worker's RESULT or FAIL ends, freeing its slot; None if nobody waits
        for it (or it was answered TOO_LARGE here)."""
        worker = self._worker(worker_id)
        if worker is None:
            return None
        try:
            token = decode_ref(meta)
        except ProtocolError as exc:
            self.drops.drop(exc.reason, str(exc), plane="tools", worker=worker.name)
            return None
        call = worker.calls.pop(token, None)
        if call is None:
            self.drops.drop("unknown_call", f"answer for unknown call {token}", worker=worker.name)
            return None
        slot = call.slot
        if slot is not None:
            slot.busy -= 1
            entry = self.tools.get(slot.tool)
            if entry is not None:
                self._make_free(entry, slot)
                self._pump(entry)
        if call.answered:
            self.counts["late"] += 1
            return None
        if len(body) > self.max_payload:
            message = f"{call.tool}'s {what} of {len(body)} bytes exceeds {self.max_payload}"
            self.drops.drop("too_large", message, plane="tools")
            self._answer_fail(call, "TOO_LARGE", message)
            return None
        return call

    def _answer(self, call: Call, command: bytes, body: bytes, outcome: str) -> None:
        self._settle(call)
        entry = self.tools.get(call.tool)
        if entry is not None:
            entry.calls += 1
        took = self._clock() - call.started
        self.metrics.record(call.tool, outcome, took)
        ended = self._wall()
        worker = call.slot.worker.name if call.slot is not None else None
        caller = self.name_of(call.client)
        self.traces.add_call(call.trace, call.tool, caller, worker, ended - took, ended, outcome)
        self._send(call.client, encode_ref(command, call.call_id, body))

    def _answer_fail(self, call: Call, code: str, message: str) -> None:
        self._count_failure(call)
        self._answer(call, FAIL, encode_failure(code, message, tool=call.tool), code)

    def _count_failure(self, call: Call) -> None:
        self.counts["failures"] += 1
        entry = self.tools.get(call.tool)
        if entry is not None:
            entry.errors += 1

    def _reply_fail(
        self, client: bytes, call_id: int, code: str, message: str, tool: str | None = None
    ) -> None:
        self.counts["failures"] += 1
        if tool is not None:  # refused before it was a call: still an outcome of the tool
            self.metrics.record(tool, code, 0.0)
        self._send(client, encode_ref(FAIL, call_id, encode_failure(code, message)))

    def _settle(self, call: Call) -> None:
        """Nobody waits for ``call`` any more: forget it everywhere but on its worker, and
        its arguments (no one will dispatch it again)."""
        call.answered = True
        self._live.pop(call.token, None)
        self.call_bytes -= len(call.args)
        call.args = b""
        calls = self._by_client.get(call.client)
        if calls is not None:
            calls.pop(call.call_id, None)
            if not calls:
                del self._by_client[call.client]

    def _cancel_call(self, call: Call) -> None:
        if call.answered:
            return
        self._settle(call)
        if call.slot is None:
            entry = self.tools.get(call.tool)
            if entry is not None and call in entry.queue:
                entry.queue.remove(call)
                self._drop_if_unserved(call.tool)
        else:
            self._send(call.slot.worker.identity, encode_ref(CANCEL, call.token))

    def _drop_if_unserved(self, name: str) -> None:
        """Forget a tool no worker serves once no call waits for it (UNKNOWN_TOOL again)."""
        entry = self.tools.get(name)
        if entry is not None and not entry.slots and not entry.queue:
            del self.tools[name]
            self.spec_bytes -= entry.size

    def _push_deadline(self, call: Call) -> None:
        heapq.heappush(self._deadlines, (call.deadline, call.token))

    def _renew_token(self, call: Call) -> None:
        self._live.pop(call.token, None)
        self._tokens += 1
        call.token = self._tokens
        self._live[call.token] = call
        self._push_deadline(call)

    def _malformed(self, client: bytes, meta: bytes, exc: ProtocolError) -> None:
        self.drops.drop(exc.reason, str(exc), plane="tools")
        try:
            call_id = decode_ref(meta)
        except ProtocolError:
            return  # nothing to answer to
        self._reply_fail(client, call_id, "MALFORMED", str(exc))

    def workers_snapshot(self, peers: Peers) -> list[dict[str, Any]]:
        """The workers for the directory (their peers' times, when the table has them)."""
        workers = []
        for wid, worker in self.workers.items():
            known = peers.get(wid)
            seen = peers.wall_of(known.seen) if known is not None else time.time()
            workers.append(
                {
                    "name": worker.name,
                    "pid": worker.pid,
                    "tools": sorted(worker.slots),
                    "in_flight": len(worker.calls),
                    "draining": worker.draining,
                    "since": known.since if known is not None else seen,
                    "last_seen": seen,
                }
            )
        return workers

    def snapshot(self) -> list[dict[str, Any]]:
        """The tools for the directory."""
        return [
            {
                "name": entry.name,
                "description": entry.spec.get("description") or "",
                "schema": entry.spec.get("schema") or {},
                "returns": entry.spec.get("returns"),
                "timeout": entry.spec.get("timeout"),
                "idempotent": entry.idempotent,
                "approval": entry.approval,
                "sandbox": _string_map(entry.spec.get("sandbox")),
                "annotations": entry.spec.get("annotations"),
                "workers": [slot.worker.name for slot in entry.slots.values()],
                "brokers": sorted(
                    {b for slot in entry.slots.values() for b in slot.worker.brokers.get(name, ())}
                ),
                "capacity": sum(slot.capacity for slot in entry.slots.values()),
                "in_flight": sum(slot.busy for slot in entry.slots.values()),
                "queued": len(entry.queue),
                "calls": entry.calls,
                "errors": entry.errors,
            }
            for name, entry in self.tools.items()
        ]


def _takes(entry: ToolEntry, call: Call) -> bool:
    """Whether a free slot of ``entry`` may run ``call`` now: the first free one is the
    best (local before remote), and a call from the link runs only on a local one."""
    free = entry.free
    return bool(free) and not (call.local_only and free[0].worker.remote)


def _string_map(value: Any) -> dict[str, str] | None:
    """A worker's sandbox report, if it is a map of strings (else nothing)."""
    if isinstance(value, dict) and all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        return value
    return None
