"""A hostile peer: random and structurally wrong frames on every socket of a broker.

Usage: python fuzzer.py CONTROL_ENDPOINT [--frames N] [--seed S]

Written from docs/protocol.md with pyzmq and msgpack only (no loom import). For each
plane it sends ``--frames`` messages, most of them almost right (a valid message with one
part or one field replaced by something of another type or size), the rest noise:

* publish: ``[topic, header, payload]`` to the broker's XSUB, with wrong frame counts,
  topics, header fields and payloads;
* subscribe: raw subscription frames to the broker's XPUB (any bytes, any length);
* control: every control command with mutated bodies, unknown commands, wrong frame
  counts, on a DEALER;
* tools: CALL, CANCEL, RESULT, FAIL, PROGRESS and READY with mutated metas, bodies and
  specs;
* durable: PUBLISH, DSUB, DACK and REPLAY, mutated.

Prints a JSON summary: frames sent per plane.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import struct
import time
from typing import Any

import msgpack
import zmq

COMMANDS = [
    b"HELLO",
    b"STATS",
    b"DIRECTORY",
    b"ANNOUNCE",
    b"READY",
    b"DRAIN",
    b"BYE",
    b"HEARTBEAT",
    b"DSUB",
    b"DACK",
    b"REPLAY",
    b"APPROVALS",
    b"APPROVE",
    b"TRACE",
    b"RECENT",
]
TOOL_COMMANDS = [b"CALL", b"CANCEL", b"RESULT", b"FAIL", b"PROGRESS"]


class Fuzzer:
    def __init__(self, seed: int) -> None:
        self.rnd = random.Random(seed)
        self.prefix = os.urandom(8)
        self.count = 0

    # --- values ---------------------------------------------------------------------

    def value(self, depth: int = 0) -> Any:
        """Any msgpack value, often an awkward one."""
        rnd = self.rnd
        kind = rnd.randrange(14 if depth < 3 else 10)
        if kind == 0:
            return None
        if kind == 1:
            return rnd.choice([True, False])
        if kind == 2:
            return rnd.choice([0, -1, 1, 2**31, -(2**63), 2**64 - 1, rnd.randint(-9, 9)])
        if kind == 3:
            return rnd.choice([0.0, -1.5, float("nan"), float("inf"), -float("inf"), 1e308])
        if kind == 4:
            return self.text()
        if kind == 5:
            return rnd.randbytes(rnd.choice([0, 1, 16, 65, 300]))
        if kind == 6:
            return msgpack.ExtType(rnd.randint(0, 127), rnd.randbytes(rnd.randint(0, 9)))
        if kind == 7:
            return "x" * rnd.choice([257, 1025, 5000, 70_000])
        if kind == 8:
            return b"\x00" * rnd.choice([65, 1000, 100_000])
        if kind == 9:
            return rnd.choice(["*", "**", "a..b", "$sys.x", "", ".", "a.*.b", "é.ü"])
        if kind in (10, 11):
            return [self.value(depth + 1) for _ in range(rnd.randint(0, 4))]
        keys: list[Any] = [self.text(), rnd.randint(-5, 5), None, b"k"]
        return {rnd.choice(keys): self.value(depth + 1) for _ in range(rnd.randint(0, 4))}

    def text(self) -> str:
        alphabet = "ab.*$\x00é\u2603 "
        return "".join(self.rnd.choice(alphabet) for _ in range(self.rnd.randint(0, 12)))

    def mutate(self, good: Any) -> Any:
        """``good`` with one field, key or element replaced by anything."""
        rnd = self.rnd
        if isinstance(good, dict) and good:
            bad = dict(good)
            key = rnd.choice([*bad, self.text()])
            bad[key] = self.value()
            return bad
        if isinstance(good, list) and good:
            bad = list(good)
            if rnd.random() < 0.2:
                return bad[: rnd.randrange(len(bad))] or self.value()
            bad[rnd.randrange(len(bad))] = self.value()
            return bad
        return self.value()

    def pack(self, value: Any) -> bytes:
        try:
            return msgpack.packb(value)
        except (TypeError, ValueError, OverflowError):
            return b"\xc1"

    def noise(self) -> bytes:
        rnd = self.rnd
        return rnd.choice(
            [b"", b"\xc1", rnd.randbytes(rnd.randint(1, 64)), b"\xdd\xff\xff\xff\xff", b"\x91"]
        )

    def frame(self, good: Any) -> bytes:
        """Mostly a mutation of ``good`` packed, sometimes noise, sometimes ``good``."""
        roll = self.rnd.random()
        if roll < 0.15:
            return self.noise()
        if roll < 0.25:
            return self.pack(good)
        return self.pack(self.mutate(good))

    def new_id(self) -> bytes:
        self.count += 1
        return self.prefix + struct.pack(">Q", self.count)

    def header(self) -> list[Any]:
        mid = self.new_id()
        return [1, 0, mid, "fuzz", time.time(), None, None, None, None, 0, mid, None, None]

    # --- messages ---------------------------------------------------------------------

    def publish(self) -> list[bytes]:
        rnd = self.rnd
        topic = rnd.choice([b"ping.fuzz", b"fuzz.x", b"$inbox.x", b"a" * 2000, b"\xff\xfe"])
        frames = [topic, self.frame(self.header()), self.frame({"n": 1})]
        roll = rnd.random()
        if roll < 0.1:
            return frames[: rnd.randint(1, 2)]
        if roll < 0.15:
            return [*frames, self.noise()]
        return frames

    def subscription(self) -> bytes:
        rnd = self.rnd
        return rnd.choice([b"\x01", b"\x00", b"\x02", b""]) + rnd.randbytes(rnd.randint(0, 40))

    def control(self) -> list[bytes]:
        rnd = self.rnd
        command = rnd.choice([*COMMANDS, b"NOPE", b"", rnd.randbytes(8)])
        good: dict[str, Any] = {
            b"HELLO": {"version": 1, "name": "fuzz", "role": "actor", "patterns": ["a.*"]},
            b"ANNOUNCE": {"patterns": ["a.**"]},
            b"HEARTBEAT": {"stats": {"handled": 1, "handler_seconds": [0] * 20}},
            b"APPROVE": {"id": 1, "approve": True, "by": "x", "reason": "y"},
            b"TRACE": {"trace": "00ff"},
            b"RECENT": {"after": -1, "calls_after": -1, "limit": 5},
        }.get(command, {})
        body = self.frame({**good, "rid": rnd.randint(0, 9)})
        roll = rnd.random()
        if roll < 0.1:
            return [command]
        if roll < 0.15:
            return [command, body, self.noise()]
        return [command, body]

    def tools(self) -> list[bytes]:
        rnd = self.rnd
        if rnd.random() < 0.3:
            spec = {"name": f"fuzz.t{rnd.randint(0, 3)}", "schema": {}, "concurrency": 1}
            ready = {"name": "fuzz", "tools": [self.mutate(spec)], "rid": 1}
            return [b"READY", self.frame(ready)]
        command = rnd.choice(TOOL_COMMANDS)
        meta: list[Any] = [rnd.randint(0, 3), "fuzz.t1", 1.0, None]
        body = self.frame({"code": "TOOL_ERROR", "message": "m"} if command == b"FAIL" else {})
        frames = [command, self.frame(meta), body]
        if rnd.random() < 0.1:
            return frames[: rnd.randint(1, 2)]
        return frames

    def durable(self) -> list[bytes]:
        rnd = self.rnd
        roll = rnd.random()
        if roll < 0.4:
            frames = [b"PUBLISH", b"fuzz.d", self.frame(self.header()), self.frame(1)]
            return frames if rnd.random() > 0.1 else frames[: rnd.randint(1, 3)]
        command, good = rnd.choice(
            [
                (b"DSUB", {"name": "fuzz", "patterns": ["fuzz.**"]}),
                (b"DACK", {"name": "fuzz", "seq": 1}),
                (b"REPLAY", {"pattern": "**", "since": 0, "limit": 3}),
            ]
        )
        return [command, self.frame({**good, "rid": 3})]


def settle(dealer: zmq.Socket[bytes], timeout: float = 10.0) -> None:
    """Wait until the broker has served everything sent on ``dealer`` so far: it answers
    a HEARTBEAT (or RESET) after the messages before it."""
    dealer.send_multipart([b"HEARTBEAT", msgpack.packb({})])
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if dealer.poll(50) and dealer.recv_multipart()[0] in (b"HEARTBEAT", b"RESET"):
            return
    raise SystemExit(f"the broker did not answer a HEARTBEAT within {timeout}s")


def run(control: str, frames: int, seed: int) -> dict[str, int]:
    """Send ``frames`` messages on every plane of the broker at ``control``."""
    from ready import connect, curve, publisher  # beside this file, run as a script

    fuzz = Fuzzer(seed)
    ctx = zmq.Context()
    sent = {"publish": 0, "subscribe": 0, "control": 0, "tools": 0, "durable": 0}
    try:
        dealer = curve(ctx.socket(zmq.DEALER))
        dealer.connect(control)
        dealer.send_multipart([b"HELLO", msgpack.packb({"version": 1, "name": "fuzz"})])
        if not dealer.poll(5000):
            raise SystemExit("no HELLO answer")
        hello = msgpack.unpackb(dealer.recv_multipart()[1])
        pub = publisher(ctx, hello["pub"])
        subscriber = curve(ctx.socket(zmq.XSUB))
        connect(subscriber, hello["sub"])
        planes = [
            ("publish", lambda: pub.send_multipart(fuzz.publish())),
            ("subscribe", lambda: subscriber.send(fuzz.subscription())),
            ("control", lambda: dealer.send_multipart(fuzz.control())),
            ("tools", lambda: dealer.send_multipart(fuzz.tools())),
            ("durable", lambda: dealer.send_multipart(fuzz.durable())),
        ]
        for index in range(frames):
            for name, send in planes:
                send()
                sent[name] += 1
            while dealer.poll(0):  # read the answers, as a live peer would
                dealer.recv_multipart()
            if index % 100 == 99:
                settle(dealer)
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline:
            if dealer.poll(50):
                dealer.recv_multipart()
    finally:
        ctx.destroy(linger=1000)
    return sent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("control")
    parser.add_argument("--frames", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    print(json.dumps(run(args.control, args.frames, args.seed)))


if __name__ == "__main__":
    main()
