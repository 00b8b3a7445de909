"""Context engineering on a recorded 30-step investigation: prompt tokens per technique.

    python bench/context.py [--data bench/data/trajectory.json] [--show CONFIG]

The data (``bench/data/trajectory.json``, written by ``bench/data/make_trajectory.py``)
is a recorded run: a task, 30 tool calls with their real-shaped outputs (logs, listings,
HTML pages, JSON APIs, command output; 270 KB), the final answer and the facts the answer
needs. For each configuration the run is replayed through ``ContextManager.render``: the
prompt of each of the 31 model calls (before the first step, after each step; the last
one writes the answer) is rendered and its tokens estimated with ``prompt_tokens``.
Compaction uses ``ExtractiveSummarizer`` (deterministic, no model).

Configurations: none (the baseline: raw outputs, no technique), each technique alone
with its defaults (reduction; masking after 6; compaction after 12 in groups of 6;
offloading over 2,000 characters), and all together (``ContextConfig()``). Figures are
ratios to the baseline of the same run.

A fact is *kept* when, in the final prompt (the 31st, which writes the answer), it is:

  in prompt  the fact's text occurs in a message (content or tool-call arguments);
  by ref     the prompt holds an ``offload://<id>`` reference whose stored output
             (``OffloadStore.read`` of the whole entry) contains the fact;
  by re-run  the prompt holds the call line of a step (``call_ref``: ``step N tool
             {arguments}``, as masks and extractive summaries write it) whose recorded
             output contains the fact, and the call is read-only, so running it again
             returns that output: fs.read, fs.list, http.fetch with method GET, shell.run
             of a read-only command (tail, grep, ls, ps, df, find, git log/show...).

Each fact counts under the first of these that holds; a fact under none is lost.
"Cached" is the share of prompt tokens, over the run, that repeat byte for byte the
previous call's prompt from its start (whole messages): what a provider's prefix cache
can serve.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loom.cognition.context import (
    ContextConfig,
    ContextManager,
    ExtractiveSummarizer,
    Step,
    call_ref,
    canonical_json,
    find_refs,
    prompt_tokens,
)

HERE = Path(__file__).parent
CLOCK = 1_715_672_469.0
"""A fixed time for offload records: the bench's output does not depend on the date."""
READ_ONLY_COMMANDS = frozenset(
    {"cat", "df", "du", "file", "find", "grep", "head", "ls", "ps", "sort", "stat", "tail",
     "uniq", "wc", "git"}
)  # fmt: skip
BARS = "▁▂▃▄▅▆▇█"
CONFIGS: dict[str, ContextConfig] = {
    "none": ContextConfig.off(),
    "reduction": ContextConfig(reduce=True, mask_after=None, compact_after=None,
                               offload_over=None),
    "masking": ContextConfig(reduce=False, mask_after=6, compact_after=None, offload_over=None),
    "compaction": ContextConfig(reduce=False, mask_after=None, compact_after=12,
                                offload_over=None),
    "offloading": ContextConfig(reduce=False, mask_after=None, compact_after=None,
                                offload_over=2000),
    "all": ContextConfig(),
}  # fmt: skip


@dataclass
class Outcome:
    """One configuration's figures."""

    name: str
    tokens: list[int] = field(default_factory=list)
    cached: int = 0
    kept: dict[str, str | None] = field(default_factory=dict)
    summaries: int = 0
    offloaded: int = 0
    final: list[dict[str, Any]] = field(default_factory=list)

    @property
    def total(self) -> int:
        return sum(self.tokens)


def load(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text())
    data["steps"] = [Step(**step) for step in data["steps"]]
    return data


def rerunnable(step: Step) -> bool:
    """The call only reads: running it again returns the recorded output."""
    if step.tool in ("fs.read", "fs.list"):
        return True
    if step.tool == "http.fetch":
        return str(step.arguments.get("method", "GET")).upper() == "GET"
    if step.tool == "shell.run":
        argv = step.arguments.get("argv") or [""]
        return argv[0] in READ_ONLY_COMMANDS
    return False


def prompt_text(messages: list[dict[str, Any]]) -> str:
    parts = []
    for message in messages:
        parts.append(message.get("content") or "")
        for call in message.get("tool_calls") or ():
            parts.append(call["function"]["arguments"])
    return "\n".join(parts)


def reachable(fact: str, text: str, manager: ContextManager, steps: list[Step]) -> str | None:
    """How ``fact`` can be had from the final prompt ``text`` (module docstring)."""
    if fact in text:
        return "prompt"
    for ref in find_refs(text):
        if fact in manager.store.read(ref, 0, 1 << 30):
            return "ref"
    for step in steps:
        if (
            call_ref(step) in text
            and rerunnable(step)
            and fact in json.dumps(step.result, ensure_ascii=False)
        ):
            return "rerun"
    return None


