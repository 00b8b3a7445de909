"""The agent loop across processes: a real broker, a real `loom worker` with the sample
tools, a cognitive actor process, and a scripted OpenAI-compatible server on loopback."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from conftest import ACTORS, Proc, eventually, start_worker, wait_for

from loom import Actor, Event, ToolClient
from loom.cognition import ScriptedLLM


def call(name: str, arguments: Any) -> dict[str, Any]:
    text = arguments if isinstance(arguments, str) else json.dumps(arguments)
    return {"name": name, "arguments": text}


def spawn_thinker(spawn: Callable[..., Proc], mesh: str, llm: ScriptedLLM, *extra: str) -> Proc:
    proc = spawn(sys.executable, str(ACTORS / "thinker.py"), mesh, llm.base_url, "thinker", *extra)
    proc.wait_line("actor started")
    return proc


def ask(mesh: str, topic: str, data: Any, events: list[Event] | None = None) -> Any:
    """Request ``topic`` from a fresh actor, collecting `agent.thinker.*` events."""

    async def go() -> Any:
        actor = Actor(name="asker", broker=mesh)
        if events is not None:
            await actor.subscribe("agent.thinker.*", events.append)
        await actor.start()
        try:
            return await actor.request(topic, data, timeout=40)
        finally:
            await actor.stop()

    return asyncio.run(go())


def kinds(events: list[Event]) -> list[str]:
    steps = [e.topic.rsplit(".", 1)[1] for e in events]
    return [kind for kind in steps if kind not in ("token", "task")]


def test_a_multi_step_task_uses_mesh_tools_end_to_end(
    mesh: str, spawn: Callable[..., Proc]
) -> None:
    """The model calls sample.add twice (the second with the first's result), then
    answers; each step is emitted; the tool results reach the model as observations."""
    start_worker(spawn, mesh, "w1")
    script = [
        {
            "reply": {
                "content": "First 2 + 3.",
                "tool_calls": [call("sample__add", {"a": 2, "b": 3})],
            }
        },
        {
            "expect": {"last_role": "tool", "contains": "5"},
            "reply": {"tool_calls": [call("sample__add", {"a": 5, "b": 10})]},
        },
        {"expect": {"contains": "15"}, "reply": {"content": "The answer is 15."}},
    ]
    events: list[Event] = []
    with ScriptedLLM(script) as llm:
        spawn_thinker(spawn, mesh, llm)
        result = ask(mesh, "agent.thinker.task", {"task": "What is 2 + 3 + 10?"}, events)
        assert result["status"] == "answered" and result["answer"] == "The answer is 15."
        assert result["steps"] == 2 and result["usage"]["total_tokens"] > 0
        assert llm.remaining == 0 and len(llm.requests) == 3
        tools = [t["function"]["name"] for t in llm.requests[0]["tools"]]
        assert "sample__add" in tools and all(t.startswith("sample__") for t in tools)
    assert kinds(events)[:1] == ["start"] and kinds(events)[-2:] == ["answer", "end"]
    calls = [e.data for e in events if e.topic.endswith(".tool_call")]
    assert [c["args"] for c in calls] == [{"a": 2, "b": 3}, {"a": 5, "b": 10}]
    observed = [e.data["result"] for e in events if e.topic.endswith(".observation")]
    assert observed == [5, 15]
    tokens = "".join(e.data["text"] for e in events if e.topic.endswith(".token"))
    assert "The answer is 15." in tokens  # streamed


def test_malformed_model_output_is_fed_back_not_fatal(
    mesh: str, spawn: Callable[..., Proc]
) -> None:
    """Arguments that are not JSON and a tool that does not exist become error
    observations the model sees; it then answers."""
    start_worker(spawn, mesh, "w1")
    script = [
        {"reply": {"tool_calls": [call("sample__add", "{not json")]}},
        {
            "expect": {"last_role": "tool", "contains": "JSON"},
            "reply": {"tool_calls": [call("sample__nope", {})]},
        },
        {
            "expect": {"contains": "no tool named"},
            "reply": {"tool_calls": [call("sample__add", {"a": "x"})]},
        },
        {"expect": {"contains": "INVALID_PARAMS"}, "reply": {"content": "I give up politely."}},
    ]
    with ScriptedLLM(script) as llm:
        spawn_thinker(spawn, mesh, llm)
        result = ask(mesh, "agent.thinker.task", {"task": "try things"})
        assert result["status"] == "answered" and result["answer"] == "I give up politely."
        assert llm.remaining == 0


def test_a_large_output_is_offloaded_and_referenced(mesh: str, spawn: Callable[..., Proc]) -> None:
    """A tool output over the threshold is written to the workspace: the next prompt holds
    a preview and an offload:// reference, not the whole log, and the result lists it."""
    start_worker(spawn, mesh, "w1")
    script = [
        {"reply": {"tool_calls": [call("sample__log", {"lines": 400})]}},
        {"expect": {"contains": "offload://"}, "reply": {"content": "It failed with E-4711."}},
    ]
    with ScriptedLLM(script) as llm:
        spawn_thinker(spawn, mesh, llm)
        result = ask(mesh, "agent.thinker.task", {"task": "why did the job fail?"})
        prompt = json.dumps(llm.requests[1]["messages"])
    assert result["status"] == "answered" and len(result["references"]) == 1
    assert result["references"][0] in prompt and "step 399" not in prompt


def test_the_token_budget_ends_the_run(mesh: str, spawn: Callable[..., Proc]) -> None:
    """A run past its token budget ends `budget_exhausted`, the tool call not made."""
    start_worker(spawn, mesh, "w1")
    usage = {"prompt_tokens": 900, "completion_tokens": 200, "total_tokens": 1100}
    script = [{"reply": {"tool_calls": [call("sample__add", {"a": 1, "b": 1})], "usage": usage}}]
    events: list[Event] = []
    with ScriptedLLM(script) as llm:
        spawn_thinker(spawn, mesh, llm, "1000")
        result = ask(mesh, "agent.thinker.task", {"task": "add"}, events)
    assert result["status"] == "budget_exhausted" and result["usage"]["total_tokens"] == 1100
    assert "tool_call" not in kinds(events)


def test_a_sub_agent_round_trip_and_a_crashed_one(mesh: str, spawn: Callable[..., Proc]) -> None:
    """delegate() spawns a child process with the goal only; its answer comes back; a
    child that cannot start is reported `failed`, not waited on."""
    script = [
        {
            "expect": {"contains": "find the port"},
            "reply": {"content": "The port is 8443."},
        }
    ]
    with ScriptedLLM(script) as llm:
        spawn_thinker(spawn, mesh, llm)
        result = ask(mesh, "thinker.delegate", {"goal": "find the port"})
        assert result["status"] == "answered" and result["answer"] == "The port is 8443."
        first = llm.requests[0]["messages"]
        assert [m["role"] for m in first] == ["system", "user"]  # the goal only
        broken = ask(mesh, "thinker.delegate", {"goal": "anything", "broken": True})
        assert broken["status"] == "failed" and "exited" in broken["error"]


def test_memory_survives_an_actor_restart(
    mesh: str, spawn: Callable[..., Proc], tmp_path: Path
) -> None:
    """What a cognitive actor remembers (long-term, LMDB) is recalled after it restarts."""
    with ScriptedLLM([]) as llm:
        first = spawn_thinker(spawn, mesh, llm, "200000", str(tmp_path))
        ask(mesh, "thinker.remember", {"text": "the staging database is db-7"})
        first.popen.terminate()
        first.popen.wait(20)
        spawn_thinker(spawn, mesh, llm, "200000", str(tmp_path))
        assert ask(mesh, "thinker.recall", {"query": "staging database"}) == [
            "the staging database is db-7"
        ]


def test_unencodable_arguments_are_an_observation(mesh: str, spawn: Callable[..., Proc]) -> None:
    """An integer msgpack cannot carry (from the model) fails that call as an
    observation, the step is still reported, and the run goes on to an answer."""
    start_worker(spawn, mesh, "w1")
    script = [
        {"reply": {"tool_calls": [call("sample__add", '{"a": 99999999999999999999, "b": 1}')]}},
        {"expect": {"contains": "EncodeError"}, "reply": {"content": "Too big to add."}},
    ]
    events: list[Event] = []
    with ScriptedLLM(script) as llm:
        spawn_thinker(spawn, mesh, llm)
        result = ask(mesh, "agent.thinker.task", {"task": "add big numbers"}, events)
    assert result["status"] == "answered" and result["answer"] == "Too big to add."
    shortened = [e.data for e in events if e.topic.endswith(".tool_call")]
    assert shortened and "shortened" in shortened[0]["note"]


def test_references_belong_to_their_run(mesh: str, spawn: Callable[..., Proc]) -> None:
    """Two runs in one workspace each list only the outputs they offloaded."""
    start_worker(spawn, mesh, "w1")
    script = [
        {"reply": {"tool_calls": [call("sample__log", {"lines": 400})]}},
        {"reply": {"content": "first"}},
        {"reply": {"tool_calls": [call("sample__log", {"lines": 401})]}},
        {"reply": {"content": "second"}},
    ]
    with ScriptedLLM(script) as llm:
        spawn_thinker(spawn, mesh, llm)
        first = ask(mesh, "agent.thinker.task", {"task": "one"})
        second = ask(mesh, "agent.thinker.task", {"task": "two"})
    assert len(first["references"]) == len(second["references"]) == 1
    assert first["references"] != second["references"]


def test_a_sub_agent_dies_with_its_parent(mesh: str, spawn: Callable[..., Proc]) -> None:
    """SIGKILL the parent while its sub-agent thinks (a slow model): the child notices
    its stdin closing and leaves the mesh, rather than live on as an orphan."""
    script = [{"delay": 20, "reply": {"content": "too late"}}]
    with ScriptedLLM(script) as llm:
        parent = spawn_thinker(spawn, mesh, llm)

        async def child_pid() -> int:
            async with await ToolClient.connect(mesh, name="watch") as client:

                async def found() -> int:
                    actors = (await client.directory()).actors
                    pids = [a.pid for a in actors if ".sub-" in a.name and a.pid]
                    return pids[0] if pids else 0

                return int(await eventually(found, timeout=20))

        async def delegate_and_watch() -> int:
            asker = Actor(name="asker", broker=mesh)
            await asker.start()
            request = asyncio.ensure_future(
                asker.request("thinker.delegate", {"goal": "slow"}, timeout=60)
            )
            try:
                return await child_pid()
            finally:
                request.cancel()
                await asker.stop()

        pid = asyncio.run(delegate_and_watch())
        os.kill(parent.popen.pid, signal.SIGKILL)

        def gone() -> bool:  # exited (a zombie waiting for init to reap it counts)
            try:
                return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] == "Z"
            except OSError:
                return True

        wait_for(gone, timeout=20)


def test_stopping_while_thinking_cancels_the_run_cleanly(
    mesh: str, spawn: Callable[..., Proc]
) -> None:
    """SIGTERM while the model is slow to answer: the run is cancelled before the LLM
    client closes, the actor exits 0, and nothing raises on the way out."""
    script = [{"delay": 20, "reply": {"content": "too late"}}]
    with ScriptedLLM(script) as llm:
        thinker = spawn_thinker(spawn, mesh, llm)

        async def start_task() -> None:
            asker = Actor(name="asker", broker=mesh)
            await asker.start()
            request = asyncio.ensure_future(
                asker.request("agent.thinker.task", {"task": "slow"}, timeout=60)
            )
            try:
                await asyncio.to_thread(llm.wait_requests, 1, 20)
            finally:
                request.cancel()
                await asker.stop()

        asyncio.run(start_task())
        thinker.popen.send_signal(signal.SIGTERM)
        assert thinker.popen.wait(20) == 0
    assert not [line for line in thinker.lines if "Traceback" in line or "Error" in line]
