"""A test actor: answers ping.* and echoes them as pong.*; fail.* raises."""

import sys

from loom import Actor, Event, on
from loom.logs import configure_logging


class Echo(Actor):
    @on("ping.*")
    async def handle(self, event: Event) -> dict[str, object]:
        await self.emit("pong." + event.topic.split(".")[1], event.data)
        return {"ok": True, "data": event.data, "from": self.name}

    @on("fail.*")
    def fail(self, event: Event) -> None:
        raise ValueError(f"asked to fail: {event.data}")

    @on("echo.stats")
    def stats_(self, event: Event) -> dict[str, object]:
        s = self.stats
        return {"handled": s.handled, "errors": s.errors, "drops": dict(s.drops.counts)}


if __name__ == "__main__":
    configure_logging()
    Echo(name=sys.argv[2] if len(sys.argv) > 2 else "echo", broker=sys.argv[1]).run()
