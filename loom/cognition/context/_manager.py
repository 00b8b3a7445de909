"""The context manager: turns the run so far into the messages of the next model call.

For the steps of a run (oldest first) :meth:`ContextManager.render` gives::

    system prompt, task                          -- stable_prefix, the same every call
    [summary of steps 1-6] ...                   -- compaction: oldest groups, once each
    assistant(call) / tool([masked: ...])        -- masking: old observations
    assistant(call) / tool(observation)          -- the newest steps in full (reduced,
                                                    large outputs offloaded)

Compaction and masking move in whole groups, so between two boundary moves the prompt
of step N+1 is the prompt of step N with the new step appended, byte for byte: the
provider's prompt cache keeps the whole prefix. Rendering a step is cached (a step is
immutable once recorded, and known by its index and call id), and a group is summarized
once for the manager's lifetime. One manager serves one run, its renders one at a time.
Offloaded outputs are written with plain (blocking) file calls: a few kilobytes each.
"""

from __future__ import annotations

import fnmatch
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from loom.cognition.context._model import ContextConfig, Step, call_ref, canonical_json
from loom.cognition.context._offload import OffloadStore
from loom.cognition.context._prefix import stable_prefix, wire_name
from loom.cognition.context._reducers import Reducers
from loom.cognition.context._summarize import ExtractiveSummarizer, Observation, Summarizer
from loom.cognition.context._text import full_text, raw_text

__all__ = ["ContextManager"]

_LONG_ARGUMENT = 200
"""A masked step's string arguments longer than this are cut in its tool call."""
_KEPT_ARGUMENT = 80


