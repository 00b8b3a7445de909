"""A test actor: emits N reliable events `orders.<i % 3>` with data i, in small paced
bursts, then prints `published N` once the broker acknowledged them all."""

import asyncio
import sys

from loom import Actor
from loom.logs import configure_logging


class Publisher(Actor):
    async def on_start(self) -> None:
        self._task = asyncio.create_task(self._publish(int(sys.argv[2])))

    async def _publish(self, count: int) -> None:
        for i in range(count):
            await self.emit(f"orders.{i % 3}", i, qos="reliable")
            if i % 20 == 19:
                await asyncio.sleep(0.005)
        left = await self.flush(60)
        print(f"published {count}, unacknowledged {left}", flush=True)


if __name__ == "__main__":
    configure_logging()
    Publisher(name="publisher", broker=sys.argv[1]).run()
