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

import contextlib
import dataclasses
import fnmatch
import json
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Literal, Protocol

from pydantic import BaseModel, Field

from loom.cognition._messages import (
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
from loom.cognition.context import (
    ContextError,
    ContextManager,
    Step,
    count_tokens,
    prompt_tokens,
)
from loom.errors import (
    EncodeError,
    LLMError,
    LoomError,
    PayloadTooLargeError,
    ToolArgumentsError,
    ToolError,
    ToolNameError,
)

__all__ = ["AgentLoop", "AgentResult", "Emit", "MeshTools", "ToolBox"]

Emit = Callable[[str, dict[str, Any]], Awaitable[None]]
"""Reports one step: ``(kind, data)``; kinds are start, thought, token, tool_call,
observation, answer and end."""

_MAX_OBSERVATION = 20_000
"""Characters of one observation given to the model when no context manager reduces it."""


class LLM(Protocol):
    """What the loop needs of a provider (``loom.cognition._provider.ChatClient``)."""

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
        context: engineers each prompt (reduction, masking, compaction, offloading,
            a byte-stable prefix); ``None``: the whole transcript, observations cut at
            20 000 characters. One manager per run.
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
        context: ContextManager | None = None,
    ) -> None:
        self.llm = llm
        self.tools = tools
        self.system_prompt = system_prompt
        self.max_steps = max_steps
        self.token_budget = token_budget
        self._emit = emit
        self.stream = stream
        self.context = context

    async def run(self, task: str) -> AgentResult:
        """Work on ``task`` until the model answers or a budget runs out.

        Raises:
            asyncio.CancelledError: the run was cancelled (a running tool call too).
        """
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
        transcript: list[dict[str, Any]] = [system(self.system_prompt), user(task)]
        steps: list[Step] = []
        usage = Usage(0, 0, 0)
        await self._report("start", task=task, tools=sorted(known))
        for turn in range(1, self.max_steps + 1):
            try:
                prompt = (
                    transcript
                    if self.context is None
                    else await self.context.render(self.system_prompt, task, steps)
                )
                completion = await self.llm.complete(
                    prompt,
                    tools=wire_tools or None,
                    on_token=self._token if self.stream else None,
                )
            except (LLMError, ContextError, OSError) as exc:  # the provider, or rendering
                error = f"{type(exc).__name__}: {exc}"
                return await self._end("failed", usage, steps, error=error)
            usage = usage + (
                completion.usage
                if completion.usage.total_tokens
                else _estimate(prompt, wire_tools, completion)
            )
            transcript.append(assistant(completion))
            if completion.content:
                kind = "thought" if completion.tool_calls else "answer"
                await self._report(kind, step=turn, text=completion.content)
            if not completion.tool_calls:
                answer = completion.content or ""
                return await self._end("answered", usage, steps, answer=answer)
            if usage.total_tokens >= self.token_budget:
                return await self._end("budget_exhausted", usage, steps)
            for position, call in enumerate(completion.tool_calls):
                step = await self._act(len(steps) + 1, turn, call, known)
                if position == 0 and completion.content:  # the turn's text, on its first call
                    step = dataclasses.replace(step, thought=completion.content)
                steps.append(step)
                transcript.append(tool_result(call.id, _observation_text(step)))
        return await self._end("max_steps", usage, steps)

    async def _act(self, index: int, turn: int, call: ToolCall, known: set[str]) -> Step:
        """Run one tool call; the step records its result or, when it failed (arguments
        not JSON, no such tool, the tool's error), what the model should know of it."""
        name = tool_name(call.name)
        try:
            args = call.parsed()
        except ToolArgumentsError as exc:
            error = f"{exc}. Call {name} again with a JSON object of arguments."
            await self._report("observation", step=turn, tool=name, error=error)
            return Step(index, name, call.id, {}, error=error)
        await self._report("tool_call", step=turn, tool=name, args=args, call_id=call.id)
        if name not in known:
            choices = ", ".join(sorted(known)) or "none"
            error = f"there is no tool named {name!r}; the tools are: {choices}"
            await self._report("observation", step=turn, tool=name, error=error)
            return Step(index, name, call.id, args, error=error)
        try:
            result = await self.tools.call(name, args)
        except ToolError as exc:
            error = f"{exc.code}: {exc}"
            await self._report("observation", step=turn, tool=name, error=error)
            return Step(index, name, call.id, args, error=error)
        except LoomError as exc:  # arguments too large or unencodable, the actor closing
            error = f"{type(exc).__name__}: {exc}"
            await self._report("observation", step=turn, tool=name, error=error)
            return Step(index, name, call.id, args, error=error)
        await self._report("observation", step=turn, tool=name, result=result)
        return Step(index, name, call.id, args, result=result)

    async def _token(self, text: str) -> None:
        await self._report("token", text=text)

    async def _end(
        self, status: str, usage: Usage, steps: list[Step], **fields: Any
    ) -> AgentResult:
        references: list[str] = []
        if self.context is not None:  # what this run offloaded, for the answer to cite
            for step in steps:
                ref = self.context.observe(step).ref
                if ref is not None and ref not in references:
                    references.append(ref)
        result = AgentResult(
            status=status,  # type: ignore[arg-type]
            steps=len(steps),
            references=references,
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
        """Emit a step; one that cannot be sent as it is (data msgpack cannot encode,
        or too large) goes out as a short text form instead. Reporting never ends a run."""
        if self._emit is None:
            return
        try:
            await self._emit(kind, data)
        except (EncodeError, PayloadTooLargeError) as exc:
            short = {key: _short(value) for key, value in data.items()}
            with contextlib.suppress(LoomError):
                await self._emit(kind, {**short, "note": f"shortened: {exc}"})


def _estimate(
    prompt: list[dict[str, Any]], tools: list[dict[str, Any]], completion: Completion
) -> Usage:
    """Usage counted here when the server reports none (some streaming servers), so the
    token budget still holds: estimated, about cl100k's count."""
    asked = prompt_tokens(prompt, tools or None)
    said = count_tokens(completion.content or "") + sum(
        count_tokens(call.name) + count_tokens(call.arguments) for call in completion.tool_calls
    )
    return Usage(asked, said, asked + said)


def _short(value: Any) -> Any:
    """A value as a short text, for an event that could not carry it whole."""
    if value is None or isinstance(value, bool) or (isinstance(value, str) and len(value) < 1000):
        return value
    text = repr(value)
    return text if len(text) <= 1000 else f"{text[:1000]}... ({len(text)} characters)"


def _observation_text(step: Step) -> str:
    """What the model sees of a step without a context manager: the error, or the
    result as JSON, cut at 20 000 characters."""
    if step.error is not None:
        return f"error: {step.error}"
    result = step.result
    text = result if isinstance(result, str) else json.dumps(result, default=repr)
    if len(text) > _MAX_OBSERVATION:
        text = f"{text[:_MAX_OBSERVATION]}... ({len(text)} characters in all)"
    return text
