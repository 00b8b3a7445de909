"""The sandbox launcher: ``python -m loom.tools.sandbox.launcher``, started by a worker.

It reads one ``init`` frame from stdin (the tools to load, the policy, the jail), loads the
tools, confines itself (namespaces, Landlock), reports the layers it applied, then serves
calls: each call runs in a process forked from the launcher, which adds the per-call
layers (its own process group, rlimits, a nested user namespace, a Landlock signal scope,
no capabilities, seccomp) before running the tool. Forking a loaded, single-threaded
launcher costs about a millisecond and gives every call fresh limits and memory
(``docs/sandbox.md`` has the measurements). The launcher kills a call's process group at
its wall-clock limit or on ``cancel``.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import os
import resource
import selectors
import signal
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from loom.errors import LoomError, PayloadTooLargeError
from loom.protocol import encode_value
from loom.protocol.pipe import FrameReader, pack_frame
from loom.tools.sandbox import kernel
from loom.tools.sandbox.policy import Limits, Sandbox
from loom.tools.tool import Tool, ToolContext

__all__ = ["main"]

_MB = 1024 * 1024


class _Call:
    __slots__ = ("cpu", "deadline", "id", "killed", "pid", "pidfd", "pipe", "reader", "sent")

    def __init__(self, call_id: int, pid: int, pipe: int, pidfd: int, deadline: float) -> None:
        self.id = call_id
        self.pid = pid
        self.pipe = pipe
        self.pidfd = pidfd
        self.deadline = deadline
        self.reader = FrameReader()
        self.killed: str | None = None
        """Why the launcher killed it: ``wall_seconds`` or ``cancelled``."""
        self.sent = False
        """A final frame (result or fail) was forwarded."""
        self.cpu = 0.0


class Launcher:
    """The launcher's state: loaded tools, the policy, the calls running."""

    def __init__(self, init: dict[str, Any]) -> None:
        sys.path[:] = init["sys_path"]
        self.policy = Sandbox.model_validate(init["policy"])
        self.jail = Path(init["jail"])
        self.max_payload: int = init["max_payload"]
        self.protect: list[int] = init["protect"]
        self.tools = _load(init["origins"], set(init["tools"]))
        self.report: dict[str, str] = {}
        self.userns = False
        self.landlock_abi = 0
        self.last_cap = 40
        self.seccomp: Any = None
        self.calls: dict[int, _Call] = {}
        self.by_fd: dict[int, _Call] = {}
        self.deadlines: list[tuple[float, int]] = []
        self.selector = selectors.DefaultSelector()
        self.out = sys.stdout.buffer.fileno()

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
        from loom.tools.sandbox.seccomp import build_filter, seccomp_available

        why = seccomp_available()
        if why is not None:
            self.report["seccomp"] = f"unavailable: {why}"
            return
        self.seccomp = build_filter(self.policy.net, self.protect)
        families = "inet, inet6, netlink" if self.policy.net.mode != "none" else "none"
        unix = ", unix" if self.policy.net.unix else ""
        self.report["seccomp"] = f"admin, namespace, ptrace calls denied; sockets: {families}{unix}"

    def _namespaces(self) -> None:
        flags = kernel.CLONE_NEWUSER | kernel.CLONE_NEWIPC
        if self.policy.net.mode == "none":
            flags |= kernel.CLONE_NEWNET
        uid, gid = os.getuid(), os.getgid()
        try:
            kernel.unshare(flags)
            kernel.map_ids(uid, gid)
        except OSError as exc:
            self.report["userns"] = f"unavailable: {exc}"
            self.report["netns"] = "unavailable (needs a user namespace)"
            return
        self.userns = True
        self.report["userns"] = "private user and IPC namespaces; one more per call"
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
                read=_read_paths(self.policy, self.tools),
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
        """Serve calls until stdin closes; then kill what still runs and return."""
        stdin = sys.stdin.buffer.fileno()
        self.selector.register(stdin, selectors.EVENT_READ)
        while True:
            timeout = None
            if self.deadlines:
                timeout = max(self.deadlines[0][0] - time.monotonic(), 0.0)
            for key, _ in self.selector.select(timeout):
                fd = int(key.fd)
                if fd == stdin:
                    chunk = os.read(stdin, 1 << 16)
                    if not chunk:
                        self._shutdown()
                        return
                    for frame in requests.feed(chunk):
                        self._request(frame)
                else:
                    self._ready(fd)
            self._expire()

    def _request(self, frame: list[Any]) -> None:
        kind = frame[0]
        if kind == "call":
            _, call_id, name, args, timeout = frame
            self._start(call_id, name, args, timeout)
        elif kind == "cancel":
            call = self.calls.get(frame[1])
            if call is not None and call.killed is None:
                call.killed = "cancelled"
                _killpg(call.pid)

    def _start(self, call_id: int, name: str, args: Any, timeout: float) -> None:
        tool = self.tools.get(name)
        if tool is None:
            self._send("fail", call_id, "UNKNOWN_TOOL", f"the sandbox does not load {name!r}", {})
            return
        read_end, write_end = os.pipe2(os.O_CLOEXEC)
        pid = os.fork()
        if pid == 0:  # the call's process: never returns
            os.close(read_end)
            _run_call(self, tool, call_id, args=args, timeout=timeout, pipe=write_end)
        os.close(write_end)
        os.set_blocking(read_end, False)
        with contextlib.suppress(OSError):  # it did it itself, or it is gone already
            os.setpgid(pid, pid)
        pidfd = os.pidfd_open(pid)
        deadline = time.monotonic() + self.policy.limits.wall_seconds
        call = _Call(call_id, pid, read_end, pidfd, deadline)
        self.calls[call_id] = call
        self.by_fd[read_end] = call
        self.by_fd[pidfd] = call
        self.selector.register(read_end, selectors.EVENT_READ)
        self.selector.register(pidfd, selectors.EVENT_READ)
        heapq.heappush(self.deadlines, (deadline, call_id))

    def _ready(self, fd: int) -> None:
        call = self.by_fd.get(fd)
        if call is None:
            return
        if fd == call.pipe:
            self._drain(call)
        else:
            self._finish(call)

    def _drain(self, call: _Call) -> None:
        while True:
            try:
                chunk = os.read(call.pipe, 1 << 16)
            except BlockingIOError:
                return
            if not chunk:
                self.selector.unregister(call.pipe)
                del self.by_fd[call.pipe]
                os.close(call.pipe)
                call.pipe = -1
                return
            try:
                for frame in call.reader.feed(chunk):
                    if call.sent:
                        continue
                    call.sent = frame[0] != "progress"
                    self._send(frame[0], call.id, *frame[1:])
            except ValueError:
                call.sent = True
                self._send("fail", call.id, "TOOL_ERROR", "the call's process wrote garbage", {})
                _killpg(call.pid)

    def _finish(self, call: _Call) -> None:
        _, status, usage = os.wait4(call.pid, 0)
        _killpg(call.pid)  # what the call started dies with it
        if call.pipe >= 0:
            self._drain(call)
            if call.pipe >= 0:  # a grandchild still holds the pipe: it is dying too
                self.selector.unregister(call.pipe)
                del self.by_fd[call.pipe]
                os.close(call.pipe)
        self.selector.unregister(call.pidfd)
        del self.by_fd[call.pidfd]
        os.close(call.pidfd)
        del self.calls[call.id]
        if not call.sent:
            code, message, details = _verdict(
                call, status, usage.ru_utime + usage.ru_stime, self.policy.limits
            )
            self._send("fail", call.id, code, message, details)

    def _expire(self) -> None:
        now = time.monotonic()
        while self.deadlines and self.deadlines[0][0] <= now:
            _, call_id = heapq.heappop(self.deadlines)
            call = self.calls.get(call_id)
            if call is not None and call.killed is None:
                call.killed = "wall_seconds"
                _killpg(call.pid)

    def _shutdown(self) -> None:
        for call in list(self.calls.values()):
            _killpg(call.pid)
            os.waitpid(call.pid, 0)

    def _send(self, *items: Any) -> None:
        data = pack_frame(*items)
        view = memoryview(data)
        while view:
            view = view[os.write(self.out, view) :]


