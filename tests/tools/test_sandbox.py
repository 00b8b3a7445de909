"""The escape suite: real `loom worker` processes whose tools try to break out.

Each test names the layer that stops the attempt on this host. Where a host lacks a layer
(the report in the directory says so), the test checks the weaker guarantee that is left.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import Proc, wait_for

from loom import ToolClient
from loom.errors import ToolError, ToolLimitError

ESCAPE_TOOLS = str(Path(__file__).parent.parent / "workers" / "escape.py")
SECRET = "loom-test-secret-3141"


class Sandboxed:
    """A broker and an escape-tools worker; ``call`` runs one tool call."""

    def __init__(self, broker: str, worker: Proc, jail: Path) -> None:
        self.broker = broker
        self.worker = worker
        self.jail = jail
        self.report: dict[str, str] = self.run(self._report)

    async def _report(self, client: ToolClient) -> dict[str, str]:
        info = (await client.directory()).tool("escape.read")
        assert info is not None and info.sandbox is not None
        return info.sandbox

    def run(self, body: Callable[[ToolClient], Any]) -> Any:
        async def go() -> Any:
            async with await ToolClient.connect(self.broker, name="escape-test") as client:
                return await body(client)

        return asyncio.run(go())

    def call(self, tool: str, **args: Any) -> Any:
        return self.run(lambda client: client.call(tool, args, timeout=20))

    def applied(self, layer: str, part: str = "") -> bool:
        state = self.report.get(layer, "unavailable")
        return not state.startswith(("unavailable", "refused")) and part in state

    def refused(self, *codes: str) -> set[str]:
        """Landlock's errno (``codes``, default EACCES); under bubblewrap the path may
        not exist at all (a private /tmp and pid namespace): ENOENT, ESRCH, EROFS."""
        extra = {"ENOENT", "ESRCH", "EROFS"} if self.applied("bwrap") else set()
        return set(codes or ("EACCES",)) | extra


@pytest.fixture
def endpoint(short_tmp: Path) -> str:
    """ipc:// only (conftest's runs TCP too): here the suite runs twice over the outside
    layers instead, without bubblewrap and inside it."""
    return f"ipc://{short_tmp}/broker"


@pytest.fixture(params=["host", "bwrap"])
def layers(request: pytest.FixtureRequest) -> str:
    """Which outside layers the worker uses: the host's own, or bubblewrap's too."""
    if request.param == "bwrap" and shutil.which("bwrap") is None:
        pytest.fail("bubblewrap is not installed (scripts/install-test-packages installs it)")
    return str(request.param)


def start_escapee(
    spawn: Callable[..., Proc], mesh: str, jail: Path, layers: str, *, shell: str = ""
) -> Proc:
    """An escape-tools worker; ``shell``: a ``sh -c`` line that runs ``"$@"`` (the
    worker's command) with redirections or another directory."""
    command = [sys.executable, "-m", "loom.cli.main", "worker", ESCAPE_TOOLS, "--broker", mesh]
    command += ["--name", "escapee", "--jail", str(jail)]
    if shell:
        command = ["/bin/sh", "-c", shell, "sh", *command]
    env = {"SECRET": SECRET, "LOOM_SANDBOX_BWRAP": "on" if layers == "bwrap" else "off"}
    return spawn(*command, env=env)


def escapee_ready(mesh: str, worker: Proc, jail: Path, layers: str) -> Sandboxed:
    box = Sandboxed(mesh, worker, jail)
    assert box.applied("bwrap") == (layers == "bwrap"), box.report
    return box


@pytest.fixture
def sandboxed(mesh: str, spawn: Callable[..., Proc], short_tmp: Path, layers: str) -> Sandboxed:
    jail = short_tmp / "jail"  # short: it holds a socket file in one test
    worker = start_escapee(spawn, mesh, jail, layers)
    worker.wait_line("worker ready")
    return escapee_ready(mesh, worker, jail, layers)


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    path = tmp_path / "outside.txt"
    path.write_text("not for tools")
    return path


def test_a_call_runs_in_the_jail_with_a_cleared_environment(sandboxed: Sandboxed) -> None:
    """The tool's cwd is the jail, its environment holds only the allowlist, its uid is not
    root's (a user namespace), and it is not the worker's process."""
    where = sandboxed.call("escape.whoami")
    assert where["cwd"] == str(sandboxed.jail)
    assert set(where["env"]) <= {"PATH", "HOME", "TMPDIR", "LANG", "LC_ALL", "TZ"}
    assert where["pid"] != sandboxed.worker.popen.pid
    assert where["caller"] == "local"  # the broker's word reaches the sandboxed call
    if sandboxed.applied("userns"):
        assert where["uid"] == 65534


def test_reading_a_file_outside_the_jail_is_refused(sandboxed: Sandboxed, outside: Path) -> None:
    """Landlock refuses to open a file outside the jail and the read-only system paths."""
    result = sandboxed.call("escape.read", path=str(outside))
    if sandboxed.applied("landlock", "fs"):
        assert result in sandboxed.refused()
    else:  # weaker: file permissions only
        assert result in ("ok", "EACCES")
    assert sandboxed.call("escape.read", path="/usr/lib/os-release") == "ok"  # read-only paths


def test_writing_outside_the_jail_is_refused(sandboxed: Sandboxed, outside: Path) -> None:
    """Landlock refuses writes outside the jail, even to a system path it may read."""
    target = outside.with_name("written.txt")
    result = sandboxed.call("escape.write", path=str(target))
    assert sandboxed.call("escape.write", path="inside.txt") == "ok"
    assert (sandboxed.jail / "inside.txt").read_text() == "escaped"
    if sandboxed.applied("landlock", "fs"):
        assert result in sandboxed.refused() and not target.exists()
        assert sandboxed.call("escape.write", path="/usr/lib/loom-escape") in sandboxed.refused()


def test_a_symlink_out_of_the_jail_leads_nowhere(sandboxed: Sandboxed, outside: Path) -> None:
    """A symlink in the jail pointing outside: reading or writing through it is refused by
    Landlock, which checks the file reached, not the path written."""
    (sandboxed.jail / "link").symlink_to(outside)
    read = sandboxed.call("escape.read", path="link")
    write = sandboxed.call("escape.write", path="link")
    if sandboxed.applied("landlock", "fs"):
        assert {read, write} <= sandboxed.refused()
        assert outside.read_text() == "not for tools"


def test_opening_a_tcp_connection_is_refused(sandboxed: Sandboxed) -> None:
    """With no network in the policy, seccomp refuses the socket itself (EPERM); with
    sockets allowed but one port listed, Landlock refuses connect() to any other port."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        result = sandboxed.call("escape.tcp", port=port)
        loopback = sandboxed.call("escape.tcp_loopback", port=port)
    if sandboxed.applied("seccomp"):
        assert result == "EPERM"
    elif sandboxed.applied("netns", "private"):  # weaker: an empty network namespace
        assert result in ("ECONNREFUSED", "ENETUNREACH")
    if sandboxed.applied("landlock", "tcp"):
        assert loopback == "EACCES"


def test_connecting_to_a_unix_socket_outside_is_refused(sandboxed: Sandboxed) -> None:
    """Landlock does not cover connect() on a socket file; seccomp refuses AF_UNIX."""
    path = Path(f"/tmp/loom-escape-{os.getpid()}.sock")
    with socket.socket(socket.AF_UNIX) as server:
        server.bind(str(path))
        server.listen()
        try:
            result = sandboxed.call("escape.unix", path=str(path))
        finally:
            path.unlink()
    if sandboxed.applied("seccomp"):
        assert result == "EPERM"


def test_a_fork_bomb_is_bounded(sandboxed: Sandboxed) -> None:
    """Forking stops at the policy's 8 processes for a normal user (RLIMIT_NPROC, counted
    in the call's own user namespace). Root is exempt from RLIMIT_NPROC: there the pids
    cgroup of the sandbox (8 per call it may run at once, and a few) stops it. The
    children die with the call, and the sandbox keeps serving."""
    result = sandboxed.call("escape.fork_bomb")
    assert result["error"] == "EAGAIN"
    if os.getuid() != 0 and sandboxed.applied("userns"):
        assert result["started"] < 8
    elif sandboxed.applied("cgroup"):  # "pids.max N (...)": the whole sandbox's tasks
        assert result["started"] < int(sandboxed.report["cgroup"].split()[1])
    else:  # weaker: nothing but the wall-clock limit and the group kill
        assert result["started"] <= 1000
    assert sandboxed.call("escape.whoami")["pid"] > 0


def test_unbounded_memory_is_refused(sandboxed: Sandboxed) -> None:
    """Allocations past the policy's 512 MiB fail (RLIMIT_AS): LIMIT_EXCEEDED memory_mb."""
    with pytest.raises(ToolLimitError) as caught:
        sandboxed.call("escape.memory")
    assert caught.value.limit == "memory_mb"


def test_a_spinning_call_is_killed_at_its_cpu_limit(sandboxed: Sandboxed) -> None:
    """RLIMIT_CPU kills a call past its 1 s of CPU: LIMIT_EXCEEDED cpu_seconds."""
    with pytest.raises(ToolLimitError) as caught:
        sandboxed.call("escape.spin")
    assert caught.value.limit == "cpu_seconds"


def test_a_hanging_call_is_killed_at_its_wall_clock_limit(sandboxed: Sandboxed) -> None:
    """A call that sleeps uses no CPU: the launcher kills its process group after 2 s."""
    with pytest.raises(ToolLimitError) as caught:
        sandboxed.call("escape.hang")
    assert caught.value.limit == "wall_seconds"


def test_a_file_past_the_size_limit_is_refused(sandboxed: Sandboxed) -> None:
    """RLIMIT_FSIZE (1 MiB here) stops a larger write: EFBIG, or the call is stopped."""
    try:
        result = sandboxed.call("escape.big_file")
    except ToolLimitError as exc:
        assert exc.limit == "file_size_mb"
    else:
        assert result == "EFBIG"
    assert (sandboxed.jail / "big").stat().st_size <= 1 << 20


def test_signalling_the_parent_is_refused(sandboxed: Sandboxed) -> None:
    """SIGKILL to the worker, the launcher and -1 (everyone) is refused (the call's PID
    namespace, where their pids name nothing; Landlock's signal scope, and seccomp for
    these pids); the worker keeps serving."""
    worker = sandboxed.worker.popen.pid
    result = sandboxed.call("escape.signal", pids=[worker])
    assert set(result.values()) <= sandboxed.refused("EPERM", "ESRCH")
    assert sandboxed.worker.popen.poll() is None
    assert sandboxed.call("escape.whoami")["pid"] > 0


def test_the_parents_environment_stays_secret(sandboxed: Sandboxed) -> None:
    """The secret in the worker's environment is neither inherited (cleared environment)
    nor readable in /proc (Landlock: /proc is not in the policy; and ptrace scoping)."""
    worker = sandboxed.worker.popen.pid
    found = sandboxed.call("escape.secret", name="SECRET", worker_pid=worker)
    assert found["here"] == "absent"
    if sandboxed.applied("landlock", "fs"):
        assert {found["launcher"], found["worker"]} <= sandboxed.refused() | {"hidden"}


def test_a_failed_call_leaves_the_sandbox_serving(sandboxed: Sandboxed) -> None:
    """After every kind of kill, the next call still runs (a fresh process per call)."""
    with pytest.raises(ToolError):
        sandboxed.call("escape.spin")
    assert sandboxed.call("escape.whoami")["cwd"] == str(sandboxed.jail)


def test_sandbox_check_reports_layers_and_blocks_every_probe() -> None:
    """`loom sandbox check` prints the layers and exits 0: every escape probe was blocked."""
    import subprocess

    done = subprocess.run(
        [sys.executable, "-m", "loom.cli.main", "sandbox", "check", "--json"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    import json

    report = json.loads(done.stdout)
    assert {"rlimits", "env", "landlock", "seccomp", "userns"} <= set(report["layers"])
    assert all(value.startswith("blocked") for value in report["escapes"].values())
    assert {  # a probe for each class of hole found (and the network ones)
        "send to a socket file from a datagram socketpair",
        "read another process's limits",
        "set another process's priority",
        "make a child of the parent (CLONE_PARENT)",
        "find an earlier call's System V shared memory",
        "seek in the worker's standard error",
        "read a directory on the worker's import path",
        "connect with MPTCP (protocol 262)",
        "listen on an unbound socket",
    } <= set(report["escapes"])


def test_a_config_file_overrides_the_declared_policy(
    mesh: str, spawn: Callable[..., Proc], tmp_path: Path
) -> None:
    """`loom worker --config`: `[tools."escape.tcp_loopback".sandbox.net] ports` lets
    connect() reach a port the declared policy refused; a limits override shows in the
    tool's sandbox report; `approval = true` makes the broker hold its calls."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        config = tmp_path / "loom.toml"
        config.write_text(
            f'[worker]\njail = "{tmp_path / "jail"}"\n\n'
            f'[tools."escape.tcp_loopback".sandbox.net]\nports = [{port}]\n\n'
            '[tools."escape.read".sandbox.limits]\ncpu_seconds = 2\n\n'
            '[tools."escape.whoami"]\napproval = true\n'
        )
        command = [sys.executable, "-m", "loom.cli.main", "worker", ESCAPE_TOOLS]
        worker = spawn(*command, "--broker", mesh, "--config", str(config))
        worker.wait_line("worker ready")
        box = Sandboxed(mesh, worker, tmp_path / "jail")
        assert box.call("escape.tcp_loopback", port=port) == "ok"
    assert box.report["rlimits"].startswith("cpu 2s")

    async def held(client: ToolClient) -> bool:
        info = (await client.directory()).tool("escape.whoami")
        return info is not None and info.approval

    assert box.run(held)


def test_raw_syscalls_do_not_slip_past_seccomp(sandboxed: Sandboxed) -> None:
    """seccomp compares the 32 bits the kernel reads: socket() with a family padded with
    high bits is still refused; clone() into a new namespace and F_SETOWN/F_SETSIG (the
    kernel signalling the launcher for us) are refused too."""
    results = [sandboxed.call(f"escape.{name}") for name in ("raw_socket", "clone_namespace")]
    sigio = sandboxed.call("escape.sigio")
    if sandboxed.applied("seccomp"):
        assert results == ["EPERM", "EPERM"] and sigio == "EPERM EPERM"
    assert sandboxed.call("escape.whoami")["pid"] > 0  # weaker without seccomp: this only


def test_code_planted_in_the_jail_never_runs_outside_the_sandbox(
    mesh: str, spawn: Callable[..., Proc], tmp_path: Path
) -> None:
    """A call writes `loom/__init__.py`, `heapq.py`... into a persistent jail; a new
    worker on the same jail starts its launcher (`python -I`, the jail off sys.path):
    none of it is imported."""
    jail, marker = tmp_path / "jail", tmp_path / "planted"
    command = [sys.executable, "-m", "loom.cli.main", "worker", ESCAPE_TOOLS, "--broker", mesh]
    first = spawn(*command, "--name", "first", "--jail", str(jail))
    first.wait_line("worker ready")
    box = Sandboxed(mesh, first, jail)
    assert box.call("escape.plant", marker=str(marker)) == "planted"
    first.popen.terminate()
    first.popen.wait(20)
    second = spawn(*command, "--name", "second", "--jail", str(jail))
    second.wait_line("worker ready")
    assert Sandboxed(mesh, second, jail).call("escape.whoami")["cwd"] == str(jail)
    assert not marker.exists()


@pytest.mark.parametrize("how", ["short", "huge", "progress"])
def test_a_forged_answer_fails_its_call_only(sandboxed: Sandboxed, how: str) -> None:
    """A call that writes forged or unreadable frames on its answer pipe gets TOOL_ERROR
    (its process is killed); the launcher and the next calls carry on."""
    with pytest.raises(ToolError) as caught:
        sandboxed.call("escape.forge", how=how)
    assert caught.value.code == "TOOL_ERROR" and "wrote" in str(caught.value)
    assert sandboxed.call("escape.whoami")["cwd"] == str(sandboxed.jail)


def test_a_call_cannot_see_an_earlier_calls_arguments(sandboxed: Sandboxed) -> None:
    """Call processes are forked by a zygote that never holds call data: one call's
    arguments are not in the next call's frames or objects."""
    secret = "ARGUMENT-OF-ANOTHER-AGENT-7319"
    assert sandboxed.call("escape.read", path=f"/nonexistent/{secret}") == "ENOENT"
    assert sandboxed.call("escape.snoop", backwards=secret[::-1]) == []


def test_a_datagram_socketpair_reaches_no_socket_file(sandboxed: Sandboxed) -> None:
    """socket(AF_UNIX) is refused, and so is a datagram socketpair, one end of which could
    sendto() any datagram socket file (/dev/log, a service's): only a stream pair, which
    leads nowhere (asyncio's wakeup pipe), is allowed (seccomp)."""
    path = sandboxed.jail / "dgram.sock"  # in the jail: bound inside bubblewrap too
    received = None
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
        server.bind(str(path))
        server.setblocking(False)
        result = sandboxed.call("escape.dgram_pair", path=str(path))
        with contextlib.suppress(BlockingIOError):
            received = server.recv(100)
    if sandboxed.applied("seccomp"):
        assert result == "EPERM" and received is None


def _ioprio(pid: int) -> int:
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    return int(libc.syscall(252, 1, pid))  # ioprio_get(IOPRIO_WHO_PROCESS, pid)


def _vitals(pid: int) -> tuple[Any, ...]:
    import resource

    return (
        resource.prlimit(pid, resource.RLIMIT_NOFILE),
        os.getpriority(os.PRIO_PROCESS, pid),
        os.sched_getaffinity(pid),
        os.sched_getscheduler(pid),
        _ioprio(pid),
    )


def test_other_processes_limits_and_priorities_are_out_of_reach(sandboxed: Sandboxed) -> None:
    """prlimit64, setpriority, sched_setaffinity, sched_setscheduler and ioprio_set on
    another process of the same user (or on all of a user's) are refused: a call has its
    own PID namespace where the host allows one (no other pid exists: ESRCH) and seccomp
    lets these calls name only the caller itself (pid 0: EPERM). On itself they work."""
    victim = subprocess.Popen(["sleep", "60"])
    try:
        before = _vitals(victim.pid)
        results = sandboxed.call("escape.meddle", pid=victim.pid)
        assert _vitals(victim.pid) == before
    finally:
        victim.kill()
        victim.wait()
    others = {name: result for name, result in results.items() if not name.startswith("self")}
    assert set(others.values()) <= {"EPERM", "ESRCH"}, results
    assert results["self setpriority"] == results["self setrlimit"] == "ok"
    assert sandboxed.call("escape.whoami")["pid"] > 0


def test_a_call_addresses_no_process_outside_it(sandboxed: Sandboxed) -> None:
    """Where the host allows user namespaces, each call gets a PID namespace: it is pid 1
    there with no parent, and another process's pid names no process (ESRCH, where seccomp
    or Landlock would say EPERM)."""
    where = sandboxed.call("escape.whoami")
    victim = subprocess.Popen(["sleep", "60"])
    try:
        signalled = sandboxed.call("escape.signal", pids=[victim.pid])
        assert victim.poll() is None
    finally:
        victim.kill()
        victim.wait()
    if sandboxed.applied("userns", "PID"):
        assert (where["pid"], where["ppid"]) == (1, 0)
        assert signalled[str(victim.pid)] == "ESRCH"
    assert set(signalled.values()) <= {"EPERM", "ESRCH"}, signalled


def test_inet_sockets_other_than_tcp_and_udp_are_refused(sandboxed: Sandboxed) -> None:
    """Landlock's port rules see TCP only: an MPTCP socket (protocol 262) would connect to
    any port. seccomp allows inet sockets of protocol 0, TCP or UDP only."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        result = sandboxed.call("escape.mptcp", port=server.getsockname()[1])
    if sandboxed.applied("seccomp"):
        assert result == "EPERM"


def test_listening_without_bind_is_refused(sandboxed: Sandboxed) -> None:
    """bind() is refused (Landlock), and so is listen() on an unbound socket, which would
    bind a port itself (seccomp: no sandboxed call is a server)."""
    result = sandboxed.call("escape.listen")
    if sandboxed.applied("seccomp"):
        assert result == "EPERM"


def _zombies(root: int) -> list[int]:
    """The zombie processes among ``root``'s descendants."""
    parents: dict[int, int] = {}
    states: dict[int, str] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                states[int(entry.name)] = fields[0]
                parents[int(entry.name)] = int(fields[1])
    found, frontier = [], [root]
    while frontier:
        pid = frontier.pop()
        children = [child for child, parent in parents.items() if parent == pid]
        found += [child for child in children if states.get(child) == "Z"]
        frontier += children
    return found


def test_no_call_leaves_zombies(sandboxed: Sandboxed) -> None:
    """clone(CLONE_PARENT) would make children of the zygote, which reaped only what it
    forked (15 calls of them filled the pids limit): seccomp refuses the flag (and a PID
    namespace's init may not use it); orphans are reaped (the zygote is a subreaper) or
    die with the call's namespace. The sandbox keeps serving."""
    made = [sandboxed.call("escape.clone_parent", count=4) for _ in range(5)]
    for _ in range(5):
        assert sandboxed.call("escape.orphans", count=4) == "ok"
    if sandboxed.applied("seccomp"):
        assert all(set(results) <= {"EPERM", "EINVAL"} for results in made), made
    wait_for(lambda: not _zombies(sandboxed.worker.pid), timeout=10)
    assert sandboxed.call("escape.whoami")["pid"] > 0


def test_system_v_shared_memory_dies_with_its_call(sandboxed: Sandboxed) -> None:
    """A segment a call leaves is gone for the next call: each call has its own IPC
    namespace (or, without user namespaces, seccomp refuses System V IPC)."""
    key = 0x4C000000 + os.getpid() % 0x10000
    created = sandboxed.call("escape.shm_create", key=key)
    assert created in ("ok", "EPERM")
    assert sandboxed.call("escape.shm_find", key=key) in ("ENOENT", "EPERM")


def test_a_call_cannot_rewrite_the_workers_log(
    mesh: str, spawn: Callable[..., Proc], short_tmp: Path, layers: str
) -> None:
    """The worker logs to a file. A call's standard output and error are a pipe the
    launcher reads, not the worker's file: truncating it fails (clearing O_APPEND on a
    pipe changes nothing), and printing more than the policy's file size limit (1 MiB) is
    no error. What it printed reaches the worker's log, each line naming the tool and the
    call, up to Limits.output_kb (64 KiB); the rest is counted as dropped."""
    log, jail = short_tmp / "worker.log", short_tmp / "jail"
    log.touch()
    worker = start_escapee(spawn, mesh, jail, layers, shell=f'exec "$@" 2>>{log}')
    wait_for(lambda: "worker ready" in log.read_text(), timeout=20)
    box = escapee_ready(mesh, worker, jail, layers)
    where = box.call("escape.stderr")
    assert where["kind"] == "pipe" and where["truncate"] != "ok", where
    assert box.call("escape.shout", lines=20000) == "ok"  # 1.4 MB
    text = wait_for(lambda: log.read_text() if "dropped" in log.read_text() else None)
    assert "worker ready" in text
    shouts = [line for line in text.splitlines() if "shout " in line]
    assert shouts and all("escape.shout" in line and "call=" in line for line in shouts)
    assert 500 < len(shouts) < 64 * 1024 // 60


def test_the_workers_directory_is_not_readable(
    mesh: str, spawn: Callable[..., Proc], short_tmp: Path, tmp_path: Path, layers: str
) -> None:
    """`python -m loom.cli.main worker` puts its working directory on sys.path; a secret
    there stays unreadable: the read list holds Python's prefixes and the modules the
    launcher imported (a top-level module's file alone), not all of sys.path."""
    home, jail = tmp_path / "project", short_tmp / "jail"
    home.mkdir()
    (home / "secret.txt").write_text(SECRET)
    worker = start_escapee(spawn, mesh, jail, layers, shell=f'cd {home} && exec "$@"')
    worker.wait_line("worker ready")
    box = escapee_ready(mesh, worker, jail, layers)
    secret = box.call("escape.read", path=str(home / "secret.txt"))
    sibling = box.call("escape.read", path=str(Path(ESCAPE_TOOLS).with_name("sample.py")))
    if box.applied("landlock", "fs"):
        assert {secret, sibling} <= box.refused()
    assert box.call("escape.read", path=ESCAPE_TOOLS) == "ok"  # the tools' own module


def test_what_a_tool_prints_reaches_the_workers_log(sandboxed: Sandboxed) -> None:
    """print() (buffered, and the call process ends with os._exit) and an unterminated
    last line on stderr both reach the worker's log, with the tool's name; control
    characters arrive escaped, never as terminal sequences."""
    assert sandboxed.call("escape.chatter", word="kumquat") == "ok"
    printed = sandboxed.worker.wait_line("printed kumquat")
    assert "escape.chatter" in printed
    assert "escape.chatter" in sandboxed.worker.wait_line("unterminated kumquat")
    colour = sandboxed.worker.wait_line("colour")
    assert "\x1b" not in colour and "x1b[31m" in colour


def test_the_read_list_holds_code_not_the_directories_around_it() -> None:
    """A module's readable code: its top-level package's directory when its path ends in
    its package names, else its file alone (a file loaded by path, dotted stem or not); a
    zip's archive; nothing for a namespace package."""
    from types import SimpleNamespace as Module

    from loom.tools.sandbox._code import code_of

    assert code_of(Module(__name__="a.b.c", __file__="/x/a/b/c.py")) == Path("/x/a")
    package = Module(__name__="a.b", __file__="/x/a/b/__init__.py", __path__=["/x/a/b"])
    assert code_of(package) == Path("/x/a")
    built = Module(__name__="p", __file__="/x/p/__init__.cpython-311.so", __path__=["/x/p"])
    assert code_of(built) == Path("/x/p")
    assert code_of(Module(__name__="tools", __file__="/p/tools.py")) == Path("/p/tools.py")
    dotted = Module(__name__="tools.v2", __file__="/p/tools.v2.py")
    assert code_of(dotted) == Path("/p/tools.v2.py")
    zipped = Module(
        __name__="z.m", __file__="/p/a.pyz/z/m.py", __loader__=Module(archive="/p/a.pyz")
    )
    assert code_of(zipped) == Path("/p/a.pyz")
    assert code_of(Module(__name__="spread", __file__=None)) is None


def test_a_path_that_cannot_be_opened_leaves_landlock_on() -> None:
    """A read path inside a file (a module imported from a zip: `app.pyz/pkg/mod.py`) is
    skipped; Landlock is still applied (it used to be refused as a whole)."""
    code = (
        "from pathlib import Path\n"
        "from loom.tools.sandbox import _kernel as k\n"
        "abi = k.landlock_abi()\n"
        "print(k.landlock_restrict(abi, read=[Path('/etc/hostname/inside')]) if abi else 'none')\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=30, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "none" or "fs" in done.stdout
