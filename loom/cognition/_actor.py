"""``CognitiveActor``: an actor that thinks with an LLM, acts through mesh tools,
remembers, and delegates to sub-agents.

Give it a task by request on ``agent.<name>.task`` (``{"task": "..."}``; the reply is the
:class:`~loom.cognition._agent.AgentResult`) or call ``await self.think(task)``. Its
steps are emitted on ``agent.<name>.<kind>`` (start, thought, token, tool_call,
observation, answer, end).
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import shutil
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from loom.actor import Actor, Event
from loom.cognition._agent import AgentLoop, AgentResult, MeshTools
from loom.cognition._config import LLMSettings
from loom.cognition._memory import Memory
from loom.cognition._provider import ChatClient
from loom.cognition.context import ContextConfig, ContextManager
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
        self.memory = Memory(None)
        """Its memory tiers; in LMDB under ``memory_dir`` once the actor has started."""
        self._memory_dir = memory_dir
        self.max_steps = max_steps
        self.token_budget = token_budget
        self.stream = stream
        self.context = context or ContextConfig()
        if workspace is None and memory_dir is not None:
            workspace = memory_dir / self.name / "workspace"
        self._workspace = workspace
        self.workspace = workspace or Path(tempfile.gettempdir())
        """The agent's working directory (a private temporary one made at start when
        neither ``workspace`` nor ``memory_dir`` was given)."""
        self._runs: set[asyncio.Task[AgentResult]] = set()

    async def on_start(self) -> None:
        if self._memory_dir is not None:
            self.memory = Memory(self._memory_dir / self.name)
        if self._workspace is None:
            self.workspace = Path(tempfile.mkdtemp(prefix=f"loom-{self.name}-"))
        await self.subscribe(f"agent.{self.name}.task", self._on_task)

    async def on_stop(self) -> None:
        """Cancel the runs still thinking, then close the memory, the LLM client and
        a temporary workspace (a stopped cognitive actor is not started again)."""
        for run in list(self._runs):
            run.cancel()
        if self._runs:
            await asyncio.wait(self._runs, timeout=5.0)
        self.memory.close()
        await self.llm.aclose()
        if self._workspace is None:
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
        self.memory.expire()
        if loop.context is not None:
            loop.context.store.gc()
        run = asyncio.ensure_future(loop.run(task))
        self._runs.add(run)
        try:
            return await asyncio.shield(run)
        except asyncio.CancelledError:
            run.cancel()
            raise
        finally:
            if run.done():
                self._runs.discard(run)
            else:
                run.add_done_callback(self._runs.discard)

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
        child = f"{self.name}.sub-{secrets.token_hex(4)}"  # never an earlier child's name
        config = {
            "name": child,
            "broker": self.broker,
            "goal": goal,
            "llm": self.llm_settings.model_dump(mode="json"),
            "tools": list(tools or self.allowed_tools),
            "max_steps": max_steps,
            "token_budget": token_budget,
            "workspace": str(self.workspace),  # its offloaded outputs stay readable here
            "lifetime": deadline + 30.0,
        }
        try:  # the config on stdin: no size limit, no secrets in the process list
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "loom.cognition._child",
                stdin=asyncio.subprocess.PIPE,
                env=dict(os.environ),
            )
        except OSError as exc:
            return AgentResult(status="failed", error=f"cannot start a sub-agent: {exc}")
        assert process.stdin is not None
        process.stdin.write(json.dumps(config).encode() + b"\n")  # kept open: EOF = we died
        loop = asyncio.get_running_loop()
        ends = loop.time() + deadline
        exited = asyncio.ensure_future(process.wait())
        try:
            answer = await self._await_child(child, exited, ends)
        finally:
            process.stdin.close()  # the child stops by itself; else it is killed
            try:
                await asyncio.wait_for(asyncio.shield(exited), 3.0)
            except TimeoutError:
                process.kill()
                await process.wait()
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
