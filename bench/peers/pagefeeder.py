"""HTTP benchmark client for aiengine: page paths in as lines, bodies back as lines.

Connects to a duplex ``text-messages`` listener whose ``topic-in`` is the
http channel's ``topic-out`` and whose ``topic-out`` is the channel's
``topic-in``; writes ``--count`` paths (``/page/<i mod pages>``), one per
line, keeping ``--window`` of them ahead of the bodies that come back, one
per line (a bounded burst: the channel's queue is bounded too).  Event
``done``: ``rate`` (pages per second, first write to last body), ``pages``
and ``bytes`` (checked by the runner against the page size).
"""

from __future__ import annotations

import argparse

from twisted.internet import reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol

from bench.peers._common import Stall, addArguments, emit, now, serve, stop


class Feeder(Protocol):
    """Keeps ``window`` paths in flight (one more for each body) and counts bodies."""

    def __init__(self, count, pages, window, stall=10.0):
        self.count = count
        self.pages = pages
        self.window = window
        self.stall = Stall(stall,
                           lambda: f"{self.lines:,} of {self.count:,} bodies came")
        self.sent = 0
        self.lines = 0
        self.bytes = 0
        self.start = None
        self.finished = False

    def connectionMade(self):
        self.start = now()
        self.send(self.window)
        self.stall.progress()

    def send(self, n):
        n = min(n, self.count - self.sent)
        if n > 0:
            self.transport.write(b"".join(b"/page/%d\n" % (i % self.pages)
                                          for i in range(self.sent, self.sent + n)))
            self.sent += n

    def dataReceived(self, data):
        if self.finished:
            return
        bodies = data.count(b"\n")
        self.lines += bodies
        self.bytes += len(data)
        self.stall.progress()
        self.send(bodies)
        if self.lines >= self.count:
            self.finished = True
            self.stall.done()
            end = now()
            emit("done", pages=self.lines, bytes=self.bytes, seconds=end - self.start,
                 rate=self.count / (end - self.start), window=self.window)
            self.transport.loseConnection()

    def connectionLost(self, reason=None):
        self.stall.done()
        if not self.finished:
            emit("error", text=f"connection lost after {self.lines} bodies: "
                               f"{reason.getErrorMessage()}")
        stop()


def main(argv=None):
    """``python -m bench.peers.pagefeeder --port P --count N [--pages K]``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True, help="listener port")
    parser.add_argument("--count", type=int, required=True, help="pages to fetch")
    parser.add_argument("--pages", type=int, default=10, help="distinct pages")
    parser.add_argument("--window", type=int, default=500,
                        help="paths written ahead of the bodies received")
    addArguments(parser)
    args = parser.parse_args(argv)

    def failed(failure):
        emit("error", text=f"cannot connect: {failure.getErrorMessage()}")
        stop()

    def start():
        d = connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", args.port),
                            Feeder(args.count, args.pages, args.window, args.stall))
        d.addErrback(failed)

    reactor.callWhenRunning(start)
    serve({}, args.timeout)


if __name__ == "__main__":
    main()
