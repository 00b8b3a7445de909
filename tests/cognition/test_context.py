"""The context manager: each technique on its own and all together."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from loom.cognition import context
from loom.cognition.context import (
    ContextConfig,
    ContextConfigError,
    ContextManager,
    ExtractiveSummarizer,
    Observation,
    ReducerError,
    Reducers,
    Step,
    canonical_json,
    find_refs,
    prompt_tokens,
)

ROOT = Path(__file__).parents[2]
TRAJECTORY = ROOT / "bench" / "data" / "trajectory.json"
OFF = ContextConfig.off()


def log_text(lines: int, marker: str = "") -> str:
    """A log of ``lines`` lines; ``marker`` goes on an ERROR line in the middle."""
    out = [f"2024-05-14T02:{n // 60:02d}:{n % 60:02d}Z INFO worker tick {n}" for n in range(lines)]
    if marker:
        out[lines // 2] = f"2024-05-14T02:10:00Z ERROR job failed: {marker}"
    return "\n".join(out) + "\n"


def read_step(index: int, text: str, path: str = "app.log") -> Step:
    size = len(text.encode())
    result = {"path": path, "size": size, "bytes": size, "content": text, "truncated": False}
    return Step(index, "fs.read", f"call_{index}", {"path": path}, result, thought=f"read {index}")


def run_step(index: int, stdout: str) -> Step:
    result = {
        "exit_code": 0,
        "stdout": stdout,
        "stderr": "",
        "truncated": False,
        "timed_out": False,
    }
    return Step(index, "shell.run", f"call_{index}", {"argv": ["cat", "x"]}, result)


def render(manager: ContextManager, steps: Sequence[Step]) -> list[dict[str, Any]]:
    return asyncio.run(manager.render("You are careful.", "Find the error.", list(steps)))


def tool_contents(messages: list[dict[str, Any]]) -> list[str]:
    return [m["content"] for m in messages if m["role"] == "tool"]


class CountingSummarizer:
    """Records each group it is asked to summarize."""

    def __init__(self) -> None:
        self.groups: list[list[int]] = []

    async def summarize(self, observations: Sequence[Observation]) -> str:
        self.groups.append([o.step.index for o in observations])
        return f"summary of {self.groups[-1]}"


def test_public_names() -> None:
    """The package exports exactly its public face."""
    assert set(context.__all__) == {
        "ContextConfig", "ContextConfigError", "ContextError", "ContextManager",
        "ExtractiveSummarizer", "LLMSummarizer", "Limits", "Observation",
        "OffloadMissingError", "OffloadRecord", "OffloadRefError", "OffloadStore", "Reducer",
        "ReducerError", "Reducers", "Step", "Summarizer", "SummaryError", "ToolListError",
        "call_ref", "canonical_json", "context_read", "count_tokens", "find_refs", "parse_ref",
        "prompt_tokens", "reduce_json", "stable_prefix", "stable_tools", "wire_name",
    }  # fmt: skip
    for name in context.__all__:
        assert hasattr(context, name), name


def test_errors_derive_from_loom_error() -> None:
    """Every error of the package is a LoomError."""
    from loom.errors import LoomError

    for name in ("ContextError", "ContextConfigError", "ReducerError", "OffloadRefError",
                 "OffloadMissingError", "SummaryError", "ToolListError"):  # fmt: skip
        assert issubclass(getattr(context, name), LoomError), name


def test_config_rejects_bad_limits() -> None:
    """A limit below 1, or compaction tighter than its group, is refused."""
    with pytest.raises(ContextConfigError, match="mask_after"):
        ContextConfig(mask_after=0)
    with pytest.raises(ContextConfigError, match="compact_after"):
        ContextConfig(compact_after=4, compact_group=6)
    with pytest.raises(ContextConfigError, match="offload_ttl"):
        ContextConfig(offload_ttl=0)


def test_all_off_renders_the_raw_transcript(tmp_path: Path) -> None:
    """With every technique off, observations are the tools' results as JSON."""
    step = read_step(1, "hello\n")
    messages = render(ContextManager(OFF, tmp_path), [step])
    assert messages[0] == {"role": "system", "content": "You are careful."}
    assert messages[1] == {"role": "user", "content": "Find the error."}
    call = messages[2]["tool_calls"][0]
    assert messages[2]["content"] == "read 1"
    assert call == {
        "id": "call_1",
        "type": "function",
        "function": {"name": "fs__read", "arguments": '{"path":"app.log"}'},
    }
    assert messages[3] == {
        "role": "tool",
        "tool_call_id": "call_1",
        "content": json.dumps(step.result, ensure_ascii=False),
    }
    assert not (tmp_path / ".offload").exists()


