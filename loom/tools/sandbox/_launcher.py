"""The sandbox launcher: ``python -I -m loom.tools.sandbox._launcher``, started by a worker.

It reads one ``init`` frame from stdin (the tools to load, the policy, the jail), loads the
tools, confines itself (namespaces, Landlock), reports the layers it applied, forks the
zygote (``zygote.py``), then serves calls: each call runs in a process the zygote forked
ahead of need, which adds the per-call layers (its own process group, rlimits, a nested
user namespace, a Landlock signal scope, no capabilities, seccomp) before running the
tool. A fresh process per call gives every call fresh limits and memory, and a kill that
cleans up (``docs/sandbox.md`` has the measurements). The launcher forwards each call's
checked frames, and kills a call's process group at its wall-clock limit or on
``cancel``; whatever happens to the launcher, its calls die with it.
"""

from __future__ import annotations

import contextlib
import heapq
import os
import resource
import selectors
import signal
import socket
import sys
import time
from pathlib import Path
from typing import Any

from loom.errors import LoomError
from loom.protocol import FrameReader, write_frame
from loom.tools._tool import Tool
from loom.tools.sandbox import _kernel as kernel
from loom.tools.sandbox._code import imported_code
from loom.tools.sandbox._policy import Limits, Sandbox
from loom.tools.sandbox._zygote import zygote_main

__all__ = ["main"]

_SPARE_DELAY = 0.005
"""Seconds after an answer before the next spare is forked: a fork right away competes
for the CPU with the answer on its way to the caller."""
_MAX_SPARE_BACKOFF = 2.0
_MAX_PROGRESS = 64 * 1024
_MAX_MESSAGE = 8192
_MAX_FRAME = 64 * 1024 * 1024
_MAX_LINE = 4096
"""A call's output is forwarded in lines of at most this many bytes."""
_MIN_LINE_COST = 64
"""Bytes of ``output_kb`` a forwarded line costs at least (64 KiB: 1,024 lines at most)."""
_CALL_CODES = frozenset({"TOOL_ERROR", "TOO_LARGE", "LIMIT_EXCEEDED", "INVALID_PARAMS"})
"""The failures a call's process may report itself."""


class _Process:
    """A call process from the zygote: a spare until a call is written to it."""

    __slots__ = (
        "call_id",
        "deadline",
        "dropped",
        "killed",
        "output",
        "partial",
        "pid",
        "pipe",
        "printed",
        "reader",
        "requests",
        "sent",
        "tool",
    )

    def __init__(self, pid: int, requests: int, pipe: int, output: int) -> None:
        self.pid = pid
        self.requests = requests
        """Our end of its request pipe (closed once its call is written)."""
        self.pipe = pipe
        """Our end of its answer pipe."""
        self.output = output
        """Our end of its standard output and error."""
        self.printed = 0
        """Bytes of output forwarded; past ``Limits.output_kb`` the rest is dropped."""
        self.dropped = 0
        self.partial = b""
        """Output after its last newline."""
        self.tool = ""
        self.call_id: int | None = None
        self.deadline = 0.0
        self.reader = FrameReader(max_frame=_MAX_FRAME)
        self.killed: str | None = None
        """Why the launcher killed it: ``wall_seconds`` or ``cancelled``."""
        self.sent = False
        """A final frame (result or fail) was forwarded."""


