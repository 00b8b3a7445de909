"""What the dashboard shows, built from the broker's STATS, DIRECTORY and RECENT answers.

Plain data in, plain data out: :class:`MeshView` keeps the last messages and tool calls
the broker's ring buffers handed over, the flows seen between peers, topics and tools,
and two STATS snapshots for rates; :meth:`MeshView.state` is the JSON the page renders.
"""

from __future__ import annotations

import math
from collections import OrderedDict, deque
from typing import Any

from loom.errors import PatternError
from loom.protocol import HANDLER_BUCKETS, Pattern, kind_name

__all__ = ["MeshView"]

MAX_FLOWS = 5000
"""(source, target) pairs remembered; the least recently seen go first."""
MAX_TOPICS = 24
"""Topics drawn in the topology, busiest first (the rest are counted)."""
MAX_PATTERNS = 100
"""Patterns of one actor matched against the drawn topics (the rest are not drawn)."""
LOOM_PREFIX = "$"
"""Loom's own topics (request replies, liveness probes, the broker's ``$sys`` events):
not drawn as flows, and a thread of nothing else gets no lane."""


class MeshView:
    """The mesh as the dashboard draws it.

    Args:
        events: messages kept for the swimlanes.
        calls: tool calls kept for the timeline and the latency percentiles.
        threads: swimlanes (threads, by trace id) drawn, most recently active first.
        window: seconds of history the time axes span.
    """

    def __init__(
        self, *, events: int = 1000, calls: int = 1000, threads: int = 12, window: float = 60.0
    ) -> None:
        self.messages: deque[dict[str, Any]] = deque(maxlen=events)
        self.calls: deque[dict[str, Any]] = deque(maxlen=calls)
        self.threads = threads
        self.window = window
        self.connected = False
        self.broker_pid: int | None = None
        self.gaps = 0
        """RECENT answers that skipped messages or calls (more came than one look holds)."""
        self._flows: OrderedDict[tuple[str, str], list[float]] = OrderedDict()
        """(source node, target node) -> [count, errors, last seen], least recent first."""
        self._stats: dict[str, Any] = {}
        self._directory: dict[str, Any] = {}
        self._rates: dict[str, float] = {}
        self._topic_rates: dict[str, float] = {}
        self._stats_at = 0.0
        self._patterns: dict[str, Pattern | None] = {}
        self._delivers: tuple[Any, list[dict[str, Any]]] = (None, [])
        """(what they were drawn from, the topic -> actor edges), redrawn on a change."""
        self._boot: str | None = None
        self._after = -1
        self._calls_after = -1

    # --- input ------------------------------------------------------------------------

    def cursor(self) -> tuple[int, int]:
        """Where the next RECENT should start: the broker's numbers of the last message
        and call seen (-1: none yet)."""
        return self._after, self._calls_after

    def _new_broker(self, boot: Any) -> bool:
        """Whether ``boot`` names another run of the broker than the last answers did; if
        so its numbering (and counters) start again, and so do the cursors."""
        if boot == self._boot:
            return False
        known, self._boot = self._boot is not None, boot
        self._after, self._calls_after = -1, -1
        return known

    def add_stats(self, stats: dict[str, Any], at: float) -> None:
        """A STATS answer received at ``at`` (monotonic seconds): totals and rates."""
        if self._new_broker(stats.get("boot")):
            self._stats = {}  # no rates across a restart (what was seen stays on screen)
        pid = stats.get("pid")
        self.broker_pid = pid if isinstance(pid, int) else None
        before, seconds = self._stats, at - self._stats_at
        if before and seconds > 0:
            now_totals, old_totals = _totals(stats), _totals(before)
            self._rates = {
                name: _delta(value, old_totals.get(name, 0)) / seconds
                for name, value in now_totals.items()
            }
            old_handled = _handled(before)  # per actor: one leaving is not a restart
            self._rates["handled"] = (
                sum(
                    _delta(count, old_handled.get(name, 0))
                    for name, count in _handled(stats).items()
                )
                / seconds
            )
            old_topics = before.get("topics", {})
            self._topic_rates = {
                topic: _delta(
                    counters.get("published", 0), old_topics.get(topic, {}).get("published", 0)
                )
                / seconds
                for topic, counters in stats.get("topics", {}).items()
            }
        self._stats, self._stats_at = stats, at

    def add_directory(self, directory: dict[str, Any]) -> None:
        """A DIRECTORY answer: who is connected, which tools are served by whom."""
        self._directory = directory
        patterns: dict[str, Pattern | None] = {}  # only the live ones: no growth
        for actor in directory.get("actors", []):
            for text in actor.get("patterns", [])[:MAX_PATTERNS]:
                if text in patterns:
                    continue
                try:
                    patterns[text] = self._patterns.get(text) or Pattern(text)
                except PatternError:
                    patterns[text] = None
        self._patterns = patterns

    def add_recent(self, recent: dict[str, Any]) -> None:
        """A RECENT answer: messages and calls since the last one (one from another run
        of the broker than the cursors belong to is dropped: the next look starts over)."""
        if self._new_broker(recent.get("boot")):
            return
        if recent.get("gap") or recent.get("calls_gap"):
            self.gaps += 1
        messages, calls = recent.get("messages", []), recent.get("calls", [])
        self._after = max(self._after, int(recent.get("messages_seen", 0)) - 1)
        self._calls_after = max(self._calls_after, int(recent.get("calls_seen", 0)) - 1)
        for message in messages:
            message["kind"] = kind_name(message.get("kind"))  # a name, as in every JSON output
            self.messages.append(message)
            topic = str(message.get("topic", ""))
            if not topic.startswith(LOOM_PREFIX):
                self._flow(f"peer:{message.get('sender')}", f"topic:{topic}", message, False)
        for call in calls:
            self.calls.append(call)
            failed = call.get("outcome") != "ok"
            self._flow(f"peer:{call.get('caller')}", f"tool:{call.get('tool')}", call, failed)

    def _flow(self, source: str, target: str, record: dict[str, Any], failed: bool) -> None:
        when = record.get("time", record.get("ended", 0.0))
        flows, key = self._flows, (source, target)
        flow = flows.get(key)
        if flow is None:
            if len(flows) >= MAX_FLOWS:
                flows.popitem(last=False)  # the least recently seen
            flow = flows[key] = [0, 0, 0.0]
        else:
            flows.move_to_end(key)
        flow[0] += 1
        flow[1] += failed
        flow[2] = max(flow[2], float(when) if isinstance(when, int | float) else 0.0)

    # --- output -----------------------------------------------------------------------

    def state(self, now: float) -> dict[str, Any]:
        """Everything the page draws, as JSON-ready data (``now``: Unix seconds)."""
        return {
            "at": now,
            "window": self.window,
            "connected": self.connected,
            "broker_pid": self.broker_pid,
            "cards": self._cards(),
            "topology": self._topology(now),
            "threads": self._threads(),
            "calls": [c for c in self.calls if c.get("ended", 0) >= now - self.window][-300:],
            "errors": [c for c in self.calls if c.get("outcome") != "ok"][-20:],
            "gaps": self.gaps,
        }

    def _cards(self) -> dict[str, Any]:
        totals = _totals(self._stats) if self._stats else {}
        rates = self._rates
        durations = sorted(
            c["ended"] - c["started"]
            for c in self.calls
            if isinstance(c.get("ended"), int | float) and isinstance(c.get("started"), int | float)
        )
        actors = self._directory.get("actors", [])
        cards: dict[str, dict[str, Any]] = {
            name: {"total": totals.get(name, 0), "rate": rates.get(name, 0.0)}
            for name in ("published", "forwarded", "handled", "dropped", "calls", "failures")
        }
        cards["latency"] = {
            "p50_ms": _percentile(durations, 0.50) * 1000 if durations else None,
            "p99_ms": _percentile(durations, 0.99) * 1000 if durations else None,
            "samples": len(durations),
        }
        cards["peers"] = {
            "actors": len(actors),
            "workers": len(self._directory.get("workers", [])),
            "clients": len(self._directory.get("clients", [])),
            "tools": len(self._directory.get("tools", [])),
        }
        return cards

    def _topology(self, now: float) -> dict[str, Any]:
        directory = self._directory
        peers: dict[str, dict[str, Any]] = {}
        for role in ("actors", "clients"):
            for peer in directory.get(role, []):
                peers[peer["name"]] = {
                    "id": f"peer:{peer['name']}",
                    "name": peer["name"],
                    "role": peer.get("role", role[:-1]),
                    "pid": peer.get("pid"),
                    "patterns": peer.get("patterns", []),
                    "stats": peer.get("stats", {}),
                    "handler_ms": _histogram_quantiles(peer.get("histograms", {})),
                    "live": True,
                }
        since = now - self.window  # peers that left stay drawn while their flows are recent
        flows = {
            key: flow
            for key, flow in self._flows.items()
            if key[0].removeprefix("peer:") in peers or flow[2] >= since
        }
        for source, _ in flows:  # senders and callers not connected (any more)
            name = source.removeprefix("peer:")
            if name not in peers:
                peers[name] = {"id": source, "name": name, "role": "gone", "live": False}
        topics = self._topics()
        edges: list[dict[str, Any]] = []
        shown = {f"topic:{t['name']}" for t in topics}
        for (source, target), (count, errors, last) in flows.items():
            if target.startswith("topic:") and target not in shown:
                continue
            kind = "publishes" if target.startswith("topic:") else "calls"
            edges.append(
                {
                    "from": source,
                    "to": target,
                    "kind": kind,
                    "count": count,
                    "errors": errors,
                    "last": last,
                }
            )
        edges.extend(self._delivers_edges(topics, peers))
        tools = []
        for tool in directory.get("tools", []):
            tools.append(
                {
                    "id": f"tool:{tool['name']}",
                    "name": tool["name"],
                    "workers": tool.get("workers", []),
                    "in_flight": tool.get("in_flight", 0),
                    "queued": tool.get("queued", 0),
                    "capacity": tool.get("capacity", 0),
                    "calls": tool.get("calls", 0),
                    "errors": tool.get("errors", 0),
                }
            )
            for worker in tool.get("workers", []):
                edges.append(
                    {"from": f"tool:{tool['name']}", "to": f"worker:{worker}", "kind": "serves"}
                )
        workers = [
            {
                "id": f"worker:{w['name']}",
                "name": w["name"],
                "pid": w.get("pid"),
                "tools": w.get("tools", []),
                "in_flight": w.get("in_flight", 0),
                "draining": w.get("draining", False),
            }
            for w in directory.get("workers", [])
        ]
        all_topics = [t for t in self._stats.get("topics", {}) if not t.startswith("$")]
        return {
            "peers": sorted(peers.values(), key=lambda p: (not p["live"], p["name"])),
            "topics": topics,
            "more_topics": max(0, len(all_topics) - len(topics)),
            "tools": tools,
            "workers": workers,
            "edges": edges,
        }

    def _topics(self) -> list[dict[str, Any]]:
        counters = self._stats.get("topics", {})
        names = [t for t in counters if not t.startswith("$")]
        names.sort(key=lambda t: (-self._topic_rates.get(t, 0.0), -counters[t]["published"], t))
        return [
            {
                "id": f"topic:{name}",
                "name": name,
                "rate": self._topic_rates.get(name, 0.0),
                "published": counters[name].get("published", 0),
                "dropped": counters[name].get("dropped", 0) + counters[name].get("malformed", 0),
            }
            for name in names[:MAX_TOPICS]
        ]

    def _delivers_edges(
        self, topics: list[dict[str, Any]], peers: dict[str, dict[str, Any]]
    ) -> list[dict[str, Any]]:
        """Topic -> actor for each drawn topic an actor's patterns match; matched again
        only when the topics or the patterns change (not at every state)."""
        subscribers = tuple(
            (peer["id"], tuple(peer.get("patterns", [])[:MAX_PATTERNS])) for peer in peers.values()
        )
        key = (tuple(topic["name"] for topic in topics), subscribers)
        if key != self._delivers[0]:
            edges = []
            for topic in topics:
                for peer_id, texts in subscribers:
                    if any(self._matches(text, topic["name"]) for text in texts):
                        edges.append({"from": topic["id"], "to": peer_id, "kind": "delivers"})
            self._delivers = (key, edges)
        return self._delivers[1]

    def _matches(self, text: str, topic: str) -> bool:
        pattern = self._patterns.get(text)
        return pattern is not None and pattern.matches(topic)

    def _threads(self) -> list[dict[str, Any]]:
        """The most recently active threads, each with its messages and tool calls,
        oldest first: a conversation's thread id when its messages carry one (one lane
        across the traces it spans), else the messages sharing a trace id. Threads of
        Loom's own topics only (an actor's start-up probes, the broker's ``$sys``
        events, a reply whose request left the buffer) are left out."""
        lanes: dict[str, dict[str, Any]] = {}
        real: list[dict[str, Any]] = []  # lanes with a message that is not plumbing
        traced: dict[str, dict[str, Any]] = {}  # trace -> its lane, for the calls
        for message in reversed(self.messages):  # newest first: the lanes to keep
            trace = message.get("trace")
            if not isinstance(trace, str):
                continue
            thread = message.get("thread")
            key = f"thread:{thread}" if isinstance(thread, str) else trace
            lane = lanes.get(key)
            if lane is None:
                if len(real) >= self.threads:
                    continue  # older threads: only lanes already open still fill up
                lane = lanes[key] = {"trace": trace, "events": [], "calls": [], "real": False}
                if isinstance(thread, str):
                    lane["thread"] = thread
            traced.setdefault(trace, lane)
            if not lane["real"] and not str(message.get("topic")).startswith(LOOM_PREFIX):
                lane["real"] = True
                real.append(lane)
            if len(lane["events"]) < 50:
                lane["events"].append(message)
        kept = sorted(real[: self.threads], key=lambda lane: -lane["events"][0]["time"])
        shown = {id(lane) for lane in kept}
        for call in self.calls:
            lane = traced.get(call.get("trace") or "")
            if lane is not None and id(lane) in shown:
                lane["calls"].append(call)
        for lane in kept:
            del lane["real"]
            lane["events"].reverse()
            first = lane["events"][0]
            lane["root"] = first.get("topic")
            lane["sender"] = first.get("sender")
            lane["last"] = lane["events"][-1].get("time")
        return kept


