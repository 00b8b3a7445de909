"""Watched folders: each change as ``desktop.file.created``, ``.modified``, ``.deleted`` or
``.moved``, the path relative to the folder.

``watchfiles`` (inotify on Linux, FSEvents on macOS, ReadDirectoryChangesW on Windows)
reports changes in batches, once the folder has been quiet ``debounce_ms``. It reports a
rename as a delete and a create; Loom remembers each file's inode, so a delete and a
create of the same inode in one batch are published as one ``moved``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

from loom.desktop._settings import FilesSettings, WatchSettings
from loom.desktop._source import Choice, Publish, Refused, module
from loom.logs import get_logger

__all__ = ["Files", "choose_files"]

_RANK = {"created": 0, "moved": 1, "modified": 2, "deleted": 3}
"""Within one batch (``watchfiles`` gives a set), events go out in this order, then by
path."""
_RETRY = 1.0
"""Seconds between looks for a watched folder that is missing (or went away)."""

_Folder = tuple[str, Path, WatchSettings]
"""A watch's name, its folder (resolved) and its settings."""

log = get_logger("loom.desktop")


def _matches(rel: str, patterns: list[str]) -> bool:
    name = rel.rsplit("/", 1)[-1]
    return any(fnmatchcase(rel if "/" in p else name, p) for p in patterns)