def shared_prefix(before: list[dict[str, Any]], after: list[dict[str, Any]]) -> int:
    """Tokens of the whole messages ``after`` repeats from the start of ``before``."""
    same = 0
    for old, new in zip(before, after, strict=False):
        if canonical_json(old) != canonical_json(new):
            break
        same += 1
    return prompt_tokens(after[:same]) if same else 0


async def replay(name: str, config: ContextConfig, data: dict[str, Any]) -> Outcome:
    steps: list[Step] = data["steps"]
    outcome = Outcome(name)
    with tempfile.TemporaryDirectory(prefix="loom-bench-context-") as workspace:
        manager = ContextManager(
            config, Path(workspace), summarizer=ExtractiveSummarizer(), clock=lambda: CLOCK
        )
        previous: list[dict[str, Any]] = []
        for count in range(len(steps) + 1):
            messages = await manager.render(data["system_prompt"], data["task"], steps[:count])
            outcome.tokens.append(prompt_tokens(messages))
            outcome.cached += shared_prefix(previous, messages)
            previous = messages
        text = prompt_text(previous)
        for fact in data["facts"]:
            outcome.kept[fact["text"]] = reachable(fact["text"], text, manager, steps)
        outcome.summaries = manager.summaries
        outcome.offloaded = len(manager.store.records())
        outcome.final = previous
    return outcome


def sparkline(values: list[int], top: int) -> str:
    return "".join(BARS[min(len(BARS) - 1, value * len(BARS) // (top + 1))] for value in values)


def report(outcomes: list[Outcome], data: dict[str, Any]) -> None:
    base = outcomes[0]
    facts = len(data["facts"])
    top = max(max(outcome.tokens) for outcome in outcomes)
    print(
        f"Context engineering on a recorded run: {len(data['steps'])} steps, "
        f"{len(base.tokens)} model calls, {facts} facts; tokens estimated (count_tokens, "
        "~cl100k)"
    )
    print()
    header = (
        f"{'config':<11} {'total':>10} {'ratio':>6} {'saved':>6} {'final':>7} {'cached':>6} "
        f" facts kept (prompt/ref/re-run)  prompt per call, 0..30 (same scale)"
    )
    print(header)
    print("-" * len(header))
    for outcome in outcomes:
        ratio = outcome.total / base.total
        kinds = list(outcome.kept.values())
        kept = sum(kind is not None for kind in kinds)
        detail = f"{kinds.count('prompt')}/{kinds.count('ref')}/{kinds.count('rerun')}"
        facts_text = f"{kept:>2}/{facts} ({detail})"
        print(
            f"{outcome.name:<11} {outcome.total:>10,} {ratio:>5.2f}x {1 - ratio:>6.0%} "
            f"{outcome.tokens[-1]:>7,} {outcome.cached / outcome.total:>6.0%}  "
            f"{facts_text:<30} {sparkline(outcome.tokens, top)}"
        )
    print()
    marks = [1, 6, 12, 18, 24, 30]
    print("prompt tokens after step " + ", ".join(map(str, marks)))
    for outcome in outcomes:
        cells = " ".join(f"{outcome.tokens[mark]:>7,}" for mark in marks)
        extra = []
        if outcome.summaries:
            extra.append(f"{outcome.summaries} summaries")
        if outcome.offloaded:
            extra.append(f"{outcome.offloaded} outputs offloaded")
        print(f"  {outcome.name:<11} {cells}   {', '.join(extra)}")
    lost = {o.name: [f for f, kind in o.kept.items() if kind is None] for o in outcomes}
    if any(lost.values()):
        print()
        for name, missing in lost.items():
            if missing:
                print(f"  {name}: lost {', '.join(missing)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=HERE / "data" / "trajectory.json")
    parser.add_argument("--show", choices=sorted(CONFIGS), help="print that final prompt")
    args = parser.parse_args()
    data = load(args.data)
    outcomes = [asyncio.run(replay(name, config, data)) for name, config in CONFIGS.items()]
    report(outcomes, data)
    if args.show:
        final = next(o for o in outcomes if o.name == args.show).final
        print()
        for message in final:
            calls = [c["function"] for c in message.get("tool_calls") or ()]
            print(f"--- {message['role']} {json.dumps(calls, ensure_ascii=False) if calls else ''}")
            print(message.get("content") or "")


if __name__ == "__main__":
    main()
