"""A test actor process: start, emit N events as fast as it can, stop, exit."""

import asyncio
import sys

from loom import Actor
from loom.logs import configure_logging


async def main(broker: str, count: int, topic: str) -> None:
    actor = Actor(name="burst", broker=broker)
    await actor.start()
    for i in range(count):
        await actor.emit(topic, i)
    await actor.stop()


if __name__ == "__main__":
    configure_logging(level="warning")
    asyncio.run(main(sys.argv[1], int(sys.argv[2]), sys.argv[3]))
