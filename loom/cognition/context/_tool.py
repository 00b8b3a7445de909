"""``context.read``: the tool that gives the model back what was offloaded.

Serve it beside the file tools (``loom worker loom.cognition.context._tool:context_read``);
it reads the ``.offload`` store of the call's jail, which is the agent's workspace.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field
from typing_extensions import TypedDict

from loom.cognition.context._offload import OffloadStore, parse_ref
from loom.errors import JailRequiredError
from loom.tools import ToolContext, tool
from loom.tools.sandbox import Sandbox

__all__ = ["ReadResult", "context_read"]

_MAX_LENGTH = 100_000


class ReadResult(TypedDict):
    """What ``context.read`` returns."""

    ref: str
    offset: int
    size: int
    """The whole output's length in characters."""
    content: str
    next_offset: int | None
    """Where the next part starts; ``None`` at the end."""


@tool(name="context.read", idempotent=True, sandbox=Sandbox())
def context_read(
    ref: str,
    ctx: ToolContext,
    offset: Annotated[int, Field(ge=0)] = 0,
    length: Annotated[int, Field(ge=1, le=_MAX_LENGTH)] = 4000,
) -> ReadResult:
    """Read part of an output that was offloaded from the conversation (``offload://...``).

    Args:
        ref: the reference as shown, ``offload://`` and 16 hex digits.
        offset: the character to start at.
        length: how many characters to return.

    Raises:
        JailRequiredError: the call has no jail (no workspace to read from).
        OffloadRefError: ``ref`` is not a valid reference.
        OffloadMissingError: nothing is stored under it (it expired or never existed).
    """
    if ctx.jail is None:
        raise JailRequiredError("context.read needs a jail: the agent's workspace")
    store = OffloadStore(ctx.jail)
    ident = parse_ref(ref)
    content = store.read(ident, offset, length)
    size = store.record(ident).size
    end = offset + len(content)
    return {
        "ref": f"offload://{ident}",
        "offset": offset,
        "size": size,
        "content": content,
        "next_offset": end if end < size else None,
    }
