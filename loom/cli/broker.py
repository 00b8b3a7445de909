"""``loom-broker``: run a broker in the foreground until SIGINT or SIGTERM."""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path
from types import FrameType
from typing import Any

import zmq

from loom.broker import Broker, BrokerSettings, SecuritySettings
from loom.cli._parent import PARENT, die_with_parent
from loom.cli.federate import SETTINGS_ENV
from loom.config import (
    FederationSettings,
    LogSettings,
    broker_address,
    read_settings,
    validated,
)
from loom.errors import ConfigError, LoomError
from loom.logs import configure_logging, get_logger
from loom.session import reachable_endpoint

EXAMPLES = """examples:
  loom-broker                                   # tcp://127.0.0.1:7700 or $LOOM_BROKER
  loom-broker --endpoint ipc:///tmp/loom-$USER/broker.sock   # local peers only, faster
  loom-broker --endpoint tcp://0.0.0.0:7700 --log-json
  loom-broker --config configs/loom.toml
  loom-broker --metrics-port 9464              # Prometheus at http://127.0.0.1:9464/metrics
  loom-broker --dashboard-port 7780            # live dashboard at http://127.0.0.1:7780/
  loom-broker --acl acl.toml                   # enrolled identities and their rights
  kill -HUP PID                                # read the ACL file again, peers stay
  loom-broker --insecure                       # no CURVE, no rights: trusted networks only
  loom-broker --federate nats://10.0.0.5:4222  # join other brokers through NATS
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="loom-broker",
        description="Run a Loom broker: pub/sub proxy and control plane.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config", help="a settings file ([broker] and [log] sections)")
    parser.add_argument(
        "--endpoint",
        "--broker",
        dest="endpoint",
        help="control address to bind (default: $LOOM_BROKER, the config, tcp://127.0.0.1:7700)",
    )
    parser.add_argument("--max-payload", type=int, help="largest payload forwarded, bytes")
    parser.add_argument(
        "--stall-timeout", type=float, help="seconds a full subscriber may stall delivery"
    )
    parser.add_argument("--hwm", type=int, help="socket high-water mark, messages")
    parser.add_argument(
        "--queue-bytes",
        type=int,
        help="bytes one connection's queue may hold with large messages (256 MiB)",
    )
    parser.add_argument("--name", help="broker name in logs and HELLO")
    parser.add_argument("--heartbeat", type=float, help="seconds between heartbeats (default 1)")
    parser.add_argument(
        "--liveness", type=int, help="missed heartbeats before a peer is dead (default 3)"
    )
    parser.add_argument(
        "--call-timeout", type=float, help="tool call timeout when none is given (default 30)"
    )
    parser.add_argument("--max-queue", type=int, help="tool calls waiting per tool (default 1000)")
    parser.add_argument(
        "--max-attempts", type=int, help="dispatches of an idempotent call (default 3)"
    )
    parser.add_argument(
        "--max-call-timeout", type=float, help="the longest call timeout granted (default 3600)"
    )
    parser.add_argument(
        "--max-call-bytes", type=int, help="bytes of tool-call arguments held (256 MiB)"
    )
    parser.add_argument("--data-dir", help="directory of the durable topics' LMDB log")
    parser.add_argument(
        "--advertise",
        metavar="HOST",
        help="the host peers elsewhere reach this broker at (announced for pub and sub)",
    )
    parser.add_argument("--durable-map-size", type=int, help="largest log size, bytes (1 GiB)")
    parser.add_argument("--durable-max-age", type=float, help="seconds events are kept (0: ever)")
    parser.add_argument("--durable-max-bytes", type=int, help="log bytes kept (0: no cap)")
    parser.add_argument(
        "--approval-timeout",
        type=float,
        help="seconds a call waits for an approver before DENIED (default 120)",
    )
    parser.add_argument(
        "--require-approval",
        action="append",
        metavar="PATTERN",
        help="tools (shell-style pattern, e.g. 'fs.delete' or 'shell.*') whose calls need "
        "approval whatever their workers say; repeatable",
    )
    parser.add_argument(
        "--metrics-port", type=int, help="serve Prometheus metrics on this port (0: off)"
    )
    parser.add_argument(
        "--metrics-host", help="address of the metrics endpoint (default 127.0.0.1)"
    )
    parser.add_argument(
        "--dashboard-port", type=int, help="serve the live dashboard on this port (0: off)"
    )
    parser.add_argument("--dashboard-host", help="address of the dashboard (default 127.0.0.1)")
    parser.add_argument(
        "--insecure",
        action="store_true",
        default=None,
        help="run without CURVE: no identities, no rights, anyone who reaches the broker may"
        " do anything (peers connect with --key none)",
    )
    parser.add_argument(
        "--key",
        metavar="FILE",
        help="the broker's secret key file (default: keys/broker.key_secret in the Loom home)",
    )
    parser.add_argument(
        "--acl", metavar="FILE", help="the ACL file: identities and their rights (SIGHUP rereads)"
    )
    parser.add_argument(
        "--audit-log",
        metavar="PATH",
        help="where security events go, JSON lines (default: audit.jsonl in the Loom home;"
        " 'off': nowhere)",
    )
    parser.add_argument(
        "--audit-max-bytes", type=int, help="rotate the audit log past this size (64 MiB)"
    )
    parser.add_argument(
        "--federate",
        metavar="URLS",
        help="NATS URLs, comma-separated: start this broker's federation link, which joins"
        " it to the other brokers there ([federation] in the config; docs/federation.md)",
    )
    parser.add_argument(
        "--log-json", action="store_true", default=None, help="log one JSON object per line"
    )
    parser.add_argument("--log-level", help="debug, info, warning, error")
    return parser


SECTIONS = frozenset(("broker", "security", "log", "worker", "tools", "llm", "federation"))
"""The tables of a settings file (``loom-broker`` reads ``[broker]`` and ``[log]``; the
others belong to other programs, which check them)."""


def federation_from(args: argparse.Namespace) -> FederationSettings:
    """``[federation]`` of the config file, its servers replaced by ``--federate``'s.

    Raises:
        ConfigError: the table or a URL is invalid.
    """
    data = read_settings(args.config) if args.config else {}
    table = dict(data.get("federation", {}))
    if args.federate:
        table["servers"] = [url.strip() for url in args.federate.split(",") if url.strip()]
    return validated(FederationSettings, table, args.config or "--federate", "federation.")


def settings_from(
    args: argparse.Namespace,
) -> tuple[BrokerSettings, SecuritySettings, LogSettings]:
    """Flags over ``$LOOM_BROKER`` over the config file over defaults.

    Raises:
        ConfigError: the config file or a flag's value is invalid.
    """
    data = read_settings(args.config) if args.config else {}
    where = args.config or "settings"
    unknown = sorted(set(data) - SECTIONS)
    if unknown:
        raise ConfigError(f"{where}: unknown section {unknown[0]!r}")
    base = validated(BrokerSettings, data.get("broker", {}), where, "broker.")
    secure = validated(SecuritySettings, data.get("security", {}), where, "security.")
    log = validated(LogSettings, data.get("log", {}), where, "log.")
    flags = {field: getattr(args, field) for field in BrokerSettings.model_fields}  # one flag each
    flags["endpoint"] = broker_address(args.endpoint, fallback=base.endpoint)
    broker = validated(BrokerSettings, {**base.model_dump(), **_given(flags)}, "command line")
    logs = {"json": args.log_json, "level": args.log_level}
    log = validated(LogSettings, {**log.model_dump(by_alias=True), **_given(logs)}, "command line")
    flags = {field: getattr(args, field, None) for field in SecuritySettings.model_fields}
    flags = {**secure.model_dump(), **_given(flags)}
    if args.config:  # a path in the file is relative to the file
        for field in ("key", "acl", "audit_log"):
            value = flags[field]
            if value and value != "off" and getattr(args, field, None) is None:
                flags[field] = str(Path(args.config).parent / Path(value).expanduser())
    security = validated(SecuritySettings, flags, "command line")
    return broker, security, log


def _given(values: dict[str, object]) -> dict[str, object]:
    return {key: value for key, value in values.items() if value is not None}


def main(argv: list[str] | None = None) -> int:
    die_with_parent()
    args = build_parser().parse_args(argv)
    try:
        settings, security, logs = settings_from(args)
        federation = federation_from(args)
    except ConfigError as exc:
        print(f"loom-broker: {exc}", file=sys.stderr)
        return 2
    configure_logging(json=logs.json_lines, level=logs.level)
    log = get_logger("loom.broker")
    broker = Broker(settings, security=security, federation=federation)
    try:
        broker.bind()
    except (zmq.ZMQError, LoomError, OSError) as exc:
        log.error("cannot bind", endpoint=broker.endpoint, error=str(exc))
        return 1
    link = None
    if federation.servers:
        link = LinkChild(broker.endpoint, federation, security, logs, log)
        link.start()

    def stop(signum: int, frame: FrameType | None) -> None:
        broker.stop()

    def reload(signum: int, frame: FrameType | None) -> None:
        broker.reload()

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGHUP, reload)
    try:
        broker.run()
    finally:
        if link is not None:
            link.stop()
    return 0


class LinkChild:
    """The broker's federation link as a child process (``loom federate``), started
    again when it dies, ended with the broker (and by the kernel if the broker is
    killed outright)."""

    def __init__(
        self,
        endpoint: str,
        federation: FederationSettings,
        security: SecuritySettings,
        logs: LogSettings,
        log: Any,
    ) -> None:
        command = [sys.executable, "-m", "loom.cli.main", "federate"]
        command += ["--broker", reachable_endpoint(endpoint), "--timeout", "30"]
        if security.insecure:
            command += ["--key", "none"]
        elif security.key:
            command += ["--key", str(Path(security.key).expanduser().absolute())]
        if logs.json_lines:
            command.append("--log-json")
        command += ["--log-level", logs.level]
        self._command = command
        self._env = {
            **os.environ,
            PARENT: str(os.getpid()),
            SETTINGS_ENV: json.dumps(federation.model_dump(mode="json", by_alias=True)),
        }
        self._log = log
        self._stopping = threading.Event()
        self._process: subprocess.Popen[bytes] | None = None
        self._thread = threading.Thread(target=self._keep, name="loom-federation", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _keep(self) -> None:
        delay = 1.0
        while not self._stopping.is_set():
            self._process = subprocess.Popen(self._command, env=self._env)
            code = self._process.wait()
            if self._stopping.is_set():
                return
            if code == 2:  # settings it cannot use: again would not help
                self._log.error("federation link failed: this broker stays local", code=code)
                return
            self._log.warning("federation link exited: starting it again", code=code, after=delay)
            self._stopping.wait(delay)
            delay = min(delay * 2, 30.0)

    def stop(self) -> None:
        self._stopping.set()
        process = self._process
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(5.0)
            except subprocess.TimeoutExpired:
                process.kill()
        self._thread.join(5.0)


if __name__ == "__main__":
    sys.exit(main())
