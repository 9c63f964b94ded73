"""Pub/sub latency client: one publisher at a fixed rate, or one subscriber timing them.

One program for aiengine's hub, Redis and MQTT (:mod:`bench.peers.wire`),
with plain blocking sockets (no reactor between the clock and the socket).

``--role pub``: connects (MQTT: ``CONNECT``), reports ``connected``, waits
for ``go`` on stdin, then sends ``--count`` messages at ``--rate`` per second,
each in its own ``send`` and carrying its send time (``time.monotonic()``,
one clock for every process on Linux, taken just before the ``send``).
Message ``i`` is due at ``start + i / rate``; the publisher sleeps until then
(with the kernel's timer slack at 1 us) or, when late, sends at once.
Redis's answers to ``PUBLISH`` are read by a thread.  Event ``sent``:
``rate`` achieved, ``late`` (the latest any message left after its due time).
Then it waits for its stdin to close.

``--role sub``: subscribes, reports ``ready`` (``port``: its local port), and
takes one ``time.monotonic()`` per read: each message of the read is
``now - send time`` old.  The first ``--skip`` messages are a warm-up and
are not counted.  Event ``done``: ``received``, ``lost`` (messages that did
not come within ``--stall`` seconds of the last one), and the latencies in
seconds: ``p50``, ``p90``, ``p99``, ``p999``, ``max``, ``mean``.
"""

from __future__ import annotations

import argparse
import ctypes
import socket
import sys
import threading
import time

from bench.peers import wire
from bench.peers._common import emit

PR_SET_TIMERSLACK = 29


def preciseSleep() -> None:
    """Make ``time.sleep`` wake within microseconds, not 50 us late (Linux)."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_TIMERSLACK, 1, 0, 0, 0)
    except (OSError, AttributeError):
        pass


def connect(fmt: str, port: int, clientId: str) -> tuple:
    """A connected socket (MQTT's CONNACK received) and what came after it."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    greeting = wire.hello(fmt, clientId)
    buffer = b""
    if greeting:
        sock.sendall(greeting)
        while True:
            used = wire.helloDone(fmt, buffer)
            if used is not None:
                return sock, buffer[used:]
            buffer += _recv(sock)
    return sock, buffer


def _recv(sock) -> bytes:
    data = sock.recv(65536)
    if not data:
        raise ConnectionError("closed by the server")
    return data


def percentile(sorted_values, q: float) -> float:
    """The ``q`` quantile (0..1) of sorted values, nearest rank."""
    if not sorted_values:
        return None
    i = min(len(sorted_values) - 1, max(0, int(round(q * len(sorted_values))) - 1))
    return sorted_values[i]


def summary(latencies) -> dict:
    """p50, p90, p99, p99.9, max and mean of latencies in seconds."""
    values = sorted(latencies)
    if not values:
        return {}
    return {"p50": percentile(values, 0.5), "p90": percentile(values, 0.9),
            "p99": percentile(values, 0.99), "p999": percentile(values, 0.999),
            "max": values[-1], "mean": sum(values) / len(values)}


def publisher(args) -> None:
    sock, _ = connect(args.format, args.port, "bench-latency-pub")
    if wire.replyMarker(args.format):
        def drain():
            try:
                while sock.recv(65536):
                    pass
            except OSError:
                pass
        threading.Thread(target=drain, daemon=True).start()
    emit("connected", port=sock.getsockname()[1])
    if sys.stdin.readline().strip() != "go":
        return
    preciseSleep()
    interval = 1.0 / args.rate
    topic = args.topic
    fmt = args.format
    monotonic, sleep, send = time.monotonic, time.sleep, sock.sendall
    start = monotonic() + 0.01
    late = 0.0
    for i in range(args.count):
        due = start + i * interval
        t = monotonic()
        if t < due:
            sleep(due - t)
            t = monotonic()
        late = max(late, t - due)
        send(wire.publish(fmt, topic, wire.stampedBody(t)))
    end = monotonic()
    emit("sent", count=args.count, rate=(args.count - 1) / (end - start), late=late)
    sys.stdin.read()  # until the runner closes it


def subscriber(args) -> None:
    fmt = args.format
    sock, buffer = connect(fmt, args.port, "bench-latency-sub")
    request = wire.subscribe(fmt, args.topic)
    if request:
        sock.sendall(request)
        while True:
            used = wire.subscribed(fmt, buffer, args.topic)
            if used is not None:
                buffer = buffer[used:]
                break
            buffer += _recv(sock)
    emit("ready", port=sock.getsockname()[1])
    decoder = wire.Decoder(fmt)
    monotonic = time.monotonic
    stamp = wire.stampOf
    latencies = []
    received = 0
    sock.settimeout(args.stall)
    data = buffer
    while received < args.count:
        if not data:
            try:
                data = sock.recv(65536)
            except socket.timeout:
                break
            if not data:
                break
        t = monotonic()
        for message in decoder.feed(data):
            received += 1
            if received > args.skip:
                latencies.append(t - stamp(message))
        data = b""
    emit("done", received=received, lost=args.count - received,
         counted=len(latencies), **summary(latencies))


def main(argv=None):
    """``python -m bench.peers.latencyclient --role pub|sub --format F --port P ...``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--role", choices=("pub", "sub"), required=True)
    parser.add_argument("--format", choices=wire.FORMATS, required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--topic", default="bench")
    parser.add_argument("--count", type=int, required=True, help="messages")
    parser.add_argument("--rate", type=float, default=5000.0, help="messages per second")
    parser.add_argument("--skip", type=int, default=0, help="warm-up messages not timed")
    parser.add_argument("--stall", type=float, default=5.0,
                        help="seconds without a message after which the rest is lost")
    args = parser.parse_args(argv)
    try:
        (publisher if args.role == "pub" else subscriber)(args)
    except (OSError, ValueError) as e:
        emit("error", text=f"{args.role}: {type(e).__name__}: {e}")


if __name__ == "__main__":
    main()
