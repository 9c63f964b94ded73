"""Relay: lines from a source server through two channels to a sink server.

Channel ``in`` (``text-messages``, ``\\n``, redirect-in) publishes the
source's 100-byte lines on a topic; channel ``out`` (redirect-out) writes
them to the sink, which counts them.  Baseline: a raw-Twisted process
(``bench.peers.forwarder``) connected to the same kind of source and sink,
forwarding each line with a ``LineOnlyReceiver``.  Figure: aiengine's
lines/s over the baseline's.
"""

from __future__ import annotations

from bench.harness import Cleanup, Daemon, Peer, Row, best

NAME = "relay"
TARGET = 0.5
TOPIC = "relay.lines"


def lines(settings) -> int:
    """Lines per run: one to a few seconds of work."""
    return 50000 if settings.quick else 200000


def _peers(settings, cleanup, count):
    sink = cleanup.add(Peer(settings, "sink", "--count", count))
    source = cleanup.add(Peer(settings, "source", "--count", count))
    return source, source.expect("listening", 30)["port"], sink, \
        sink.expect("listening", 30)["port"]


def _finish(settings, source, sink, count):
    source.expect("connected", 60)
    sink.expect("connected", 60)
    source.send("go")
    done = sink.expect("done", 60 + count / 2000)
    return done["rate"]


def daemonConfig(sourcePort, sinkPort):
    """The daemon's listeners (none besides the console) and channels."""
    common = {"host": "127.0.0.1", "protocol": "text-messages",
              "protocol.delimiter": r"\n"}
    return (), (
        ("in", dict(common, port=sourcePort, **{"redirect-in": "true",
                                               "topic-in": TOPIC})),
        ("out", dict(common, port=sinkPort, **{"redirect-out": "true",
                                              "topic-out": TOPIC})),
    )


def runAiengine(settings, count, profile=None) -> float:
    """One aiengine run: lines per second at the sink."""
    with Cleanup() as cleanup:
        source, sourcePort, sink, sinkPort = _peers(settings, cleanup, count)
        cleanup.add(Daemon(settings, "relay", *daemonConfig(sourcePort, sinkPort),
                           profile=profile))
        return _finish(settings, source, sink, count)


def runBaseline(settings, count) -> float:
    """One baseline run: lines per second at the sink."""
    with Cleanup() as cleanup:
        source, sourcePort, sink, sinkPort = _peers(settings, cleanup, count)
        forwarder = cleanup.add(Peer(settings, "forwarder", "--source", sourcePort,
                                     "--sink", sinkPort))
        forwarder.expect("connected", 30)
        return _finish(settings, source, sink, count)


def run(settings) -> list:
    """Best of a few runs each; aiengine and baseline alternate."""
    count = lines(settings)
    ours, theirs = [], []
    for rep in range(settings.repetitions(5, 2)):
        ours.append(runAiengine(settings, count))
        theirs.append(runBaseline(settings, count))
        settings.say(f"relay {rep + 1}: aiengine {ours[-1]:,.0f} lines/s, "
                     f"baseline {theirs[-1]:,.0f} lines/s")
    a, b = best(ours), best(theirs)
    ratio = a / b
    return [Row(NAME, f"lines/s ({count:,} x 100 B)", a, b, "lines/s", ratio,
                f">= {TARGET}", ratio >= TARGET,
                details={"aiengine": ours, "baseline": theirs})]


def profile(settings, path) -> None:
    """One aiengine run with the daemon under cProfile."""
    runAiengine(settings, lines(settings), profile=path)
