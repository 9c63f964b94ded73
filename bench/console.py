"""Console: 20,000 ``Engine.ping`` calls pipelined on one connection.

A client (``bench.peers.consoleclient``) writes every call at once, each
ended with 0x01, and reads all the answers.  Baseline: a loop in one process
(``bench.peers.xmlloop``) that parses the same request with lxml, builds the
``<xmlcallresult>`` and serialises it.  Figure: calls/s over the loop's rate.
"""

from __future__ import annotations

from bench.harness import BenchError, Cleanup, Daemon, Peer, Row, best

NAME = "console"
TARGET = 0.3


def daemonConfig():
    """The daemon's listeners and channels: none besides the console."""
    return (), ()


def calls(settings) -> int:
    """Calls per run."""
    return 5000 if settings.quick else 20000


def _client(settings, port, count) -> float:
    with Cleanup() as cleanup:
        client = cleanup.add(Peer(settings, "consoleclient", "--port", port,
                                  "--count", count))
        done = client.expect("done", 60 + count / 200)
    if done["ok"] != count:
        raise BenchError(f"console: {done['ok']} of {count} answers were OK")
    return done["rate"]


def _baseline(settings, count) -> float:
    with Cleanup() as cleanup:
        loop = cleanup.add(Peer(settings, "xmlloop", "--count", count))
        return loop.expect("done", 120)["rate"]


def run(settings) -> list:
    """One daemon; the client and the loop run a few times each, alternating."""
    count = calls(settings)
    ours, theirs = [], []
    with Cleanup() as cleanup:
        daemon = cleanup.add(Daemon(settings, "console", *daemonConfig()))
        port = daemon.port("console")
        for rep in range(settings.repetitions(5, 2)):
            ours.append(_client(settings, port, count))
            theirs.append(_baseline(settings, count))
            settings.say(f"console {rep + 1}: aiengine {ours[-1]:,.0f} calls/s, "
                         f"lxml loop {theirs[-1]:,.0f} calls/s")
    a, b = best(ours), best(theirs)
    ratio = a / b
    return [Row(NAME, f"pings/s ({count:,} pipelined)", a, b, "calls/s", ratio,
                f">= {TARGET}", ratio >= TARGET,
                details={"aiengine": ours, "baseline": theirs})]


def profile(settings, path) -> None:
    """The client once against a daemon under cProfile."""
    with Cleanup() as cleanup:
        daemon = cleanup.add(Daemon(settings, "console", *daemonConfig(), profile=path))
        _client(settings, daemon.port("console"), calls(settings))
