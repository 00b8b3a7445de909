"""The mapping of Loom topics and subscription prefixes to NATS subjects."""

from __future__ import annotations

import pytest

from loom.federation import (
    pattern_subjects,
    prefix_subjects,
    subject_topic,
    tool_subject,
    topic_subject,
)

pytestmark = pytest.mark.timeout(10)


@pytest.mark.parametrize(
    "topic",
    [
        "market.price.BTC",
        "a",
        "weird.tok>en.with space",
        "~tilde.first",
        "sym.*x*.>",
        "ünïcödé.令牌",
        "a.b-c_d:e@f+g=h,i",
    ],
)
def test_topics_map_to_subjects_and_back(topic: str) -> None:
    subject = topic_subject("loom.ev", topic)
    assert subject.startswith("loom.ev.")
    tokens = subject.split(".")
    assert all(t and t not in ("*", ">") and " " not in t for t in tokens)
    assert subject.count(".") == topic.count(".") + 2  # one subject token per topic token
    assert subject_topic("loom.ev", subject) == topic


def test_plain_tokens_stay_readable() -> None:
    assert topic_subject("loom.ev", "market.price.BTC") == "loom.ev.market.price.BTC"
    assert topic_subject("x.ev", "a.b>c") == "x.ev.a.~Yj5j"


@pytest.mark.parametrize(
    ("prefix", "subjects"),
    [
        (b"", ["loom.ev.>"]),
        (b"market.", ["loom.ev.market.>"]),
        (b"market.price", ["loom.ev.market.price", "loom.ev.market.price.>"]),
        (b"a b.", ["loom.ev.~YSBi.>"]),
        (b"\xff\xfe", ["loom.ev.>"]),  # not UTF-8: widened, the receiver filters
        (b"a..b", ["loom.ev.>"]),
    ],
)
def test_a_subscription_prefix_covers_every_topic_it_can_match(
    prefix: bytes, subjects: list[str]
) -> None:
    assert prefix_subjects("loom.ev", prefix) == subjects


def test_refused_subjects() -> None:
    with pytest.raises(ValueError, match="not under"):
        subject_topic("loom.ev", "other.x")
    for bad in ("~!!", "~YQ", "~", "~_-8"):  # not base64url; "a" spelled encoded; empty
        with pytest.raises(ValueError, match="not an encoded"):
            subject_topic("loom.ev", f"loom.ev.{bad}")


def test_tool_names_are_subjects() -> None:
    assert tool_subject("loom.tool", "sample.add") == "loom.tool.sample.add"


@pytest.mark.parametrize(
    ("pattern", "subjects"),
    [
        ("orders.*", ["loom.dur.orders.*"]),
        ("orders.**", ["loom.dur.orders", "loom.dur.orders.>"]),
        ("**", ["loom.dur.>"]),
        ("a.**.z", ["loom.dur.a", "loom.dur.a.>"]),  # wider: the link filters by pattern
        ("a b.c", ["loom.dur.~YSBi.c"]),
    ],
)
def test_a_pattern_is_covered_by_stream_filters(pattern: str, subjects: list[str]) -> None:
    assert pattern_subjects("loom.dur", pattern) == subjects
