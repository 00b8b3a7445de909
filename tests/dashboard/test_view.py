"""MeshView: the state the dashboard draws, from the broker's answers (plain data)."""

from __future__ import annotations

from typing import Any

from loom.dashboard import _view as view_module
from loom.dashboard._view import MeshView

NOW = 1_800_000_000.0


def stats(boot: str = "b1", published: int = 0, handled: dict[str, int] | None = None,
          topics: dict[str, int] | None = None) -> dict[str, Any]:  # fmt: skip
    peers = [
        {"name": name, "role": "actor", "stats": {"handled": count}}
        for name, count in (handled or {}).items()
    ]
    return {
        "boot": boot,
        "pid": 1,
        "totals": {"published": published, "forwarded": published, "dropped": 0, "malformed": 0},
        "tool_calls": {"calls": 0, "failures": 0},
        "topics": {
            t: {"published": n, "forwarded": n, "dropped": 0, "malformed": 0}
            for t, n in (topics or {}).items()
        },
        "peers": peers,
    }


def message(mid: str, topic: str, trace: str, sender: str = "a", at: float = NOW) -> dict[str, Any]:
    return {"id": mid, "trace": trace, "parent": None, "topic": topic, "sender": sender,
            "kind": 0, "time": at}  # fmt: skip


def call(seq: int, took: float, outcome: str = "ok", trace: str | None = None, *,
         caller: str = "a", at: float = NOW) -> dict[str, Any]:  # fmt: skip
    return {"seq": seq, "trace": trace, "tool": "t.x", "caller": caller, "worker": "w",
            "started": at - took, "ended": at, "outcome": outcome}  # fmt: skip


def test_rates_come_from_two_snapshots_and_restart_with_the_broker() -> None:
    """Rates are counter growth over time; another broker run (a new boot id, even with
    the same pid) starts them and the RECENT cursors again instead of showing a negative
    or huge rate, and an answer from a run the cursors do not belong to is dropped."""
    view = MeshView()
    view.add_stats(stats(published=100), at=10.0)
    view.add_stats(stats(published=150), at=12.0)
    assert view.state(NOW)["cards"]["published"] == {"total": 150, "rate": 25.0}
    first = {"boot": "b1", "messages": [message("m1", "x.y", "t1")], "calls": [call(7, 0.1)]}
    view.add_recent({**first, "messages_seen": 40, "calls_seen": 8})
    assert view.cursor() == (39, 7)
    view.add_stats(stats(boot="b2", published=3), at=13.0)
    assert view.cursor() == (-1, -1)
    view.add_stats(stats(boot="b2", published=5), at=14.0)
    assert view.state(NOW)["cards"]["published"]["rate"] == 2.0
    view.add_recent({**first, "boot": "b3", "messages_seen": 5, "calls_seen": 1})
    assert view.cursor() == (-1, -1) and len(view.messages) == 1  # dropped, start over


def test_an_actor_leaving_is_not_a_burst_of_handled_events() -> None:
    """Delivered per second sums each actor's own growth: one leaving takes its count
    out of the total without a spike."""
    view = MeshView()
    view.add_stats(stats(handled={"a": 1000, "b": 10}), at=0.0)
    view.add_stats(stats(handled={"b": 30}), at=1.0)
    assert view.state(NOW)["cards"]["handled"] == {"total": 30, "rate": 20.0}


def test_latency_percentiles_are_nearest_rank_over_recent_calls() -> None:
    """p50 and p99 of 100 calls taking 1..100 ms are 50 and 99 ms."""
    view = MeshView()
    view.add_recent({"calls": [call(i, (i + 1) / 1000) for i in range(100)]})
    latency = view.state(NOW)["cards"]["latency"]
    assert round(latency["p50_ms"], 2) == 50 and round(latency["p99_ms"], 2) == 99
    assert latency["samples"] == 100


def test_topology_links_publishers_topics_subscribers_tools_and_workers() -> None:
    """A sender publishes to a topic, the topic delivers to actors whose pattern matches,
    a caller calls a tool (errors counted), a tool is served by its workers; `$` topics
    are not drawn."""
    view = MeshView()
    view.add_stats(stats(topics={"m.p.btc": 3, "$sys.actor.joined": 1}), at=0.0)
    view.add_directory(
        {
            "actors": [
                {"name": "a", "role": "actor", "patterns": ["m.p.*"]},
                {"name": "b", "role": "actor", "patterns": ["m.**", "bad..pattern"]},
                {"name": "c", "role": "actor", "patterns": ["*.x"]},
            ],
            "workers": [{"name": "w", "tools": ["t.x"]}],
            "tools": [{"name": "t.x", "workers": ["w"]}],
        }
    )
    view.add_recent(
        {
            "boot": "b1",
            "messages": [message("m1", "m.p.btc", "t1", sender="c")],
            "calls": [call(0, 0.1, caller="a"), call(1, 0.1, "TIMEOUT", caller="a")],
        }
    )
    topology = view.state(NOW)["topology"]
    assert [t["name"] for t in topology["topics"]] == ["m.p.btc"]
    links = {(e["from"], e["kind"], e["to"]): e for e in topology["edges"]}
    assert set(links) == {
        ("peer:c", "publishes", "topic:m.p.btc"),
        ("topic:m.p.btc", "delivers", "peer:a"),
        ("topic:m.p.btc", "delivers", "peer:b"),
        ("peer:a", "calls", "tool:t.x"),
        ("tool:t.x", "serves", "worker:w"),
    }
    assert links[("peer:a", "calls", "tool:t.x")]["count"] == 2
    assert links[("peer:a", "calls", "tool:t.x")]["errors"] == 1


