"""A test actor: counts `flood.*` events; answers `sink.count` with the count."""

import sys

from loom import Actor, Event, on
from loom.logs import configure_logging


class Sink(Actor):
    count = 0

    @on("flood.*")
    def flood(self, event: Event) -> None:
        self.count += 1

    @on("sink.count")
    def how_many(self, event: Event) -> int:
        return self.count


if __name__ == "__main__":
    configure_logging()
    Sink(name="sink", broker=sys.argv[1]).run()
