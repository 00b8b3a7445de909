"""Agent memory: tiers, keyword search, TTL, and surviving a restart (LMDB)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pytest

from loom.cognition._memory import CorpusStats, Memory, MemoryItem, MemoryStoreError


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def test_query_ranks_by_keywords_across_tiers(tmp_path: Path) -> None:
    """The best keyword match comes first, whatever its tier; no match, no result."""
    memory = Memory(tmp_path / "m")
    memory.add("the nightly report failed with error E1234 in report.py", tier="long")
    memory.add("coffee machine on floor 3 is broken", tier="short")
    memory.add("report owner is alice", tier="working")
    found = memory.query("why did the nightly report fail", k=3)
    assert found[0].text.startswith("the nightly report failed")
    assert {item.tier for item in found} == {"long", "working"}
    assert memory.query("zebra") == []


def test_memory_survives_a_restart_but_working_memory_does_not(tmp_path: Path) -> None:
    """Short and long tiers are in LMDB: a new Memory on the same path finds them."""
    first = Memory(tmp_path / "m")
    kept = first.add("database password rotates on mondays", tier="long", tags=["ops"])
    first.add("scratch note about mondays", tier="working")
    first.close()
    second = Memory(tmp_path / "m")
    found = second.query("mondays")
    assert [item.id for item in found] == [kept]
    assert found[0].tags == ("ops",) and len(second) == 1
    second.close()


def test_short_term_items_expire(tmp_path: Path) -> None:
    """A short-term item is found before its TTL and neither found nor kept after."""
    clock = Clock()
    memory = Memory(tmp_path / "m", short_ttl=60, clock=clock)
    item = memory.add("temporary build id 9876", tier="short")
    memory.add("permanent build policy", tier="long")
    assert memory.get(item) is not None and memory.query("build")[0].id
    clock.now += 61
    assert memory.get(item) is None
    assert [i.tier for i in memory.query("build")] == ["long"]
    assert memory.expire() == 1 and len(memory) == 1


def test_tags_filter_and_forget(tmp_path: Path) -> None:
    """Tags narrow a query; forget removes an item and its index entries."""
    memory = Memory(tmp_path / "m")
    a = memory.add("deploy checklist step one", tags=["deploy"])
    memory.add("checklist for onboarding", tags=["hr"])
    assert [i.id for i in memory.query("checklist", tags=["deploy"])] == [a]
    assert memory.forget(a) and not memory.forget(a)
    assert [i.tags for i in memory.query("checklist")] == [("hr",)]


def test_without_a_path_everything_stays_in_process() -> None:
    """Memory(None) works the same, in process only."""
    memory = Memory(None)
    memory.add("alpha beta", tier="long")
    memory.add("beta gamma", tier="short")
    assert len(memory.query("beta")) == 2


def test_a_scorer_can_replace_keyword_ranking(tmp_path: Path) -> None:
    """The scorer is a seam (embeddings): here one that prefers shorter texts."""

    class Shortest:
        def score(self, query: str, items: Sequence[MemoryItem], stats: CorpusStats) -> list[float]:
            return [1.0 / len(item.text) for item in items]

    memory = Memory(tmp_path / "m", scorer=Shortest())
    memory.add("a long text about invoices and their many fields")
    short = memory.add("invoices")
    assert memory.query("invoices")[0].id == short


def test_bad_tier_and_closed_store_are_errors(tmp_path: Path) -> None:
    """An unknown tier is a ValueError; writing after close is a MemoryStoreError."""
    memory = Memory(tmp_path / "m")
    with pytest.raises(ValueError, match="tier"):
        memory.add("x", tier="forever")  # type: ignore[arg-type]
    memory.close()
    with pytest.raises(MemoryStoreError):
        memory.add("y")
