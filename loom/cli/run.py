"""``loom run FILE.toml`` (supervise a whole mesh), ``loom ps`` and ``loom restart NAME``
(ask the running supervisor), and ``loom actor TARGET`` (run one actor)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import os
import signal
import socket
import sys
import tempfile
from pathlib import Path
from typing import Any

import msgpack
import zmq
import zmq.asyncio

from loom._loader import import_target
from loom.actor import Actor
from loom.broker import BrokerSettings, SecuritySettings
from loom.cli.settings import RunSettings, load_run_settings
from loom.cli.supervisor import Child, ChildSpec, Supervisor, format_status
from loom.errors import LoomError, TargetError
from loom.logs import configure_logging, get_logger
from loom.session import wait_for_broker
from loom.tools import load_tools

LOOM = [sys.executable, "-m", "loom.cli.main"]


def add_parsers(commands: Any, common: argparse.ArgumentParser) -> None:
    """Add ``run`` and ``actor`` to ``loom``'s parser."""
    run = commands.add_parser(
        "run",
        parents=[common],
        help="start and supervise the broker, actors and workers a TOML file lists",
        epilog="example: loom run configs/mesh.toml   (see that file for every key)",
    )
    run.add_argument("file", help="a run file: [broker], [supervisor], [[actor]], [[worker]]")
    dev = commands.add_parser(
        "dev",
        parents=[common],
        help="as `loom run`, and restart a child when a Python file of the project changes",
        epilog="example: loom dev mesh.toml   (edit an actor's file: that actor restarts;"
        " any other .py file: every actor and worker)",
    )
    dev.add_argument("file", help="a run file, as for `loom run`")
    ps = commands.add_parser(
        "ps",
        parents=[common],
        help="the children of a running `loom run`: state, pid, restarts, CPU, memory",
        epilog="example: loom ps   (or: loom ps configs/mesh.toml, when several run)",
    )
    ps.add_argument("file", nargs="?", help="the run file (default: the one running)")
    ps.add_argument("--json", action="store_true", help="the children as JSON")
    restart = commands.add_parser(
        "restart",
        parents=[common],
        help="restart one child of a running `loom run` now",
        epilog="example: loom restart trader   (--file configs/mesh.toml when several run)",
    )
    restart.add_argument("name", help="the child's name in the run file")
    restart.add_argument("--file", help="the run file (default: the one running)")
    actor = commands.add_parser(
        "actor",
        parents=[common],
        help="run one Actor subclass from a file or module",
        epilog="example: loom actor my_agents.py:Planner --name planner",
    )
    actor.add_argument("target", metavar="PATH_OR_MODULE[:ClassName]")
    actor.add_argument("--name", help="the actor's name (default: the class's)")


def run_actor(args: argparse.Namespace, broker: str) -> int:
    """Run the actor class ``args.target`` names until SIGINT/SIGTERM. The class must
    accept ``name=`` and ``broker=`` keywords, as ``Actor`` does."""
    cls = load_actor(args.target)
    cls(name=args.name, broker=broker).run()
    return 0


def run_mesh(args: argparse.Namespace) -> int:
    """Load the run file, check every target, start the children, supervise until
    SIGINT/SIGTERM. Exit 2, starting nothing, when a target is wrong (all are named)."""
    settings = load_run_settings(args.file)
    configure_logging(
        json=args.log_json or settings.log.json_lines,
        level=args.log_level or settings.log.level,
    )
    endpoint = args.broker or os.environ.get("LOOM_BROKER")
    if endpoint:  # --broker, else $LOOM_BROKER, over the file's [broker] endpoint
        settings = settings.model_copy(
            update={"broker": settings.broker.model_copy(update={"endpoint": endpoint})}
        )
    problems = check_targets(settings)
    if problems:
        print(f"loom run: {args.file}: nothing started:", file=sys.stderr)
        for problem in problems:
            print(f"  {problem}", file=sys.stderr)
        return 2
    if asyncio.run(_running(args.file, 2.0)):
        print(f"loom run: {args.file} is running already (loom ps shows it)", file=sys.stderr)
        return 2
    supervisor = Supervisor(
        child_specs(
            settings,
            log_json=args.log_json or settings.log.json_lines,
            file=Path(args.file).resolve(),
        ),
        log=get_logger("loom.run"),
        max_restarts=settings.supervisor.max_restarts,
        within=settings.supervisor.within,
        backoff=settings.supervisor.backoff,
        max_backoff=settings.supervisor.max_backoff,
        status_every=settings.supervisor.status_every,
    )
    control = control_endpoint(args.file)
    if getattr(args, "command", "run") == "dev":
        try:
            import watchfiles  # noqa: F401
        except ImportError:
            print("loom dev: needs watchfiles: pip install 'loom-mesh[dev-tools]'", file=sys.stderr)
            return 2
        return asyncio.run(_develop(supervisor, control, args.file, settings))
    return asyncio.run(_supervise(supervisor, control, args.file))


