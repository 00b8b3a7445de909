"""Actors: subclass :class:`Actor`, bind handlers with :func:`on`."""

from loom.actor._actor import Actor, ActorStats, on
from loom.actor._event import Event, current_event
from loom.actor._gather import Assembled, Awarded, Gathered

__all__ = [
    "Actor",
    "ActorStats",
    "Assembled",
    "Awarded",
    "Event",
    "Gathered",
    "current_event",
    "on",
]
