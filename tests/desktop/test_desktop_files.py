"""Watched folders through a real `loom desktop` process (inotify via watchfiles): create,
modify, move and delete in a temporary folder become events, in order, with paths
relative to the folder."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import Proc, eventually, free_tcp_endpoint
from desktop_helpers import start_desktop, watching

from loom import Actor

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def endpoint() -> str:
    return free_tcp_endpoint()


def _config(root: Path, **extra: str) -> str:
    lines = ["[desktop.files]", "debounce_ms = 30", "[desktop.files.watch.notes]"]
    lines.append(f'path = "{root}"')
    lines += [f"{key} = {value}" for key, value in extra.items()]
    return "\n".join(lines) + "\n"


def test_create_modify_move_delete_become_events_in_order(
    spawn: Callable[..., Proc], mesh: str, tmp_path: Path
) -> None:
    root = tmp_path / "notes"
    (root / "sub").mkdir(parents=True)
    start_desktop(spawn, mesh, _config(root), tmp_path)

    async def body(actor: Actor, events: Any) -> None:
        async def step(action: Callable[[], Any], topic: str) -> dict[str, Any]:
            count = len(events.got)
            action()
            await events.wait(topic, len(events.on(topic)) + 1)
            new = events.got[count:]
            assert [t for t, _, _ in new] == [topic], new  # that event, and only it
            return dict(new[0][1])

        created = await step(lambda: (root / "a.txt").write_text("one"), "desktop.file.created")
        assert created == created | {"watch": "notes", "path": "a.txt", "is_dir": False}
        assert created["root"] == str(root.resolve())

        def append() -> None:
            with open(root / "a.txt", "a") as out:
                out.write(" two")

        modified = await step(append, "desktop.file.modified")
        assert modified["path"] == "a.txt"
        moved = await step(
            lambda: os.rename(root / "a.txt", root / "sub" / "b.txt"), "desktop.file.moved"
        )
        assert moved == moved | {"path": "sub/b.txt", "from": "a.txt", "is_dir": False}
        deleted = await step((root / "sub" / "b.txt").unlink, "desktop.file.deleted")
        assert deleted["path"] == "sub/b.txt"
        folder = await step((root / "new").mkdir, "desktop.file.created")
        assert folder == folder | {"path": "new", "is_dir": True}

    watching(mesh, "desktop.file.*", body)


def test_globs_and_ignores_choose_what_is_published(
    spawn: Callable[..., Proc], mesh: str, tmp_path: Path
) -> None:
    root = tmp_path / "notes"
    root.mkdir()
    config = _config(root, globs='["*.md", "drafts/*.txt"]', ignore='["secret*"]')
    start_desktop(spawn, mesh, config, tmp_path)

    async def body(actor: Actor, events: Any) -> None:
        (root / "drafts").mkdir()
        (root / "skip.txt").write_text("not a glob")
        (root / "secret.md").write_text("ignored")
        (root / ".notes.md.swp").write_text("an editor's")
        (root / "drafts" / "d.txt").write_text("in drafts")
        (root / "last.md").write_text("the end")
        await events.wait("desktop.file.created", 2)
        paths = [data["path"] for _, data, _ in events.got]
        assert sorted(paths) == ["drafts/d.txt", "last.md"]
        os.rename(root / "skip.txt", root / "kept.md")  # into the globs: a create
        os.rename(root / "last.md", root / "last.txt")  # out of them: a delete
        await events.wait("desktop.file.created", 3)
        await events.wait("desktop.file.deleted", 1)
        assert events.on("desktop.file.created")[2]["path"] == "kept.md"
        assert events.on("desktop.file.deleted")[0]["path"] == "last.md"

    watching(mesh, "desktop.file.*", body)


def test_a_folder_that_appears_later_is_watched_then_and_its_contents_are_new(
    spawn: Callable[..., Proc], mesh: str, tmp_path: Path
) -> None:
    root = tmp_path / "later"
    start_desktop(spawn, mesh, _config(root), tmp_path)

    async def body(actor: Actor, events: Any) -> None:
        async def watches() -> str:
            state = (await actor.tool("desktop.status"))["sources"]["files"]["watches"]
            return str(state["notes"])

        assert (await watches()).startswith("waiting:")
        root.mkdir()
        (root / "early.md").write_text("in the folder as it came")
        (early,) = await events.wait("desktop.file.created")
        assert early["path"] == "early.md"

        async def watching_now() -> bool:
            return (await watches()).startswith("watching")

        await eventually(watching_now, timeout=15)
        (root / "x.md").write_text("here")
        created = await events.wait("desktop.file.created", 2)
        assert [c["path"] for c in created] == ["early.md", "x.md"]  # each once

    watching(mesh, "desktop.file.*", body)


def test_a_replacing_save_is_a_modify_and_a_removed_folder_is_watched_again(
    spawn: Callable[..., Proc], mesh: str, tmp_path: Path
) -> None:
    """An editor's save (the old file renamed away, a new one written in its place) is
    one `modified`; a watched folder removed and made again is watched again."""
    root = tmp_path / "notes"
    root.mkdir()
    (root / "a.md").write_text("one")
    start_desktop(spawn, mesh, _config(root), tmp_path)

    async def body(actor: Actor, events: Any) -> None:
        os.rename(root / "a.md", root / "a.md~")  # the backup: an ignored name
        (root / "a.md").write_text("two")
        (modified,) = await events.wait("desktop.file.modified")
        assert modified["path"] == "a.md"
        assert events.topics() == ["desktop.file.modified"]

        shutil.rmtree(root)
        root.mkdir()
        (root / "b.md").write_text("after")
        created = await events.wait("desktop.file.created", timeout=15)
        assert [c["path"] for c in created] == ["b.md"]

    watching(mesh, "desktop.file.*", body)


def test_nested_watches_each_see_their_files(
    spawn: Callable[..., Proc], mesh: str, tmp_path: Path
) -> None:
    root = tmp_path / "all"
    (root / "sub").mkdir(parents=True)
    config = _config(root) + f'[desktop.files.watch.sub]\npath = "{root / "sub"}"\n'
    start_desktop(spawn, mesh, config, tmp_path)

    async def body(actor: Actor, events: Any) -> None:
        (root / "sub" / "x.md").write_text("in both")
        created = await events.wait("desktop.file.created", 2)
        assert sorted((c["watch"], c["path"]) for c in created) == [
            ("notes", "sub/x.md"),
            ("sub", "x.md"),
        ]

    watching(mesh, "desktop.file.*", body)
