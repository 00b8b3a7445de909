"""The agent loop: ReAct with native tool calls, where the tools are mesh tools.

Each step asks the model for its next move with the tools described from the directory's
schemas; tool calls run on the mesh and come back as observations; the loop ends on a
typed :class:`AgentResult` (the model answered, or a step or token budget ran out),
never on a magic string. Every step is reported through ``emit`` (thought, tool call,
observation, answer, and streamed answer tokens) so ``loom tap 'agent.**'`` shows the
reasoning live.

Malformed model output does not crash the loop: arguments that are not JSON, a tool that
does not exist, or a tool that fails all become observations the model sees next step.
"""

from __future__ import annotations

import fnmatch
import json
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Literal, Protocol

from pydantic import BaseModel, Field

from loom.cognition.errors import ToolArgumentsError, ToolNameError
from loom.cognition.messages import (
    Completion,
    ToolCall,
    Usage,
    assistant,
    system,
    tool_name,
    tool_result,
    tool_spec,
    user,
    wire_name,
)
from loom.errors import ToolError

__all__ = ["AgentLoop", "AgentResult", "Emit", "MeshTools", "ToolBox"]

Emit = Callable[[str, dict[str, Any]], Awaitable[None]]
"""Reports one step: ``(kind, data)``; kinds are start, thought, token, tool_call,
observation, answer and end."""

_MAX_OBSERVATION = 20_000
"""Characters of one observation given to the model when no context manager reduces it."""


class LLM(Protocol):
    """What the loop needs of a provider (``loom.cognition.provider.ChatClient``)."""

    async def complete(
        self,
        messages: list[dict[str, Any]],
        *,
        tools: list[dict[str, Any]] | None = None,
        on_token: Callable[[str], Any] | None = None,
    ) -> Completion: ...


class ToolBox(Protocol):
    """The tools an agent may use."""

    async def specs(self) -> list[dict[str, Any]]:
        """``{"name", "description", "schema"}`` per tool, Loom names."""
        ...

    async def call(self, name: str, args: dict[str, Any]) -> Any:
        """Run one tool; raises ``ToolError`` when it fails."""
        ...


class MeshTools:
    """The mesh's tools as an agent's toolbox: described from the broker's directory
    (sorted by name, so the prompt stays byte-stable), called through an actor.

    Args:
        directory: returns the broker's directory (``actor.directory``).
        call: calls a tool (``lambda name, args: actor.tool(name, args)``).
        allow: shell-style patterns of the tools the agent may see and call.
    """

    def __init__(
        self,
        directory: Callable[[], Awaitable[Any]],
        call: Callable[[str, dict[str, Any]], Awaitable[Any]],
        allow: Sequence[str] = ("*",),
    ) -> None:
        self._directory = directory
        self._call = call
        self.allow = tuple(allow)

    def allowed(self, name: str) -> bool:
        return any(fnmatch.fnmatchcase(name, pattern) for pattern in self.allow)

    async def specs(self) -> list[dict[str, Any]]:
        directory = await self._directory()
        return [
            {"name": t.name, "description": t.description, "schema": t.schema_}
            for t in sorted(directory.tools, key=lambda t: t.name)
            if self.allowed(t.name)
        ]

    async def call(self, name: str, args: dict[str, Any]) -> Any:
        return await self._call(name, args)


class AgentResult(BaseModel):
    """How a run ended.

    Attributes:
        status: ``answered`` (the model gave a final answer), ``max_steps`` or
            ``budget_exhausted`` (it was stopped), ``failed`` (the provider failed).
        answer: the final answer, when answered.
        steps: tool-using steps taken.
        usage: tokens the run used (prompt, completion, total).
        error: what went wrong, for ``failed``.
        references: offloaded outputs the answer may cite (``offload://...``).
    """

    status: Literal["answered", "max_steps", "budget_exhausted", "failed"]
    answer: str | None = None
    steps: int = 0
    usage: dict[str, int] = Field(default_factory=dict)
    error: str | None = None
    references: list[str] = Field(default_factory=list)


