"""``time.now``: the current time, in a named time zone or the host's."""

from __future__ import annotations

import datetime
import zoneinfo

from typing_extensions import TypedDict

from loom.errors import UnknownTimeZoneError
from loom.tools._tool import tool
from loom.tools.sandbox._policy import Sandbox

__all__ = ["NowResult", "UnknownTimeZoneError", "time_now"]

_SANDBOX = Sandbox()
"""The defaults: no network, no files but the system's (the time zone database is under
``/usr``, which the launcher makes readable)."""


class NowResult(TypedDict):
    """What ``time.now`` returns."""

    iso: str
    """ISO 8601 with the zone's offset (``2024-05-01T14:03:07.123456+02:00``)."""
    unix: float
    """Seconds since the Unix epoch."""
    timezone: str
    """The zone's name as given, or the host's zone abbreviation (``CEST``, ``UTC``)."""


@tool(name="time.now", idempotent=True, sandbox=_SANDBOX)
def time_now(tz: str | None = None) -> NowResult:
    """The current date and time.

    Args:
        tz: an IANA time zone name (``Europe/Paris``, ``UTC``); none: the host's zone.

    Raises:
        UnknownTimeZoneError: ``tz`` is not a known time zone name.
    """
    if tz is None:
        moment = datetime.datetime.now().astimezone()
        name = moment.tzname() or "local"
        return {"iso": moment.isoformat(), "unix": moment.timestamp(), "timezone": name}
    try:
        zone = zoneinfo.ZoneInfo(tz)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise UnknownTimeZoneError(
            f"unknown time zone {tz!r}: give an IANA name such as 'Europe/Paris' or 'UTC'"
        ) from None
    moment = datetime.datetime.now(zone)
    return {"iso": moment.isoformat(), "unix": moment.timestamp(), "timezone": tz}
