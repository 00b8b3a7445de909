"""``time.now``: the current time in a named zone or the host's."""

from __future__ import annotations

import datetime
import time

import pytest

from loom.tools.builtin import UnknownTimeZoneError, time_now


def test_named_zone() -> None:
    """A named zone gives its offset and echoes its name."""
    before = time.time()
    result = time_now.fn(tz="UTC")
    assert result["timezone"] == "UTC"
    assert result["iso"].endswith("+00:00")
    assert before - 1 <= result["unix"] <= time.time() + 1
    moment = datetime.datetime.fromisoformat(result["iso"])
    assert abs(moment.timestamp() - result["unix"]) < 1e-3


def test_zone_offset_is_applied() -> None:
    """The ISO time carries the zone's own offset."""
    result = time_now.fn(tz="Asia/Kolkata")
    assert result["iso"].endswith("+05:30")
    assert result["timezone"] == "Asia/Kolkata"


def test_host_zone_by_default() -> None:
    """Without tz the host's zone is used and named."""
    result = time_now.fn()
    moment = datetime.datetime.fromisoformat(result["iso"])
    assert moment.tzinfo is not None
    assert result["timezone"]
    assert abs(moment.timestamp() - time.time()) < 5


@pytest.mark.parametrize("tz", ["Mars/Olympus", "", "../../etc/passwd", "/etc/passwd"])
def test_unknown_zone_is_a_clear_error(tz: str) -> None:
    """A name that is not a time zone says so and suggests a form."""
    with pytest.raises(UnknownTimeZoneError, match=r"unknown time zone .* IANA name"):
        time_now.fn(tz=tz)
