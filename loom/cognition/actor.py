"""``CognitiveActor``: an actor that thinks with an LLM, acts through mesh tools,
remembers, and delegates to sub-agents.

Give it a task by request on ``agent.<name>.task`` (``{"task": "..."}``; the reply is the
:class:`~loom.cognition.agent.AgentResult`) or call ``await self.think(task)``. Its
steps are emitted on ``agent.<name>.<kind>`` (start, thought, token, tool_call,
observation, answer, end).
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from loom.actor import Actor, Event
from loom.cognition.agent import AgentLoop, AgentResult, MeshTools
from loom.cognition.config import LLMSettings
from loom.cognition.context import ContextConfig, ContextManager
from loom.cognition.memory import Memory
from loom.cognition.provider import ChatClient
from loom.errors import RequestTimeoutError

__all__ = ["CognitiveActor"]


class CognitiveActor(Actor):
    """An actor with a mind: an LLM, mesh tools, memory tiers, sub-agents.

    Args:
        name: the actor's name (also its topic space ``agent.<name>.*``).
        broker: the broker's control endpoint.
        llm: the provider it thinks with (closed when the actor stops).
        llm_settings: how ``llm`` was configured, handed to sub-agents (with
            ``api_key_env``, the key travels in the child's environment, never in
            arguments).
        tools: shell-style patterns of the mesh tools it may use.
        system_prompt: its instructions.
        memory_dir: where its short- and long-term memory lives (``None``: in process).
        max_steps: model calls per task.
        token_budget: tokens per task.
        stream: stream answer tokens as ``token`` events.
        context: context engineering for each task (``ContextConfig.off()``: none);
            large outputs are offloaded under ``workspace``.
        workspace: the agent's working directory (default: ``memory_dir/<name>/workspace``,
            else a temporary directory).
    """

    def __init__(
        self,
        name: str | None = None,
        broker: str | None = None,
        *,
        llm: ChatClient,
        llm_settings: LLMSettings | None = None,
        tools: Sequence[str] = ("*",),
        system_prompt: str = "You are a careful agent. Use the tools; answer concisely.",
        memory_dir: Path | None = None,
        max_steps: int = 20,
        token_budget: int = 200_000,
        stream: bool = True,
        context: ContextConfig | None = None,
        workspace: Path | None = None,
    ) -> None:
        super().__init__(name, broker)
        self.llm = llm
        self.llm_settings = llm_settings
        self.allowed_tools = tuple(tools)
        self.system_prompt = system_prompt
        self.memory = Memory(memory_dir / self.name if memory_dir is not None else None)
        self.max_steps = max_steps
        self.token_budget = token_budget
        self.stream = stream
        self.context = context or ContextConfig()
        if workspace is None and memory_dir is not None:
            workspace = memory_dir / self.name / "workspace"
        self._own_workspace = workspace is None
        self.workspace = workspace or Path(tempfile.mkdtemp(prefix=f"loom-{self.name}-"))
        self._children = 0

    async def on_start(self) -> None:
        await self.subscribe(f"agent.{self.name}.task", self._on_task)

    async def on_stop(self) -> None:
        self.memory.close()
        await self.llm.aclose()
        if self._own_workspace:
            shutil.rmtree(self.workspace, ignore_errors=True)

    async def _on_task(self, event: Event) -> dict[str, Any]:
        task = event.data.get("task") if isinstance(event.data, dict) else event.data
        result = await self.think(str(task))
        return result.model_dump()

    async def think(
        self, task: str, *, max_steps: int | None = None, token_budget: int | None = None
    ) -> AgentResult:
        """Work on ``task`` with the LLM and the allowed mesh tools; the typed result.

        Raises:
            ClosedError: the actor is not running.
        """
        tools = MeshTools(self.directory, self.tool, self.allowed_tools)

        async def emit(kind: str, data: dict[str, Any]) -> None:
            await self.emit(f"agent.{self.name}.{kind}", data)

        loop = AgentLoop(
            self.llm,
            tools,
            system_prompt=self.system_prompt,
            max_steps=max_steps or self.max_steps,
            token_budget=token_budget or self.token_budget,
            emit=emit,
            stream=self.stream,
            context=ContextManager(self.context, self.workspace),
        )
        return await loop.run(task)

    async def delegate(
        self,
        goal: str,
        *,
        token_budget: int = 50_000,
        max_steps: int = 10,
        deadline: float = 120.0,
        tools: Sequence[str] | None = None,
    ) -> AgentResult:
        """Spawn a sub-agent (a new actor process) with ``goal`` only, no transcript of
        ours; its result. A child that crashes or misses ``deadline`` gives a
        ``failed`` result saying so; it never hangs the caller.

        Safe to call from a handler: the child's answer comes as a reply (replies do not
        wait behind the handler).

        Raises:
            ValueError: no ``llm_settings`` to hand the child.
        """
        if self.llm_settings is None:
            raise ValueError("delegate needs llm_settings to configure the sub-agent")
        self._children += 1
        child = f"{self.name}.sub{self._children}"
        config = {
            "name": child,
            "broker": self.broker,
            "goal": goal,
            "llm": self.llm_settings.model_dump(mode="json"),
            "tools": list(tools or self.allowed_tools),
            "max_steps": max_steps,
            "token_budget": token_budget,
            "workspace": str(self.workspace),  # its offloaded outputs stay readable here
        }
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "loom.cognition.child",
            json.dumps(config),
            env=dict(os.environ),
        )
        loop = asyncio.get_running_loop()
        ends = loop.time() + deadline
        exited = asyncio.ensure_future(process.wait())
        try:
            answer = await self._await_child(child, exited, ends)
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()
            exited.cancel()
        await self.emit(f"agent.{self.name}.child", {"child": child, **answer.model_dump()})
        return answer

    async def _await_child(
        self, child: str, exited: asyncio.Future[int], ends: float
    ) -> AgentResult:
        loop = asyncio.get_running_loop()
        topic = f"agent.{child}.result"
        while (left := ends - loop.time()) > 0:  # the child holds each ask up to 1 s
            asking = asyncio.ensure_future(self.request(topic, {}, timeout=min(left, 2.0)))
            await asyncio.wait({asking, exited}, return_when=asyncio.FIRST_COMPLETED)
            if asking.done() and asking.exception() is None:
                if asking.result() is None:  # alive, still working: ask again
                    continue
                return AgentResult.model_validate(asking.result())
            if not asking.done():
                asking.cancel()
            elif not isinstance(asking.exception(), RequestTimeoutError):
                raise asking.exception()  # type: ignore[misc]
            if exited.done():
                code = exited.result()
                return AgentResult(status="failed", error=f"sub-agent {child} exited ({code})")
        return AgentResult(status="failed", error=f"sub-agent {child} missed its deadline")
