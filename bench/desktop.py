"""Latency from a real OS event to its topic reaching an actor, against the same event
seen directly by a library in this process, in one run.

    python bench/desktop.py [--runs 3] [--events 200]

On a VirtualDesktop (Xvfb, a session bus, dunst): a broker and `loom desktop` (each a
process, the desktop with its default settings: a hotkey, the clipboard, one watched
folder) and an actor in this process. For each kind, --events one at a time:

  key        an XTest key press (what `xdotool key` sends, without starting a process)
             -> desktop.hotkey.ask at the actor;
             baseline: this process's own X grab of another combination, the KeyPress
  clipboard  `xclip -i` started (the process counts) -> desktop.clipboard.changed;
             baseline: this process's own XFixes listener, the owner-change event
  file       a file written in the watched folder -> desktop.file.created;
             baseline: watchfiles' awatch in this process with the same 50 ms window

Figures are medians over --runs of each run's p50 and p99 (milliseconds); ratios are to
the baseline of the same kind.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import multiprocessing as mp
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from tools import loom_broker, percentile, scratch  # beside this file

from loom import Actor, Event
from loom.desktop import VirtualDesktop

_WAIT = 10.0
"""Seconds one event may take before the bench gives up on it (and says so)."""


class Arrivals:
    """Futures for the next event of each topic, resolved with the arrival time."""

    def __init__(self) -> None:
        self.waiting: dict[str, asyncio.Future[int]] = {}

    def expect(self, topic: str) -> asyncio.Future[int]:
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self.waiting[topic] = future
        return future

    def arrived(self, topic: str) -> None:
        now = time.perf_counter_ns()
        future = self.waiting.pop(topic, None)
        if future is not None and not future.done():
            future.set_result(now)


async def timed(
    count: int,
    cause: Callable[[int], Awaitable[None]],
    seen: Callable[[int], asyncio.Future[int]],
    gap: float = 0.0,
) -> list[int]:
    """``count`` latencies (ns) from ``cause(i)`` starting to ``seen(i)`` resolving,
    ``gap`` seconds apart (not timed)."""
    latencies = []
    for i in range(-5, count):  # five to warm up
        await asyncio.sleep(gap)
        arrival = seen(i)
        start = time.perf_counter_ns()
        await cause(i)
        async with asyncio.timeout(_WAIT):
            end = await arrival
        if i >= 0:
            latencies.append(end - start)
    return latencies


class Keys:
    """XTest key presses, and (for the baseline) an X grab of this process's own."""

    def __init__(self, display: str) -> None:
        from Xlib import XK
        from Xlib import display as xdisplay

        self.send = xdisplay.Display(display)
        self.watch = xdisplay.Display(display)
        self.codes = {
            name: self.send.keysym_to_keycode(XK.string_to_keysym(sym))
            for name, sym in (("ctrl", "Control_L"), ("alt", "Alt_L"), ("a", "a"), ("b", "b"))
        }

    def press(self, key: str) -> None:
        from Xlib import X
        from Xlib.ext import xtest

        keys = [self.codes["ctrl"], self.codes["alt"], self.codes[key]]
        for code in keys:
            xtest.fake_input(self.send, X.KeyPress, code)
        for code in reversed(keys):
            xtest.fake_input(self.send, X.KeyRelease, code)
        self.send.flush()

    def grab(self, arrivals: Arrivals) -> None:
        from Xlib import X

        root = self.watch.screen().root
        mask = X.ControlMask | X.Mod1Mask
        root.grab_key(self.codes["b"], mask, True, X.GrabModeAsync, X.GrabModeAsync)
        self.watch.sync()

        def drain() -> None:
            while self.watch.pending_events():
                if self.watch.next_event().type == X.KeyPress:
                    arrivals.arrived("direct.key")

        asyncio.get_running_loop().add_reader(self.watch.fileno(), drain)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            asyncio.get_running_loop().remove_reader(self.watch.fileno())
        self.send.close()
        self.watch.close()


def clipboard_listener(display: str, arrivals: Arrivals) -> Any:
    from Xlib import display as xdisplay
    from Xlib.ext import xfixes

    d = xdisplay.Display(display)
    d.xfixes_query_version()
    atom = d.intern_atom("CLIPBOARD")
    d.xfixes_select_selection_input(d.screen().root, atom, xfixes.XFixesSetSelectionOwnerNotifyMask)
    d.sync()

    def drain() -> None:
        while d.pending_events():
            d.next_event()
            arrivals.arrived("direct.clipboard")

    asyncio.get_running_loop().add_reader(d.fileno(), drain)
    return d


async def xclip(desk: VirtualDesktop, text: str) -> None:
    proc = await asyncio.create_subprocess_exec(
        "xclip",
        "-selection",
        "clipboard",
        "-i",
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, **desk.env},
        start_new_session=True,
    )
    await proc.communicate(text.encode())


