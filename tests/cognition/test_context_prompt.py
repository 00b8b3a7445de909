"""Token estimates, the stable prefix and the summarizers."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from loom.cognition.context import (
    ExtractiveSummarizer,
    LLMSummarizer,
    Observation,
    Step,
    SummaryError,
    ToolListError,
    canonical_json,
    count_tokens,
    prompt_tokens,
    stable_prefix,
    stable_tools,
    wire_name,
)


def observation(index: int, full: str, ref: str | None = None, text: str = "") -> Observation:
    step = Step(index, "fs.read", f"call_{index}", {"path": f"f{index}.log"}, full,
                thought=f"thinking {index}")  # fmt: skip
    return Observation(step, text or full, full, ref)


def test_count_tokens_follows_the_estimator_rules() -> None:
    """Short words are a token, long ones more; digits go by 3; punctuation by 2."""
    assert count_tokens("") == 0
    assert count_tokens("hello world") == 2
    assert count_tokens("internationalization") == 4
    assert count_tokens("1234567") == 3
    assert count_tokens('{"a":1}') == 5
    assert count_tokens("line\n\nnext") == 3
    assert count_tokens("naïve") == 3


def test_count_tokens_is_deterministic_and_additive() -> None:
    """The same text always counts the same; more text never counts less."""
    text = "2024-05-14T02:17:42Z ERROR [query] RG-5031 warehouse query timed out\n" * 50
    assert count_tokens(text) == count_tokens(text)
    assert count_tokens(text + "more") > count_tokens(text)
    assert 0.2 < count_tokens(text) / len(text) < 0.5


def test_prompt_tokens_counts_calls_and_frames() -> None:
    """prompt_tokens adds tool calls, names, per-message frames, the reply priming and tools."""
    call = {"id": "call_1", "type": "function",
            "function": {"name": "fs__read", "arguments": '{"path":"a"}'}}  # fmt: skip
    messages = [
        {"role": "user", "content": "hello world"},
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "call_1", "content": "ok"},
    ]
    content = count_tokens("hello world") + count_tokens("ok")
    calls = 3 + count_tokens("call_1") + count_tokens("fs__read") + count_tokens('{"path":"a"}')
    expected = 3 + 3 * 3 + content + calls + count_tokens("call_1")
    assert prompt_tokens(messages) == expected
    tools = [{"type": "function", "function": {"name": "fs__read"}}]
    assert prompt_tokens(messages, tools) == expected + count_tokens(canonical_json(tools[0]))


def test_stable_prefix_is_the_same_bytes_each_time() -> None:
    """The system prompt and task render identically, line endings normalized."""
    first = stable_prefix("Be careful.\r\nUse tools.", "Do it.")
    assert first == [
        {"role": "system", "content": "Be careful.\nUse tools."},
        {"role": "user", "content": "Do it."},
    ]
    assert canonical_json(first) == canonical_json(
        stable_prefix("Be careful.\r\nUse tools.", "Do it.")
    )


def test_stable_tools_sorts_tools_and_keys() -> None:
    """Tools come sorted by name with sorted keys, whatever order they were given in."""
    spec_b = {"name": "shell.run", "schema": {"type": "object", "properties": {"b": {}, "a": {}}},
              "description": " Run. "}  # fmt: skip
    spec_a = {"type": "function", "function": {"parameters": {}, "name": "fs__read",
                                               "description": "Read."}}  # fmt: skip
    first = stable_tools([spec_b, spec_a])
    second = stable_tools([spec_a, spec_b])
    assert [t["function"]["name"] for t in first] == ["fs__read", "shell__run"]
    assert list(first[1]["function"]["parameters"]["properties"]) == ["a", "b"]
    assert first[1]["function"]["description"] == "Run."
    import json

    assert json.dumps(first) == json.dumps(second)


def test_stable_tools_refuses_duplicates() -> None:
    """The same tool twice is an error."""
    spec = {"name": "fs.read", "description": "", "schema": {}}
    with pytest.raises(ToolListError, match="fs__read"):
        stable_tools([spec, dict(spec)])


def test_wire_name() -> None:
    """Dots become double underscores on the wire."""
    assert wire_name("fs.read") == "fs__read"


def test_extractive_summary_keeps_facts_and_references() -> None:
    """The extract keeps call lines, references and the most fact-like lines, in order."""
    log = "\n".join(
        [f"2024-05-14 02:00:{i:02d} INFO tick" for i in range(50)]
        + ["<p>2024-05-14T02:17:42Z ERROR RG-5031 query timed out on wh-replica-3</p>",
           "config at /etc/app/app.yaml", "version 2.7.1 deployed", "nothing here"]
    )  # fmt: skip
    ref = "offload://0123456789abcdef"
    summary = ExtractiveSummarizer(lines_per_step=3).extract([observation(7, log, ref)])
    lines = summary.splitlines()
    assert (
        lines[0]
        == f'- step 7 fs.read {{"path":"f7.log"}} -> {len(log):,} chars, full output at {ref}'
    )
    assert lines[1] == "  thought: thinking 7"
    assert lines[2:] == [
        "  | 2024-05-14T02:17:42Z ERROR RG-5031 query timed out on wh-replica-3",
        "  | config at /etc/app/app.yaml",
        "  | version 2.7.1 deployed",
    ]


def test_extractive_summary_folds_repeated_lines() -> None:
    """Lines that differ only in numbers count once, so one noisy line cannot crowd the rest."""
    text = "\n".join(
        [f"WARN retry {i} failed after {i * 10}ms" for i in range(20)] + ["ERROR boom x"]
    )
    facts = ExtractiveSummarizer(lines_per_step=4).facts(text)
    assert facts == ["WARN retry 0 failed after 0ms", "ERROR boom x"]


def test_extractive_summary_is_deterministic() -> None:
    """The same observations always give the same summary."""
    items = [observation(i, f"ERROR E-{i} at /var/log/x{i}.log\n" * 3) for i in range(6)]
    summarizer = ExtractiveSummarizer()
    assert asyncio.run(summarizer.summarize(items)) == asyncio.run(summarizer.summarize(items))


def test_llm_summarizer_sends_the_steps_and_returns_the_answer() -> None:
    """LLMSummarizer sends instructions plus each call line and observation; sync or async."""
    seen: list[list[dict[str, Any]]] = []

    def complete(messages: list[dict[str, Any]]) -> str:
        seen.append(messages)
        return "  step 1 read f1.log: RG-5031  "

    async def acomplete(messages: list[dict[str, Any]]) -> str:
        return complete(messages)

    items = [observation(1, "whole", text="reduced RG-5031"), observation(2, "two")]
    assert asyncio.run(LLMSummarizer(complete).summarize(items)) == "step 1 read f1.log: RG-5031"
    assert asyncio.run(LLMSummarizer(acomplete).summarize(items)) == "step 1 read f1.log: RG-5031"
    system, user = seen[0]
    assert system["role"] == "system" and "offload://" in system["content"]
    assert user["content"].startswith('### step 1 fs.read {"path":"f1.log"}\nthought: thinking 1\n')
    assert "reduced RG-5031" in user["content"] and "whole" not in user["content"]


def test_llm_summarizer_refuses_an_empty_summary() -> None:
    """An empty answer raises SummaryError rather than erasing the steps."""
    with pytest.raises(SummaryError):
        asyncio.run(LLMSummarizer(lambda messages: " ").summarize([observation(1, "x")]))