async def _develop(supervisor: Supervisor, control: str, file: str, settings: RunSettings) -> int:
    """``loom run``, with a watcher restarting children whose files change."""
    watcher = asyncio.create_task(_watch(supervisor, Path(file).resolve().parent, settings))
    try:
        return await _supervise(supervisor, control, file)
    finally:
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher


async def _watch(supervisor: Supervisor, root: Path, settings: RunSettings) -> None:
    """Restart the child whose target file changed; when another Python file under
    ``root`` changed (a module they share), every actor and worker. Changes are
    gathered for 0.2 s (a save that writes several files is one restart)."""
    from watchfiles import PythonFilter, awatch

    log = get_logger("loom.dev")
    children = [*settings.workers, *settings.actors]
    files: dict[Path, list[str]] = {}
    for child in children:
        where = child.target.partition(":")[0]
        if where.endswith(".py"):
            files.setdefault(Path(where).resolve(), []).append(child.name)
    log.info("watching", root=str(root), files=len(files))
    try:
        async for changes in awatch(root, watch_filter=PythonFilter(), debounce=200, step=50):
            changed = {Path(path).resolve() for _, path in changes}
            names = [name for path in changed for name in files.get(path, [])]
            if any(path not in files for path in changed):  # a shared module: everyone
                names = [child.name for child in children]
            for name in dict.fromkeys(names):
                log.info(f"restarting {name}", files=sorted(str(p) for p in changed)[:5])
                refused = supervisor.restart(name)
                if refused is not None:
                    log.warning("not restarted", child=name, reason=refused)
    except Exception:  # the mesh goes on, unwatched: say so
        log.exception("file watching stopped")


async def _supervise(supervisor: Supervisor, control: str, file: str) -> int:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, supervisor.stop)
    serving = asyncio.create_task(supervisor.serve(control, file=str(Path(file).resolve())))
    try:
        return await supervisor.run()
    finally:
        serving.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await serving
        with contextlib.suppress(OSError):
            Path(control.removeprefix("ipc://")).unlink()


def check_targets(settings: RunSettings) -> list[str]:
    """What is wrong with the run file's targets (a missing file, a module that does not
    import, no such class, no tools), one line each; nothing is started."""
    problems = []
    loaders = (("worker", settings.workers, load_tools), ("actor", settings.actors, load_actor))
    for kind, children, load in loaders:
        for child in children:
            try:
                load(child.target)
            except LoomError as exc:
                problems.append(f"{kind} {child.name}: {exc}")
    return problems


def runtime_dir() -> Path:
    """Where running supervisors listen: ``$XDG_RUNTIME_DIR/loom``, else
    ``/tmp/loom-<uid>``; only its owner may enter it."""
    base = os.environ.get("XDG_RUNTIME_DIR")
    path = Path(base) / "loom" if base else Path(tempfile.gettempdir()) / f"loom-{os.getuid()}"
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    path.chmod(0o700)
    return path


def control_endpoint(file: str) -> str:
    """The endpoint a ``loom run`` of ``file`` answers ``loom ps`` on (one per file)."""
    digest = hashlib.sha1(str(Path(file).resolve()).encode()).hexdigest()[:12]
    return f"ipc://{runtime_dir()}/run-{digest}.sock"


async def _ask_supervisor(
    endpoint: str, request: dict[str, Any], timeout: float
) -> dict[str, Any] | None:
    """A supervisor's answer, or None when nothing answers there."""
    context = zmq.asyncio.Context()
    sock = context.socket(zmq.REQ)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.MAXMSGSIZE, 16 << 20)
    try:
        sock.connect(endpoint)
        await sock.send(msgpack.packb(request))
        if not await sock.poll(int(timeout * 1000)):
            return None
        answer = msgpack.unpackb(await sock.recv())
        return answer if isinstance(answer, dict) else None
    finally:
        sock.close(0)
        context.term()


def _listening(endpoint: str) -> bool:
    """Whether a process listens on this ``ipc://`` socket; a socket file left by a
    ``loom run`` that was killed is removed."""
    path = endpoint.removeprefix("ipc://")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(path)
        except FileNotFoundError:
            return False
        except ConnectionRefusedError:
            with contextlib.suppress(OSError):
                os.unlink(path)
            return False
        except OSError:
            return True  # let zmq try, and time out if it must
    return True


async def _running(file: str | None, timeout: float) -> list[tuple[str, dict[str, Any]]]:
    """The running supervisors (endpoint, their ps answer): the one of ``file``, or all."""
    if file is not None:
        endpoints = [control_endpoint(file)]
    else:
        endpoints = [f"ipc://{path}" for path in sorted(runtime_dir().glob("run-*.sock"))]
    endpoints = [endpoint for endpoint in endpoints if _listening(endpoint)]
    found = []
    for endpoint in endpoints:
        answer = await _ask_supervisor(endpoint, {"command": "ps"}, timeout)
        if answer is not None:
            found.append((endpoint, answer))
    return found


