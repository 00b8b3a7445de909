"""``loom-broker``: run a broker in the foreground until SIGINT or SIGTERM."""

from __future__ import annotations

import argparse
import signal
import sys
from types import FrameType

import zmq

from loom.broker.broker import Broker
from loom.config import broker_address
from loom.logs import configure_logging, get_logger
from loom.protocol import DEFAULT_MAX_PAYLOAD

EXAMPLES = """examples:
  loom-broker                                   # tcp://127.0.0.1:7700 or $LOOM_BROKER
  loom-broker --endpoint ipc:///tmp/loom.sock   # local peers only, faster
  loom-broker --endpoint tcp://0.0.0.0:7700 --log-json
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="loom-broker",
        description="Run a Loom broker: pub/sub proxy and control plane.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--endpoint",
        "--broker",
        dest="endpoint",
        help="control address to bind (default: $LOOM_BROKER or tcp://127.0.0.1:7700)",
    )
    parser.add_argument(
        "--max-payload",
        type=int,
        default=DEFAULT_MAX_PAYLOAD,
        help="largest payload forwarded, bytes (default: %(default)s)",
    )
    parser.add_argument(
        "--stall-timeout",
        type=float,
        default=0.5,
        help="seconds a full subscriber may stall delivery (default: %(default)s)",
    )
    parser.add_argument("--hwm", type=int, default=1000, help="socket high-water mark, messages")
    parser.add_argument("--name", default="loom-broker", help="broker name in logs and HELLO")
    parser.add_argument("--log-json", action="store_true", help="log one JSON object per line")
    parser.add_argument("--log-level", default="info", help="debug, info, warning, error")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging(json=args.log_json, level=args.log_level)
    log = get_logger("loom.broker")
    broker = Broker(
        broker_address(args.endpoint),
        max_payload=args.max_payload,
        stall_timeout=args.stall_timeout,
        hwm=args.hwm,
        name=args.name,
    )
    try:
        broker.bind()
    except (zmq.ZMQError, ValueError) as exc:
        log.error("cannot bind", endpoint=broker.endpoint, error=str(exc))
        return 1

    def stop(signum: int, frame: FrameType | None) -> None:
        broker.stop()

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    broker.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