class Launcher:
    """The launcher's state: loaded tools, the policy, the calls running."""

    def __init__(self, init: dict[str, Any]) -> None:
        sys.path[:] = init["sys_path"]
        self.policy = Sandbox.model_validate(init["policy"])
        self.jail = Path(init["jail"])
        self.max_payload: int = init["max_payload"]
        self.protect: list[int] = [
            *init["protect"],
            os.getpid(),
            -os.getpgrp(),
            os.getppid(),  # the worker, or bubblewrap's init in a pid namespace
        ]
        self.tools = _load(init["origins"], set(init["tools"]))
        self.report: dict[str, str] = {}
        self.call_namespaces = 0
        self.landlock_abi = 0
        self.last_cap = 40
        self.seccomp: bytes | None = None
        """The call processes' filter, built by the zygote (it knows its own pid)."""
        self.seccomp_ready = False
        self.calls: dict[int, _Process] = {}
        self.spares: list[_Process] = []
        self.waiting: list[list[Any]] = []
        """Calls that came while no spare was ready, in order."""
        self.asked = 0
        """Spares asked of the zygote and not yet delivered."""
        self.spare_deaths = 0
        """Spares that died before their call, in a row: the next is asked later each time
        (a spare that cannot confine itself would otherwise be forked again every 5 ms)."""
        self.by_fd: dict[int, _Process] = {}
        self.by_output: dict[int, _Process] = {}
        self.by_pid: dict[int, _Process] = {}
        self.zygote: socket.socket | None = None
        self.spare_due = 0.0
        """When to ask for the next spare (0: not planned)."""
        self.any_async = any(t.is_async for t in self.tools.values())
        self.deadlines: list[tuple[float, int]] = []
        self.selector = selectors.DefaultSelector()
        self.out = init["out"]

    # --- confinement -------------------------------------------------------------

    def confine(self) -> None:
        """Apply the launcher-wide layers, recording each outcome in ``report``."""
        limits = self.policy.limits
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        self.report["rlimits"] = (
            f"cpu {limits.cpu_seconds:g}s, memory {limits.memory_mb} MiB, files "
            f"{limits.open_files}, file size {limits.file_size_mb} MiB, processes "
            f"{limits.processes}; wall {limits.wall_seconds:g}s by the launcher"
        )
        self.report["env"] = "cleared; kept " + (", ".join(sorted(os.environ)) or "nothing")
        self.last_cap = kernel.last_capability()  # /proc is out of reach after Landlock
        self._seccomp()  # before Landlock: libseccomp is found by running ldconfig
        self._namespaces()
        kernel.no_new_privs()
        self.report["no_new_privs"] = "set"
        self._landlock()

    def _seccomp(self) -> None:
        from loom.tools.sandbox._seccomp import seccomp_available  # loads libseccomp

        why = seccomp_available()
        if why is not None:
            self.report["seccomp"] = f"unavailable: {why}"
            return
        self.seccomp_ready = True
        families = "inet, inet6, netlink" if self.policy.net.mode != "none" else "none"
        unix = ", unix" if self.policy.net.unix else ""
        self.report["seccomp"] = (
            f"admin, namespace, ptrace, CLONE_PARENT calls denied; sockets: {families}{unix}"
            " (TCP/UDP only, no listen); limits, priorities, scheduling: the caller's only"
        )

    def _namespaces(self) -> None:
        flags = kernel.CLONE_NEWUSER | kernel.CLONE_NEWIPC
        if self.policy.net.mode == "none":
            flags |= kernel.CLONE_NEWNET
        uid, gid = os.getuid(), os.getgid()
        try:
            kernel.unshare(flags)
        except OSError as exc:
            self.report["userns"] = f"unavailable: unshare: {exc}"
            self.report["netns"] = "unavailable (needs a user namespace)"
            return
        try:
            kernel.map_ids(uid, gid)
        except OSError as exc:  # we are in it, unmapped: calls cannot nest another
            self.report["userns"] = f"unmapped (uid 65534 inside): {exc}"
            self.report["netns"] = "private" if flags & kernel.CLONE_NEWNET else "host's"
            return
        self.call_namespaces = _call_namespaces()
        per_call = [
            name
            for flag, name in (
                (kernel.CLONE_NEWUSER, "user"),
                (kernel.CLONE_NEWPID, "PID"),
                (kernel.CLONE_NEWIPC, "IPC"),
            )
            if self.call_namespaces & flag
        ]
        self.report["userns"] = "private user and IPC namespaces; per call: " + (
            f"{', '.join(per_call)} namespaces" if per_call else "none"
        )
        self.report["netns"] = (
            "private, no interfaces up" if flags & kernel.CLONE_NEWNET else "host's (policy)"
        )

    def _landlock(self) -> None:
        abi = kernel.landlock_abi()
        if abi < 1:
            self.report["landlock"] = "unavailable: the kernel has no Landlock"
            return
        net = self.policy.net
        tcp: tuple[int, ...] | None = net.tcp_ports() or None
        if net.mode == "none":
            tcp = ()
        try:
            enforced = kernel.landlock_restrict(
                abi,
                read=_read_paths(self.policy),
                write=_write_paths(self),
                tcp_connect=tcp,
            )
        except OSError as exc:
            self.report["landlock"] = f"refused: {exc}"
            return
        self.landlock_abi = abi
        ports = "no TCP" if tcp == () else "any port" if tcp is None else f"ports {list(tcp)}"
        self.report["landlock"] = f"ABI {abi}: {', '.join(enforced)} ({ports})"

    # --- serving -----------------------------------------------------------------

    def serve(self, requests: FrameReader) -> None:
        """Serve calls until stdin closes, then kill what still runs. Whatever goes
        wrong, the calls' process groups are killed before the launcher exits."""
        stdin = sys.stdin.buffer.fileno()
        link, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        sys.stdout.flush()  # or every call process would print it again
        sys.stderr.flush()
        if os.fork() == 0:  # before any call's data is in this process's memory
            link.close()
            zygote_main(self, theirs)
        theirs.close()
        self.zygote = link
        self.selector.register(stdin, selectors.EVENT_READ)
        self.selector.register(link, selectors.EVENT_READ)
        self._ask_spare()
        try:
            while True:
                due = [self.deadlines[0][0]] if self.deadlines else []
                if self.spare_due:
                    due.append(self.spare_due)
                timeout = max(min(due) - time.monotonic(), 0.0) if due else None
                for key, _ in self.selector.select(timeout):
                    if key.fileobj is link:
                        self._from_zygote(link)
                    elif key.fd == stdin:
                        chunk = os.read(stdin, 1 << 16)
                        if not chunk:
                            return
                        for frame in requests.feed(chunk):
                            self._request(frame)
                    else:
                        self._ready(int(key.fd))
                self._expire()
                if self.spare_due and time.monotonic() >= self.spare_due:
                    self.spare_due = 0.0
                    self._ask_spare()
        finally:
            self._shutdown()

    def _request(self, frame: list[Any]) -> None:
        kind = frame[0]
        if kind == "call" and len(frame) == 6:
            name = frame[2]
            if name not in self.tools:
                message = f"the sandbox does not load {name!r}"
                self._send("fail", frame[1], "UNKNOWN_TOOL", message, {})
            elif self.spares:
                self._dispatch(self.spares.pop(), frame)
            else:
                self.waiting.append(frame)
                self._ask_spare()
        elif kind == "cancel":
            running = self.calls.get(frame[1])
            if running is not None and running.killed is None:
                running.killed = "cancelled"
                _killpg(running.pid)
            self.waiting = [f for f in self.waiting if f[1] != frame[1]]

    def _dispatch(self, proc: _Process, frame: list[Any]) -> None:
        _, call_id, name, args, timeout, caller = frame
        proc.call_id = call_id
        proc.tool = name
        self.spare_deaths = 0
        proc.deadline = time.monotonic() + self.policy.limits.wall_seconds
        self.calls[call_id] = proc
        heapq.heappush(self.deadlines, (proc.deadline, call_id))
        with contextlib.suppress(BrokenPipeError):  # it died: its exit will say so
            write_frame(proc.requests, "call", call_id, name, args, timeout, caller)
        os.close(proc.requests)
        proc.requests = -1
        self._ask_spare()

    def _ask_spare(self) -> None:
        """A process for each call waiting, and one spare when no call is running: a
        fork while a call runs would compete with it for the CPU, and delay its answer."""
        assert self.zygote is not None
        running = any(not proc.sent for proc in self.calls.values())
        while len(self.spares) + self.asked < len(self.waiting) + (not running):
            self.zygote.send(b"spare")
            self.asked += 1

    def _from_zygote(self, link: socket.socket) -> None:
        data, fds, _, _ = socket.recv_fds(link, 1024, 3)
        if not data:
            raise LoomError("the zygote died")
        kind, *rest = next(iter(FrameReader().feed(data)))
        if kind == "spare":
            self.asked -= 1
            proc = _Process(rest[0], *fds)
            for fd in (proc.pipe, proc.output):
                os.set_blocking(fd, False)
                self.selector.register(fd, selectors.EVENT_READ)
            self.by_pid[proc.pid] = proc
            self.by_fd[proc.pipe] = proc
            self.by_output[proc.output] = proc
            if self.waiting:
                self._dispatch(proc, self.waiting.pop(0))
            else:
                self.spares.append(proc)
        elif kind == "fork_failed":
            self.asked -= 1
            if self.waiting and not self.calls:  # else asked again when a call ends
                frame = self.waiting.pop(0)
                message = f"no process for the call: {os.strerror(rest[0])}"
                self._send("fail", frame[1], "LIMIT_EXCEEDED", message, {"limit": "processes"})
        elif kind == "exit":
            ended = self.by_pid.pop(rest[0], None)
            if ended is not None:
                self._finish(ended, status=rest[1], cpu=rest[2])
            if ended is not None and ended.call_id is None:  # a spare died: back off
                self.spare_deaths += 1
                delay = min(_SPARE_DELAY * 2**self.spare_deaths, _MAX_SPARE_BACKOFF)
                self.spare_due = time.monotonic() + delay
            elif self.waiting:
                self._ask_spare()
            elif not self.spare_due:
                self.spare_due = time.monotonic() + _SPARE_DELAY

    def _ready(self, fd: int) -> None:
        proc = self.by_fd.get(fd)
        if proc is not None:
            self._drain(proc, budget=16)
        else:
            printer = self.by_output.get(fd)
            if printer is not None:
                self._print(printer, budget=16)

    def _print(self, proc: _Process, budget: int = 1 << 30) -> None:
        """Forward what a call printed, in lines, up to its ``output_kb``; count the
        rest as dropped (but keep reading: a call blocked on a full pipe would hang)."""
        limit = self.policy.limits.output_kb * 1024
        for _ in range(budget):
            if proc.output < 0:
                return
            try:
                chunk = os.read(proc.output, 1 << 16)
            except BlockingIOError:
                return
            if not chunk:
                self._close_output(proc)
                return
            if proc.printed >= limit:
                proc.dropped += len(chunk)
                continue
            *lines, proc.partial = (proc.partial + chunk).split(b"\n")
            for line in lines:
                self._say(proc, line)
            if len(proc.partial) >= _MAX_LINE:
                self._say(proc, proc.partial)
                proc.partial = b""

    def _say(self, proc: _Process, line: bytes) -> None:
        """Forward one line (in pieces of ``_MAX_LINE``); each costs at least
        ``_MIN_LINE_COST`` of the call's ``output_kb``, so empty lines cannot make a
        flood of log records."""
        limit = self.policy.limits.output_kb * 1024
        for start in range(0, max(len(line), 1), _MAX_LINE):
            piece = line[start : start + _MAX_LINE]
            if proc.printed >= limit:
                proc.dropped += len(piece) + 1
                continue
            proc.printed += max(len(piece) + 1, _MIN_LINE_COST)
            self._send("output", proc.call_id or 0, proc.tool, piece)

    def _flush_output(self, proc: _Process, *, final: bool) -> None:
        """Forward what a call printed so far (before its answer: a few reads, so a call
        that keeps its pipe full cannot hold the launcher here); ``final``: all of it,
        and how much was dropped."""
        self._print(proc, budget=1 << 30 if final else 4)
        if proc.partial:
            self._say(proc, proc.partial)
            proc.partial = b""
        if final and proc.dropped:
            limit = self.policy.limits.output_kb
            note = f"... {proc.dropped} more bytes dropped (output_kb {limit})"
            self._send("output", proc.call_id or 0, proc.tool, note.encode())
            proc.dropped = 0

    def _close_output(self, proc: _Process) -> None:
        self.selector.unregister(proc.output)
        del self.by_output[proc.output]
        os.close(proc.output)
        proc.output = -1

    def _drain(self, proc: _Process, budget: int = 1 << 30) -> None:
        """Forward what a call wrote (``budget`` reads at most: a chatty call must not
        starve the others or the wall-clock checks)."""
        for _ in range(budget):
            if proc.pipe < 0:
                return
            try:
                chunk = os.read(proc.pipe, 1 << 16)
            except BlockingIOError:
                return
            if not chunk:
                self._close_pipe(proc)
                return
            if proc.call_id is None or proc.sent:
                continue  # a spare has nothing to say; after the answer, nothing counts
            try:
                for frame in proc.reader.feed(chunk):
                    self._forward(proc, proc.call_id, frame)
                    if proc.sent:
                        break
            except Exception as exc:  # not frames: a broken or hostile call
                self._refuse(proc, f"the call's process wrote garbage: {exc}")

    def _forward(self, proc: _Process, call_id: int, frame: list[Any]) -> None:
        """Pass a call's frame on if it is well formed; anything else ends the call."""
        kind = frame[0]
        if kind == "progress" and len(frame) == 2 and _is_bytes(frame[1], _MAX_PROGRESS):
            self._send("progress", call_id, frame[1])
        elif kind == "result" and len(frame) == 2 and _is_bytes(frame[1], self.max_payload):
            proc.sent = True
            self._flush_output(proc, final=False)  # printed before it answered: say it first
            self._send("result", call_id, frame[1])
            self.spare_due = time.monotonic() + _SPARE_DELAY
        elif kind == "fail" and len(frame) == 4 and _is_failure(frame[1:]):
            proc.sent = True
            self._flush_output(proc, final=False)
            self._send("fail", call_id, *frame[1:])
            self.spare_due = time.monotonic() + _SPARE_DELAY
        else:
            self._refuse(proc, f"the call's process wrote an invalid {str(kind)[:20]!r} frame")

    def _refuse(self, proc: _Process, message: str) -> None:
        if not proc.sent and proc.call_id is not None:
            proc.sent = True
            self._send("fail", proc.call_id, "TOOL_ERROR", message, {"type": "SandboxProtocol"})
        _killpg(proc.pid)

    def _close_pipe(self, proc: _Process) -> None:
        self.selector.unregister(proc.pipe)
        del self.by_fd[proc.pipe]
        os.close(proc.pipe)
        proc.pipe = -1

    def _finish(self, proc: _Process, *, status: int, cpu: float) -> None:
        self._drain(proc)
        self._flush_output(proc, final=True)
        for fd, close in ((proc.pipe, self._close_pipe), (proc.output, self._close_output)):
            if fd >= 0:  # a grandchild still held the pipe: the zygote killed it
                close(proc)
        if proc.requests >= 0:
            os.close(proc.requests)
        if proc.call_id is None:  # a spare died before its call
            if proc in self.spares:
                self.spares.remove(proc)
            sys.stderr.write(f"loom sandbox: a spare call process died ({status:#x})\n")
            return
        del self.calls[proc.call_id]
        if not proc.sent:
            code, message, details = _verdict(proc, status, cpu, self.policy.limits)
            self._send("fail", proc.call_id, code, message, details)

    def _expire(self) -> None:
        now = time.monotonic()
        while self.deadlines and self.deadlines[0][0] <= now:
            _, call_id = heapq.heappop(self.deadlines)
            proc = self.calls.get(call_id)
            if proc is not None and proc.killed is None and proc.deadline <= now:
                proc.killed = "wall_seconds"
                _killpg(proc.pid)

    def _shutdown(self) -> None:
        for proc in [*self.calls.values(), *self.spares]:
            _killpg(proc.pid)
        if self.zygote is not None:
            self.zygote.close()  # the zygote exits; its children have PDEATHSIG

    def _send(self, *items: Any) -> None:
        write_frame(self.out, *items)


