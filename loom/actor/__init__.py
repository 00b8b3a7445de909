"""Actors: subclass :class:`Actor`, bind handlers with :func:`on`."""

from loom.actor.actor import Actor, ActorStats, on
from loom.actor.event import Event
from loom.protocol import Pattern

__all__ = ["Actor", "ActorStats", "Event", "Pattern", "on"]