def test_a_peer_that_left_fades_out_after_the_window() -> None:
    """A caller not connected any more is drawn (as gone) while its flows are recent."""
    view = MeshView(window=60)
    view.add_recent({"calls": [call(0, 0.1, caller="loom-call", at=NOW)]})
    peers = view.state(NOW + 30)["topology"]["peers"]
    assert [(p["name"], p["live"]) for p in peers] == [("loom-call", False)]
    assert view.state(NOW + 61)["topology"]["peers"] == []


def test_threads_group_by_trace_newest_first_without_plumbing() -> None:
    """Lanes are traces, most recently active first, each oldest event first with the
    calls of its trace; start-up probes, lone replies and the broker's `$sys` events
    make no lane (nor a flow); at most `threads` lanes."""
    view = MeshView(threads=2)
    view.add_recent(
        {
            "messages": [
                message("1", "old.root", "t0", at=NOW - 5),
                message("2", "req.x", "t1", at=NOW - 3),
                message("3", "$inbox.abc", "t1", at=NOW - 2),
                message("4", "$probe.abc.1", "t2", at=NOW - 1),
                message("5", "ev.y", "t3", at=NOW),
                message("6", "$sys.actor.joined", "t4", sender="loom-broker", at=NOW + 1),
            ],
            "calls": [call(0, 0.1, trace="t1", at=NOW - 2.5)],
        }
    )
    lanes = view.state(NOW)["threads"]
    assert [lane["trace"] for lane in lanes] == ["t3", "t1"]
    assert [e["topic"] for e in lanes[1]["events"]] == ["req.x", "$inbox.abc"]
    assert lanes[1]["root"] == "req.x" and [c["seq"] for c in lanes[1]["calls"]] == [0]
    assert "peer:loom-broker" not in {p["id"] for p in view.state(NOW)["topology"]["peers"]}


def test_remembered_flows_are_bounded(monkeypatch: Any) -> None:
    """Past MAX_FLOWS pairs, the least recently seen is forgotten."""
    monkeypatch.setattr(view_module, "MAX_FLOWS", 3)
    view = MeshView()
    for i in range(5):
        view.add_recent({"messages": [message(str(i), f"t.{i}", str(i), at=NOW + i)]})
    assert len(view._flows) == 3
    assert ("peer:a", "topic:t.0") not in view._flows
    assert ("peer:a", "topic:t.4") in view._flows


def test_an_actors_handler_quantiles_come_from_its_histogram() -> None:
    """The bucket bounds holding the sampled p50 and p99 (ms); beyond the last bound is
    None (JSON has no infinity); no samples, no quantiles."""
    from loom.protocol import HANDLER_BUCKETS

    counts = [0] * (len(HANDLER_BUCKETS) + 1)
    counts[2], counts[-1] = 98, 2  # 98 up to HANDLER_BUCKETS[2], 2 beyond every bound
    view = MeshView()
    view.add_directory(
        {
            "actors": [
                {"name": "a", "histograms": {"handler_seconds": [*counts, 1.0]}},
                {"name": "b", "histograms": {"handler_seconds": [0] * (len(counts) + 1)}},
            ]
        }
    )
    peers = {p["name"]: p for p in view.state(NOW)["topology"]["peers"]}
    assert peers["a"]["handler_ms"] == {"p50": HANDLER_BUCKETS[2] * 1000, "p99": None}
    assert peers["b"]["handler_ms"] is None


def test_a_reply_newer_than_its_request_does_not_lift_the_lane_limit() -> None:
    """Request/reply threads (the reply, plumbing, is seen first going newest first)
    still give at most `threads` lanes."""
    view = MeshView(threads=3)
    messages = []
    for i in range(100):
        messages.append(message(f"q{i}", "quote.get", f"t{i}", at=NOW + 2 * i))
        messages.append(message(f"r{i}", "$inbox.abc", f"t{i}", at=NOW + 2 * i + 1))
    view.add_recent({"messages": messages})
    lanes = view.state(NOW + 200)["threads"]
    assert [lane["trace"] for lane in lanes] == ["t99", "t98", "t97"]
    assert [e["topic"] for e in lanes[0]["events"]] == ["quote.get", "$inbox.abc"]
