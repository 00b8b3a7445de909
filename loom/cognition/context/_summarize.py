"""Summaries of old steps for compaction: the :class:`Summarizer` protocol, one that asks
an LLM and one that extracts fact-like lines without any model.

A summarizer is given :class:`Observation` records: each step with the observation the
model saw (reduced, with its offload reference) and the full output. Whatever it writes
replaces the group's messages for the rest of the run, so it should keep facts (numbers,
names, paths, codes) and the references that get the rest back.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from loom.cognition.context._model import Step, call_ref
from loom.cognition.context._text import cap
from loom.errors import SummaryError

__all__ = [
    "ExtractiveSummarizer",
    "LLMSummarizer",
    "Observation",
    "Summarizer",
    "SummaryError",
]

_TAG = re.compile(r"<[^>]{0,400}>")
_SPACE = re.compile(r"\s+")
_DIGITS = re.compile(r"\d+")
_STRONG = re.compile(
    r"\b(errors?|fail\w*|fatal|exception|traceback|critical|panic|denied|refused|timeout|"
    r"timed out|unreachable|killed|expired|abort\w*|exit (?:code|status))\b",
    re.IGNORECASE,
)
_WEAK = re.compile(
    r"\b(warn\w*|missing|invalid|not found|retr(?:y|ies|ied)|degraded|outage|incident|"
    r"maintenance|root cause|caused by)\b",
    re.IGNORECASE,
)
_FEATURES = (
    (re.compile(r"offload://[0-9a-f]{16}"), 6),
    (re.compile(r"\b[A-Z][A-Z0-9]*[-_][A-Z0-9_-]*\d+\b"), 3),  # codes: RG-5031, INC-1
    (re.compile(r"https?://\S+"), 2),
    (re.compile(r"(?:^|[\s\"'(=:])\.{0,2}/?[\w.-]+(?:/[\w.-]+)+"), 2),  # paths
    (re.compile(r"\bv?\d+\.\d+\.\d+\b"), 2),  # versions
    (re.compile(r"\b[0-9a-f]{7,40}\b"), 1),  # hashes
    (re.compile(r"\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}"), 1),  # timestamps
    (re.compile(r"^\s*[\w.-]+\s*[:=]\s*\S"), 1),  # key: value
)
_PROMPT = (
    "You compact an agent's working memory. Summarize the tool calls below in a few "
    "short lines each. Keep every fact the task may need verbatim: error codes, numbers, "
    "names, versions, timestamps, file paths, URLs. Keep every offload:// reference and "
    "the call line (step N tool {arguments}) of each step, so the details can be read or "
    "fetched again. No preamble."
)


@dataclass(frozen=True, slots=True)
class Observation:
    """A step as the context manager renders it.

    Attributes:
        step: the tool call.
        text: the observation the model saw in full (reduced, offloaded...).
        full: the whole output as text (what an offload file holds).
        ref: the ``offload://`` reference of the whole output, if it was offloaded.
    """

    step: Step
    text: str
    full: str
    ref: str | None = None


class Summarizer(Protocol):
    """Writes the summary that replaces a group of old steps."""

    async def summarize(self, observations: Sequence[Observation]) -> str:
        """A summary of ``observations`` (consecutive steps, oldest first)."""
        ...


Complete = Callable[[list[dict[str, Any]]], Awaitable[str] | str]
"""Sends chat messages to a model and returns its answer's text."""