# --- the call's process ----------------------------------------------------------


def _run_call(
    launcher: Launcher, tool: Tool, call_id: int, *, args: Any, timeout: float, pipe: int
) -> None:
    """Confine this freshly forked process, run the tool, write its answer, exit."""
    code = 0
    try:
        os.setpgid(0, 0)
        os.dup2(2, 1)  # a tool's print() must not reach the launcher's protocol pipe
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.close(null)
        os.closerange(3, pipe)  # other calls' pipes and the launcher's own descriptors
        os.closerange(pipe + 1, 1 << 16)
        _confine_call(launcher)
        _answer(launcher, tool, call_id, args=args, timeout=timeout, pipe=pipe)
    except BaseException:
        traceback.print_exc()
        code = 70
    finally:
        os._exit(code)


def _confine_call(launcher: Launcher) -> None:
    limits = launcher.policy.limits
    if launcher.userns:  # its own user namespace: RLIMIT_NPROC counts this call only
        kernel.unshare(kernel.CLONE_NEWUSER)  # unmapped: the tool sees uid 65534
    _set_limits(limits)
    if launcher.landlock_abi >= 6:  # a nested domain: signals reach only this call's tree
        kernel.landlock_restrict(
            launcher.landlock_abi, restrict_fs=False, restrict_net=False, scope=True
        )
    kernel.drop_capabilities(launcher.last_cap)
    if launcher.seccomp is not None:
        launcher.seccomp.load()


