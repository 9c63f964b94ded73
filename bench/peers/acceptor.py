"""A server that accepts connections and holds them, counting; it can stop and come back.

Events: ``listening`` (``port``, ``t``), and ``reached`` when ``--target``
connections are open at once (``t``; ``first``, the time of the phase's first
accept; with ``--times``, ``accepts``: every accept time of the phase).
Commands on stdin:

``drop``
    stop listening and close every connection (``dropped``, with ``t``);
``listen``
    listen again on the same port: a new phase, whose ``reached`` comes
    when the target is open again;
``stats``
    report ``open`` and ``accepted`` (``stats``).

The listen backlog is large (``--backlog``) so that thousands of clients
connecting at once are not slowed down by SYN retries.
"""

from __future__ import annotations

import argparse

from twisted.internet import reactor
from twisted.internet.protocol import Factory, Protocol

from bench.peers._common import addArguments, emit, now, raiseFileLimit, serve


class Held(Protocol):
    """An accepted connection that reads and ignores whatever comes."""

    def connectionMade(self):
        self.factory.opened(self)

    def connectionLost(self, reason=None):
        self.factory.closed(self)


class AcceptorFactory(Factory):
    """Counts open connections per phase (a phase starts with each ``listen``)."""

    protocol = Held
    noisy = False

    def __init__(self, target, times):
        self.target = target
        self.times = times
        self.open = set()
        self.accepted = 0
        self.newPhase()

    def newPhase(self):
        self.reached = False
        self.accepts = []

    def opened(self, protocol):
        self.open.add(protocol)
        self.accepted += 1
        t = now()
        self.accepts.append(t)
        if not self.reached and self.target and len(self.open) >= self.target:
            self.reached = True
            fields = {"t": t, "first": self.accepts[0], "open": len(self.open)}
            if self.times:
                fields["accepts"] = self.accepts
            emit("reached", **fields)

    def closed(self, protocol):
        self.open.discard(protocol)


class Acceptor:
    """The listening port and the commands."""

    def __init__(self, factory, port, backlog):
        self.factory = factory
        self.portNumber = port
        self.backlog = backlog
        self.port = None

    def listen(self):
        if self.port is not None:
            return
        self.factory.newPhase()
        # Twisted sets SO_REUSEADDR, so the port can be taken again at once.
        self.port = reactor.listenTCP(self.portNumber, self.factory,
                                      backlog=self.backlog, interface="127.0.0.1")
        self.portNumber = self.port.getHost().port
        emit("listening", port=self.portNumber, t=now())

    def drop(self):
        if self.port is not None:
            self.port.stopListening()
            self.port = None
        for protocol in list(self.factory.open):
            protocol.transport.loseConnection()
        emit("dropped", t=now(), closing=len(self.factory.open))

    def stats(self):
        emit("stats", open=len(self.factory.open), accepted=self.factory.accepted,
             t=now())


def main(argv=None):
    """``python -m bench.peers.acceptor [--port P] [--target N] [--times]``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0, help="port (default: any free)")
    parser.add_argument("--target", type=int, default=0,
                        help="report 'reached' when this many are open")
    parser.add_argument("--times", action="store_true",
                        help="include every accept time in 'reached'")
    parser.add_argument("--backlog", type=int, default=65535,
                        help="listen backlog (the kernel caps it at somaxconn)")
    addArguments(parser)
    args = parser.parse_args(argv)
    limit = raiseFileLimit()
    acceptor = Acceptor(AcceptorFactory(args.target, args.times), args.port, args.backlog)
    emit("limits", nofile=limit)
    acceptor.listen()
    serve({"drop": acceptor.drop, "listen": acceptor.listen, "stats": acceptor.stats},
          args.timeout)


if __name__ == "__main__":
    main()
