"""Relay baseline: connect to the source and the sink and forward each line.

The least a Twisted program can do for the relay: a ``LineOnlyReceiver``
reads the source's lines and ``sendLine`` writes each to the sink.  Event:
``connected`` once both connections are up.
"""

from __future__ import annotations

import argparse

from twisted.internet import reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.defer import inlineCallbacks
from twisted.protocols.basic import LineOnlyReceiver

from bench.peers._common import addArguments, emit, now, serve, stop


class ToSink(LineOnlyReceiver):
    """The sink side: only writes."""

    delimiter = b"\n"


class FromSource(LineOnlyReceiver):
    """The source side: every line goes to the sink."""

    delimiter = b"\n"
    MAX_LENGTH = 1000000

    def __init__(self, sink):
        self.sink = sink

    def lineReceived(self, line):
        self.sink.sendLine(line)


@inlineCallbacks
def connect(sourcePort, sinkPort):
    """Sink first, then source (whose lines need somewhere to go)."""
    try:
        sink = yield connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", sinkPort),
                                     ToSink())
        yield connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", sourcePort),
                              FromSource(sink))
    except Exception as e:
        emit("error", text=f"cannot connect: {e}")
        stop()
        return
    emit("connected", t=now())


def main(argv=None):
    """``python -m bench.peers.forwarder --source PORT --sink PORT``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=int, required=True, help="source port")
    parser.add_argument("--sink", type=int, required=True, help="sink port")
    addArguments(parser)
    args = parser.parse_args(argv)
    reactor.callWhenRunning(connect, args.source, args.sink)
    serve({}, args.timeout)


if __name__ == "__main__":
    main()