class _Known:
    """Inodes of the files under the watched folders (to pair a rename's two halves),
    at most ``limit`` of them."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.files: dict[str, tuple[int, int, bool]] = {}
        """Absolute path -> (device, inode, is a directory)."""

    def scan(self, root: Path, recursive: bool) -> dict[str, tuple[int, int, bool]]:
        """Remember what is under ``root``; returns what was not known (up to the
        limit)."""
        found: dict[str, tuple[int, int, bool]] = {}
        for top, dirs, names in os.walk(root):
            for name in (*dirs, *names):
                path = os.path.join(top, name)
                before = self.files.get(path)
                key = self.add(path)
                if key is not None and key != before:
                    found[path] = key
            if not recursive or len(self.files) >= self.limit:
                dirs.clear()
        return found

    def add(self, path: str) -> tuple[int, int, bool] | None:
        try:
            info = os.lstat(path)
        except OSError:
            return None
        key = (info.st_dev, info.st_ino, os.path.isdir(path) and not os.path.islink(path))
        if path in self.files or len(self.files) < self.limit:
            self.files[path] = key
        return key

    def moved_dir(self, old: str, new: str) -> None:
        """A directory moved: what was known under it is now under ``new``."""
        prefix = old + os.sep
        for path in [p for p in self.files if p.startswith(prefix)]:
            self.files[new + path[len(old) :]] = self.files.pop(path)


class Files:
    """The files source: one ``watchfiles`` watcher per folder."""

    backend = "watchfiles"

    def __init__(self, settings: FilesSettings) -> None:
        self.settings = settings
        self._watchfiles = module("watchfiles")
        self._known = _Known(settings.max_files)
        self._publish: Publish | None = None
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self.state: dict[str, str] = dict.fromkeys(settings.watch, "starting")
        self.published = 0

    async def start(self, publish: Publish) -> None:
        self._publish = publish
        loop = asyncio.get_running_loop()
        self._ready = {name: asyncio.Event() for name in self.settings.watch}
        for name, watch in self.settings.watch.items():
            self._tasks.append(loop.create_task(self._watch(name, watch)))
        with contextlib.suppress(TimeoutError):  # a missing folder does not hold start up
            async with asyncio.timeout(5.0):
                for ready in self._ready.values():
                    await ready.wait()

    async def stop(self) -> None:
        self._publish = None
        self._stop.set()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    def status(self) -> dict[str, Any]:
        return {"watches": dict(self.state), "published": self.published}

    async def _watch(self, name: str, watch: WatchSettings) -> None:
        root = watch.path.expanduser().resolve()
        appeared = False
        while not self._stop.is_set():
            if not root.is_dir():
                self.state[name] = f"waiting: {root} is not a folder"
                self._ready[name].set()
                appeared = True
                await asyncio.sleep(_RETRY)
                continue
            try:
                changes = self._watchfiles.awatch(
                    root,
                    debounce=self.settings.max_wait_ms,
                    step=self.settings.debounce_ms,
                    recursive=watch.recursive,
                    stop_event=self._stop,
                    ignore_permission_denied=True,
                )
                # watchfiles sets its watches up in the first step of the first ask;
                # what is there already is scanned after, so nothing falls in between
                first = asyncio.ensure_future(changes.__anext__())
                await asyncio.sleep(0)
                found = await asyncio.to_thread(self._known.scan, root, watch.recursive)
                self.state[name] = f"watching {root}"
                self._ready[name].set()
                if appeared:  # a folder that came while we waited: what is in it is new
                    for path in sorted(found):
                        self._send((name, root, watch), "created", path, {"is_dir": found[path][2]})
                appeared = False
                batch = await first
                while True:
                    self._batch(name, root, watch, batch)
                    batch = await changes.__anext__()
            except StopAsyncIteration:
                return
            except Exception as exc:  # the folder went away, a watch limit was hit
                self.state[name] = f"error: {exc}"
                log.warning("file watch failed: trying again", watch=name, error=str(exc))
                self._ready[name].set()
                await asyncio.sleep(_RETRY)

    def _batch(self, name: str, root: Path, watch: WatchSettings, batch: Any) -> None:
        """Publish one batch. A folder created (or moved in) is scanned: inotify watches
        it only once told of it, so what was put in it at once is published from the
        scan, and not again when the watcher reports it."""
        change = self._watchfiles.Change
        created: set[str] = set()
        modified: set[str] = set()
        deleted: set[str] = set()
        for kind, path in batch:
            {change.added: created, change.modified: modified, change.deleted: deleted}[kind].add(
                path
            )
        known = self._known
        events: list[tuple[str, str, dict[str, Any]]] = []
        gone = {path: known.files.pop(path, None) for path in deleted}
        by_inode = {key[:2]: path for path, key in gone.items() if key is not None}
        for path in sorted(created):
            before = known.files.get(path)
            key = known.add(path)
            if key is not None and key == before:
                continue  # known already: published from a folder's scan
            old = by_inode.pop(key[:2], None) if key is not None else None
            is_dir = bool(key and key[2])
            if old is not None and old not in created:
                deleted.discard(old)
                if is_dir:
                    known.moved_dir(old, path)
                events.append(("moved", path, {"from": self._rel(root, old), "is_dir": is_dir}))
                continue
            events.append(("created", path, {"is_dir": is_dir}))
            if is_dir and watch.recursive:
                found = known.scan(Path(path), True)
                events += [("created", p, {"is_dir": k[2]}) for p, k in sorted(found.items())]
        for path in modified - created:
            key = known.add(path)
            events.append(("modified", path, {"is_dir": bool(key and key[2])}))
        for path in deleted:
            key = gone.get(path)
            events.append(("deleted", path, {"is_dir": bool(key and key[2])}))
        events.sort(key=lambda e: (_RANK[e[0]], e[1]))
        for kind, path, extra in events:
            self._send((name, root, watch), kind, path, extra)

    @staticmethod
    def _rel(root: Path, path: str) -> str:
        try:
            return Path(path).relative_to(root).as_posix()
        except ValueError:
            return Path(path).as_posix()

    def _send(self, folder: _Folder, kind: str, path: str, extra: dict[str, Any]) -> None:
        name, root, watch = folder
        rel = self._rel(root, path)
        wanted = _matches(rel, watch.globs) and not _matches(rel, watch.ignore)
        if kind == "moved":  # half of a move may be out of the globs
            was = _matches(extra["from"], watch.globs) and not _matches(extra["from"], watch.ignore)
            if not was and not wanted:
                return
            if not was:
                kind, extra = "created", {"is_dir": extra["is_dir"]}
            elif not wanted:
                kind, rel, extra = "deleted", extra["from"], {"is_dir": extra["is_dir"]}
        elif not wanted:
            return
        if self._publish is None:
            return
        self.published += 1
        body = {"watch": name, "root": str(root), "path": rel, "kind": kind, "at": time.time()}
        self._publish(f"desktop.file.{kind}", body | extra)


def choose_files(settings: FilesSettings) -> tuple[Files | None, list[Choice]]:
    """The files source, unless it is off, has no folders, or lacks ``watchfiles``."""
    if not settings.enabled:
        return None, [Choice("files", "-", "switched off ([desktop.files] enabled)")]
    if not settings.watch:
        return None, [Choice("files", "-", "no folders configured ([desktop.files.watch.NAME])")]
    try:
        return Files(settings), [Choice("files", "watchfiles", chosen=True)]
    except Refused as exc:
        return None, [Choice("files", "watchfiles", str(exc))]