def _totals(stats: dict[str, Any]) -> dict[str, float]:
    """The mesh-wide counters the cards show, from one STATS answer."""
    totals = stats.get("totals", {})
    calls = stats.get("tool_calls", {})
    return {
        "published": totals.get("published", 0),
        "forwarded": totals.get("forwarded", 0),
        "dropped": totals.get("dropped", 0) + totals.get("malformed", 0),
        "handled": sum(_handled(stats).values()),
        "calls": calls.get("calls", 0),
        "failures": calls.get("failures", 0),
    }


def _handled(stats: dict[str, Any]) -> dict[str, float]:
    """Events each actor handled, by name (what its last heartbeat said)."""
    return {
        str(peer.get("name")): peer.get("stats", {}).get("handled", 0)
        for peer in stats.get("peers", [])
        if peer.get("role") == "actor"
    }


def _histogram_quantiles(histograms: dict[str, Any]) -> dict[str, float | None] | None:
    """Upper bounds (ms) of the buckets holding an actor's sampled handler p50 and p99,
    from the ``handler_seconds`` its heartbeat pushed (None before any sample; a
    quantile past the last bound is None too)."""
    values = histograms.get("handler_seconds")
    if not isinstance(values, list) or len(values) != len(HANDLER_BUCKETS) + 2:
        return None
    counts = values[:-1]
    total = sum(counts)
    if not total:
        return None
    found: dict[str, float | None] = {}
    for name, fraction in (("p50", 0.5), ("p99", 0.99)):
        running = 0
        for bound, count in zip((*HANDLER_BUCKETS, math.inf), counts, strict=True):
            running += count
            if running >= fraction * total:
                found[name] = bound * 1000 if bound != math.inf else None  # JSON has no inf
                break
    return found


def _delta(now: float, before: float) -> float:
    """A counter's growth; one that went down restarted from zero."""
    return now - before if now >= before else now


def _percentile(ordered: list[float], fraction: float) -> float:
    """Nearest-rank percentile of a sorted, non-empty list."""
    rank = max(1, math.ceil(fraction * len(ordered)))
    return ordered[rank - 1]