async def show_children(args: argparse.Namespace) -> int:
    """``loom ps``: exit 1 when no ``loom run`` is running (of that file)."""
    found = await _running(args.file, args.timeout)
    if not found:
        where = f"of {args.file} " if args.file else ""
        print(f"loom ps: no loom run {where}is running", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps([answer for _, answer in found], indent=2))
        return 0
    for _, answer in found:
        if len(found) > 1:
            print(f"{answer.get('file', '?')}:")
        print(format_status(answer.get("children", [])))
    return 0


async def restart_child(args: argparse.Namespace) -> int:
    """``loom restart NAME``: exit 1 when nothing runs or no such child, 2 when several
    ``loom run`` are running and ``--file`` does not say which."""
    found = await _running(args.file, args.timeout)
    if not found:
        print("loom restart: no loom run is running", file=sys.stderr)
        return 1
    if len(found) > 1:
        files = ", ".join(str(answer.get("file")) for _, answer in found)
        print(f"loom restart: several are running ({files}): name one with --file", file=sys.stderr)
        return 2
    endpoint, _ = found[0]
    answer = await _ask_supervisor(endpoint, {"command": "restart", "name": args.name}, 5.0)
    if answer is None or answer.get("error"):
        why = answer.get("error") if answer else "the supervisor did not answer"
        print(f"loom restart: {why}", file=sys.stderr)
        return 1
    print(f"restarting {args.name}")
    return 0


def child_specs(
    settings: RunSettings, *, log_json: bool = False, file: Path | None = None
) -> list[ChildSpec]:
    """The children of a run file, in start order: broker, workers, the desktop (when the
    file, ``file``, has a ``[desktop]`` table), actors."""
    endpoint = settings.broker.endpoint
    sup = settings.supervisor
    logs = ["--log-json"] if log_json else []
    specs = []
    keys = ["--key", "none"] if settings.security.insecure else []
    if sup.run_broker:
        flags = [*broker_flags(settings.broker), *broker_flags(settings.security)]
        argv = [sys.executable, "-m", "loom.cli.broker", *flags, *logs]
        specs.append(ChildSpec("broker", "broker", argv, grace=sup.grace, ready=_broker_ready))
    for worker in settings.workers:
        grace = worker.grace or sup.grace
        argv = [*LOOM, "worker", worker.target, "--broker", endpoint, "--name", worker.name]
        argv += ["--grace", str(grace), *keys, *logs]
        specs.append(
            ChildSpec(worker.name, "worker", argv, worker.restart, grace + 2.0, worker.env)
        )
    if settings.desktop is not None and file is not None:
        name = settings.desktop.name
        argv = [*LOOM, "desktop", "--config", str(file), "--broker", endpoint, *keys, *logs]
        specs.append(ChildSpec(name, "desktop", argv, "always", sup.grace + 2.0, {}))
    for actor in settings.actors:
        argv = [*LOOM, "actor", actor.target, "--broker", endpoint, "--name", actor.name]
        argv += [*keys, *logs]
        grace = (actor.grace or sup.grace) + 2.0  # the actor's own stop() takes up to 5 s
        specs.append(ChildSpec(actor.name, "actor", argv, actor.restart, grace, actor.env))
    return specs


def broker_flags(section: BrokerSettings | SecuritySettings) -> list[str]:
    """``loom-broker`` flags that reproduce ``section``."""
    flags = []
    for key, value in section.model_dump().items():
        flag = f"--{key.replace('_', '-')}"
        if isinstance(value, tuple | list):  # a repeatable flag, once per item
            for item in value:
                flags += [flag, str(item)]
        elif isinstance(value, bool):  # a switch
            flags += [flag] if value else []
        elif value is not None:  # an unset option stays unset (data_dir: no durable log)
            flags += [flag, str(value)]
    return flags


async def _broker_ready(child: Child) -> None:
    """Wait until the broker child answers HELLO.

    Raises:
        BrokerUnavailableError: it exited, or did not answer within 15 seconds.
    """
    argv = child.spec.argv
    endpoint = argv[argv.index("--endpoint") + 1]
    proc = child.proc
    await wait_for_broker(
        endpoint,
        15.0,
        exited=lambda: proc is None or proc.returncode is not None,
        key="none" if "--insecure" in argv else None,
    )


def load_actor(target: str) -> type[Any]:
    """The ``Actor`` subclass ``PATH_OR_MODULE:ClassName`` names; without ``:ClassName``,
    the one subclass the file or module defines.

    Raises:
        TargetError: the import failed, or no (or more than one) such class is there.
    """
    where, _, attr = target.partition(":")
    module = import_target(where)
    if attr:
        found = getattr(module, attr, None)
        if not (isinstance(found, type) and issubclass(found, Actor)):
            raise TargetError(f"{target}: not an Actor subclass")
        return found
    defined = [
        value
        for value in vars(module).values()
        if isinstance(value, type)
        and issubclass(value, Actor)
        and value.__module__ == module.__name__
    ]
    if len(defined) != 1:
        names = ", ".join(sorted(c.__name__ for c in defined)) or "none"
        raise TargetError(f"{target}: name the class (PATH:ClassName); found {names}")
    return defined[0]
