"""The broker's Prometheus endpoint: its counters, read when scraped.

Nothing here runs on the hot path: the broker keeps plain counters as it works (per
topic, per drop reason, per tool), and :class:`BrokerCollector` turns a copy of them into
metric families when ``/metrics`` is scraped, on the HTTP server's thread. Copies are
made with ``dict(...)`` (one step under the GIL), so a scrape never sees a table
changing under it.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from loom._histogram import cumulative
from loom.broker._control import ControlPlane
from loom.broker._peers import PEER_HISTOGRAMS, PEER_STATS
from loom.broker._pubsub import TOPIC, PubSubProxy

if TYPE_CHECKING:
    from wsgiref.simple_server import WSGIServer


__all__ = ["BrokerCollector", "serve_metrics"]

_MAX_FAMILIES = 200
"""Topic families (first token) reported before the rest share ``(other)``."""
_COUNTERS = ("published", "forwarded", "dropped", "malformed")


class BrokerCollector(Collector):
    """Reads one broker's counters at scrape time: its proxy's and its control plane's."""

    def __init__(self, proxy: PubSubProxy, control: ControlPlane) -> None:
        self.proxy = proxy
        self.control = control

    def collect(self) -> Iterator[Metric]:
        """The metric families, named ``loom_*`` (counters end in ``_total``)."""
        proxy, control = self.proxy, self.control
        yield from self._messages(proxy)
        yield _drops("loom_pubsub_drops", "Messages the pub/sub proxy dropped.", proxy.drops)
        yield _drops("loom_control_drops", "Control messages dropped.", control.drops)
        yield _drops("loom_tool_drops", "Tool-plane messages dropped.", control.tools.drops)
        subscriptions = GaugeMetricFamily("loom_subscriptions", "Live subscription prefixes.")
        subscriptions.add_metric([], len(proxy.subscriptions))
        yield subscriptions
        peers = GaugeMetricFamily("loom_peers", "Connected peers by role.", labels=["role"])
        roles: dict[str, int] = {"actor": 0, "worker": 0, "client": 0}
        for peer in list(dict(control.peers.table).values()):
            roles[peer.role] = roles.get(peer.role, 0) + 1
        for role, count in sorted(roles.items()):
            peers.add_metric([role], count)
        yield peers
        yield from _peer_stats(list(dict(control.peers.table).values()))
        yield from self._tools(control)
        yield from self._durable(control)

    def _messages(self, proxy: Any) -> Iterator[Metric]:
        stats = proxy.stats
        families: dict[str, list[int]] = {}
        for topic, row in dict(stats.rows).items():
            family = topic.split(b".", 1)[0].decode(errors="replace")
            if family not in families and len(families) >= _MAX_FAMILIES:
                family = "(other)"
            totals = families.setdefault(family, [0, 0, 0, 0])
            for i, value in enumerate(row[:TOPIC]):
                totals[i] += value
        for name, row in (("(other)", stats.other), ("(unparsed)", stats.unparsed)):
            if any(row[:TOPIC]):
                totals = families.setdefault(name, [0, 0, 0, 0])
                for i, value in enumerate(row[:TOPIC]):
                    totals[i] += value
        for i, counter in enumerate(_COUNTERS):
            metric = CounterMetricFamily(
                f"loom_messages_{counter}",
                f"Pub/sub messages {counter}, by topic family (the topic's first word).",
                labels=["family"],
            )
            for family, totals in sorted(families.items()):
                metric.add_metric([family], totals[i])
            yield metric

    def _tools(self, control: Any) -> Iterator[Metric]:
        router = control.tools
        calls = CounterMetricFamily(
            "loom_tool_calls",
            "Tool calls answered, by tool and outcome.",
            labels=["tool", "outcome"],
        )
        for (tool, outcome), count in sorted(dict(router.metrics.outcomes).items()):
            calls.add_metric([tool, outcome], count)
        yield calls
        latency = HistogramMetricFamily(
            "loom_tool_call_duration_seconds",
            "Seconds from a call's arrival at the broker to its answer.",
            labels=["tool"],
        )
        for tool, histogram in sorted(dict(router.metrics.latency).items()):
            latency.add_metric([tool], histogram.cumulative(), histogram.total)
        yield latency
        gauges = {
            "queued": GaugeMetricFamily(
                "loom_tool_queue_depth", "Calls waiting for a worker.", labels=["tool"]
            ),
            "in_flight": GaugeMetricFamily(
                "loom_tool_in_flight", "Calls running on workers.", labels=["tool"]
            ),
            "capacity": GaugeMetricFamily(
                "loom_tool_capacity", "Calls the tool's workers run at once.", labels=["tool"]
            ),
        }
        for name, entry in sorted(dict(router.tools).items()):
            slots = list(dict(entry.slots).values())
            gauges["queued"].add_metric([name], len(entry.queue))
            gauges["in_flight"].add_metric([name], sum(slot.busy for slot in slots))
            gauges["capacity"].add_metric([name], sum(slot.capacity for slot in slots))
        yield from gauges.values()
        desk = router.approvals
        pending = GaugeMetricFamily("loom_approvals_pending", "Calls waiting for approval.")
        pending.add_metric([], desk.waiting())
        yield pending
        decided = CounterMetricFamily(
            "loom_approvals", "Approval requests, by what became of them.", labels=["decision"]
        )
        for decision, count in sorted(dict(desk.counts).items()):
            decided.add_metric([decision], count)
        yield decided

    def _durable(self, control: Any) -> Iterator[Metric]:
        durable = control.durable
        counts = dict(durable.counts)
        events = CounterMetricFamily(
            "loom_durable_events", "Durable events, by what became of them.", labels=["state"]
        )
        for state, count in sorted(counts.items()):
            events.add_metric([state], count)
        yield events
        log = durable.log
        if log is not None:  # plain attributes: no LMDB call from this thread
            size = GaugeMetricFamily("loom_durable_log_bytes", "Bytes of durable events kept.")
            size.add_metric([], log.bytes)
            yield size
            last = GaugeMetricFamily("loom_durable_last_seq", "The last durable sequence.")
            last.add_metric([], log.last_seq)
            yield last


