"""A test responder on `research.ask`: `researcher.py ENDPOINT NAME MODE`.

MODE: `ok` (answers at once), `slow:SECONDS` (answers after a while), `fail` (raises).
The answer is `{"by": NAME, "q": <the request's data>}`.
"""

import asyncio
import sys
from typing import Any

from loom import Actor, Event, on
from loom.logs import configure_logging


class Researcher(Actor):
    mode = "ok"

    @on("research.ask")
    async def ask(self, event: Event) -> dict[str, Any]:
        if self.mode == "fail":
            raise LookupError(f"{self.name} found nothing")
        if self.mode.startswith("slow:"):
            await asyncio.sleep(float(self.mode.split(":", 1)[1]))
        return {"by": self.name, "q": event.data}


if __name__ == "__main__":
    configure_logging()
    endpoint, name, mode = sys.argv[1:4]
    researcher = Researcher(name=name, broker=endpoint)
    researcher.mode = mode
    researcher.run()
