"""Console benchmark client: pipeline ``--count`` ``Engine.ping`` calls on one connection.

Every call is written at once, each ended with 0x01 (the original console
client's framing); answers are counted by their 0x01 terminators.  Event
``done``: ``rate`` (calls per second, from the first write to the last
answer), ``answers`` and ``ok`` (how many said ``status="OK"``).
"""

from __future__ import annotations

import argparse

from twisted.internet import reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol

from bench.peers._common import Stall, addArguments, emit, now, serve, stop


def request(n: int) -> bytes:
    """The n-th call, as the benchmark and its baseline both use it."""
    return b'<xmlcall class="Engine" method="ping" requestId="REQ-%d"/>' % n


class Pipeliner(Protocol):
    """Writes every call, then counts the answers."""

    def __init__(self, count, stall=10.0):
        self.count = count
        self.stall = Stall(stall,
                           lambda: f"{self.answers:,} of {self.count:,} answers came")
        self.answers = 0
        self.chunks = []
        self.start = None

    def connectionMade(self):
        data = b"".join(request(n) + b"\x01" for n in range(1, self.count + 1))
        self.start = now()
        self.transport.write(data)
        self.stall.progress()

    def dataReceived(self, data):
        self.answers += data.count(b"\x01")
        self.chunks.append(data)
        self.stall.progress()
        if self.answers >= self.count:
            self.stall.done()
            end = now()
            ok = b"".join(self.chunks).count(b'status="OK"')
            emit("done", answers=self.answers, ok=ok, seconds=end - self.start,
                 rate=self.count / (end - self.start))
            self.transport.loseConnection()

    def connectionLost(self, reason=None):
        self.stall.done()
        if self.answers < self.count:
            emit("error", text=f"connection lost after {self.answers} answers: "
                               f"{reason.getErrorMessage()}")
        stop()


def main(argv=None):
    """``python -m bench.peers.consoleclient --port P --count N``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True, help="console port")
    parser.add_argument("--count", type=int, default=20000, help="calls")
    addArguments(parser)
    args = parser.parse_args(argv)

    def failed(failure):
        emit("error", text=f"cannot connect: {failure.getErrorMessage()}")
        stop()

    def start():
        d = connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", args.port),
                            Pipeliner(args.count, args.stall))
        d.addErrback(failed)

    reactor.callWhenRunning(start)
    serve({}, args.timeout)


if __name__ == "__main__":
    main()
