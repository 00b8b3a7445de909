"""A sub-agent's process: ``python -m loom.cognition._child`` with its config as one JSON
line on stdin.

Started by :meth:`CognitiveActor.delegate`. It reads its goal and LLM settings from that
line (the API key, if any, from the environment variable the settings name: this is the
program's edge), works on the goal, and answers its parent's requests on
``agent.<name>.result``: each is held up to a second, answered ``None`` while the work
goes on, then with the result. It stops when its stdin closes (the parent is done with
it, or died) or after ``lifetime`` seconds.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any

from loom.actor import Event
from loom.cognition._actor import CognitiveActor
from loom.cognition._agent import AgentResult
from loom.cognition._config import LLMSettings, resolve_api_key
from loom.cognition._provider import ChatClient
from loom.logs import configure_logging

_HOLD = 1.0


class SubAgent(CognitiveActor):
    """A cognitive actor that works on one goal, hands the result over, and ends."""

    goal = ""

    async def on_start(self) -> None:
        await super().on_start()
        self._work = asyncio.ensure_future(self._attempt())
        await self.subscribe(f"agent.{self.name}.result", self._on_result)

    async def _attempt(self) -> AgentResult:
        try:
            return await self.think(self.goal)
        except Exception as exc:
            return AgentResult(status="failed", error=f"{type(exc).__name__}: {exc}")

    async def _on_result(self, event: Event) -> dict[str, Any] | None:
        done, _ = await asyncio.wait({self._work}, timeout=_HOLD)
        return self._work.result().model_dump() if done else None


async def _parent_gone() -> None:
    """Returns when stdin closes: the parent is done with us, or died."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while await reader.read(4096):
        pass


async def _main(config: dict[str, Any]) -> int:
    settings = LLMSettings.model_validate(config["llm"])
    llm = ChatClient(settings, api_key=resolve_api_key(settings, os.environ))
    agent = SubAgent(
        config["name"],
        config["broker"],
        llm=llm,
        llm_settings=settings,
        tools=config.get("tools", ("*",)),
        max_steps=config.get("max_steps", 10),
        token_budget=config.get("token_budget", 50_000),
        workspace=Path(config["workspace"]) if config.get("workspace") else None,
    )
    agent.goal = config["goal"]
    await agent.start()
    try:
        await asyncio.wait_for(_parent_gone(), config.get("lifetime", 3600))
    except TimeoutError:
        return 1
    finally:
        await agent.stop()
    return 0


def main() -> None:
    """Entry point."""
    configure_logging(level="warning")
    sys.exit(asyncio.run(_main(json.loads(sys.stdin.buffer.readline()))))


if __name__ == "__main__":
    main()
