"""`loom new desktop-assistant`, run for real as a user would (`loom run mesh.toml`) on an
X server with a session bus and dunst: a key pressed with xdotool summarizes the text set
with xclip (on the scripted LLM), the answer reaches dunst and a click on it copies it; a
file dropped in the inbox is noted; the timer writes the day's summary."""

from __future__ import annotations

import asyncio
import json
import signal
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import LOOM, Proc, eventually, free_tcp_endpoint, wait_for
from desktop_helpers import xsession

from loom import Actor
from loom.cognition import ScriptedLLM, load_script
from loom.desktop import VirtualDesktop

__all__ = ["xsession"]

pytestmark = pytest.mark.timeout(120)

COPIED = "Loom runs agents as processes. They talk through a broker and call tools."


def test_the_desktop_assistant_template_runs_end_to_end(
    spawn: Callable[..., Proc], xsession: VirtualDesktop, tmp_path: Path
) -> None:
    project = tmp_path / "assistant"
    made = spawn(*LOOM, "new", "desktop-assistant", str(project))
    assert made.popen.wait(60) == 0, made.output
    mesh = project / "mesh.toml"
    mesh.write_text(mesh.read_text().replace('cron = "0 18 * * *"', "every = 2"))
    endpoint = free_tcp_endpoint()
    xsession.run("dunstctl", "close-all")
    xsession.run("dunstctl", "history-clear", check=False)
    with ScriptedLLM(load_script(project / "script.json")) as llm:
        env = {**xsession.env, "LOOM_BROKER": endpoint, "ASSISTANT_LLM_URL": llm.base_url}
        running = spawn(*LOOM, "run", "mesh.toml", env=env, cwd=project)

        async def ready() -> None:
            actor = Actor(name="probe", broker=endpoint, connect_timeout=30)
            await actor.start()
            try:

                async def up() -> bool:
                    found = await actor.directory()
                    return bool(found.actor("assistant") and found.tool("desktop.notify"))

                await eventually(up, timeout=30)
            finally:
                await actor.stop()

        asyncio.run(ready())
        wait_for(lambda: "desktop ready" in running.output, 30)
        # listed from its hello, subscribed a moment later: its own log says when
        started = ("actor started", "actor=assistant")
        wait_for(lambda: any(all(w in line for w in started) for line in running.lines), 30)
        xsession.set_clipboard(COPIED)
        xsession.run("xdotool", "key", "ctrl+alt+s")

        def displayed() -> int:
            return int(xsession.run("dunstctl", "count", "displayed").stdout)

        wait_for(displayed, 30)
        xsession.run("dunstctl", "action", "0")  # a click on it: the answer is copied
        answer = "Loom runs long-lived agents as processes on a ZeroMQ mesh."
        wait_for(lambda: xsession.clipboard() == answer, 15)
        xsession.run("dunstctl", "close-all")
        history = json.loads(xsession.run("dunstctl", "history").stdout)
        shown = [(n["summary"]["data"], n["body"]["data"]) for n in history["data"][0]]
        assert ("Summarize", answer) in shown

        (project / "inbox" / "report.txt").write_text("numbers")
        journal = project / "notes" / "journal.md"
        wait_for(lambda: journal.exists() and "report.txt" in journal.read_text(), 15)
        summaries = wait_for(lambda: list((project / "notes").glob("summary-*.md")), 15)
        wait_for(lambda: "report.txt" in summaries[0].read_text(), 15)
        assert f"summarize: {answer}" in summaries[0].read_text()
        running.popen.send_signal(signal.SIGTERM)
        assert running.popen.wait(60) == 0, running.output
    assert llm.failures == [], llm.failures
