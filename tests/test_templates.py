"""`loom new`: each template writes a runnable project whose own test passes (run here
as a user would: pytest in the project's directory); `loom dev` restarts a child when
its file changes."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import LOOM, Proc, eventually, free_tcp_endpoint

from loom import Actor

pytestmark = pytest.mark.timeout(180)


@pytest.mark.parametrize("template", ["trio", "agent", "blank", "tool-worker", "desktop-assistant"])
def test_a_template_makes_a_project_that_passes_its_own_test(template: str, tmp_path: Path) -> None:
    project = tmp_path / f"my-{template}"
    made = subprocess.run(
        [*LOOM, "new", template, str(project)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert made.returncode == 0, made.stderr
    assert (project / "mesh.toml").exists() and (project / "README.md").exists()
    assert f"my-{template}" in (project / "README.md").read_text()
    assert not list(project.glob("*.tmpl"))
    tested = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(project)],
        capture_output=True,
        text=True,
        timeout=150,
        cwd=project,
        check=False,
    )
    assert tested.returncode == 0, tested.stdout + tested.stderr
    again = subprocess.run(
        [*LOOM, "new", template, str(project)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert again.returncode == 2 and "not empty" in again.stderr


def test_loom_dev_restarts_a_child_when_its_file_changes(
    spawn: Callable[..., Proc], tmp_path: Path
) -> None:
    """`loom dev mesh.toml`: editing the actor's file restarts it, and the new code
    answers."""
    project = tmp_path / "dev"
    subprocess.run(
        [*LOOM, "new", "blank", str(project)], check=True, capture_output=True, timeout=60
    )
    endpoint = free_tcp_endpoint()
    proc = spawn(*LOOM, "dev", "mesh.toml", env={"LOOM_BROKER": endpoint}, cwd=project)
    try:
        proc.wait_line("watching", timeout=60)
        check_restart(proc, project, endpoint)
    finally:  # SIGTERM: the supervisor stops its children (a SIGKILL would orphan them)
        code = proc.stop()
    assert code == 0, proc.output


def check_restart(proc: Proc, project: Path, endpoint: str) -> None:
    """The greeter answers; after its file is edited, the new code answers."""

    async def greeting() -> Any:
        asker = Actor(name="dev-test", broker=endpoint, unique=False)
        await asker.start()
        try:

            async def answer() -> Any:
                try:
                    return (await asker.request("hello.world", timeout=2))["greeting"]
                except Exception:
                    return None

            return await eventually(answer, 60)
        finally:
            await asker.stop()

    assert asyncio.run(greeting()) == "hello, world"
    source = project / "actor.py"
    source.write_text(source.read_text().replace('f"hello, {who}"', 'f"hi there, {who}"'))
    proc.wait_line("restarting greeter", timeout=30)

    async def changed() -> Any:
        asker = Actor(name="dev-test", broker=endpoint, unique=False)
        await asker.start()
        try:

            async def answer() -> Any:
                try:
                    reply = await asker.request("hello.world", timeout=2)
                except Exception:
                    return None
                return reply["greeting"] if reply["greeting"].startswith("hi there") else None

            return await eventually(answer, 60)
        finally:
            await asker.stop()

    assert asyncio.run(changed()) == "hi there, world"
