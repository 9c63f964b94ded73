"""HTTP benchmark server: a minimal, fast HTTP/1.1 server of fixed pages.

``GET /page/<k>`` (``k`` below ``--pages``) answers 200 with a body of
exactly ``--size`` bytes that holds no newline; anything else gets 404.
Connections are persistent and pipelined requests are answered in order,
all the answers to one read in one write, so the server costs little next
to the clients being compared.  Event: ``listening`` (``port``).
"""

from __future__ import annotations

import argparse

from twisted.internet import reactor
from twisted.internet.protocol import Factory, Protocol

from bench.peers._common import addArguments, emit, serve

NOT_FOUND = (b"HTTP/1.1 404 Not Found\r\nContent-Type: text/plain\r\n"
             b"Content-Length: 9\r\n\r\nnot found")


def body(k: int, size: int) -> bytes:
    """The body of page ``k``: ``size`` bytes, no newline."""
    head = b"page %d " % k
    return (head + b"abcdefghijklmnopqrstuvwxyz" * (size // 26 + 1))[:size]


def response(k: int, size: int) -> bytes:
    """The whole response for page ``k``."""
    return (b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n"
            b"Content-Length: %d\r\n\r\n" % size) + body(k, size)


class PageServer(Protocol):
    """Cuts requests at the blank line (a GET has no body) and answers each."""

    def __init__(self):
        self.buffer = b""

    def dataReceived(self, data):
        buffer = self.buffer + data
        pages = self.factory.pages
        out = []
        start = 0
        while True:
            end = buffer.find(b"\r\n\r\n", start)
            if end < 0:
                break
            line = buffer[start:buffer.find(b"\r\n", start)]
            parts = line.split(b" ")
            out.append(pages.get(parts[1], NOT_FOUND) if len(parts) == 3 else NOT_FOUND)
            start = end + 4
        self.buffer = buffer[start:]
        if out:
            self.factory.requests += len(out)
            self.transport.write(b"".join(out))


class PageFactory(Factory):
    """The pages, built once."""

    protocol = PageServer
    noisy = False

    def __init__(self, pages, size):
        self.pages = {b"/page/%d" % k: response(k, size) for k in range(pages)}
        self.requests = 0


def main(argv=None):
    """``python -m bench.peers.httpserver [--pages K] [--size S]``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pages", type=int, default=10, help="distinct pages")
    parser.add_argument("--size", type=int, default=1024, help="body size in bytes")
    addArguments(parser)
    args = parser.parse_args(argv)
    port = reactor.listenTCP(0, PageFactory(args.pages, args.size), backlog=1024,
                             interface="127.0.0.1")
    emit("listening", port=port.getHost().port)
    serve({}, args.timeout)


if __name__ == "__main__":
    main()
