"""Reproducer: one malformed header block stops nats-py's read loop; the client goes deaf.

Needs only nats-py and a nats-server listening on a local port:

    nats-server -p 4222 &
    python repro_malformed_header.py nats://127.0.0.1:4222

A subscriber receives one message whose header block is exactly ``NATS/1.0`` (8 bytes, no
CRLF), published by another connection over a raw socket. nats-py raises an IndexError
while parsing the headers, its read loop logs "nats: encountered error" and ends, and the
connection stays open: every later message and every PONG is left unread. The client is
deaf until the stale-ping check fires (``ping_interval`` x (``max_outstanding_pings`` + 1),
120 s x 3 by default).

Exit status: 1 when the bug reproduces (the subscriber misses the valid messages sent after
the bad one), 0 when it does not, 2 on a set-up problem.
"""

from __future__ import annotations

import asyncio
import json
import socket
import sys
from importlib.metadata import version
from urllib.parse import urlparse

import nats

SUBJECT = "repro.malformed.header"
# HPUB <subject> <header bytes> <total bytes>: the header block is "NATS/1.0" with no
# CRLF after it, the payload is "xx". nats-server relays it unchanged as HMSG.
POISON = f"HPUB {SUBJECT} 8 10\r\nNATS/1.0xx\r\n".encode()


def raw_publish(host: str, port: int, frame: bytes) -> None:
    """Publish ``frame`` over a plain socket: read INFO, send CONNECT (headers on), the
    frame, and a PING; return once the server's PONG proves it processed the frame."""
    with socket.create_connection((host, port), timeout=5) as sock:
        stream = sock.makefile("rb")
        info = stream.readline()
        if not info.startswith(b"INFO "):
            raise RuntimeError(f"expected INFO from the server, got {info[:60]!r}")
        options = {"verbose": False, "pedantic": False, "headers": True}
        sock.sendall(b"CONNECT " + json.dumps(options).encode() + b"\r\n" + frame + b"PING\r\n")
        while True:
            line = stream.readline()
            if not line:
                raise RuntimeError("the server closed the raw connection")
            if line.startswith(b"-ERR"):
                raise RuntimeError(f"the server refused the frame: {line.strip().decode()}")
            if line.startswith(b"PONG"):
                return


async def main(url: str) -> int:
    parsed = urlparse(url)
    host, port = parsed.hostname or "127.0.0.1", parsed.port or 4222
    print(f"nats-py {version('nats-py')}, Python {sys.version.split()[0]}, server {url}")

    received: list[bytes] = []
    got = asyncio.Event()

    async def on_message(msg) -> None:
        received.append(msg.data)
        got.set()

    sub_nc = await nats.connect(url, name="repro-subscriber")
    pub_nc = await nats.connect(url, name="repro-publisher")
    try:
        await sub_nc.subscribe(SUBJECT, cb=on_message)
        # Two flushes: nats-py writes a flush's PING ahead of the still-buffered SUB, so
        # only the second PONG proves the server has the subscription.
        await sub_nc.flush()
        await sub_nc.flush()

        await pub_nc.publish(SUBJECT, b"before")
        await asyncio.wait_for(got.wait(), 5)
        print(f"server version {sub_nc._server_info.get('version')}; message before the bad one: received")

        await asyncio.to_thread(raw_publish, host, port, POISON)
        await asyncio.sleep(0.5)

        got.clear()
        for i in range(3):
            await pub_nc.publish(SUBJECT, f"after-{i}".encode())
        await pub_nc.flush()
        try:
            await asyncio.wait_for(got.wait(), 3)
        except TimeoutError:
            pass
        after = [data for data in received if data.startswith(b"after-")]
        reading = sub_nc._reading_task
        loop_state = "stopped" if reading is not None and reading.done() else "running"
        print(f"read loop: {loop_state}; connected: {sub_nc.is_connected}; "
              f"messages after the bad one received: {len(after)} of 3")
        if not after:
            print("BUG REPRODUCED: the subscriber is connected but deaf")
            return 1
        print("not reproduced: the subscriber still receives messages")
        return 0
    finally:
        await pub_nc.close()
        # close() may wait on the dead read loop's connection; bound it.
        try:
            await asyncio.wait_for(sub_nc.close(), 5)
        except TimeoutError:
            pass


if __name__ == "__main__":
    target = sys.argv[1] if len(sys.argv) > 1 else "nats://127.0.0.1:4222"
    try:
        sys.exit(asyncio.run(main(target)))
    except (OSError, RuntimeError, nats.errors.Error) as exc:
        print(f"set-up problem: {type(exc).__name__}: {exc}")
        sys.exit(2)
