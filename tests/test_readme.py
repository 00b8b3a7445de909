"""The README's two commands are the ones CI and a newcomer run."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).parent.parent


def _commands() -> list[str]:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Two commands", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```sh\n(.+?)\n```", section)


def test_readme_has_exactly_two_setup_commands() -> None:
    """One installs and runs the demo, one installs the test extras and runs the checks."""
    run, check = _commands()
    assert "pip install -e ." in run and run.endswith("loom demo")
    assert "'.[test]'" in check and check.endswith("scripts/check")


def test_ci_runs_the_readme_test_command_verbatim() -> None:
    """.ci/run contains the README's test command as one line."""
    _, check = _commands()
    assert check in (ROOT / ".ci" / "run").read_text().splitlines()