_PEER_GAUGES = frozenset({"mailbox", "running"})
"""Peer stats that are levels, not counts."""


def _peer_stats(peers: list[Any]) -> Iterator[Metric]:
    """Actors' and workers' own counters, from their last heartbeat:
    ``loom_actor_<stat>_total{actor}``, ``loom_worker_<stat>_total{worker}``, and gauges
    (``loom_actor_mailbox``, ``loom_worker_running``). The names are the control plane's
    fixed list; of two live peers with one name, the one heard last counts."""
    latest: dict[tuple[str, str], dict[str, float]] = {}  # (role, name) -> its stats
    for peer in sorted(peers, key=lambda p: p.seen):
        if peer.role in PEER_STATS:
            latest[(peer.role, peer.name)] = peer.stats  # replaced whole, never mutated
    for role, stats in sorted(PEER_STATS.items()):
        for stat in sorted(stats):
            text = f"{role.capitalize()}s' {stat}, as of their last heartbeat."
            kind = GaugeMetricFamily if stat in _PEER_GAUGES else CounterMetricFamily
            family = kind(f"loom_{role}_{stat}", text, labels=[role])
            for (peer_role, peer_name), values in sorted(latest.items()):
                if peer_role == role and stat in values:
                    family.add_metric([peer_name], values[stat])
            yield family
    yield from _peer_histograms(peers)


_HISTOGRAM_NAMES = {"handler_seconds": ("handler_duration_seconds", "Seconds handlers took")}


def _peer_histograms(peers: list[Any]) -> Iterator[Metric]:
    """``loom_actor_handler_duration_seconds{actor}``: the sampled handler latencies
    actors push with their heartbeats (of two live peers with one name, the last heard)."""
    latest: dict[tuple[str, str], dict[str, tuple[float, ...]]] = {}
    for peer in sorted(peers, key=lambda p: p.seen):
        latest[(peer.role, peer.name)] = peer.histograms  # replaced whole, never mutated
    for role, histograms in sorted(PEER_HISTOGRAMS.items()):
        for key, bounds in sorted(histograms.items()):
            name, text = _HISTOGRAM_NAMES[key]
            family = HistogramMetricFamily(
                f"loom_{role}_{name}", f"{text}, for a sample of events.", labels=[role]
            )
            for (peer_role, peer_name), values in sorted(latest.items()):
                if peer_role == role and key in values:
                    *counts, total = values[key]
                    family.add_metric([peer_name], cumulative(bounds, counts), total)
            yield family


def _drops(name: str, documentation: str, counter: Any) -> Metric:
    metric = CounterMetricFamily(name, documentation + " By reason.", labels=["reason"])
    for reason, count in sorted(dict(counter.counts).items()):
        metric.add_metric([reason], count)
    return metric


def serve_metrics(proxy: PubSubProxy, control: ControlPlane, host: str, port: int) -> WSGIServer:
    """Serve ``/metrics`` for a broker's planes on ``host:port`` from a daemon thread;
    returns the server (``shutdown()`` stops it).

    Raises:
        OSError: the address is in use or cannot be bound.
    """
    registry = CollectorRegistry(auto_describe=False)
    registry.register(BrokerCollector(proxy, control))
    server, _ = start_http_server(port, addr=host, registry=registry)
    return server
