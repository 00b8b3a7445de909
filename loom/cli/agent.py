"""``loom agent``: run a cognitive actor from the settings file's ``[llm.NAME]``;
``loom ask``: give one a task and print its answer (its steps, with ``--steps``);
``loom llm-stub``: a scripted OpenAI-compatible server, to try the agent loop offline."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any

from loom.actor import Actor, Event
from loom.cli.settings import load_settings
from loom.cognition import (
    ChatClient,
    CognitiveActor,
    LLMConfigError,
    ScriptedLLM,
    load_script,
    resolve_api_key,
)
from loom.errors import LoomError


def add_parsers(commands: Any, common: argparse.ArgumentParser) -> None:
    """Add ``agent`` and ``ask`` to ``loom``'s parser."""
    agent = commands.add_parser(
        "agent",
        parents=[common],
        help="run a cognitive actor thinking with a configured LLM",
        epilog="example: loom agent analyst --llm local --tools 'fs.*' --memory-dir state\n"
        "         (then: loom ask analyst 'What changed in the logs today?')",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    agent.add_argument("name", help="the agent's name (it serves agent.<name>.task)")
    agent.add_argument("--llm", required=True, help="which [llm.NAME] of the settings file")
    agent.add_argument(
        "--config", default="configs/loom.toml", help="the settings file (configs/loom.toml)"
    )
    agent.add_argument(
        "--tools", nargs="*", default=["*"], help="patterns of the mesh tools it may use (all)"
    )
    agent.add_argument("--memory-dir", type=Path, help="where its memory persists (none)")
    agent.add_argument("--system", help="its instructions (a system prompt)")
    agent.add_argument("--max-steps", type=int, default=20)
    agent.add_argument("--token-budget", type=int, default=200_000)
    ask = commands.add_parser(
        "ask",
        parents=[common],
        help="give a running agent a task; print its answer",
        epilog="example: loom ask analyst 'Summarize failed jobs' --steps",
    )
    ask.add_argument("name", help="the agent's name")
    ask.add_argument("task", help="what to do")
    ask.add_argument("--steps", action="store_true", help="print its steps to stderr as they come")
    ask.add_argument(
        "--wait", type=float, default=600.0, help="seconds to wait for the answer (600)"
    )
    stub = commands.add_parser(
        "llm-stub",
        parents=[common],
        help="serve a scripted OpenAI-compatible LLM on loopback (try agents offline)",
        epilog="example: loom llm-stub script.json --port 8088\n"
        "         (then [llm.stub] base_url = 'http://127.0.0.1:8088/v1'; the script's\n"
        "          format: docs/cognition.md, 'Trying it offline')",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    stub.add_argument("script", help="the JSON script: a list of steps")
    stub.add_argument("--port", type=int, default=0, help="the port (default: any free one)")
    stub.add_argument("--record", help="append each request's body to this JSONL file")


def run_agent(args: argparse.Namespace, broker: str) -> int:
    """Run the agent until SIGINT/SIGTERM; exit 2 on a bad configuration."""
    try:
        table = load_settings(args.config).llm
        if args.llm not in table:
            known = ", ".join(sorted(table)) or "none"
            raise LLMConfigError(f"{args.config}: no [llm.{args.llm}] (configured: {known})")
        settings = table[args.llm]
        key = resolve_api_key(settings, os.environ, name=args.llm)  # the program's edge
    except LoomError as exc:
        print(f"loom agent: {exc}", file=sys.stderr)
        return 2
    options: dict[str, Any] = {}
    if args.system:
        options["system_prompt"] = args.system
    CognitiveActor(
        args.name,
        broker,
        llm=ChatClient(settings, api_key=key, name=args.llm),
        llm_settings=settings,
        tools=args.tools,
        memory_dir=args.memory_dir,
        max_steps=args.max_steps,
        token_budget=args.token_budget,
        **options,
    ).run()
    return 0


def run_llm_stub(args: argparse.Namespace) -> int:
    """Serve the script until SIGINT/SIGTERM; exit 2 when the script is not valid, 1 when
    a request did not match what the script expected."""
    try:
        steps = load_script(args.script)
    except (OSError, ValueError) as exc:
        print(f"loom llm-stub: {args.script}: {exc}", file=sys.stderr)
        return 2
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    with ScriptedLLM(steps, port=args.port, record=args.record) as llm:
        print(f"listening on {llm.base_url}", flush=True)
        stop.wait()
    for failure in llm.failures:
        print(f"loom llm-stub: {failure}", file=sys.stderr)
    return 1 if llm.failures else 0


async def ask_agent(args: argparse.Namespace, broker: str) -> int:
    """Exit 0 when the agent answered, 1 otherwise (its status on stderr), at once when
    no agent of that name is on the mesh."""
    actor = Actor(name="loom-ask", broker=broker, connect_timeout=args.timeout, unique=False)

    def step(event: Event) -> None:
        kind = event.topic.rsplit(".", 1)[1]
        if kind == "token":
            print(event.data.get("text", ""), end="", file=sys.stderr, flush=True)
        elif kind != "task":
            print(f"\n[{kind}] {json.dumps(event.data, default=repr)[:300]}", file=sys.stderr)

    if args.steps:
        await actor.subscribe(f"agent.{args.name}.*", step)
    await actor.start()
    try:
        directory = await actor.directory(args.timeout)
        if directory.actor(args.name) is None:
            running = ", ".join(sorted(a.name for a in directory.actors)) or "none"
            print(
                f"loom ask: no agent named {args.name!r} on the mesh (actors: {running}); "
                f"start one with `loom agent {args.name} --llm NAME`",
                file=sys.stderr,
            )
            return 1
        result = await actor.request(
            f"agent.{args.name}.task", {"task": args.task}, timeout=args.wait
        )
    finally:
        await actor.stop()
    if args.steps:
        print(file=sys.stderr)
    if result.get("status") != "answered":
        print(f"loom ask: {result.get('status')}: {result.get('error') or ''}", file=sys.stderr)
        return 1
    print(result.get("answer", ""))
    return 0
