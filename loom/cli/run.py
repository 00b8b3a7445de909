"""``loom run FILE.toml`` (supervise a whole mesh) and ``loom actor TARGET`` (run one actor)."""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from typing import Any

from loom._loader import import_target
from loom.actor import Actor
from loom.broker import BrokerSettings
from loom.cli.settings import RunSettings, load_run_settings
from loom.cli.supervisor import Child, ChildSpec, Supervisor
from loom.errors import TargetError
from loom.logs import configure_logging, get_logger
from loom.session import wait_for_broker

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
    """Load the run file, start the children, supervise until SIGINT/SIGTERM."""
    settings = load_run_settings(args.file)
    configure_logging(
        json=args.log_json or settings.log.json_lines,
        level=args.log_level or settings.log.level,
        stream=sys.stderr,
    )
    if args.broker:
        settings = settings.model_copy(
            update={"broker": settings.broker.model_copy(update={"endpoint": args.broker})}
        )
    supervisor = Supervisor(
        child_specs(settings, log_json=args.log_json or settings.log.json_lines),
        log=get_logger("loom.run"),
        max_restarts=settings.supervisor.max_restarts,
        within=settings.supervisor.within,
        backoff=settings.supervisor.backoff,
        max_backoff=settings.supervisor.max_backoff,
        status_every=settings.supervisor.status_every,
    )
    return asyncio.run(_supervise(supervisor))


async def _supervise(supervisor: Supervisor) -> int:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, supervisor.stop)
    return await supervisor.run()


def child_specs(settings: RunSettings, *, log_json: bool = False) -> list[ChildSpec]:
    """The children of a run file, in start order: broker, workers, actors."""
    endpoint = settings.broker.endpoint
    sup = settings.supervisor
    logs = ["--log-json"] if log_json else []
    specs = []
    if sup.run_broker:
        argv = [sys.executable, "-m", "loom.cli.broker", *broker_flags(settings.broker), *logs]
        specs.append(ChildSpec("broker", "broker", argv, grace=sup.grace, ready=_broker_ready))
    for worker in settings.workers:
        grace = worker.grace or sup.grace
        argv = [*LOOM, "worker", worker.target, "--broker", endpoint, "--name", worker.name]
        argv += ["--grace", str(grace), *logs]
        specs.append(
            ChildSpec(worker.name, "worker", argv, worker.restart, grace + 2.0, worker.env)
        )
    for actor in settings.actors:
        argv = [*LOOM, "actor", actor.target, "--broker", endpoint, "--name", actor.name, *logs]
        grace = (actor.grace or sup.grace) + 2.0  # the actor's own stop() takes up to 5 s
        specs.append(ChildSpec(actor.name, "actor", argv, actor.restart, grace, actor.env))
    return specs


def broker_flags(broker: BrokerSettings) -> list[str]:
    """``loom-broker`` flags that reproduce ``broker``."""
    flags = []
    for key, value in broker.model_dump().items():
        if value is not None:  # an unset option stays unset (data_dir: no durable log)
            flags += [f"--{key.replace('_', '-')}", str(value)]
    return flags


async def _broker_ready(child: Child) -> None:
    """Wait until the broker child answers HELLO.

    Raises:
        BrokerUnavailableError: it exited, or did not answer within 15 seconds.
    """
    endpoint = child.spec.argv[child.spec.argv.index("--endpoint") + 1]
    proc = child.proc
    await wait_for_broker(
        endpoint, 15.0, exited=lambda: proc is None or proc.returncode is not None
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
