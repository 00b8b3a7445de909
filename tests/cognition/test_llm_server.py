"""The scripted stand-in LLM server itself: script mode, recording, refusals."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from conftest import Proc, free_tcp_endpoint

from loom.cognition import ScriptedLLM, load_script

HERE = Path(__file__).parent
SCRIPTS = HERE / "scripts"
CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


def test_runs_as_a_script(spawn: Callable[..., Proc], tmp_path: Path) -> None:
    """As a script it prints its URL, plays the script and records each request."""
    port = free_tcp_endpoint().rsplit(":", 1)[1]
    record = tmp_path / "requests.jsonl"
    proc = spawn(
        sys.executable,
        "-m",
        "loom.cli.main",
        "llm-stub",
        str(SCRIPTS / "answer.json"),
        "--port",
        port,
        "--record",
        str(record),
    )
    line = proc.wait_line("listening on ")
    base_url = line.split("listening on ", 1)[1].strip()
    assert base_url == f"http://127.0.0.1:{port}/v1"
    with httpx.Client(base_url=base_url, trust_env=False) as client:
        answer = client.post("/chat/completions", json=CHAT).json()
    assert answer["choices"][0]["message"]["content"] == "Hello from the scripted model."
    assert [json.loads(line) for line in record.read_text().splitlines()] == [CHAT]
    assert proc.stop() == 0


def test_requests_past_the_script_are_refused() -> None:
    """A request after the last step answers 400 and is recorded as a failure."""
    with ScriptedLLM([]) as llm, httpx.Client(base_url=llm.base_url, trust_env=False) as client:
        response = client.post("/chat/completions", json=CHAT)
        assert llm.wait_requests(1) == [CHAT]
    assert response.status_code == 400
    assert "no step left" in response.json()["error"]["message"]
    assert llm.failures == ["request 0: the script has no step left"]


def test_invalid_scripts_are_refused() -> None:
    """A step with no kind, two kinds or an unknown expectation is refused at load."""
    for steps in ([{}], [{"reply": {}, "status": 500}], [{"reply": {}, "expect": {"x": 1}}]):
        with pytest.raises(ValueError, match="step 0"):
            load_script(steps)
    assert len(load_script(SCRIPTS / "tool_then_answer.json")) == 2