def _verdict(
    call: _Process, status: int, cpu: float, limits: Limits
) -> tuple[str, str, dict[str, Any]]:
    """Why a call's process ended without an answer."""
    if call.killed == "cancelled":
        return "CANCELLED", "the call was cancelled", {}
    if call.killed == "wall_seconds":
        message = f"the call ran past its wall-clock limit of {limits.wall_seconds:g}s"
        return "LIMIT_EXCEEDED", message, {"limit": "wall_seconds"}
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        if sig == signal.SIGXCPU or (sig == signal.SIGKILL and cpu >= limits.cpu_seconds):
            message = f"the call used its {limits.cpu_seconds:g}s of CPU time"
            return "LIMIT_EXCEEDED", message, {"limit": "cpu_seconds", "cpu": round(cpu, 3)}
        if sig == signal.SIGXFSZ:
            message = f"the call wrote past the file size limit of {limits.file_size_mb} MiB"
            return "LIMIT_EXCEEDED", message, {"limit": "file_size_mb"}
        name = signal.Signals(sig).name
        return "LIMIT_EXCEEDED", f"the call's process died of {name}", {"limit": "crashed"}
    code = os.WEXITSTATUS(status)
    return "TOOL_ERROR", f"the call's process exited ({code}) without an answer", {"type": "Exit"}


