"""HTTP benchmark baseline: treq fetching the pages over a persistent connection pool.

``--concurrency`` requests are kept in flight over as many persistent
connections (one ``HTTPConnectionPool``; treq does not pipeline).  A first
round of one request per connection opens the connections and is not timed,
as aiengine's channel is connected before its run starts.  Event ``done``:
``rate`` (pages per second), ``pages``, ``bytes``.
"""

from __future__ import annotations

import argparse

from twisted.internet import reactor
from twisted.internet.defer import DeferredList, inlineCallbacks
from twisted.web.client import Agent, HTTPConnectionPool
from treq.client import HTTPClient

from bench.peers._common import addArguments, emit, now, serve, stop


class Fetcher:
    """Hands out page numbers to the concurrent workers and counts the bodies."""

    def __init__(self, client, port, count, pages):
        self.client = client
        self.base = "http://127.0.0.1:%d/page/" % port
        self.count = count
        self.pages = pages
        self.next = 0
        self.done = 0
        self.bytes = 0

    @inlineCallbacks
    def fetch(self, i):
        response = yield self.client.get(self.base + str(i % self.pages))
        body = yield response.content()
        if response.code != 200:
            raise RuntimeError(f"status {response.code} for page {i}")
        return body

    @inlineCallbacks
    def worker(self):
        while self.next < self.count:
            i = self.next
            self.next += 1
            body = yield self.fetch(i)
            self.done += 1
            self.bytes += len(body)


@inlineCallbacks
def run(port, count, pages, concurrency):
    """Warm the pool up, then time ``count`` fetches."""
    pool = HTTPConnectionPool(reactor, persistent=True)
    pool.maxPersistentPerHost = concurrency
    pool.retryAutomatically = False
    client = HTTPClient(Agent(reactor, pool=pool))
    try:
        warm = Fetcher(client, port, concurrency, pages)
        yield DeferredList([warm.fetch(i) for i in range(concurrency)],
                           fireOnOneErrback=True, consumeErrors=True)
        fetcher = Fetcher(client, port, count, pages)
        start = now()
        yield DeferredList([fetcher.worker() for _ in range(concurrency)],
                           fireOnOneErrback=True, consumeErrors=True)
        end = now()
        emit("done", pages=fetcher.done, bytes=fetcher.bytes, seconds=end - start,
             rate=fetcher.done / (end - start), concurrency=concurrency)
    except Exception as e:
        failure = getattr(e, "subFailure", None)
        emit("error", text=str(failure.value if failure is not None else e))
    yield pool.closeCachedConnections()
    stop()


def main(argv=None):
    """``python -m bench.peers.treqclient --port P --count N``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True, help="server port")
    parser.add_argument("--count", type=int, required=True, help="pages to fetch")
    parser.add_argument("--pages", type=int, default=10, help="distinct pages")
    parser.add_argument("--concurrency", type=int, default=10,
                        help="requests in flight, one per pooled connection")
    addArguments(parser)
    args = parser.parse_args(argv)
    reactor.callWhenRunning(run, args.port, args.count, args.pages, args.concurrency)
    serve({}, args.timeout)


if __name__ == "__main__":
    main()
