"""Every error Loom raises derives from :class:`LoomError`, and every one is here.

Names describe a state. Where an error is also a standard condition (a timeout, a bad
value, an un-encodable type) it subclasses the matching builtin too, so ``except
TimeoutError`` works as a caller expects. A broker's refusals (``ERROR`` answers) are
``RefusedError`` subclasses, one per code; a failed tool call a ``ToolError`` subclass,
one per code.
"""

from loom.errors import _cognition, _core, _refusals, _tools
from loom.errors._cognition import *  # noqa: F403 - the package is the tree, in one place
from loom.errors._core import *  # noqa: F403
from loom.errors._refusals import *  # noqa: F403
from loom.errors._refusals import refusal as refusal
from loom.errors._tools import *  # noqa: F403
from loom.errors._tools import tool_error as tool_error

__all__ = _core.__all__ + _refusals.__all__ + _tools.__all__ + _cognition.__all__
"""The error classes; ``tool_error`` and ``refusal`` make one from a wire code."""
