"""The broker: the pub/sub proxy, the control plane, the tool router, and the process that
runs them."""

from loom.broker.broker import Broker, derive_endpoints
from loom.broker.control import ControlPlane
from loom.broker.pubsub import PubSubProxy, TopicStats
from loom.broker.tools import ToolRouter

__all__ = ["Broker", "ControlPlane", "PubSubProxy", "ToolRouter", "TopicStats", "derive_endpoints"]
