"""Relay source: a server that sends ``--count`` 100-byte lines to its first client.

Events: ``listening`` (``port``), ``connected`` when the first client
arrives, ``sent`` (``t``) when the last line is handed to the kernel.  The
lines go out only after the command ``go`` on stdin, so the runner can
first make sure the receiving side is connected too.  Later clients get
nothing (a reconnecting channel must not get the lines twice).
"""

from __future__ import annotations

import argparse

from twisted.internet import reactor
from twisted.internet.interfaces import IPullProducer
from twisted.internet.protocol import Factory, Protocol
from zope.interface import implementer

from bench.peers._common import addArguments, emit, now, serve

#: every line is this long, its newline included
LINE_SIZE = 100
#: lines written per resumeProducing: about 64 KiB
CHUNK_LINES = 650


def makeLines(start: int, count: int) -> bytes:
    """Lines ``start`` to ``start + count - 1``: a 10-digit number, filler, newline."""
    filler = b"." * (LINE_SIZE - 11)
    return b"".join(b"%010d%s\n" % (i, filler) for i in range(start, start + count))


@implementer(IPullProducer)
class LineProducer:
    """Writes the lines a chunk at a time, whenever the transport has room.

    The chunks are made in advance, so that the source is never what limits
    the rate.
    """

    def __init__(self, transport, chunks, count):
        self.transport = transport
        self.chunks = iter(chunks)
        self.count = count

    def resumeProducing(self):
        chunk = next(self.chunks, None)
        if chunk is not None:
            self.transport.write(chunk)
        else:
            self.transport.unregisterProducer()
            emit("sent", lines=self.count, t=now())

    def stopProducing(self):
        self.chunks = iter(())


class SourceProtocol(Protocol):
    """The first client is the one that gets the lines."""

    def connectionMade(self):
        factory = self.factory
        if factory.client is None:
            factory.client = self
            emit("connected", t=now())
            if factory.go:
                self.start()
        else:
            emit("extra-connection", t=now())

    def start(self):
        factory = self.factory
        self.transport.registerProducer(
            LineProducer(self.transport, factory.chunks, factory.count), False)


class SourceFactory(Factory):
    """Holds the line count, the first client and whether ``go`` came."""

    protocol = SourceProtocol
    noisy = False

    def __init__(self, count):
        self.count = count
        self.chunks = [makeLines(start, min(CHUNK_LINES, count - start))
                       for start in range(0, count, CHUNK_LINES)]
        self.client = None
        self.go = False

    def start(self):
        """The ``go`` command: send now, or as soon as the first client connects."""
        if self.go:
            return
        self.go = True
        if self.client is not None:
            self.client.start()


def main(argv=None):
    """``python -m bench.peers.source --count N``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, required=True, help="lines to send")
    addArguments(parser)
    args = parser.parse_args(argv)
    factory = SourceFactory(args.count)
    port = reactor.listenTCP(0, factory, interface="127.0.0.1")
    emit("listening", port=port.getHost().port)
    serve({"go": factory.start}, args.timeout)


if __name__ == "__main__":
    main()
