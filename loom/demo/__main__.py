"""``python -m loom.demo ROLE --broker ADDR``: run one demo actor, or the demo's tool
worker (``worker``): the children of ``loom demo``."""

from __future__ import annotations

import argparse

from loom.demo.actors import ACTORS
from loom.demo.tools import TOOLS
from loom.logs import configure_logging
from loom.tools import Worker

parser = argparse.ArgumentParser(prog="python -m loom.demo")
parser.add_argument("role", choices=[*sorted(ACTORS), "worker"])
parser.add_argument("--broker", required=True)
parser.add_argument("--log-json", action="store_true")
args = parser.parse_args()
configure_logging(json=args.log_json)
if args.role == "worker":
    Worker(TOOLS, broker=args.broker, name="demo-worker", grace=2.0).run()
else:
    ACTORS[args.role](name=args.role, broker=args.broker).run()
