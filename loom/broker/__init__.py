"""The broker: the pub/sub proxy, the control plane, and the process that runs them."""

from loom.broker.broker import Broker, derive_endpoints
from loom.broker.control import ControlPlane
from loom.broker.pubsub import PubSubProxy, TopicStats

__all__ = ["Broker", "ControlPlane", "PubSubProxy", "TopicStats", "derive_endpoints"]
