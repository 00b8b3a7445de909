"""The Loom wire protocol: the one package that turns frames into objects and back.

* :mod:`loom.protocol._envelope`: the pub/sub plane, ``[topic, header, payload]``.
* :mod:`loom.protocol._commands`: the broker's ROUTER, control commands and tool calls.
* :mod:`loom.protocol._bodies`: every control body, typed.
* :mod:`loom.protocol._patterns`: topic patterns (``*``, ``**``) and their matching.
* :mod:`loom.protocol._pipe`: the frames between a worker and its sandbox processes.

``docs/protocol.md`` is the normative description; keep the two in step.
"""

from loom.protocol import _bodies, _commands, _envelope, _patterns, _pipe
from loom.protocol._bodies import *  # noqa: F403 - the package re-exports its modules
from loom.protocol._commands import *  # noqa: F403
from loom.protocol._envelope import *  # noqa: F403
from loom.protocol._patterns import *  # noqa: F403
from loom.protocol._pipe import *  # noqa: F403

__all__ = (
    _bodies.__all__ + _commands.__all__ + _envelope.__all__ + _patterns.__all__ + _pipe.__all__
)
