"""``python -m loom.demo ROLE --broker ADDR``: run one demo actor (the demo's children)."""

from __future__ import annotations

import argparse

from loom.demo.actors import ACTORS
from loom.logs import configure_logging

parser = argparse.ArgumentParser(prog="python -m loom.demo")
parser.add_argument("role", choices=sorted(ACTORS))
parser.add_argument("--broker", required=True)
parser.add_argument("--log-json", action="store_true")
args = parser.parse_args()
configure_logging(json=args.log_json)
ACTORS[args.role](name=args.role, broker=args.broker).run()
