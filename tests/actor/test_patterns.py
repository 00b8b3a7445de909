"""Pattern semantics, as a table."""

from __future__ import annotations

import pytest

from loom.actor._router import Router
from loom.errors import PatternError, TopicError
from loom.protocol import Pattern, encode_topic

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
    assert router.route(b"a.b")[1] == ("h1",)
    router.add("a.**", "h2")
    assert router.route(b"a.b")[1] == ("h1", "h2")
    assert router.route(b"a")[1] == ("h2",)
    assert router.route(b"b")[1] == ()
    assert router.prefixes() == {b"a.", b"a"}


def _reference(pattern: tuple[str, ...], topic: tuple[str, ...]) -> bool:
    """Plain recursion over tokens (exponential in ``**``): the semantics, for small cases."""
    if not pattern:
        return not topic
    head, rest = pattern[0], pattern[1:]
    if head == "**":
        return any(_reference(rest, topic[k:]) for k in range(len(topic) + 1))
    return bool(topic) and head in ("*", topic[0]) and _reference(rest, topic[1:])


def test_matching_agrees_with_the_recursive_definition() -> None:
    """On every small pattern and topic over a few tokens, the NFA answers as the
    recursive definition does (collapsed `**`, `*`, literals)."""
    import itertools
    import random

    rnd = random.Random(7)
    words = ["a", "b", "*", "**"]
    for _ in range(3000):
        pattern = tuple(rnd.choice(words) for _ in range(rnd.randint(1, 6)))
        topic = tuple(rnd.choice("abc") for _ in range(rnd.randint(1, 7)))
        assert Pattern(".".join(pattern)).matches(".".join(topic)) is _reference(pattern, topic)
    for length in range(1, 4):
        for topic in itertools.product("ab", repeat=length):
            assert Pattern("**.**.a.**").matches(".".join(topic)) is ("a" in topic)


def test_hostile_patterns_match_in_linear_time() -> None:
    """`a.**.**...**.z` against a long topic that almost matches took exponential time;
    it is now one pass over the topic (the test would run into its timeout before)."""
    hostile = Pattern(".".join(["a", *["**"] * 60, "z"]))
    interleaved = Pattern(".".join(["a", "**", "b"] * 40))
    topic = ".".join(["a", *["b"] * 126])
    for _ in range(100):
        assert not hostile.matches(topic)
        assert not interleaved.matches(topic)
    assert hostile.matches(topic + ".z")


def test_patterns_and_topics_are_bounded() -> None:
    """More than 128 tokens, or more than 1024 bytes, is refused with a clear error."""
    with pytest.raises(PatternError, match="129 tokens"):
        Pattern(".".join(["a"] * 129))
    with pytest.raises(PatternError, match="1024 bytes"):
        Pattern("a" * 1025)
    assert Pattern(".".join(["a"] * 128)).matches(".".join(["a"] * 128))
    with pytest.raises(TopicError, match="129 tokens"):
        encode_topic(".".join(["a"] * 129))