def _is_bytes(value: Any, limit: int) -> bool:
    return type(value) is bytes and len(value) <= limit


def _is_failure(fields: list[Any]) -> bool:
    code, message, details = fields
    return (
        code in _CALL_CODES
        and type(message) is str
        and len(message) <= _MAX_MESSAGE
        and type(details) is dict
        and all(type(k) is str for k in details)
        and all(v is None or type(v) in (str, int, float, bool) for v in details.values())
    )


def _killpg(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


def _load(origins: list[str], names: set[str]) -> dict[str, Tool]:
    from loom.tools._loader import load_tools

    tools: dict[str, Tool] = {}
    for origin in origins:
        for item in load_tools(origin):
            if item.name in names:
                tools[item.name] = item
    missing = names - set(tools)
    if missing:
        raise LoomError(f"tools not found in {origins}: {sorted(missing)}")
    return tools


def _call_namespaces() -> int:
    """The namespaces a call process can make here: user, PID and IPC, else fewer (tried
    in a throwaway child)."""
    for flags in (
        kernel.CLONE_NEWUSER | kernel.CLONE_NEWPID | kernel.CLONE_NEWIPC,
        kernel.CLONE_NEWUSER | kernel.CLONE_NEWIPC,
        kernel.CLONE_NEWUSER,
    ):
        pid = os.fork()
        if pid == 0:
            try:
                kernel.unshare(flags)
            except OSError:
                os._exit(1)
            os._exit(0)
        _, status = os.waitpid(pid, 0)
        if os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0:
            return flags
    return 0


def _read_paths(policy: Sandbox) -> list[Path]:
    """What every sandbox may read: Python's installation (its prefixes: the standard
    library, site-packages), the code the launcher imported (each package's directory,
    a top-level module's file alone), shared libraries, the few files name resolution,
    TLS and time zones need, and the policy's own list. Not all of ``sys.path``: the
    worker's working directory is there when it runs as ``python -m``."""
    paths = {Path(p) for p in (sys.prefix, sys.base_prefix, sys.exec_prefix)}
    paths.update(imported_code())
    system = (
        "/usr", "/lib", "/lib64", "/bin", "/sbin", "/etc/ssl", "/etc/ca-certificates",
        "/etc/resolv.conf", "/etc/hosts", "/etc/nsswitch.conf", "/etc/gai.conf",
        "/etc/host.conf", "/etc/localtime", "/etc/timezone", "/etc/passwd", "/etc/group",
        "/etc/ld.so.cache", "/etc/mime.types", "/dev/null", "/dev/zero", "/dev/urandom",
        "/dev/random",
    )  # fmt: skip
    paths.update(Path(p) for p in system)
    paths.update(policy.fs.read)
    return sorted(paths)


def _write_paths(launcher: Launcher) -> list[Path]:
    """The jail, the policy's writable paths, and /dev/null (``subprocess.DEVNULL``)."""
    return [launcher.jail, *launcher.policy.fs.write, Path("/dev/null")]


def main() -> None:
    """Entry point: read ``init``, confine, report, serve."""
    os.environ.pop("PWD", None)  # bubblewrap's --chdir sets it: not the policy's
    out = os.dup(1)  # the protocol's own descriptor: what tools print goes to stderr
    os.set_inheritable(out, False)
    os.dup2(2, 1)
    stdin = sys.stdin.buffer.fileno()
    reader = FrameReader()
    init: list[Any] | None = None
    while init is None:
        chunk = os.read(stdin, 1 << 16)
        if not chunk:
            return
        init = next(iter(reader.feed(chunk)), None)
    launcher = Launcher({**init[1], "out": out})
    launcher.confine()
    launcher._send("ready", launcher.report)
    launcher.serve(reader)


if __name__ == "__main__":
    main()
