"""A test contract-net bidder on `jobs.translate`: `bidder.py ENDPOINT NAME PRICE|refuse [DELAY]`.

Bids `{"price": PRICE}` (after DELAY seconds: a late bid), or refuses; when awarded,
returns `{"done_by": NAME, "task": task}`; a reject is recorded and answered on
`bidder.<NAME>.rejected`.
"""

import asyncio
import sys
from typing import Any

from loom import Actor, Event, on
from loom.logs import configure_logging


class Bidder(Actor):
    price = "refuse"
    delay = 0.0
    rejected = False

    @on("jobs.translate")
    async def job(self, event: Event) -> Any:
        data = event.data
        if data["phase"] == "cfp":
            if self.price == "refuse":
                return {"refuse": "too busy"}
            await asyncio.sleep(self.delay)
            return {"price": float(self.price)}
        if data["phase"] == "award" and data["to"] == self.name:
            return {"done_by": self.name, "task": data["task"]}
        if data["phase"] == "reject" and self.name in data["to"]:
            self.rejected = True
        return None

    async def on_start(self) -> None:
        await self.subscribe(f"bidder.{self.name}.rejected", lambda event: self.rejected)


if __name__ == "__main__":
    configure_logging()
    endpoint, name, price = sys.argv[1:4]
    bidder = Bidder(name=name, broker=endpoint)
    bidder.price = price
    bidder.delay = float(sys.argv[4]) if len(sys.argv) > 4 else 0.0
    bidder.run()
