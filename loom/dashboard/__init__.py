"""A live web view of a mesh: topology, threads, metric cards and the tool-call timeline.

``loom dashboard`` serves it (``loom-broker --dashboard-port`` too, from a thread:
:class:`DashboardThread`); see ``docs/observability.md``. It needs aiohttp
(``pip install 'loom-mesh[dashboard]'``).
"""

from loom.dashboard._server import Dashboard
from loom.dashboard._thread import DashboardThread
from loom.dashboard._view import MeshView

__all__ = ["Dashboard", "DashboardThread", "MeshView"]
