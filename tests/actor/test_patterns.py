"""Pattern semantics, as a table."""

from __future__ import annotations

import pytest

from loom import PatternError
from loom.actor.patterns import Pattern, Router

CASES = [
    # pattern, topic, matches
    ("market.price", "market.price", True),
    ("market.price", "market.prices", False),
    ("market.price", "market.price.BTC", False),
    ("market.price.*", "market.price.BTC", True),
    ("market.price.*", "market.price", False),
    ("market.price.*", "market.price.BTC.usd", False),
    ("market.price.*", "market.prices.BTC", False),
    ("market.*.BTC", "market.price.BTC", True),
    ("market.*.BTC", "market.price.ETH", False),
    ("*", "a", True),
    ("*", "a.b", False),
    ("*.b", "a.b", True),
    ("market.**", "market", True),
    ("market.**", "market.price", True),
    ("market.**", "market.price.BTC.usd", True),
    ("market.**", "markets.price", False),
    ("market.**.usd", "market.usd", True),
    ("market.**.usd", "market.price.BTC.usd", True),
    ("market.**.usd", "market.price.BTC.eur", False),
    ("**", "anything.at.all", True),
    ("**", "x", True),
    ("**.x", "a.b.x", True),
    ("**.x", "x", True),
    ("a.**.b.**.c", "a.b.c", True),
    ("a.**.b.**.c", "a.1.b.2.3.c", True),
    ("a.**.b.**.c", "a.1.2.c", False),
    ("*.*", "a.b", True),
    ("*.*", "a", False),
    ("**", "$sys.actor.joined", False),
    ("*.actor.joined", "$sys.actor.joined", False),
    ("$sys.**", "$sys.actor.joined", True),
    ("$sys.actor.*", "$sys.actor.joined", True),
]


@pytest.mark.parametrize(("pattern", "topic", "expected"), CASES)
def test_pattern_table(pattern: str, topic: str, expected: bool) -> None:
    """Each pattern matches exactly the topics the table says."""
    assert Pattern(pattern).matches(topic) is expected


@pytest.mark.parametrize(
    ("pattern", "prefix"),
    [
        ("market.price", b"market.price"),
        ("market.price.*", b"market.price."),
        ("market.*.BTC", b"market."),
        ("market.**", b"market"),
        ("a.b.**.c", b"a.b"),
        ("*", b""),
        ("**", b""),
        ("$sys.**", b"$sys"),
    ],
)
def test_zmq_prefix_is_the_longest_literal_prefix(pattern: str, prefix: bytes) -> None:
    """The zmq-level subscription is the longest literal prefix that loses no match."""
    assert Pattern(pattern).prefix == prefix


@pytest.mark.parametrize("bad", ["", "a..b", ".a", "a.", "pri*", "a.b*c", "a.**x"])
def test_invalid_patterns_raise(bad: str) -> None:
    """Malformed patterns raise PatternError, which is also a ValueError."""
    with pytest.raises(PatternError):
        Pattern(bad)
    with pytest.raises(ValueError):
        Pattern(bad)


def test_router_caches_per_topic_and_resets_on_add() -> None:
    """The router caches each topic's handlers and recomputes after a new binding."""
    router: Router[str] = Router()
    router.add("a.*", "h1")
    assert router.match(b"a.b") == ("h1",)
    router.add("a.**", "h2")
    assert router.match(b"a.b") == ("h1", "h2")
    assert router.match(b"a") == ("h2",)
    assert router.match(b"b") == ()
    assert router.prefixes() == {b"a.", b"a"}
