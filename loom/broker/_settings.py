"""``BrokerSettings``: everything a broker is built from, validated, each default once."""

from __future__ import annotations

from pydantic import (
    Field,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
)

from loom.config import DEFAULT_BROKER, Section
from loom.protocol import DEFAULT_MAX_PAYLOAD, DEFAULT_MAX_TIMEOUT

__all__ = ["BrokerSettings"]


class BrokerSettings(Section):
    """``[broker]``: how ``loom-broker`` binds and forwards."""

    endpoint: str = DEFAULT_BROKER
    max_payload: PositiveInt = DEFAULT_MAX_PAYLOAD
    stall_timeout: PositiveFloat = 0.5
    hwm: PositiveInt = 1000
    queue_bytes: PositiveInt = 256 << 20
    """About how many bytes one connection's queue holds, each way, when its messages
    are as large as ``max_payload``: the high-water mark is lowered to fit."""
    name: str = Field(default="loom-broker", min_length=1)
    heartbeat: PositiveFloat = 1.0
    liveness: PositiveInt = 3
    call_timeout: PositiveFloat = 30.0
    max_queue: PositiveInt = 1000
    max_attempts: PositiveInt = 3
    max_call_timeout: PositiveFloat = Field(default=DEFAULT_MAX_TIMEOUT, allow_inf_nan=False)
    max_call_bytes: PositiveInt = 256 << 20
    """Bytes of arguments of the tool calls the broker holds at once; past it, OVERLOADED."""
    data_dir: str | None = None
    """Where the durable topics' LMDB log lives; without it, durable emits are refused."""
    durable_map_size: PositiveInt = 1 << 30
    durable_max_age: NonNegativeFloat = 0.0
    durable_max_bytes: NonNegativeInt = 0
    approval_timeout: PositiveFloat = 120.0
    """Seconds a call to a tool that needs approval waits before it is DENIED."""
    require_approval: tuple[str, ...] = ()
    """Tool name patterns (``fnmatch``) whose calls need approval, whatever workers say."""
    metrics_port: int = Field(default=0, ge=0, le=65535)
    """Serve Prometheus metrics at ``http://metrics_host:metrics_port/metrics`` (0: off)."""
    metrics_host: str = "127.0.0.1"
    dashboard_port: int = Field(default=0, ge=0, le=65535)
    """Serve the live dashboard at ``http://dashboard_host:dashboard_port/`` (0: off)."""
    dashboard_host: str = "127.0.0.1"
