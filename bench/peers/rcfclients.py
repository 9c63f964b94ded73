"""Scale baseline: ``--count`` raw-Twisted ``ReconnectingClientFactory`` connections.

One factory per connection, all started in one loop, as aiengine starts its
channels.  Events: ``ready`` (``rss``, KiB, after the imports and before any
connection), ``connected`` (``t``, ``rss``) once all are up, ``failed``
(``reason``) for the first connection attempt that fails.
"""

from __future__ import annotations

import argparse

from twisted.internet import reactor
from twisted.internet.protocol import Protocol, ReconnectingClientFactory

from bench.peers._common import addArguments, emit, now, raiseFileLimit, rssKiB, serve


class Idle(Protocol):
    """A connection that just stays open."""

    def connectionMade(self):
        self.factory.counter.connected(self)

    def connectionLost(self, reason=None):
        self.factory.counter.lost(self)


class Counter:
    """How many of the connections are up."""

    def __init__(self, count):
        self.count = count
        self.up = 0
        self.reported = False
        self.failures = 0

    def connected(self, protocol):
        self.up += 1
        if not self.reported and self.up >= self.count:
            self.reported = True
            emit("connected", t=now(), up=self.up, rss=rssKiB())

    def lost(self, protocol):
        self.up -= 1

    def failed(self, reason):
        self.failures += 1
        if self.failures == 1:
            emit("failed", reason=reason.getErrorMessage())


class Client(ReconnectingClientFactory):
    """The usual reconnecting factory: the delay restarts on each connection."""

    protocol = Idle
    noisy = False
    maxDelay = 10

    def __init__(self, counter):
        self.counter = counter

    def buildProtocol(self, addr):
        self.resetDelay()
        return ReconnectingClientFactory.buildProtocol(self, addr)

    def clientConnectionFailed(self, connector, reason):
        self.counter.failed(reason)
        ReconnectingClientFactory.clientConnectionFailed(self, connector, reason)


def main(argv=None):
    """``python -m bench.peers.rcfclients --port P --count N``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True, help="server port")
    parser.add_argument("--count", type=int, required=True, help="connections")
    addArguments(parser)
    args = parser.parse_args(argv)
    limit = raiseFileLimit()
    emit("ready", rss=rssKiB(), nofile=limit, t=now())
    counter = Counter(args.count)

    def start():
        for _ in range(args.count):
            reactor.connectTCP("127.0.0.1", args.port, Client(counter), timeout=30)

    reactor.callWhenRunning(start)
    serve({}, args.timeout)


if __name__ == "__main__":
    main()