class LLMSummarizer:
    """Asks a model for the summary.

    Args:
        complete: sends messages and returns the answer (sync or async; the provider
            is wrapped by the caller, not imported here).
        instructions: the system prompt.
        step_chars: characters of one observation given to the model.
    """

    def __init__(
        self, complete: Complete, *, instructions: str = _PROMPT, step_chars: int = 4000
    ) -> None:
        self._complete = complete
        self.instructions = instructions
        self.step_chars = step_chars

    async def summarize(self, observations: Sequence[Observation]) -> str:
        """The model's summary of ``observations``.

        Raises:
            SummaryError: the model answered with empty text.
            Exception: whatever ``complete`` raises.
        """
        parts = []
        for item in observations:
            thought = f"thought: {item.step.thought}\n" if item.step.thought else ""
            parts.append(f"### {call_ref(item.step)}\n{thought}{cap(item.text, self.step_chars)}")
        messages = [
            {"role": "system", "content": self.instructions},
            {"role": "user", "content": "\n\n".join(parts)},
        ]
        answer = self._complete(messages)
        if inspect.isawaitable(answer):
            answer = await answer
        text = str(answer).strip()
        if not text:
            raise SummaryError("the summarizer's model returned an empty summary")
        return text


class ExtractiveSummarizer:
    """A deterministic summary without a model: per step, its call line, size and
    reference, then the lines of its output that look most like facts (error words,
    codes such as ``RG-5031``, paths, URLs, versions, hashes, timestamps, ``key: value``),
    markup stripped, in their original order.

    Args:
        lines_per_step: lines kept of one output.
        line_chars: characters kept of one line; longer lines are split at commas first.
        thought_chars: characters kept of the step's thought (0: none).
        min_score: the least score a line needs (a ``key: value`` line alone scores 1).
    """

    def __init__(
        self,
        *,
        lines_per_step: int = 4,
        line_chars: int = 160,
        thought_chars: int = 120,
        min_score: int = 2,
    ) -> None:
        self.lines_per_step = lines_per_step
        self.line_chars = line_chars
        self.thought_chars = thought_chars
        self.min_score = min_score

    async def summarize(self, observations: Sequence[Observation]) -> str:
        """The extract of ``observations``; never raises."""
        return self.extract(observations)

    def extract(self, observations: Sequence[Observation]) -> str:
        """The same as :meth:`summarize`, synchronously."""
        blocks = []
        for item in observations:
            outcome = f"{len(item.full):,} chars"
            if item.step.error is not None:
                outcome = "error"
            head = f"- {call_ref(item.step)} -> {outcome}"
            if item.ref:
                head += f", full output at {item.ref}"
            lines = [head]
            if self.thought_chars and item.step.thought:
                lines.append(f"  thought: {cap(_flat(item.step.thought), self.thought_chars)}")
            lines += [f"  | {line}" for line in self.facts(item.full)]
            blocks.append("\n".join(lines))
        return "\n".join(blocks)

    def facts(self, text: str) -> list[str]:
        """The ``lines_per_step`` best fact-like lines of ``text``, in order."""
        seen: set[str] = set()
        scored: list[tuple[int, int, str]] = []
        for line in self._candidates(text):
            shape = _DIGITS.sub("#", line)
            if shape in seen:
                continue
            seen.add(shape)
            score = _score(line)
            if score >= self.min_score:
                scored.append((score, len(scored), line))
        best = sorted(scored, key=lambda item: (-item[0], item[1]))[: self.lines_per_step]
        return [line for _, _, line in sorted(best, key=lambda item: item[1])]

    def _candidates(self, text: str) -> list[str]:
        lines = []
        for raw in text.splitlines():
            line = _flat(_TAG.sub(" ", raw)) if "<" in raw else _flat(raw)
            if not line:
                continue
            if len(line) <= self.line_chars:
                lines.append(line)
                continue
            piece = ""
            for part in re.split(r"(?<=[,;])\s*", line):
                if piece and len(piece) + len(part) + 1 > self.line_chars:
                    lines.append(piece)
                    piece = ""
                piece = f"{piece} {part}".strip()
            if piece:
                lines.append(cap(piece, self.line_chars))
        return [cap(line, self.line_chars) for line in lines]


def _flat(text: str) -> str:
    return _SPACE.sub(" ", text).strip()


def _score(line: str) -> int:
    score = 4 * len(_STRONG.findall(line)[:2]) + 2 * len(_WEAK.findall(line)[:2])
    for pattern, weight in _FEATURES:
        if pattern.search(line):
            score += weight
    return score