async def measure(
    desk: VirtualDesktop, endpoint: str, folder: Path, direct_folder: Path, count: int
) -> dict[str, tuple[float, float]]:
    import watchfiles

    arrivals = Arrivals()
    actor = Actor(name="bench", broker=endpoint)
    await actor.start()

    def seen(event: Event) -> None:
        arrivals.arrived(event.topic)

    await actor.subscribe("desktop.**", seen)
    keys = Keys(desk.display)
    keys.grab(arrivals)
    clip = clipboard_listener(desk.display, arrivals)
    stop = asyncio.Event()

    async def direct_files() -> None:
        async for _ in watchfiles.awatch(direct_folder, step=50, debounce=1000, stop_event=stop):
            arrivals.arrived("direct.file")

    watcher = asyncio.get_running_loop().create_task(direct_files())
    await asyncio.sleep(0.2)  # watchfiles sets its watch up
    results: dict[str, tuple[float, float]] = {}

    def record(label: str, latencies: list[int]) -> None:
        results[label] = (percentile(latencies, 0.5) / 1000, percentile(latencies, 0.99) / 1000)

    async def key(_: int, which: str = "a") -> None:
        keys.press(which)

    try:
        # 2 ms apart: a press in the millisecond of the last release is an auto-repeat
        record(
            "key direct",
            await timed(
                count, lambda i: key(i, "b"), lambda i: arrivals.expect("direct.key"), 0.002
            ),
        )
        record(
            "key loom",
            await timed(count, key, lambda i: arrivals.expect("desktop.hotkey.ask"), 0.002),
        )
        record(
            "clipboard direct",
            await timed(
                count,
                lambda i: xclip(desk, f"direct {i} {time.time()}"),
                lambda i: arrivals.expect("direct.clipboard"),
            ),
        )
        record(
            "clipboard loom",
            await timed(
                count,
                lambda i: xclip(desk, f"loom {i} {time.time()}"),
                lambda i: arrivals.expect("desktop.clipboard.changed"),
            ),
        )

        async def write(where: Path, i: int) -> None:
            (where / f"f{i + 5}.txt").write_text("x")

        record(
            "file direct",
            await timed(
                count, lambda i: write(direct_folder, i), lambda i: arrivals.expect("direct.file")
            ),
        )
        record(
            "file loom",
            await timed(
                count,
                lambda i: write(folder, i),
                lambda i: arrivals.expect("desktop.file.created"),
            ),
        )
        return results
    finally:
        stop.set()
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await watcher
        keys.close()
        asyncio.get_running_loop().remove_reader(clip.fileno())
        clip.close()
        await actor.stop()


def one_run(
    desk: VirtualDesktop, tmp: Path, run: int, count: int
) -> dict[str, tuple[float, float]]:
    endpoint = f"ipc://{tmp}/d{run}"
    folder, direct_folder = tmp / f"watched{run}", tmp / f"direct{run}"
    folder.mkdir()
    direct_folder.mkdir()
    config = tmp / f"desktop{run}.toml"
    config.write_text(
        f'[desktop.hotkeys.keys]\nask = "ctrl+alt+a"\n'
        f'[desktop.files.watch.bench]\npath = "{folder}"\n'
    )
    ready = mp.Event()
    hub = mp.Process(target=loom_broker, args=(endpoint, ready))
    hub.start()
    assert ready.wait(30)
    log = tmp / f"desktop{run}.log"
    with open(log, "w") as out:
        desktop = subprocess.Popen(
            [sys.executable, "-m", "loom.cli.main", "desktop", "--config", str(config)],
            env={**os.environ, **desk.env, "LOOM_BROKER": endpoint},
            stdout=subprocess.DEVNULL,
            stderr=out,
        )
    try:
        deadline = time.monotonic() + 30
        while "desktop ready" not in log.read_text():
            if desktop.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"loom desktop did not start: {log.read_text()}")
            time.sleep(0.05)
        return asyncio.run(measure(desk, endpoint, folder, direct_folder, count))
    finally:
        desktop.terminate()
        desktop.wait(30)
        hub.terminate()
        hub.join(15)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--events", type=int, default=200)
    args = parser.parse_args()
    tmp = Path(scratch())
    runs = []
    with VirtualDesktop() as desk:
        for run in range(args.runs):
            runs.append(one_run(desk, tmp, run, args.events))
            print(f"run {run + 1}/{args.runs} done", file=sys.stderr, flush=True)
    med = {k: [statistics.median(r[k][i] for r in runs) for i in range(2)] for k in runs[0]}
    print(
        f"OS event to an actor, medians of {args.runs} runs ({args.events} events each, one"
        " at a time; Xvfb, ipc, secure broker), in milliseconds"
    )
    print("| source | path | p50 ms | p99 ms | p50 ratio | p99 ratio |")
    print("|---|---|---|---|---|---|")
    for kind in ("key", "clipboard", "file"):
        base = med[f"{kind} direct"]
        for path in ("direct", "loom"):
            p50, p99 = med[f"{kind} {path}"]
            print(
                f"| {kind} | {path} | {p50:.2f} | {p99:.2f} | {p50 / base[0]:.2f}x |"
                f" {p99 / base[1]:.2f}x |"
            )


if __name__ == "__main__":
    main()
