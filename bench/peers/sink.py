"""Relay sink: a server that counts the lines its clients send.

Events: ``listening`` (``port``), ``connected`` for each client, and
``done`` once ``--count`` lines have arrived: ``first`` and ``last`` (the
times of the first and the last read), ``rate`` (lines per second between
them, not counting the lines of the first read) and ``bytes``.
"""

from __future__ import annotations

import argparse

from twisted.internet import reactor
from twisted.internet.protocol import Factory, Protocol

from bench.peers._common import Stall, addArguments, emit, now, serve


class SinkProtocol(Protocol):
    """Counts newlines; all clients add to one count."""

    def connectionMade(self):
        emit("connected", t=now())

    def dataReceived(self, data):
        self.factory.received(data)


class SinkFactory(Factory):
    """The shared count and its timing."""

    protocol = SinkProtocol
    noisy = False

    def __init__(self, count, stall=10.0):
        self.count = count
        self.stall = Stall(stall, lambda: f"{self.lines:,} of {self.count:,} lines came")
        self.lines = 0
        self.bytes = 0
        self.first = None
        self.firstLines = 0
        self.done = False

    def received(self, data):
        t = now()
        self.lines += data.count(b"\n")
        self.bytes += len(data)
        if self.first is None:
            self.first = t
            self.firstLines = self.lines
        if self.done:
            return
        self.stall.progress()
        if self.lines >= self.count:
            self.done = True
            self.stall.done()
            elapsed = t - self.first
            counted = self.lines - self.firstLines
            emit("done", lines=self.lines, bytes=self.bytes, first=self.first, last=t,
                 rate=counted / elapsed if elapsed > 0 else None)


def main(argv=None):
    """``python -m bench.peers.sink --count N``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, required=True, help="lines to wait for")
    addArguments(parser)
    args = parser.parse_args(argv)
    port = reactor.listenTCP(0, SinkFactory(args.count, args.stall), interface="127.0.0.1")
    emit("listening", port=port.getHost().port)
    serve({}, args.timeout)


if __name__ == "__main__":
    main()
