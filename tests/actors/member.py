"""A test queue-group member: `member.py ENDPOINT NAME [redeliver] [hold]`.

Joins group `researchers` on `research.ask` (redelivering when `redeliver` is given);
answers `{"by": NAME, "q": data}`. With `hold`, a request whose data is `"hold"` waits
forever (to be killed holding it); other requests are answered at once. Events on
`research.note` are counted and reported on `member.<NAME>.count` requests.
"""

import asyncio
import sys
from typing import Any

from loom import Actor, Event, on
from loom.logs import configure_logging

REDELIVER = "redeliver" in sys.argv[3:]
HOLD = "hold" in sys.argv[3:]


class Member(Actor):
    notes = 0

    @on("research.ask", group="researchers", redeliver=REDELIVER)
    async def ask(self, event: Event) -> dict[str, Any]:
        if HOLD and event.data == "hold":
            print(f"holding {event.id}", flush=True)
            await asyncio.Event().wait()
        return {"by": self.name, "q": event.data}

    @on("research.note", group="researchers")
    def note(self, event: Event) -> None:
        self.notes += 1

    async def on_start(self) -> None:
        await self.subscribe(f"member.{self.name}.count", lambda event: self.notes)


if __name__ == "__main__":
    configure_logging()
    Member(name=sys.argv[2], broker=sys.argv[1]).run()
