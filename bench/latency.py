"""Latency: one-way delay of messages through aiengine's hub, against Redis pub/sub.

The hub of :mod:`bench.pubsub` (an ``in`` listener feeding an ``out``
listener), one publisher and one subscriber
(``bench.peers.latencyclient``, blocking sockets, the same program for
every server).  The publisher sends 5,000 messages a second, each in its own
``send`` and carrying its send time (``time.monotonic()``, one clock for
every process); the subscriber takes the time of each read.  The first
0.2 s are a warm-up.  Figures: p50 and p99 of the one-way latency, the
median of 3 runs, over Redis's (``PUBLISH``/``SUBSCRIBE``); mosquitto (MQTT,
QoS 0) for information.  Repetitions alternate aiengine and the servers.
"""

from __future__ import annotations

from bench import pubsub, servers
from bench.harness import BenchError, Cleanup, Daemon, Peer, Row, describeSpread, spread

NAME = "latency"
RATE = 5000
#: (peer kind, wire format, name in the table, targets: (p50, p99) or None)
PEERS = (("redis", "resp", "Redis", (2.0, 3.0)),
         ("mosquitto", "mqtt", "mosquitto", None))
TOPIC = pubsub.TOPIC


def note(q, ours, theirs, label) -> str:
    """A latency row's note: both sides' min/median/max of percentile ``q``
    in us, and for p99 the worst single message and the slowest pace."""
    text = (describeSpread("aiengine min/median/max", [r[q] * 1e6 for r in ours],
                           "{:.0f}")
            + " us; " + describeSpread(label, [r[q] * 1e6 for r in theirs], "{:.0f}")
            + " us")
    if q == "p99":
        text += (f"; max aiengine {max(r['max'] for r in ours) * 1e3:.2f} ms, "
                 f"{label} {max(r['max'] for r in theirs) * 1e3:.2f} ms; "
                 f"publisher pace {min(r['rate'] for r in ours + theirs):,.0f}"
                 f" msg/s at least")
    return text


def seconds(settings) -> float:
    """Seconds of sending per run, after the warm-up."""
    return 1.0 if settings.quick else 3.0


def runOnce(settings, target, count, skip) -> dict:
    """One run: the subscriber's latency summary and the publisher's pace."""
    with Cleanup() as cleanup:
        sub = cleanup.add(Peer(settings, "latencyclient", "--role", "sub", "--format",
                               target.fmt, "--port", target.subPort, "--topic", TOPIC,
                               "--count", count, "--skip", skip))
        port = sub.expect("ready", 30)["port"]
        if target.daemon is not None:
            target.daemon.waitLog(rf"hub-out\.\d+ connected from 127\.0\.0\.1:{port}\b",
                                  30)
        pub = cleanup.add(Peer(settings, "latencyclient", "--role", "pub", "--format",
                               target.fmt, "--port", target.pubPort, "--topic", TOPIC,
                               "--count", count, "--rate", RATE))
        pub.expect("connected", 30)
        pub.send("go")
        done = sub.expect("done", 60 + count / RATE)
        sent = pub.expect("sent", 30)
    if done["lost"]:
        raise BenchError(f"latency ({target.name}): {done['lost']} of {count} messages "
                         f"did not arrive")
    return dict(done, rate=sent["rate"], late=sent["late"])


def run(settings) -> list:
    """One daemon and one server of each kind; repetitions alternate."""
    reps = settings.repetitions(3, 1)
    skip = int(RATE * 0.2)
    count = skip + int(RATE * seconds(settings))
    rows = []
    with Cleanup() as cleanup:
        daemon = cleanup.add(Daemon(settings, "latency", *pubsub.daemonConfig()))
        targets = [pubsub.Target("aiengine", "lines", daemon.port("hub-in"),
                                 daemon.port("hub-out"), daemon)]
        skipped = {}
        for kind, fmt, label, _ in PEERS:
            try:
                server = cleanup.add(servers.start(kind, settings))
            except servers.Unavailable as e:
                skipped[kind] = str(e)
                continue
            targets.append(pubsub.Target(kind, fmt, server.port, server.port))
        runs = {t.name: [] for t in targets}
        for rep in range(reps):
            for target in targets:
                runs[target.name].append(runOnce(settings, target, count, skip))
            settings.say(f"latency {rep + 1}: " + ", ".join(
                f"{name} p50 {r[-1]['p50'] * 1e6:.0f} us p99 {r[-1]['p99'] * 1e6:.0f} us"
                for name, r in runs.items()))
    ours = runs["aiengine"]
    measure = f"{RATE:,} msg/s, 1 -> 1, one-way"
    for kind, fmt, label, targets in PEERS:
        for i, q in enumerate(("p50", "p99")):
            a = spread([r[q] * 1e6 for r in ours])[1]
            target = f"<= {targets[i]}" if targets else "info"
            if kind in skipped:
                rows.append(Row(NAME, f"{q} ({measure}) vs {label}", a, None, "us",
                                target=target, skipped=skipped[kind]))
                continue
            theirs = runs[kind]
            b = spread([r[q] * 1e6 for r in theirs])[1]
            ratio = a / b if a and b else None
            passed = ratio <= targets[i] if (targets and ratio) else None
            rows.append(Row(NAME, f"{q} ({measure}) vs {label}", a, b, "us", ratio,
                            target, passed, note=note(q, ours, theirs, label),
                            details={"aiengine": ours, kind: theirs}))
    return rows


def profile(settings, path) -> None:
    """One run against a daemon under cProfile."""
    skip = int(RATE * 0.2)
    with Cleanup() as cleanup:
        daemon = cleanup.add(Daemon(settings, "latency", *pubsub.daemonConfig(),
                                    profile=path))
        target = pubsub.Target("aiengine", "lines", daemon.port("hub-in"),
                               daemon.port("hub-out"), daemon)
        runOnce(settings, target, skip + int(RATE * seconds(settings)), skip)
