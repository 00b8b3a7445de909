"""AgentLoop on its own: a real ChatClient against the scripted server, a local toolbox."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from loom.cognition import AgentLoop, ChatClient, LLMSettings, ScriptedLLM


class Adder:
    """A toolbox with one tool, `math.add`."""

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []

    async def specs(self) -> list[dict[str, Any]]:
        schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
        return [{"name": "math.add", "description": "Add.", "schema": schema}]

    async def call(self, name: str, args: dict[str, Any]) -> Any:
        self.calls.append(args)
        return sum(args.values())


def run(script: list[dict[str, Any]], **options: Any) -> tuple[Any, Adder, list[Any]]:
    tools = Adder()

    async def go() -> Any:
        with ScriptedLLM(script) as llm:
            settings = LLMSettings(base_url=llm.base_url, model="m", backoff=0.001)
            async with ChatClient(settings) as client:
                result = await AgentLoop(client, tools, **options).run("add things")
            return result, llm.requests

    result, requests = asyncio.run(go())
    return result, tools, requests


def test_the_budget_holds_when_the_server_reports_no_usage() -> None:
    """A server that counts no tokens: the loop estimates them, and the budget still
    ends the run before the tool runs."""
    args = json.dumps({"a": 1, "b": 2})
    script = [{"reply": {"tool_calls": [{"name": "math__add", "arguments": args}], "usage": {}}}]
    result, tools, _ = run(script, token_budget=20, stream=False)
    assert result.status == "budget_exhausted" and result.usage["total_tokens"] > 20
    assert tools.calls == []


def test_parallel_calls_each_get_their_own_answer() -> None:
    """Two calls in one turn, one failing (bad JSON): two tool messages, matching ids."""
    calls = [
        {"name": "math__add", "arguments": json.dumps({"a": 1, "b": 2})},
        {"name": "math__add", "arguments": "{oops"},
    ]
    script = [{"reply": {"tool_calls": calls}}, {"reply": {"content": "3"}}]
    result, tools, requests = run(script)
    assert result.status == "answered" and tools.calls == [{"a": 1, "b": 2}]
    messages = requests[1]["messages"]
    asked = [call["id"] for call in messages[-3]["tool_calls"]]
    answered = [m["tool_call_id"] for m in messages[-2:] if m["role"] == "tool"]
    assert asked == answered and len(asked) == 2
