"""A live web view of a mesh: topology, threads, metric cards and the tool-call timeline.

``loom dashboard`` serves it (``loom-broker --dashboard-port`` too); see
``docs/observability.md``.
"""

from loom.dashboard.server import Dashboard
from loom.dashboard.view import MeshView

__all__ = ["Dashboard", "MeshView"]
