"""The data the context manager works on: one tool call (:class:`Step`), the switches
(:class:`ContextConfig`) and the errors of the package."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from loom.errors import ContextConfigError, ContextError, ReducerError

__all__ = [
    "ContextConfig",
    "ContextConfigError",
    "ContextError",
    "ReducerError",
    "Step",
    "call_ref",
    "canonical_json",
]

DAY = 24 * 3600.0
_ARGS_IN_REF = 160
"""Characters of a call's arguments quoted in a reference to it."""


def canonical_json(value: Any) -> str:
    """``value`` as JSON with sorted keys, no spaces and raw (non-escaped) Unicode: the
    same bytes for the same value, whatever the dict order it was built in.

    Raises:
        TypeError: ``value`` holds something JSON cannot encode.
    """
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


@dataclass(frozen=True, slots=True)
class Step:
    """One tool call of the agent and what came back; immutable once recorded.

    Give the model's text of a turn (``thought``) on the turn's first step; later calls
    of the same turn leave it ``None``.

    Attributes:
        index: the call's number in the run (shown to the model as ``step N``).
        tool: the Loom name (``fs.read``), not the wire name (``fs__read``).
        call_id: the tool call's id from the model (``call_...``).
        arguments: the call's arguments.
        result: what the tool returned (JSON-able), ``None`` when it failed.
        error: the failure's text when the call failed.
        thought: the assistant text that came with the call.
    """

    index: int
    tool: str
    call_id: str
    arguments: dict[str, Any] = field(default_factory=dict)
    result: Any = None
    error: str | None = None
    thought: str | None = None


def call_ref(step: Step) -> str:
    """How a step's call is named in masks and summaries: ``step 7 fs.read {"path":"a"}``
    (arguments as canonical JSON, cut at 160 characters). Enough to run the call again."""
    args = canonical_json(step.arguments)
    if len(args) > _ARGS_IN_REF:
        args = args[:_ARGS_IN_REF] + "…"
    return f"step {step.index} {step.tool} {args}"


@dataclass(frozen=True, slots=True)
class ContextConfig:
    """Which context techniques run, and their limits; ``None``/``False`` turns one off.

    Attributes:
        reduce: reduce each observation with the per-tool rules of a ``Reducers``.
        mask_after: keep the newest N observations in full; older ones are replaced by a
            placeholder naming the call (and its offload reference), in whole blocks of
            ``mask_group`` so the prompt prefix changes once per block.
        mask_group: steps masked at a time.
        compact_after: keep at most N steps as messages; older steps are summarized in
            groups of ``compact_group``, each group once.
        compact_group: steps per summary.
        offload_over: outputs longer than this (characters) are written to the
            workspace's offload store; the prompt keeps a reference, a preview and the size.
        preview_chars: characters of an offloaded output shown in the prompt.
        offload_ttl: seconds an offloaded output is kept after it was last read.

    Raises:
        ContextConfigError: a limit is not positive, or ``compact_after`` is smaller than
            ``compact_group``.
    """

    reduce: bool = True
    mask_after: int | None = 6
    mask_group: int = 4
    compact_after: int | None = 12
    compact_group: int = 6
    offload_over: int | None = 2000
    preview_chars: int = 300
    offload_ttl: float = DAY

    def __post_init__(self) -> None:
        for name in ("mask_group", "compact_group", "preview_chars"):
            if getattr(self, name) < 1:
                raise ContextConfigError(f"{name} must be at least 1")
        for name in ("mask_after", "compact_after", "offload_over"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ContextConfigError(f"{name} must be at least 1, or None to turn it off")
        if self.offload_ttl <= 0:
            raise ContextConfigError("offload_ttl must be positive")
        if self.compact_after is not None and self.compact_after < self.compact_group:
            raise ContextConfigError("compact_after must be at least compact_group")

    @classmethod
    def off(cls) -> ContextConfig:
        """Every technique off: the observations as the tools returned them."""
        return cls(reduce=False, mask_after=None, compact_after=None, offload_over=None)
