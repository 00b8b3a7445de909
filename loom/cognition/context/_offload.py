"""Large outputs kept out of the prompt: content-addressed files under
``<workspace>/.offload/``, named in the prompt by ``offload://<id>``.

The id is the first 16 hex digits of the text's SHA-256, so the same output is stored
once. An index (``index.json``) records each entry's tool, step, size, creation and last
read; :meth:`OffloadStore.gc` removes entries not read for ``ttl`` seconds. References
are checked against a strict pattern before any path is built from them, so a reference
cannot name a file outside the store. Index updates take a file lock where the platform
has ``fcntl`` (the tool that reads and the agent that writes may be two processes).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from loom.cognition.context._model import DAY, ContextError
from loom.errors import OffloadMissingError, OffloadRefError

try:
    import fcntl
except ImportError:  # pragma: no cover - not on Linux
    fcntl = None  # type: ignore[assignment]

__all__ = [
    "OffloadMissingError",
    "OffloadRecord",
    "OffloadRefError",
    "OffloadStore",
    "find_refs",
    "parse_ref",
]

_ID = re.compile(r"[0-9a-f]{16}")
_REF = re.compile(r"offload://([0-9a-f]{16})")
_FOUND = re.compile(r"offload://[0-9a-f]{16}(?![0-9a-f])")
DIRECTORY = ".offload"
_INDEX = "index.json"
_LOCK = "index.lock"


@dataclass(frozen=True, slots=True)
class OffloadRecord:
    """One stored output.

    Attributes:
        id: 16 hex digits, the start of the text's SHA-256.
        tool: the tool that produced it.
        step: the step it came from.
        size: its length in characters.
        created: when it was first stored (the store's clock).
        last_read: when it was last read or stored again.
    """

    id: str
    tool: str
    step: int
    size: int
    created: float
    last_read: float

    @property
    def ref(self) -> str:
        """``offload://<id>``."""
        return f"offload://{self.id}"


def parse_ref(ref: str) -> str:
    """The id in a reference: ``offload://<16 hex>``, or the 16 hex digits alone.

    Raises:
        OffloadRefError: ``ref`` is anything else (a path, ``..``, other characters).
    """
    if not isinstance(ref, str):
        raise OffloadRefError(f"a reference is a string, not {type(ref).__name__}")
    match = _REF.fullmatch(ref) or _ID.fullmatch(ref)
    if match is None:
        raise OffloadRefError(f"{ref[:80]!r} is not a reference (offload:// + 16 hex digits)")
    return match.group(1) if match.re is _REF else match.group()


def find_refs(text: str) -> list[str]:
    """Every ``offload://`` reference in ``text``, in order of first appearance."""
    return list(dict.fromkeys(_FOUND.findall(text)))


class OffloadStore:
    """The offloaded outputs of one workspace.

    Args:
        workspace: the agent's working directory; the store lives in its ``.offload``.
        ttl: seconds an entry is kept after it was last read (or stored).
        clock: returns the time in seconds (``time.time``).

    Raises:
        ContextError: ``<workspace>/.offload`` is a symbolic link.
    """

    def __init__(
        self, workspace: Path, *, ttl: float = DAY, clock: Callable[[], float] = time.time
    ) -> None:
        self.root = Path(workspace) / DIRECTORY
        if self.root.is_symlink():
            raise ContextError(f"{self.root} is a symbolic link; refusing to store there")
        self.ttl = ttl
        self.clock = clock

    def path(self, ref: str) -> Path:
        """The file that holds ``ref`` (it may not exist).

        Raises:
            OffloadRefError: ``ref`` is not a valid reference.
        """
        return self.root / f"{parse_ref(ref)}.txt"

    def put(self, text: str, *, tool: str = "", step: int = -1) -> OffloadRecord:
        """Store ``text`` (once per content) and return its record; storing it again
        counts as a read (its TTL starts over).

        Raises:
            OSError: the file or the index cannot be written.
        """
        data = text.encode("utf-8")
        ident = hashlib.sha256(data).hexdigest()[:16]
        self.root.mkdir(parents=True, exist_ok=True)
        target = self.root / f"{ident}.txt"
        if not target.exists():
            _write_atomic(target, data)
        now = self.clock()
        with self._index() as index:
            entry = index.get(ident)
            if entry is None:
                entry = asdict(OffloadRecord(ident, tool, step, len(text), now, now))
            entry["last_read"] = now
            index[ident] = entry
        return OffloadRecord(**entry)

    def read(self, ref: str, offset: int = 0, length: int = 4000) -> str:
        """Part of a stored output: ``length`` characters from ``offset`` (fewer at the
        end, none past it); marks the entry read.

        Raises:
            OffloadRefError: ``ref`` is not a valid reference, or ``offset`` or
                ``length`` is negative.
            OffloadMissingError: nothing is stored under that id.
        """
        if offset < 0 or length < 0:
            raise OffloadRefError(f"offset and length must not be negative ({offset}, {length})")
        text = self._text(ref)
        with self._index() as index:
            entry = index.get(parse_ref(ref))
            if entry is not None:
                entry["last_read"] = self.clock()
        return text[offset : offset + length]

    def record(self, ref: str) -> OffloadRecord:
        """The record of ``ref``.

        Raises:
            OffloadRefError: ``ref`` is not a valid reference.
            OffloadMissingError: nothing is stored under that id.
        """
        ident = parse_ref(ref)
        entry = self._load().get(ident)
        if entry is None or not self.path(ident).exists():
            raise OffloadMissingError(f"offload://{ident} is not stored (expired or unknown)")
        return OffloadRecord(**entry)

    def records(self) -> list[OffloadRecord]:
        """Every entry of the index, oldest first."""
        entries = [OffloadRecord(**entry) for entry in self._load().values()]
        return sorted(entries, key=lambda record: (record.created, record.id))

    def gc(self, now: float | None = None) -> int:
        """Remove the entries not read for ``ttl`` seconds, and files the index does not
        know that are as old; return how many files were removed.

        Args:
            now: the time to judge by (the store's clock by default).

        Raises:
            OSError: a file cannot be removed.
        """
        now = self.clock() if now is None else now
        if not self.root.is_dir():
            return 0
        removed = 0
        with self._index() as index:
            for ident in [i for i, entry in index.items() if now - entry["last_read"] > self.ttl]:
                del index[ident]
                with contextlib.suppress(FileNotFoundError):
                    (self.root / f"{ident}.txt").unlink()
                    removed += 1
            for file in self.root.iterdir():
                known = _ID.fullmatch(file.stem) and file.stem in index and file.suffix == ".txt"
                if file.name in (_INDEX, _LOCK) or known:
                    continue
                with contextlib.suppress(FileNotFoundError):
                    if now - file.stat().st_mtime > self.ttl:
                        file.unlink()
                        removed += 1
        return removed

    def _text(self, ref: str) -> str:
        try:
            return self.path(ref).read_text(encoding="utf-8")
        except FileNotFoundError:
            raise OffloadMissingError(f"{ref} is not stored (expired or unknown)") from None

    def _load(self) -> dict[str, dict[str, Any]]:
        try:
            loaded = json.loads((self.root / _INDEX).read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except ValueError:  # a torn or foreign file: start a new index, files stay
            return {}
        return loaded if isinstance(loaded, dict) else {}

    @contextlib.contextmanager
    def _index(self) -> Iterator[dict[str, dict[str, Any]]]:
        """The index, locked for the block and written back after it."""
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / _LOCK, "a+b") as lock:
            if fcntl is not None:
                fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
            index = self._load()
            yield index
            data = json.dumps(index, sort_keys=True, indent=1).encode("utf-8")
            _write_atomic(self.root / _INDEX, data)


def _write_atomic(target: Path, data: bytes) -> None:
    temporary = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    temporary.write_bytes(data)
    os.replace(temporary, target)
