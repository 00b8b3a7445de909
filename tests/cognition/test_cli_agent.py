"""`loom agent` runs a cognitive actor from `[llm.NAME]`; `loom ask` gives it a task."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from conftest import LOOM, Proc, run_loom, start_worker

from loom.cognition import ScriptedLLM


def test_an_agent_from_config_answers_loom_ask(
    mesh: str, spawn: Callable[..., Proc], tmp_path: Path
) -> None:
    """`loom agent NAME --llm test` thinks with the configured (scripted) LLM and the
    mesh's tools; `loom ask NAME TASK --steps` prints the answer, the steps on stderr."""
    start_worker(spawn, mesh, "w1")
    script = [
        {
            "reply": {
                "tool_calls": [{"name": "sample__add", "arguments": json.dumps({"a": 20, "b": 22})}]
            }
        },
        {"expect": {"contains": "42"}, "reply": {"content": "It is 42."}},
    ]
    with ScriptedLLM(script) as llm:
        config = tmp_path / "loom.toml"
        config.write_text(f'[llm.test]\nbase_url = "{llm.base_url}"\nmodel = "scripted"\n')
        agent = spawn(
            *LOOM, "agent", "sage", "--llm", "test", "--config", str(config),
            "--tools", "sample.*", "--broker", mesh,
        )  # fmt: skip
        agent.wait_line("actor started")
        asked = run_loom("ask", "sage", "What is 20 + 22?", "--steps", "--broker", mesh)
    assert asked.returncode == 0, asked.stderr
    assert asked.stdout.strip() == "It is 42."
    assert "[tool_call]" in asked.stderr and "sample.add" in asked.stderr


def test_a_bad_agent_configuration_is_named(tmp_path: Path, mesh: str) -> None:
    """An unknown [llm.NAME] and a missing API key variable exit 2 and say which."""
    config = tmp_path / "loom.toml"
    config.write_text(
        '[llm.cloud]\nbase_url = "https://example.invalid/v1"\nmodel = "m"\n'
        'api_key_env = "LOOM_TEST_NO_SUCH_KEY"\n'
    )
    unknown = run_loom("agent", "a", "--llm", "other", "--config", str(config), "--broker", mesh)
    assert unknown.returncode == 2 and "[llm.other]" in unknown.stderr
    keyless = run_loom("agent", "a", "--llm", "cloud", "--config", str(config), "--broker", mesh)
    assert keyless.returncode == 2 and "LOOM_TEST_NO_SUCH_KEY" in keyless.stderr