def test_reduction_alone_trims_command_output(tmp_path: Path) -> None:
    """Reduction alone keeps the head and tail of long output and counts the rest."""
    config = ContextConfig(reduce=True, mask_after=None, compact_after=None, offload_over=None)
    messages = render(ContextManager(config, tmp_path), [run_step(1, log_text(500))])
    content = tool_contents(messages)[0]
    assert content.startswith("exit 0\nstdout (500 lines):\n")
    assert "[455 lines elided]" in content
    assert "worker tick 499" in content


def test_reducer_failure_is_a_reducer_error(tmp_path: Path) -> None:
    """A reducer that raises surfaces as ReducerError with the original as cause."""
    reducers = Reducers()

    def broken(step: Step) -> str:
        raise KeyError("boom")

    reducers.register("fs.read", broken)
    manager = ContextManager(ContextConfig(), tmp_path, reducers=reducers)
    with pytest.raises(ReducerError) as caught:
        render(manager, [read_step(1, "x")])
    assert isinstance(caught.value.__cause__, KeyError)


def test_masking_replaces_old_observations_with_the_call(tmp_path: Path) -> None:
    """Masking alone replaces old observations by a placeholder naming the call and size."""
    config = ContextConfig(reduce=False, mask_after=2, mask_group=2, compact_after=None,
                           offload_over=None)  # fmt: skip
    steps = [read_step(i, log_text(40, f"E{i}"), path=f"log{i}.txt") for i in range(1, 6)]
    contents = tool_contents(render(ContextManager(config, tmp_path), steps))
    size = len("\n".join(["path: \"log1.txt\"", f"size: {steps[0].result['size']}",
                          f"bytes: {steps[0].result['size']}", "truncated: false",
                          "--- content ---", steps[0].result["content"]]))  # fmt: skip
    assert contents[0] == (
        f'[masked: step 1 fs.read {{"path":"log1.txt"}} -> {size:,} chars; '
        "re-run the call to see it again]"
    )
    assert contents[1].startswith("[masked: step 2 fs.read")
    assert all("E3" in c or "E4" in c or "E5" in c for c in contents[2:])


def test_masked_placeholder_points_to_the_offloaded_output(tmp_path: Path) -> None:
    """With offloading on, a masked observation names its offload reference."""
    config = ContextConfig(reduce=True, mask_after=1, mask_group=1, compact_after=None)
    manager = ContextManager(config, tmp_path)
    steps = [read_step(1, log_text(200, "RG-5031")), read_step(2, "short\n")]
    masked = tool_contents(render(manager, steps))[0]
    assert masked.startswith("[masked: step 1 fs.read")
    (ref,) = find_refs(masked)
    assert masked.endswith(f"read {ref} with context.read]")
    assert "RG-5031" in manager.store.read(ref, 0, 1 << 20)


def test_masking_keeps_observations_shorter_than_the_placeholder(tmp_path: Path) -> None:
    """A short observation is left as it is: masking it would not save anything."""
    config = ContextConfig(mask_after=1, mask_group=1, compact_after=None)
    steps = [run_step(1, "ok\n"), run_step(2, "ok\n")]
    contents = tool_contents(render(ContextManager(config, tmp_path), steps))
    assert contents[0] == "exit 0\nstdout (1 lines):\nok"


def test_masking_moves_in_whole_groups(tmp_path: Path) -> None:
    """Observations are masked a group at a time, always leaving the newest N in full."""
    manager = ContextManager(ContextConfig(mask_after=6, mask_group=4), tmp_path)
    assert [manager.masked(n) for n in range(6, 20)] == [0, 0, 0, 0, 4, 4, 4, 4, 8, 8, 8, 8,
                                                        12, 12]  # fmt: skip
    assert ContextManager(OFF, tmp_path).masked(100) == 0


