"""Ping via a bare Twisted program: the least a console can do for ``ping``.

It listens; each request a client writes (ended with 0x01) is answered
with :func:`bench.peers.xmlloop.answer` (lxml parse, the
``<xmlcallresult>`` with its ``<pong/>``, serialised as the console does),
the answers to one read in one write.  No registry, sessions, checks,
limits or logs.  A plain Twisted transport with ``TCP_NODELAY``, as any
Twisted program would have it.  Event: ``listening`` (``port``).
"""

from __future__ import annotations

import argparse

from twisted.internet import reactor
from twisted.internet.protocol import Factory, Protocol

from bench.peers._common import addArguments, emit, serve
from bench.peers.xmlloop import answer


class Console(Protocol):
    """One client's connection."""

    def __init__(self):
        self.buffer = b""

    def connectionMade(self):
        self.transport.setTcpNoDelay(True)

    def dataReceived(self, data):
        *requests, self.buffer = (self.buffer + data).split(b"\x01")
        answers = [answer(request) for request in requests if request.strip()]
        if answers:
            self.transport.write(b"".join(answers))


def main(argv=None):
    """``python -m bench.peers.xmlconsole``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    addArguments(parser)
    args = parser.parse_args(argv)
    listening = reactor.listenTCP(0, Factory.forProtocol(Console), interface="127.0.0.1")
    reactor.callWhenRunning(emit, "listening", port=listening.getHost().port)
    serve({}, args.timeout)


if __name__ == "__main__":
    main()
