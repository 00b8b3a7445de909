"""Tools: ``@tool`` functions served by ``Worker`` processes, called through the broker."""

from loom.session import ActorInfo, Directory, ToolClient, ToolInfo, WorkerInfo
from loom.tools._config import ToolSettings, WorkerSettings
from loom.tools._loader import configure_tools, load_tools
from loom.tools._tool import SchemaTool, Tool, ToolContext, tool
from loom.tools._worker import Worker, WorkerStats

__all__ = [
    "ActorInfo",
    "Directory",
    "SchemaTool",
    "Tool",
    "ToolClient",
    "ToolContext",
    "ToolInfo",
    "ToolSettings",
    "Worker",
    "WorkerInfo",
    "WorkerSettings",
    "WorkerStats",
    "configure_tools",
    "load_tools",
    "tool",
]