def test_masked_calls_have_long_arguments_cut(tmp_path: Path) -> None:
    """A masked step's long string arguments are shortened in its tool call."""
    config = ContextConfig(mask_after=1, mask_group=1, compact_after=None)
    big = Step(1, "fs.write", "call_1", {"path": "a.md", "content": "x" * 5000},
               {"path": "a.md", "bytes": 5000})  # fmt: skip
    messages = render(ContextManager(config, tmp_path), [big, run_step(2, "ok\n")])
    arguments = json.loads(messages[2]["tool_calls"][0]["function"]["arguments"])
    assert arguments["path"] == "a.md"
    assert arguments["content"].endswith("… [5,000 chars]")
    assert len(arguments["content"]) < 120


def test_compaction_summarizes_each_group_once(tmp_path: Path) -> None:
    """Past compact_after steps, the oldest groups are summarized once each, not per call."""
    summarizer = CountingSummarizer()
    config = ContextConfig(reduce=False, mask_after=None, compact_after=12, compact_group=6,
                           offload_over=None)  # fmt: skip
    manager = ContextManager(config, tmp_path, summarizer=summarizer)
    steps = [run_step(i, f"line {i}\n") for i in range(1, 31)]
    for count in range(31):
        messages = render(manager, steps[:count])
        assert sum(m["role"] == "assistant" for m in messages) <= 12
    assert summarizer.groups == [
        [1, 2, 3, 4, 5, 6],
        [7, 8, 9, 10, 11, 12],
        [13, 14, 15, 16, 17, 18],
    ]
    assert manager.summaries == 3
    assert messages[2]["content"].startswith("[summary of steps 1-6")
    assert messages[2]["content"].endswith("summary of [1, 2, 3, 4, 5, 6]")
    assert messages[5]["tool_calls"][0]["id"] == "call_19"


def test_compaction_keeps_facts_in_the_summary(tmp_path: Path) -> None:
    """The extractive summary keeps the fact-like lines of compacted steps."""
    config = ContextConfig(reduce=True, mask_after=None, compact_after=6, compact_group=6,
                           offload_over=None)  # fmt: skip
    steps = [
        run_step(i, log_text(80, f"code RG-50{i:02d} in /srv/job{i}.log")) for i in range(1, 8)
    ]
    messages = render(ContextManager(config, tmp_path, summarizer=ExtractiveSummarizer()), steps)
    summary = messages[2]["content"]
    for i in range(1, 7):
        assert f"RG-50{i:02d}" in summary
        assert f'step {i} shell.run {{"argv":["cat","x"]}}' in summary
    assert "worker tick 3 " not in summary


def test_a_failed_summary_is_asked_again(tmp_path: Path) -> None:
    """A summarizer error propagates and the group is asked again on the next render."""

    class Flaky:
        calls = 0

        async def summarize(self, observations: Sequence[Observation]) -> str:
            Flaky.calls += 1
            if Flaky.calls == 1:
                raise RuntimeError("model down")
            return "ok"

    config = ContextConfig(compact_after=6, compact_group=6, mask_after=None)
    manager = ContextManager(config, tmp_path, summarizer=Flaky())
    steps = [run_step(i, "x\n") for i in range(1, 8)]
    with pytest.raises(RuntimeError, match="model down"):
        render(manager, steps)
    assert render(manager, steps)[2]["content"].endswith("\nok")
    assert Flaky.calls == 2


def test_offloading_replaces_a_large_output_by_a_reference(tmp_path: Path) -> None:
    """Offloading alone writes a large output to a file; the prompt keeps ref, size, preview."""
    config = ContextConfig(reduce=False, mask_after=None, compact_after=None,
                           offload_over=2000, preview_chars=100)  # fmt: skip
    manager = ContextManager(config, tmp_path)
    step = read_step(1, log_text(300, "RG-5031"))
    content = tool_contents(render(manager, [step]))[0]
    (ref,) = find_refs(content)
    record = manager.store.record(ref)
    assert content.startswith(f"[offloaded: {record.size:,} chars at {ref}; read it with")
    assert content.endswith(json.dumps(step.result)[:100] + "…")
    assert (tmp_path / ".offload" / f"{record.id}.txt").is_file()
    assert (record.tool, record.step) == ("fs.read", 1)
    assert "RG-5031" in manager.store.read(ref, 0, 1 << 20)
    assert "RG-5031" not in content


