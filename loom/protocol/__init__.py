"""The Loom wire protocol: the one package that turns frames into objects and back.

* :mod:`loom.protocol.envelope`: the pub/sub plane, ``[topic, header, payload]``.
* :mod:`loom.protocol.commands`: the broker's ROUTER, control commands and tool calls.
* :mod:`loom.protocol.bodies`: every control body, typed.
* :mod:`loom.protocol.patterns`: topic patterns (``*``, ``**``) and their matching.

``docs/protocol.md`` is the normative description; keep the two in step.
"""

from loom.protocol import bodies, commands, envelope, patterns
from loom.protocol.bodies import *  # noqa: F403 - the package re-exports its modules
from loom.protocol.commands import *  # noqa: F403
from loom.protocol.envelope import *  # noqa: F403
from loom.protocol.patterns import *  # noqa: F403

__all__ = bodies.__all__ + commands.__all__ + envelope.__all__ + patterns.__all__
