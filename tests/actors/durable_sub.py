"""A test actor: a durable subscriber `audit` on `orders.*` that appends each handled
event's data, one line each, to the file named by $LOOM_TEST_AUDIT_FILE."""

import os
from pathlib import Path

from loom import Actor, Event, on


class Auditor(Actor):
    @on("orders.*", durable="audit")
    def record(self, event: Event) -> None:
        with Path(os.environ["LOOM_TEST_AUDIT_FILE"]).open("a") as out:
            out.write(f"{event.data}\n")
