"""HTTP: pages per second through an ``http`` channel, against treq.

A local server (``bench.peers.httpserver``) serves 1 KiB pages.  aiengine:
a client (``bench.peers.pagefeeder``) writes page paths as lines into a
duplex ``text-messages`` listener whose ``topic-in`` is the ``http``
channel's ``topic-out``, keeping 500 ahead of the bodies it has received;
the channel requests them (pipelined on its one persistent connection)
and publishes the bodies on its ``topic-in``, which is the listener's
``topic-out``, so each body comes back to the client as a line.
Baseline: treq (``bench.peers.treqclient``) fetching the same pages from
the same server with a persistent connection pool and 10 requests in
flight.  Figure: aiengine's pages/s over treq's.
"""

from __future__ import annotations

from bench.harness import BenchError, Cleanup, Daemon, Peer, Row, best

NAME = "http"
TARGET = 1.0
PAGES = 10
SIZE = 1024
CONCURRENCY = 10
#: paths the aiengine client keeps ahead of the bodies it has received
WINDOW = 500


def fetches(settings) -> int:
    """Pages per run."""
    return 3000 if settings.quick else 10000


def daemonConfig(serverPort):
    """The daemon's listeners and channels: the page listener and the channel."""
    return (
        ("pages", {"port": 0, "direction": "duplex", "protocol": "text-messages",
                   "protocol.delimiter": r"\n", "topic-in": "web.get",
                   "topic-out": "web.body"}),
    ), (
        ("web", {"host": "127.0.0.1", "port": serverPort, "protocol": "http",
                 "redirect-in": "true", "redirect-out": "true",
                 "topic-out": "web.get", "topic-in": "web.body"}),
    )


def _daemon(settings, serverPort, profile=None):
    return Daemon(settings, "http", *daemonConfig(serverPort), profile=profile)


def _feed(settings, port, count) -> float:
    with Cleanup() as cleanup:
        feeder = cleanup.add(Peer(settings, "pagefeeder", "--port", port, "--count",
                                  count, "--pages", PAGES, "--window", WINDOW))
        done = feeder.expect("done", 60 + count / 100)
    if done["bytes"] != count * (SIZE + 1):
        raise BenchError(f"http: got {done['bytes']} bytes for {count} pages of "
                         f"{SIZE} bytes")
    return done["rate"]


def _treq(settings, port, count) -> float:
    with Cleanup() as cleanup:
        client = cleanup.add(Peer(settings, "treqclient", "--port", port, "--count",
                                  count, "--pages", PAGES, "--concurrency",
                                  CONCURRENCY))
        done = client.expect("done", 60 + count / 100)
    if done["bytes"] != count * SIZE:
        raise BenchError(f"treq: got {done['bytes']} bytes for {count} pages")
    return done["rate"]


def run(settings) -> list:
    """One server and one daemon; aiengine and treq take turns."""
    count = fetches(settings)
    ours, theirs = [], []
    with Cleanup() as cleanup:
        server = cleanup.add(Peer(settings, "httpserver", "--pages", PAGES,
                                  "--size", SIZE))
        serverPort = server.expect("listening", 30)["port"]
        daemon = cleanup.add(_daemon(settings, serverPort))
        port = daemon.port("pages")
        daemon.waitConnected("web")
        for rep in range(settings.repetitions(3, 2)):
            ours.append(_feed(settings, port, count))
            theirs.append(_treq(settings, serverPort, count))
            settings.say(f"http {rep + 1}: aiengine {ours[-1]:,.0f} pages/s, "
                         f"treq {theirs[-1]:,.0f} pages/s")
    a, b = best(ours), best(theirs)
    ratio = a / b
    return [Row(NAME, f"pages/s ({count:,} x {SIZE} B)", a, b, "pages/s", ratio,
                f">= {TARGET}", ratio >= TARGET,
                note=(f"aiengine: {WINDOW} paths ahead, pipelined on one connection; "
                      f"treq: {CONCURRENCY} in flight on a persistent pool"),
                details={"aiengine": ours, "baseline": theirs})]


def profile(settings, path) -> None:
    """The feeder once against a daemon under cProfile."""
    with Cleanup() as cleanup:
        server = cleanup.add(Peer(settings, "httpserver", "--pages", PAGES,
                                  "--size", SIZE))
        serverPort = server.expect("listening", 30)["port"]
        daemon = cleanup.add(_daemon(settings, serverPort, profile=path))
        port = daemon.port("pages")
        daemon.waitConnected("web")
        _feed(settings, port, fetches(settings))
