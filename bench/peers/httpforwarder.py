"""HTTP via a bare Twisted program: the least a forwarder can do for ``httpvia``.

What aiengine's ``http`` channel behind a duplex listener does, and nothing
else: it connects to the server (``--upstream``), then listens; each line a
client writes is a page path, sent as the same ``GET`` the channel sends,
pipelined on the one connection; each response is parsed with httptools (as
the channel does) and its body goes back to the client as a line.  No
broker, no checks beyond the parser's, no limits, no logs.  Plain Twisted
transports (a buffered write each, sent on the next reactor turn) with
``TCP_NODELAY`` on both connections, as any Twisted program would have them.
Event: ``listening`` (``port``) once the server's connection is up.
"""

from __future__ import annotations

import argparse
from collections import deque

import httptools
from twisted.internet import reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.defer import inlineCallbacks
from twisted.internet.protocol import Factory, Protocol
from twisted.protocols.basic import LineOnlyReceiver

from bench.peers._common import addArguments, emit, serve, stop

_REQUEST = (b"GET %s HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nUser-Agent: aiengine/0.1.0\r\n"
            b"Accept: */*\r\n\r\n")


class Upstream(Protocol):
    """The server's connection: requests out, response bodies to whoever asked."""

    def __init__(self, port):
        self.port = port
        self.waiting = deque()  # the client connection of each request in flight
        self.body = []

    def connectionMade(self):
        self.transport.setTcpNoDelay(True)
        self.parser = httptools.HttpResponseParser(self)

    def request(self, client, path):
        """Ask for ``path``; its body goes to ``client``."""
        self.waiting.append(client)
        self.transport.write(_REQUEST % (path, self.port))

    def dataReceived(self, data):
        self.parser.feed_data(data)

    def on_body(self, data):
        self.body.append(data)

    def on_message_complete(self):
        body, self.body = b"".join(self.body), []
        client = self.waiting.popleft()
        if client.transport is not None:
            client.sendLine(body)


class Client(LineOnlyReceiver):
    """A client's connection: each line is a page path."""

    delimiter = b"\n"
    MAX_LENGTH = 65536

    def __init__(self, upstream):
        self.upstream = upstream

    def connectionMade(self):
        self.transport.setTcpNoDelay(True)

    def lineReceived(self, line):
        self.upstream.request(self, line.strip())


@inlineCallbacks
def start(port):
    """Connect to the server, then listen for clients."""
    try:
        upstream = yield connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port),
                                         Upstream(port))
    except Exception as e:
        emit("error", text=f"cannot connect to 127.0.0.1:{port}: {e}")
        stop()
        return
    listening = reactor.listenTCP(0, Factory.forProtocol(lambda: Client(upstream)),
                                  interface="127.0.0.1")
    emit("listening", port=listening.getHost().port)


def main(argv=None):
    """``python -m bench.peers.httpforwarder --upstream PORT``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--upstream", type=int, required=True, help="the server's port")
    addArguments(parser)
    args = parser.parse_args(argv)
    reactor.callWhenRunning(start, args.upstream)
    serve({}, args.timeout)


if __name__ == "__main__":
    main()
