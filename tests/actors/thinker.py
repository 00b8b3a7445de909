"""A test cognitive actor: `thinker.py ENDPOINT BASE_URL NAME [BUDGET] [MEMORY_DIR]`.

Thinks with the LLM at BASE_URL (the scripted stand-in), uses the mesh's `sample.*`
tools (or the comma-separated patterns of `$THINKER_TOOLS`); `agent.<NAME>.delegate`
spawns a sub-agent with the request's goal; `agent.<NAME>.remember` / `.recall` use its
memory.
"""

import os
import sys
from pathlib import Path
from typing import Any

from loom import Event, on
from loom.cognition._actor import CognitiveActor
from loom.cognition._config import LLMSettings
from loom.cognition._provider import ChatClient
from loom.logs import configure_logging


class Thinker(CognitiveActor):
    @on("thinker.delegate")
    async def delegate_(self, event: Event) -> dict[str, Any]:
        if event.data.get("broken"):  # a child that cannot start: its key is missing
            self.llm_settings = LLMSettings(
                base_url=self.llm_settings.base_url,  # type: ignore[union-attr]
                model="m",
                api_key_env="LOOM_TEST_KEY_THAT_IS_NOT_SET",
            )
        result = await self.delegate(event.data["goal"], deadline=30)
        return result.model_dump()

    @on("thinker.remember")
    def remember(self, event: Event) -> str:
        return self.memory.add(event.data["text"], tier="long")

    @on("thinker.recall")
    def recall(self, event: Event) -> list[str]:
        return [item.text for item in self.memory.query(event.data["query"])]


if __name__ == "__main__":
    configure_logging()
    endpoint, base_url, name = sys.argv[1:4]
    budget = int(sys.argv[4]) if len(sys.argv) > 4 else 200_000
    memory = Path(sys.argv[5]) if len(sys.argv) > 5 else None
    settings = LLMSettings(base_url=base_url, model="scripted", max_retries=2, backoff=0.01)
    Thinker(
        name,
        endpoint,
        llm=ChatClient(settings),
        llm_settings=settings,
        tools=tuple(os.environ.get("THINKER_TOOLS", "sample.*").split(",")),
        token_budget=budget,
        memory_dir=memory,
    ).run()