def _set_limits(limits: Limits) -> None:
    cpu = max(int(limits.cpu_seconds + 0.999), 1)
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
    resource.setrlimit(resource.RLIMIT_AS, (limits.memory_mb * _MB,) * 2)
    resource.setrlimit(resource.RLIMIT_NOFILE, (limits.open_files,) * 2)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limits.file_size_mb * _MB,) * 2)
    resource.setrlimit(resource.RLIMIT_NPROC, (limits.processes,) * 2)


def _answer(
    launcher: Launcher, tool: Tool, call_id: int, *, args: Any, timeout: float, pipe: int
) -> None:
    def write(*items: Any) -> None:
        data = memoryview(pack_frame(*items))
        while data:
            data = data[os.write(pipe, data) :]

    def report(_: int, data: Any) -> None:
        try:
            write("progress", encode_value(data, min(launcher.max_payload, 64 * 1024)))
        except LoomError:
            write("progress", b"")

    try:
        kwargs = tool.bind(args)
        context = ToolContext(
            call_id, tool.name, timeout, report, sandbox=launcher.policy, jail=launcher.jail
        )
        if tool.context_param is not None:
            kwargs[tool.context_param] = context
        result = asyncio.run(tool.fn(**kwargs)) if tool.is_async else tool.fn(**kwargs)
        data = encode_value(result, launcher.max_payload)
    except PayloadTooLargeError as exc:
        write("fail", "TOO_LARGE", f"{tool.name}'s result: {exc}", {"size": exc.size})
    except MemoryError:
        message = f"{tool.name} ran out of memory (limit {launcher.policy.limits.memory_mb} MiB)"
        write("fail", "LIMIT_EXCEEDED", message, {"limit": "memory_mb"})
    except Exception as exc:
        text = str(exc)[:4096]
        name = type(exc).__name__
        if isinstance(exc, OSError) and exc.errno == 27:  # EFBIG: RLIMIT_FSIZE
            write("fail", "LIMIT_EXCEEDED", f"{name}: {text}", {"limit": "file_size_mb"})
        else:
            write("fail", "TOOL_ERROR", f"{name}: {text}", {"type": name, "remote_message": text})
    else:
        write("result", data)


def _verdict(
    call: _Call, status: int, cpu: float, limits: Limits
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


def _killpg(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


def _load(origins: list[str], names: set[str]) -> dict[str, Tool]:
    from loom.tools.loader import load_tools

    tools: dict[str, Tool] = {}
    for origin in origins:
        for item in load_tools(origin):
            if item.name in names:
                tools[item.name] = item
    missing = names - set(tools)
    if missing:
        raise LoomError(f"tools not found in {origins}: {sorted(missing)}")
    return tools


def _read_paths(policy: Sandbox, tools: dict[str, Tool]) -> list[Path]:
    """What every sandbox may read: Python, the tools' code, shared libraries, the few
    files name resolution, TLS and time zones need, and the policy's own list."""
    import loom

    paths = {Path(p) for p in (sys.prefix, sys.base_prefix, sys.exec_prefix)}
    paths.update(Path(p) for p in sys.path if p and os.path.isdir(p))
    paths.add(Path(loom.__file__).parent)
    for item in tools.values():
        module = sys.modules.get(item.fn.__module__)
        if module is not None and getattr(module, "__file__", None):
            paths.add(Path(module.__file__).parent)  # type: ignore[arg-type]
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
    return [launcher.jail, *launcher.policy.fs.write]


def main() -> None:
    """Entry point: read ``init``, confine, report, serve."""
    stdin = sys.stdin.buffer.fileno()
    reader = FrameReader()
    init: list[Any] | None = None
    while init is None:
        chunk = os.read(stdin, 1 << 16)
        if not chunk:
            return
        init = next(iter(reader.feed(chunk)), None)
    launcher = Launcher(init[1])
    launcher.confine()
    launcher._send("ready", launcher.report)
    launcher.serve(reader)


if __name__ == "__main__":
    main()
