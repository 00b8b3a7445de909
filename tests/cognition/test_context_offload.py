"""The offload store and the context.read tool."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import pytest

from loom.cognition.context import (
    ContextError,
    OffloadMissingError,
    OffloadRefError,
    OffloadStore,
    context_read,
    find_refs,
    parse_ref,
)
from loom.tools import ToolContext
from loom.tools.builtin import JailRequiredError

HOUR = 3600.0


class Clock:
    """A clock the test moves by hand."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def tool_context(jail: Path | None) -> ToolContext:
    def report(call: int, data: Any) -> None:
        return None

    return ToolContext(1, "context.read", 10.0, report, jail=jail)


def test_put_is_content_addressed(tmp_path: Path) -> None:
    """The id is the start of the text's SHA-256; the same text is stored once."""
    store = OffloadStore(tmp_path)
    first = store.put("hello world", tool="fs.read", step=3)
    again = store.put("hello world", tool="shell.run", step=9)
    assert first.id == hashlib.sha256(b"hello world").hexdigest()[:16]
    assert first.ref == f"offload://{first.id}"
    assert again.id == first.id
    assert (again.tool, again.step) == ("fs.read", 3)
    assert (tmp_path / ".offload" / f"{first.id}.txt").read_text() == "hello world"
    assert [p.name for p in (tmp_path / ".offload").glob("*.txt")] == [f"{first.id}.txt"]


def test_read_pages_through_the_text(tmp_path: Path) -> None:
    """read returns length characters from offset, fewer at the end, none past it."""
    store = OffloadStore(tmp_path)
    ref = store.put("0123456789" * 3 + "é").ref
    assert store.read(ref) == "0123456789" * 3 + "é"
    assert store.read(ref, 5, 10) == "5678901234"
    assert store.read(ref, 28, 10) == "89é"
    assert store.read(ref, 100) == ""
    assert store.read(ref.removeprefix("offload://"), 0, 3) == "012"


def test_index_records_each_entry(tmp_path: Path) -> None:
    """The index records tool, step, size, creation and last read; a read updates it."""
    clock = Clock(1000.0)
    store = OffloadStore(tmp_path, clock=clock)
    ref = store.put("abc" * 1000, tool="http.fetch", step=4).ref
    clock.now = 1500.0
    store.read(ref, 0, 10)
    record = store.record(ref)
    assert (record.tool, record.step, record.size) == ("http.fetch", 4, 3000)
    assert (record.created, record.last_read) == (1000.0, 1500.0)
    index = json.loads((tmp_path / ".offload" / "index.json").read_text())
    assert index[record.id]["last_read"] == 1500.0
    assert OffloadStore(tmp_path).records() == [record]


@pytest.mark.parametrize(
    "ref",
    [
        "offload://../../etc/passwd",
        "../../etc/passwd",
        "/etc/passwd",
        "offload://0123456789ABCDEF",
        "offload://0123456789abcde",
        "offload://0123456789abcdef0",
        "offload://0123456789abcdef\n",
        "offload://0123456789abcdef/../x",
        "file://0123456789abcdef",
        "",
    ],
)
def test_malformed_references_are_refused(tmp_path: Path, ref: str) -> None:
    """Anything but offload:// and 16 lowercase hex digits is refused before a path is built."""
    store = OffloadStore(tmp_path)
    with pytest.raises(OffloadRefError):
        store.read(ref)
    with pytest.raises(OffloadRefError):
        store.path(ref)


def test_negative_ranges_are_refused(tmp_path: Path) -> None:
    """A negative offset or length is refused."""
    store = OffloadStore(tmp_path)
    ref = store.put("text").ref
    with pytest.raises(OffloadRefError):
        store.read(ref, -1)
    with pytest.raises(OffloadRefError):
        store.read(ref, 0, -5)


def test_unknown_references_are_missing(tmp_path: Path) -> None:
    """A well-formed reference to nothing raises OffloadMissingError."""
    store = OffloadStore(tmp_path)
    with pytest.raises(OffloadMissingError):
        store.read("offload://0123456789abcdef")
    with pytest.raises(OffloadMissingError):
        store.record("0123456789abcdef")


def test_gc_removes_entries_not_read_within_the_ttl(tmp_path: Path) -> None:
    """gc removes what was not read for ttl seconds and keeps what was read since."""
    clock = Clock(0.0)
    store = OffloadStore(tmp_path, ttl=24 * HOUR, clock=clock)
    old = store.put("old output").ref
    kept = store.put("read later").ref
    clock.now = 20 * HOUR
    store.read(kept)
    assert store.gc(now=23 * HOUR) == 0
    assert store.gc(now=25 * HOUR) == 1
    with pytest.raises(OffloadMissingError):
        store.read(old)
    assert store.read(kept) == "read later"
    clock.now = 50 * HOUR
    assert store.gc() == 1
    assert store.records() == []


def test_gc_removes_old_files_the_index_does_not_know(tmp_path: Path) -> None:
    """Stray files (an interrupted write) older than the ttl are removed too."""
    store = OffloadStore(tmp_path, ttl=HOUR, clock=Clock(10 * HOUR))
    store.put("indexed")
    stray = tmp_path / ".offload" / ".0123456789abcdef.txt.99.tmp"
    stray.write_text("partial")
    os.utime(stray, (0, 0))
    fresh = tmp_path / ".offload" / "fedcba9876543210.txt"
    fresh.write_text("no index entry yet")
    os.utime(fresh, (10 * HOUR, 10 * HOUR))
    assert store.gc() == 1
    assert not stray.exists()
    assert fresh.exists()


def test_a_symlinked_store_is_refused(tmp_path: Path) -> None:
    """A .offload that is a symbolic link (planted by a tool) is not used."""
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "work").mkdir()
    (tmp_path / "work" / ".offload").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(ContextError, match="symbolic link"):
        OffloadStore(tmp_path / "work")


def test_find_refs_lists_each_reference_once() -> None:
    """find_refs returns well-formed references in order, without repeats."""
    text = (
        "see offload://0123456789abcdef and offload://fedcba9876543210, offload://0123456789abcdef"
    )
    text += " not offload://0123456789abcdef0 nor offload://XYZ"
    assert find_refs(text) == ["offload://0123456789abcdef", "offload://fedcba9876543210"]
    assert parse_ref("offload://0123456789abcdef") == "0123456789abcdef"


def test_context_read_tool_pages_from_the_jail(tmp_path: Path) -> None:
    """context.read reads the jail's store and says where the next part starts."""
    ref = OffloadStore(tmp_path).put("a" * 5000 + "b" * 10).ref
    first = context_read(ref, tool_context(tmp_path), length=4000)
    assert first == {"ref": ref, "offset": 0, "size": 5010, "content": "a" * 4000,
                     "next_offset": 4000}  # fmt: skip
    last = context_read(ref.removeprefix("offload://"), tool_context(tmp_path), offset=4000)
    assert last["content"] == "a" * 1000 + "b" * 10
    assert last["next_offset"] is None


def test_context_read_tool_needs_a_jail() -> None:
    """context.read without a jail has no workspace to read and refuses."""
    with pytest.raises(JailRequiredError):
        context_read("offload://0123456789abcdef", tool_context(None))


def test_context_read_is_a_tool() -> None:
    """context_read is a Loom tool named context.read with a validated schema."""
    assert context_read.name == "context.read"
    assert context_read.idempotent
    assert set(context_read.schema["properties"]) == {"ref", "offset", "length"}
    assert context_read.schema["required"] == ["ref"]
