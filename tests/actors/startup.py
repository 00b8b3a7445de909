"""A test actor that announces itself from on_start; what it hears after that it reports."""

import sys

from loom import Actor, Event, on
from loom.logs import configure_logging


class Startup(Actor):
    async def on_start(self) -> None:
        await self.emit(f"started.{self.name}", {"id": self.id})

    @on("first.*")
    async def first(self, event: Event) -> None:
        await self.emit(f"heard.{self.name}", event.data)


if __name__ == "__main__":
    configure_logging()
    Startup(name=sys.argv[2], broker=sys.argv[1]).run()
