"""``BrokerSettings``: everything a broker is built from, validated, each default once."""

from __future__ import annotations

from pydantic import (
    Field,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    field_validator,
)

from loom.config import DEFAULT_BROKER, Section
from loom.errors import EndpointError
from loom.protocol import DEFAULT_MAX_PAYLOAD, DEFAULT_MAX_TIMEOUT, MAX_NAME_CHARS
from loom.session import check_endpoint

MAX_TIMEOUT = 1e9
"""The longest timeout a call can carry on the wire (seconds: 31 years)."""

__all__ = ["BrokerSettings", "SecuritySettings"]


class BrokerSettings(Section):
    """``[broker]``: how ``loom-broker`` binds and forwards."""

    endpoint: str = DEFAULT_BROKER
    """The control address to bind: ``tcp://HOST:PORT``, ``ipc:///PATH``, ``inproc://NAME``."""
    max_payload: PositiveInt = DEFAULT_MAX_PAYLOAD
    stall_timeout: PositiveFloat = 0.5
    hwm: PositiveInt = 1000
    queue_bytes: PositiveInt = 256 << 20
    """About how many bytes one connection's queue holds, each way, when its messages
    are as large as ``max_payload``: the high-water mark is lowered to fit."""
    name: str = Field(default="loom-broker", min_length=1, max_length=MAX_NAME_CHARS)
    heartbeat: PositiveFloat = 1.0
    liveness: PositiveInt = 3
    call_timeout: PositiveFloat = Field(default=30.0, le=MAX_TIMEOUT)
    max_queue: PositiveInt = 1000
    max_attempts: PositiveInt = 3
    max_call_timeout: PositiveFloat = Field(default=DEFAULT_MAX_TIMEOUT, le=MAX_TIMEOUT)
    max_call_bytes: PositiveInt = 256 << 20
    """Bytes of arguments of the tool calls the broker holds at once; past it, OVERLOADED."""
    data_dir: str | None = None
    """Where the durable topics' LMDB log lives; without it, durable emits are refused."""
    advertise: str | None = Field(
        default=None, pattern=r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._-]{1,253})$"
    )
    """The host peers on other machines reach this broker at (``broker.example``,
    ``10.0.0.5``, ``[fd00::5]``): HELLO announces the pub and sub endpoints there. Without
    it, a broker bound to a wildcard announces the wildcard and each peer puts in the
    host it reached the control endpoint at; that is wrong behind NAT or a proxy."""

    @field_validator("endpoint")
    @classmethod
    def _bindable(cls, endpoint: str) -> str:
        try:
            return check_endpoint(endpoint, bind=True)
        except EndpointError as exc:
            raise ValueError(str(exc)) from None

    @field_validator("data_dir")
    @classmethod
    def _a_real_path(cls, data_dir: str | None) -> str | None:
        if data_dir is not None and data_dir.strip() in ("", "None", "null"):
            raise ValueError(f"{data_dir!r} is not a directory (a missing value written out?)")
        return data_dir

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


class SecuritySettings(Section):
    """``[security]``: who may connect to the broker and what each identity may do."""

    insecure: bool = False
    """Run without CURVE: no identities, no rights, anyone who reaches the broker may do
    anything (logged loudly, said in HELLO and ``loom list``)."""
    key: str | None = None
    """The broker's secret key file (default: ``keys/broker.key_secret`` in the Loom
    home, made on first start)."""
    acl: str | None = None
    """The ACL file: enrolled identities and their rights (reloaded on SIGHUP). Without
    one, only the Loom home's own user connects, with every right."""
    audit_log: str | None = None
    """Where security events are appended as JSON lines (default: ``audit.jsonl`` in
    the Loom home; ``"off"``: nowhere)."""
    audit_max_bytes: PositiveInt = 64 << 20
    """The audit log is rotated past this size (one old file kept)."""