class ContextManager:
    """Context engineering for one agent's run; each technique is switched by ``config``.

    Args:
        config: which techniques run, and their limits.
        workspace: the agent's working directory; offloaded outputs go to its
            ``.offload`` folder (which ``context.read`` reads).
        reducers: the per-tool reduction rules (default: :class:`Reducers` defaults).
        summarizer: writes compaction summaries (default: :class:`ExtractiveSummarizer`,
            no model).
        clock: returns the time in seconds, for offload records and their TTL.
        no_offload: tool patterns whose output is never offloaded (reading an offloaded
            output must not offload it again).

    Attributes:
        store: the offload store.
        summaries: how many summaries were asked of the summarizer.

    Raises:
        ContextError: ``<workspace>/.offload`` is a symbolic link.
    """

    def __init__(
        self,
        config: ContextConfig,
        workspace: Path,
        *,
        reducers: Reducers | None = None,
        summarizer: Summarizer | None = None,
        clock: Callable[[], float] = time.time,
        no_offload: Sequence[str] = ("context.read",),
    ) -> None:
        self.config = config
        self.reducers = reducers or Reducers()
        self.summarizer: Summarizer = summarizer or ExtractiveSummarizer()
        self.store = OffloadStore(workspace, ttl=config.offload_ttl, clock=clock)
        self.no_offload = tuple(no_offload)
        self.summaries = 0
        self._observed: dict[tuple[int, str], Observation] = {}
        self._summaries: dict[tuple[tuple[int, str], ...], str] = {}

    async def render(
        self, system_prompt: str, task: str, steps: Sequence[Step]
    ) -> list[dict[str, Any]]:
        """The messages for the next model call.

        Args:
            system_prompt: the agent's instructions (rendered byte-identically each time).
            task: the task the run works on.
            steps: every tool call of the run so far, oldest first.

        Raises:
            ReducerError: a reducer failed on a step.
            OSError: an output could not be offloaded.
            Exception: whatever the summarizer raises (``SummaryError``, the model's
                errors); the same group is asked again on the next call.
        """
        messages = stable_prefix(system_prompt, task)
        compacted = self.compacted(len(steps))
        masked = self.masked(len(steps))
        group = self.config.compact_group
        for start in range(0, compacted, group):
            chunk = steps[start : start + group]
            summary = await self._summary(chunk)
            span = f"{chunk[0].index}-{chunk[-1].index}"
            header = (
                f"[summary of steps {span}: calls can be run again, offload:// references "
                "read with context.read]"
            )
            messages.append({"role": "user", "content": f"{header}\n{summary}"})
        for position in range(compacted, len(steps)):
            step = steps[position]
            observation = self.observe(step)
            hidden = position < masked
            messages.append(_call_message(step, short=hidden))
            text = self.masked_text(observation) if hidden else observation.text
            messages.append({"role": "tool", "tool_call_id": step.call_id, "content": text})
        return messages

    def compacted(self, count: int) -> int:
        """How many of ``count`` steps are summarized: whole groups of the oldest, enough
        to leave at most ``compact_after`` steps as messages (0 when off)."""
        keep, group = self.config.compact_after, self.config.compact_group
        if keep is None or count <= keep:
            return 0
        return group * -(-(count - keep) // group)

    def masked(self, count: int) -> int:
        """How many of ``count`` steps have their observation masked: whole groups of the
        oldest, leaving at least ``mask_after`` newest in full (0 when off)."""
        keep, group = self.config.mask_after, self.config.mask_group
        if keep is None or count <= keep:
            return 0
        return group * ((count - keep) // group)

    def observe(self, step: Step) -> Observation:
        """``step`` as the model sees it in full: reduced (or raw), and when its output
        is over ``offload_over`` characters, offloaded (a reference and a preview in
        place of a long observation, a pointer after a short one). Cached per step.

        Raises:
            ReducerError: the reducer failed.
            OSError: the output could not be offloaded.
        """
        key = (step.index, step.call_id)
        cached = self._observed.get(key)
        if cached is not None:
            return cached
        config = self.config
        full = f"error: {step.error}" if step.error is not None else full_text(step.result)
        if config.reduce:
            text = self.reducers.reduce(step)
        else:
            text = f"error: {step.error}" if step.error is not None else raw_text(step.result)
        ref = None
        over = config.offload_over is not None and len(full) > config.offload_over
        if over and not any(fnmatch.fnmatchcase(step.tool, p) for p in self.no_offload):
            ref = self.store.put(full, tool=step.tool, step=step.index).ref
            text = self._offloaded(text, full, ref)
        observation = Observation(step=step, text=text, full=full, ref=ref)
        self._observed[key] = observation
        return observation

    def masked_text(self, observation: Observation) -> str:
        """The placeholder of a masked observation: the call (to run it again), the
        output's size and its offload reference; the observation itself when that is
        shorter."""
        outcome = (
            "error" if observation.step.error is not None else f"{len(observation.full):,} chars"
        )
        where = (
            f"read {observation.ref} with context.read"
            if observation.ref
            else "re-run the call to see it again"
        )
        placeholder = f"[masked: {call_ref(observation.step)} -> {outcome}; {where}]"
        return observation.text if len(observation.text) <= len(placeholder) else placeholder

    def _offloaded(self, text: str, full: str, ref: str) -> str:
        if len(text) <= (self.config.offload_over or 0):
            return f"{text}\n[full output: {len(full):,} chars at {ref}]"
        preview = text[: self.config.preview_chars].rstrip()
        return (
            f"[offloaded: {len(full):,} chars at {ref}; read it with context.read(ref, "
            f"offset, length)]\npreview:\n{preview}…"
        )

    async def _summary(self, steps: Sequence[Step]) -> str:
        key = tuple((step.index, step.call_id) for step in steps)
        cached = self._summaries.get(key)
        if cached is None:
            self.summaries += 1
            cached = await self.summarizer.summarize([self.observe(step) for step in steps])
            self._summaries[key] = cached
            for done in key:  # never rendered again (compaction only moves forward)
                self._observed.pop(done, None)
        return cached


def _call_message(step: Step, *, short: bool) -> dict[str, Any]:
    arguments = step.arguments
    if short:
        arguments = {
            key: f"{value[:_KEPT_ARGUMENT]}… [{len(value):,} chars]"
            if isinstance(value, str) and len(value) > _LONG_ARGUMENT
            else value
            for key, value in arguments.items()
        }
    call = {
        "id": step.call_id,
        "type": "function",
        "function": {"name": wire_name(step.tool), "arguments": canonical_json(arguments)},
    }
    return {"role": "assistant", "content": step.thought, "tool_calls": [call]}