class AgentLoop:
    """One agent's ReAct loop.

    Args:
        llm: the provider (``ChatClient``).
        tools: what it may call.
        system_prompt: the agent's instructions (kept byte-identical across steps).
        max_steps: model calls before the run is stopped.
        token_budget: total tokens (prompt + completion) before the run is stopped.
        emit: reports each step (``None``: silent).
        stream: stream answer tokens (and report them as ``token`` steps).
    """

    def __init__(
        self,
        llm: LLM,
        tools: ToolBox,
        *,
        system_prompt: str = "You are a careful agent. Use the tools; answer concisely.",
        max_steps: int = 20,
        token_budget: int = 200_000,
        emit: Emit | None = None,
        stream: bool = True,
    ) -> None:
        self.llm = llm
        self.tools = tools
        self.system_prompt = system_prompt
        self.max_steps = max_steps
        self.token_budget = token_budget
        self._emit = emit
        self.stream = stream

    async def run(self, task: str) -> AgentResult:
        """Work on ``task`` until the model answers or a budget runs out.

        Raises:
            asyncio.CancelledError: the run was cancelled (a running tool call too).
        """
        from loom.cognition.errors import LLMError

        specs, wire_tools = [], []
        for spec in await self.tools.specs():
            try:  # a name with "__" has no OpenAI form: such a tool is not offered
                wire_tools.append(
                    tool_spec(wire_name(spec["name"]), spec["description"], spec["schema"])
                )
            except ToolNameError:
                continue
            specs.append(spec)
        known = {spec["name"] for spec in specs}
        messages: list[dict[str, Any]] = [system(self.system_prompt), user(task)]
        usage = Usage(0, 0, 0)
        await self._report("start", task=task, tools=sorted(known))
        for step in range(1, self.max_steps + 1):
            try:
                completion = await self.llm.complete(
                    messages,
                    tools=wire_tools or None,
                    on_token=self._token if self.stream else None,
                )
            except LLMError as exc:
                return await self._end(
                    "failed", step - 1, usage, error=f"{type(exc).__name__}: {exc}"
                )
            usage = usage + completion.usage
            messages.append(assistant(completion))
            if completion.content:
                kind = "thought" if completion.tool_calls else "answer"
                await self._report(kind, step=step, text=completion.content)
            if not completion.tool_calls:
                return await self._end("answered", step - 1, usage, answer=completion.content or "")
            if usage.total_tokens >= self.token_budget:
                return await self._end("budget_exhausted", step, usage)
            for call in completion.tool_calls:
                observation = await self._act(step, call, known)
                messages.append(tool_result(call.id, observation))
        return await self._end("max_steps", self.max_steps, usage)

    async def _act(self, step: int, call: ToolCall, known: set[str]) -> str:
        """Run one tool call; the observation text (an error text when it failed)."""
        name = tool_name(call.name)
        try:
            args = call.parsed()
        except ToolArgumentsError as exc:
            observation = f"error: {exc}. Call {name} again with a JSON object of arguments."
            await self._report("observation", step=step, tool=name, error=observation)
            return observation
        await self._report("tool_call", step=step, tool=name, args=args, call_id=call.id)
        if name not in known:
            choices = ", ".join(sorted(known)) or "none"
            observation = f"error: there is no tool named {name!r}; the tools are: {choices}"
            await self._report("observation", step=step, tool=name, error=observation)
            return observation
        try:
            result = await self.tools.call(name, args)
        except ToolError as exc:
            observation = f"error: {exc.code}: {exc}"
            await self._report("observation", step=step, tool=name, error=observation)
            return observation
        text = result if isinstance(result, str) else json.dumps(result, default=repr)
        if len(text) > _MAX_OBSERVATION:
            text = f"{text[:_MAX_OBSERVATION]}... ({len(text)} characters in all)"
        await self._report("observation", step=step, tool=name, result=result)
        return text

    async def _token(self, text: str) -> None:
        await self._report("token", text=text)

    async def _end(self, status: str, steps: int, usage: Usage, **fields: Any) -> AgentResult:
        result = AgentResult(
            status=status,  # type: ignore[arg-type]
            steps=steps,
            usage={
                "prompt_tokens": usage.prompt_tokens,
                "completion_tokens": usage.completion_tokens,
                "total_tokens": usage.total_tokens,
            },
            **fields,
        )
        await self._report("end", **result.model_dump())
        return result

    async def _report(self, kind: str, **data: Any) -> None:
        if self._emit is not None:
            await self._emit(kind, data)
