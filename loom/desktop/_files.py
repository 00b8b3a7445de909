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


class _Folder:
    """One watched folder: its watcher, what is known under it, and its events."""

    def __init__(self, name: str, watch: WatchSettings, files: Files) -> None:
        self.name = name
        self.watch = watch
        self.root = watch.path.expanduser().resolve()
        self.files = files
        self.known = _Known(files.settings.max_files)
        self.announced: dict[str, tuple[int, int, bool]] = {}
        """Entries a scan published as created, not to publish again when the watcher
        reports them (removed when it does, or when they are deleted)."""
        self.ready = asyncio.Event()

    async def run(self) -> None:
        """Watch until stopped; a missing folder (or one that went away) is waited for,
        and what is in it when it comes is published as created."""
        files, watchfiles = self.files, self.files.watchfiles
        appeared = False
        while not files.stopping.is_set():
            if not self.root.is_dir():
                files.state[self.name] = f"waiting: {self.root} is not a folder"
                self.ready.set()
                appeared = True
                await asyncio.sleep(_RETRY)
                continue
            changes = watchfiles.awatch(
                self.root,
                debounce=files.settings.max_wait_ms,
                step=files.settings.debounce_ms,
                recursive=self.watch.recursive,
                stop_event=files.stopping,
                ignore_permission_denied=True,
            )
            try:
                # watchfiles sets its watches up in the first step of the first ask; what
                # is there already is scanned after, so nothing falls in between
                first = asyncio.ensure_future(changes.__anext__())
                await asyncio.sleep(0)
                found = await asyncio.to_thread(self.known.scan, self.root, self.watch.recursive)
                files.state[self.name] = f"watching {self.root}"
                self.ready.set()
                if appeared:
                    self._announce(found)
                    self._flush([("created", p, {"is_dir": k[2]}) for p, k in found.items()])
                appeared = False
                batch = await first
                while await self._batch(batch):
                    batch = await changes.__anext__()
                appeared = True  # the folder went away: wait for it again, afresh
                files.state[self.name] = f"waiting: {self.root} went away"
                self.known = _Known(files.settings.max_files)
                self.announced.clear()
            except StopAsyncIteration:
                return
            except Exception as exc:  # a watch limit was hit, permissions changed
                files.state[self.name] = f"error: {exc}"
                log.warning("file watch failed: trying again", watch=self.name, error=str(exc))
                self.ready.set()
                await asyncio.sleep(_RETRY)
            finally:
                with contextlib.suppress(Exception):
                    await changes.aclose()

    def _announce(self, found: dict[str, tuple[int, int, bool]]) -> None:
        if len(self.announced) + len(found) > self.known.limit:
            self.announced.clear()  # stale entries: the worst is one created event twice
        self.announced.update(found)

    async def _batch(self, batch: Any) -> bool:
        """Publish one batch; False when the folder itself went away."""
        change = self.files.watchfiles.Change
        created: set[str] = set()
        modified: set[str] = set()
        deleted: set[str] = set()
        for kind, path in batch:
            {change.added: created, change.modified: modified, change.deleted: deleted}[kind].add(
                path
            )
        if str(self.root) in deleted or not self.root.is_dir():
            return False
        for path in created & deleted:  # a delete and a create of one path in one batch
            if os.path.lexists(path):  # replaced (an editor's save): its content changed
                created.discard(path)
                deleted.discard(path)
                modified.add(path)
                self.known.files.pop(path, None)
        known = self.known
        events: list[tuple[str, str, dict[str, Any]]] = []
        gone = {path: known.files.pop(path, None) for path in deleted}
        for path in deleted:
            self.announced.pop(path, None)
        by_inode = {key[:2]: path for path, key in gone.items() if key is not None}
        for path in sorted(created):
            key = known.add(path)
            if key is not None and self.announced.pop(path, None) == key:
                continue  # a scan published it already
            old = by_inode.pop(key[:2], None) if key is not None else None
            is_dir = bool(key and key[2])
            if old is not None and old not in created:
                deleted.discard(old)
                if is_dir:
                    known.moved_dir(old, path)
                events.append(("moved", path, {"from": self._rel(old), "is_dir": is_dir}))
                continue
            events.append(("created", path, {"is_dir": is_dir}))
            if is_dir and self.watch.recursive:  # what came with it, before it was watched
                found = await asyncio.to_thread(known.scan, Path(path), True)
                self._announce(found)
                events += [("created", p, {"is_dir": k[2]}) for p, k in found.items()]
        for path in modified - created:
            key = known.add(path)
            events.append(("modified", path, {"is_dir": bool(key and key[2])}))
        for path in deleted:
            key = gone.get(path)
            events.append(("deleted", path, {"is_dir": bool(key and key[2])}))
        self._flush(events)
        return True

    def _flush(self, events: list[tuple[str, str, dict[str, Any]]]) -> None:
        events.sort(key=lambda e: (_RANK[e[0]], e[1]))
        for kind, path, extra in events:
            self._send(kind, path, extra)

    def _rel(self, path: str) -> str:
        try:
            return Path(path).relative_to(self.root).as_posix()
        except ValueError:
            return Path(path).as_posix()

    def _send(self, kind: str, path: str, extra: dict[str, Any]) -> None:
        watch = self.watch
        rel = self._rel(path)
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
        body = {"watch": self.name, "root": str(self.root), "path": rel, "kind": kind}
        self.files.send(f"desktop.file.{kind}", body | {"at": time.time()} | extra)


class Files:
    """The files source: a watcher per folder, each with its own memory of inodes."""

    backend = "watchfiles"

    def __init__(self, settings: FilesSettings) -> None:
        self.settings = settings
        self.watchfiles = module("watchfiles")
        self._publish: Publish | None = None
        self.stopping = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self.state: dict[str, str] = dict.fromkeys(settings.watch, "starting")
        self.published = 0

    async def start(self, publish: Publish) -> None:
        self._publish = publish
        loop = asyncio.get_running_loop()
        folders = [_Folder(name, watch, self) for name, watch in self.settings.watch.items()]
        self._tasks = [loop.create_task(folder.run()) for folder in folders]
        with contextlib.suppress(TimeoutError):  # a missing folder does not hold start up
            async with asyncio.timeout(5.0):
                for folder in folders:
                    await folder.ready.wait()

    async def stop(self) -> None:
        self._publish = None
        self.stopping.set()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    def send(self, topic: str, body: dict[str, Any]) -> None:
        if self._publish is not None:
            self.published += 1
            self._publish(topic, body)

    def status(self) -> dict[str, Any]:
        return {"watches": dict(self.state), "published": self.published}


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
