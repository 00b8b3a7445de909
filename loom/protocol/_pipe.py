"""Frames between a worker and its sandbox launcher, and the launcher and a call's
process: a stream of msgpack arrays over a pipe (``[kind, ...]``).

Worker -> launcher: ``["call", id, tool, args, timeout]``, ``["cancel", id]``.
Launcher -> worker: ``["ready", report]``, ``["progress", id, data]``,
``["result", id, data]`` and ``["fail", id, code, message, details]`` (``data``: an
encoded msgpack value, passed through as bytes).
A call's process -> launcher: the same three without the id.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import msgpack

__all__ = ["FrameReader", "pack_frame", "write_frame"]

_MAX_FRAME = 64 * 1024 * 1024


def pack_frame(*items: Any) -> bytes:
    """One frame: ``items`` as a msgpack array."""
    return msgpack.packb(items, use_bin_type=True)  # type: ignore[no-any-return]


def write_frame(fd: int, *items: Any) -> None:
    """Write one frame to a blocking pipe, all of it.

    Raises:
        OSError: the pipe is broken (``BrokenPipeError``: nobody reads it any more).
    """
    view = memoryview(pack_frame(*items))
    while view:
        view = view[os.write(fd, view) :]


class FrameReader:
    """Reassembles frames from the chunks a pipe delivers."""

    def __init__(self, max_frame: int = _MAX_FRAME) -> None:
        self._unpacker = msgpack.Unpacker(
            raw=False, use_list=True, max_buffer_size=max_frame, strict_map_key=False
        )

    def feed(self, chunk: bytes) -> Iterator[list[Any]]:
        """The complete frames ``chunk`` finishes.

        Raises:
            ValueError: the stream is not msgpack arrays, or a frame is larger than
                ``max_frame`` (the peer is broken).
        """
        try:
            self._unpacker.feed(chunk)
            for frame in self._unpacker:
                if not isinstance(frame, list) or not frame:
                    raise ValueError(f"pipe frame is not an array: {frame!r:.80}")
                yield frame
        except ValueError:
            raise
        except Exception as exc:  # msgpack's BufferFull, ExtraData, FormatError...
            raise ValueError(f"unreadable pipe frames: {type(exc).__name__}: {exc}") from exc
