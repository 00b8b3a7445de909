"""Tools: ``@tool`` functions served by ``Worker`` processes, called through the broker."""

from loom.session import ActorInfo, Directory, ToolClient, ToolInfo, WorkerInfo
from loom.tools.tool import Tool, ToolContext, tool
from loom.tools.worker import Worker, WorkerStats

__all__ = [
    "ActorInfo",
    "Directory",
    "Tool",
    "ToolClient",
    "ToolContext",
    "ToolInfo",
    "Worker",
    "WorkerInfo",
    "WorkerStats",
    "tool",
]
