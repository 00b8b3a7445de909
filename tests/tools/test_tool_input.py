"""Bad input on the tool plane: oversized results and malformed worker frames are
answered or counted, and the broker keeps serving."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import msgpack
import pytest
import zmq
from clients.ready import curve
from conftest import Proc, broker_stats, start_broker, start_worker

from loom import ToolClient, ToolError
from loom.errors import ResultTooLargeError
from loom.protocol import (
    CALL,
    FAIL,
    READY,
    RESULT,
    decode_call,
    decode_control,
    encode_control,
    encode_ref,
)

LIMIT = 100_000


class RawWorker:
    """A worker written with pyzmq alone that misbehaves on purpose."""

    def __init__(self, broker: str) -> None:
        self.ctx: zmq.Context[Any] = zmq.Context()
        self.sock = curve(self.ctx.socket(zmq.DEALER))
        self.sock.linger = 0
        self.sock.connect(broker)
        spec = {"name": "raw.echo", "schema": {"type": "object"}, "concurrency": 4}
        self.sock.send_multipart(encode_control(READY, {"name": "raw", "tools": [spec], "rid": 1}))
        assert decode_control(self.recv())[0] == READY

    def recv(self) -> list[bytes]:
        assert self.sock.poll(5000), "the broker sent nothing"
        return self.sock.recv_multipart()

    def next_call(self) -> int:
        while True:
            frames = self.recv()
            if frames[0] == CALL:
                return decode_call(frames[1])[0]

    def close(self) -> None:
        self.sock.close(0)
        self.ctx.term()


def test_oversized_results_and_malformed_worker_frames_are_survived(
    spawn: Callable[..., Proc], endpoint: str
) -> None:
    """A too-large result is TOO_LARGE (at the worker, or at the broker for a raw worker);
    garbage from a worker is counted; calls keep working."""
    broker = start_broker(spawn, endpoint, "--max-payload", str(LIMIT), "--heartbeat", "0.2")
    worker = start_worker(spawn, endpoint, "w1")
    raw = RawWorker(endpoint)

    async def body() -> None:
        async with await ToolClient.connect(endpoint, name="test") as client:
            with pytest.raises(ResultTooLargeError, match="exceeds the limit") as big:
                await client.call("sample.blob", {"size": LIMIT + 1})
            assert big.value.code == "TOO_LARGE"

            first = asyncio.ensure_future(client.call("raw.echo", {}))
            token = await asyncio.to_thread(raw.next_call)
            for frames in (
                [RESULT],  # one frame
                [RESULT, b"\xc1", b""],  # meta is not msgpack
                [RESULT, msgpack.packb([999_999]), b"\x01"],  # no such call
                [b"BOGUS", msgpack.packb({})],  # no such command
                encode_ref(RESULT, token, b"\x00" * (LIMIT + 1)),  # too large
            ):
                raw.sock.send_multipart(frames)
            with pytest.raises(ResultTooLargeError, match="exceeds"):
                await first

            second = asyncio.ensure_future(client.call("raw.echo", {}))
            token = await asyncio.to_thread(raw.next_call)
            raw.sock.send_multipart(encode_ref(FAIL, token, b"\xc1"))  # failure not a map
            with pytest.raises(ToolError) as malformed:
                await second
            assert malformed.value.code == "MALFORMED"

            assert await client.call("sample.add", {"a": 1}) == 2  # still serving

    try:
        asyncio.run(body())
    finally:
        raw.close()
    drops = broker_stats(endpoint)
    assert drops["tool_drops"]["too_large"] == 1 and drops["tool_drops"]["meta"] == 1
    assert drops["tool_drops"]["unknown_call"] == 1 and drops["tool_drops"]["body"] == 1
    assert drops["control_drops"]["frames"] == 1 and drops["control_drops"]["command"] == 1
    assert worker.stop() == 0 and "too_large=1" in worker.output
    assert broker.stop() == 0


def test_malformed_calls_are_answered(spawn: Callable[..., Proc], endpoint: str) -> None:
    """A CALL with a bad meta (or a timeout that is not a positive finite number) gets
    MALFORMED when its id can be read; non-map arguments get INVALID_PARAMS."""
    broker = start_broker(spawn, endpoint)
    start_worker(spawn, endpoint, "w1")
    with zmq.Context() as ctx, curve(ctx.socket(zmq.DEALER)) as sock:
        sock.linger = 0
        sock.connect(endpoint)

        def ask(frames: list[bytes]) -> dict[str, Any]:
            sock.send_multipart(frames)
            assert sock.poll(5000)
            command, meta, body = sock.recv_multipart()
            assert command == FAIL
            return dict(msgpack.unpackb(body), id=msgpack.unpackb(meta)[0])

        bad_tool = ask([CALL, msgpack.packb([7, 123, None, None]), msgpack.packb({})])
        assert bad_tool["code"] == "MALFORMED" and bad_tool["id"] == 7
        not_a_map = ask([CALL, msgpack.packb([8, "sample.add", 5, None]), msgpack.packb([1])])
        assert not_a_map["code"] == "INVALID_PARAMS" and "must be a map" in not_a_map["message"]
        assert not_a_map["id"] == 8
        for n, timeout in enumerate((float("nan"), float("inf"), -1.0, 0)):
            answer = ask([CALL, msgpack.packb([9 + n, "sample.add", timeout, None]), b"\x80"])
            assert answer["code"] == "MALFORMED" and "timeout" in answer["message"]
    assert broker.stop() == 0