def test_offloading_points_from_a_short_reduction_to_the_whole(tmp_path: Path) -> None:
    """A reduction under the threshold of a larger output is kept, with a pointer to it."""
    entries = [{"name": f"f{i:03d}.log", "type": "file", "size": i} for i in range(400)]
    step = Step(1, "fs.list", "call_1", {"path": "logs"},
                {"path": "logs", "entries": entries, "truncated": False})  # fmt: skip
    manager = ContextManager(ContextConfig(), tmp_path)
    content = tool_contents(render(manager, [step]))[0]
    assert content.startswith("logs: 400 entries (400 files)\nf000.log\n")
    assert "… 350 more …" in content
    (ref,) = find_refs(content)
    assert content.endswith(f" chars at {ref}]")
    assert "f200.log" in manager.store.read(ref, 0, 1 << 20)


def test_context_read_results_are_never_offloaded(tmp_path: Path) -> None:
    """Reading an offloaded output back does not offload it again."""
    text = "y" * 4000
    step = Step(1, "context.read", "call_1", {"ref": "offload://0123456789abcdef"},
                {"ref": "offload://0123456789abcdef", "offset": 0, "size": 9000,
                 "content": text, "next_offset": 4000})  # fmt: skip
    manager = ContextManager(ContextConfig(), tmp_path)
    content = tool_contents(render(manager, [step]))[0]
    assert content.endswith(text)
    assert manager.store.records() == []


def test_prefix_is_byte_stable_between_boundaries(tmp_path: Path) -> None:
    """Each prompt repeats the previous one byte for byte, except where a group boundary moved."""
    config = ContextConfig(mask_after=6, mask_group=4, compact_after=12, compact_group=6,
                           offload_over=500)  # fmt: skip
    manager = ContextManager(config, tmp_path)
    steps = [read_step(i, log_text(20 + i * 7, f"E-{i}")) for i in range(1, 31)]
    previous = [canonical_json(m) for m in render(manager, [])]
    moves = []
    for count in range(1, 31):
        current = [canonical_json(m) for m in render(manager, steps[:count])]
        boundary = (manager.masked(count), manager.compacted(count)) != (
            manager.masked(count - 1), manager.compacted(count - 1))  # fmt: skip
        if boundary:
            moves.append(count)
            assert current[:2] == previous[:2]
        else:
            assert current[: len(previous)] == previous, count
            assert len(current) == len(previous) + 2
        previous = current
    assert moves == [10, 13, 14, 18, 19, 22, 25, 26, 30]


def test_rendering_is_deterministic(tmp_path: Path) -> None:
    """Two managers render the same steps to the same bytes, offload references included."""
    steps = [read_step(i, log_text(100 + i, f"E-{i}")) for i in range(1, 21)]
    first = render(ContextManager(ContextConfig(), tmp_path / "a"), steps)
    second = render(ContextManager(ContextConfig(), tmp_path / "b"), steps)
    assert canonical_json(first) == canonical_json(second)


def test_all_techniques_on_the_recorded_run(tmp_path: Path) -> None:
    """On the recorded run, all techniques cut prompt tokens by 80% and keep every fact."""
    data = json.loads(TRAJECTORY.read_text())
    steps = [Step(**step) for step in data["steps"]]
    totals = {}
    for name, config in (("none", OFF), ("all", ContextConfig())):
        manager = ContextManager(config, tmp_path / name, clock=lambda: 1.0)
        prompts = [render(manager, steps[:count]) for count in range(len(steps) + 1)]
        totals[name] = sum(prompt_tokens(p) for p in prompts)
    text = "\n".join(json.dumps(m, ensure_ascii=False) for m in prompts[-1])
    stored = "\n".join(manager.store.read(ref, 0, 1 << 30) for ref in find_refs(text))
    for fact in data["facts"]:
        assert fact["text"] in text or fact["text"] in stored, fact
    assert totals["all"] < 0.2 * totals["none"]
