"""The broker: the pub/sub proxy, the control plane, the tool router and the durable log,
built from one validated :class:`BrokerSettings` and run by :class:`Broker`."""

from loom.broker._broker import Broker
from loom.broker._settings import BrokerSettings, SecuritySettings

__all__ = ["Broker", "BrokerSettings", "SecuritySettings"]
