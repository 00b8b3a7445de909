"""The Loom wire protocol: the one package that turns frames into objects and back.

* :mod:`loom.protocol.envelope`: the pub/sub plane, ``[topic, header, payload]``.
* :mod:`loom.protocol.commands`: the broker's ROUTER, control commands and tool calls.

``docs/protocol.md`` is the normative description; keep the two in step.
"""

from loom.protocol import commands, envelope
from loom.protocol.commands import *  # noqa: F403 - the package re-exports both modules
from loom.protocol.envelope import *  # noqa: F403

__all__ = commands.__all__ + envelope.__all__
