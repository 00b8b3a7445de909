"""A Loom client written from docs/protocol.md alone: pyzmq and msgpack, no loom import.

Usage: python raw_client.py CONTROL_ENDPOINT
Says HELLO, confirms its subscriptions with a probe, publishes `raw.said`, requests
`ping.raw`, waits for the reply and the `pong.raw` event, and prints a JSON summary.
"""

import json
import os
import struct
import sys
import time

import msgpack
import zmq
from ready import curve  # beside this file: the Loom home's keys, with pyzmq alone

EVENT, REQUEST, REPLY, ERROR = 0, 1, 2, 3
PREFIX = os.urandom(8)
COUNTER = [0]


def new_id():
    COUNTER[0] += 1
    return PREFIX + struct.pack(">Q", COUNTER[0])


def header(kind, mid, correlation_id=None, reply_to=None, deadline=None):
    # version, kind, id, sender, timestamp, correlation_id, reply_to, thread_id,
    # deadline, hops, trace_id, parent_id, content_type
    return msgpack.packb(
        [
            1,
            kind,
            mid,
            "raw",
            time.time(),
            correlation_id,
            reply_to,
            None,
            deadline,
            0,
            mid,
            None,
            None,
        ]
    )


def publish(pub, topic, kind, data, **fields):
    mid = fields.pop("mid", None) or new_id()
    pub.send_multipart([topic.encode(), header(kind, mid, **fields), msgpack.packb(data)])
    return mid


def receive(sub, timeout):
    if not sub.poll(int(timeout * 1000)):
        return None
    frames = sub.recv_multipart()
    if len(frames) != 3:
        return None
    topic, head, payload = frames
    fields = msgpack.unpackb(head)
    if not isinstance(fields, list) or len(fields) < 13 or fields[0] != 1:
        return None
    return topic.decode(), fields, msgpack.unpackb(payload)


def main():
    control = sys.argv[1]
    ctx = zmq.Context()
    dealer = curve(ctx.socket(zmq.DEALER))
    dealer.connect(control)
    dealer.send_multipart([b"HELLO", msgpack.packb({"version": 1, "name": "raw"})])
    if not dealer.poll(5000):
        sys.exit("no HELLO reply")
    command, body = dealer.recv_multipart()
    hello = msgpack.unpackb(body)
    assert command == b"HELLO", hello

    pub = curve(ctx.socket(zmq.PUB))
    pub.connect(hello["pub"])
    sub = curve(ctx.socket(zmq.SUB))
    sub.connect(hello["sub"])
    me = f"{hello['identity']}.{PREFIX.hex()}"  # inbox and probes: under its identity
    inbox = f"$inbox.{me}"
    sub.subscribe(b"pong.")
    sub.subscribe(inbox.encode())
    probe_topic = f"$probe.{me}.1"
    sub.subscribe(probe_topic.encode())

    # Confirm the link: probe until one comes back.
    probe_id = new_id()
    interval, deadline, confirmed = 0.002, time.monotonic() + 10, False
    while not confirmed and time.monotonic() < deadline:
        publish(pub, probe_topic, REPLY, None, mid=new_id(), correlation_id=probe_id)
        got = receive(sub, interval)
        while got is not None and not confirmed:
            confirmed = got[0] == probe_topic and got[1][5] == probe_id
            got = None if confirmed else receive(sub, 0)
        interval = min(interval * 2, 0.1)
    if not confirmed:
        sys.exit("link not confirmed")
    sub.unsubscribe(probe_topic.encode())

    publish(pub, "raw.said", EVENT, {"hi": 1})
    request_id = publish(
        pub, "ping.raw", REQUEST, {"from": "raw"}, reply_to=inbox, deadline=time.time() + 5
    )
    reply = pong = None
    end = time.monotonic() + 10
    while (reply is None or pong is None) and time.monotonic() < end:
        got = receive(sub, 0.5)
        if got is None:
            continue
        topic, fields, data = got
        if fields[1] in (REPLY, ERROR) and fields[5] == request_id:
            reply = {"kind": fields[1], "data": data, "sender": fields[3]}
        elif topic == "pong.raw" and fields[1] == EVENT:
            pong = {"data": data, "sender": fields[3]}
    print(json.dumps({"hello": hello, "reply": reply, "pong": pong}))
    ctx.destroy(linger=1000)


if __name__ == "__main__":
    main()
