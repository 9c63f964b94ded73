"""Pub/sub: messages/s through aiengine's hub, against Redis and mosquitto.

aiengine: the hub configuration (docs/configuration.md): an ``in`` listener
(``text-messages``, ``\\n``, ``topic-in`` T) feeding an ``out`` listener
(``topic-out`` T); publishers connect to the first, subscribers to the
second.  Redis: ``PUBLISH``/``SUBSCRIBE`` (RESP, publishes pipelined).
mosquitto: MQTT 3.1.1 at QoS 0.  The clients are one program
(``bench.peers.pubsubclient``) for all three, with the same batching (64 KiB
writes of pre-built messages, as fast as the socket takes them) and the same
counting, so the ratio measures the servers.

Cases: 1 publisher -> 1 subscriber, 10 -> 1, 1 -> 10 (the publishers' and the
subscribers' connections each in one process).  Each message has a 99-byte
body (a hub line is 100 bytes with its newline).  Figure: deliveries per
second, every subscriber's messages counted (a message delivered to 10
subscribers counts 10), from the publishers' first write to the last
subscriber's last message; every delivery is counted exactly, and any
message missing at a subscriber is reported as loss.  Each case starts with
an untimed warm-up run (a tenth of the messages) for each server, then the
repetitions alternate aiengine, Redis, mosquitto; the median of 3 is the
figure.  mosquitto, about ten times slower, gets an eighth of the messages,
so that its runs last about as long as the others'.
"""

from __future__ import annotations

from bench import servers
from bench.harness import (Cleanup, Daemon, Peer, Row, describeSpread,
                           spread)

NAME = "pubsub"
TOPIC = "bench"
#: (label, publishers, subscribers)
CASES = (("1 -> 1", 1, 1), ("10 -> 1", 10, 1), ("1 -> 10", 1, 10))
#: (peer kind, wire format, name in the table)
PEERS = (("redis", "resp", "Redis"), ("mosquitto", "mqtt", "mosquitto"))
#: ratio targets against each peer, per case (None: information only)
TARGETS = {
    ("redis", "1 -> 1"): 0.8, ("redis", "10 -> 1"): None, ("redis", "1 -> 10"): 0.8,
    ("mosquitto", "1 -> 1"): 1.5, ("mosquitto", "10 -> 1"): 1.5,
    ("mosquitto", "1 -> 10"): 1.5,
}
#: seconds without a delivery after which a subscriber reports what it has
STALL = 5.0


#: deliveries per run: 1 to 3 s of work for aiengine and Redis
DELIVERIES = 2_000_000
#: mosquitto runs deliver this share of that (it is about ten times slower:
#: its runs still last 1 to 3 s)
SHARE = {"mosquitto": 1 / 8}


def published(settings, publishers, subscribers, kind="aiengine") -> int:
    """Messages each publisher sends (a fifth with ``--quick``)."""
    deliveries = DELIVERIES * SHARE.get(kind, 1) / (5 if settings.quick else 1)
    return max(1, int(deliveries) // (publishers * subscribers))


def daemonConfig():
    """The hub: ``hub-in`` publishes what its connections send on the topic,
    ``hub-out`` writes the topic to every connection."""
    common = {"port": 0, "protocol": "text-messages", "protocol.delimiter": r"\n"}
    return (
        ("hub-in", dict(common, direction="in", **{"topic-in": TOPIC})),
        ("hub-out", dict(common, direction="out", **{"topic-out": TOPIC})),
    ), ()


class Target:
    """Where a run's clients connect: the hub's two ports, or one server's."""

    def __init__(self, name, fmt, pubPort, subPort, daemon=None):
        self.name = name
        self.fmt = fmt
        self.pubPort = pubPort
        self.subPort = subPort
        self.daemon = daemon


def runOnce(settings, target: Target, publishers, subscribers, count) -> dict:
    """One run: deliveries/s and what was lost."""
    expected = count * publishers
    with Cleanup() as cleanup:
        sub = cleanup.add(Peer(settings, "pubsubclient", "--role", "sub", "--format",
                               target.fmt, "--port", target.subPort, "--topic", TOPIC,
                               "--connections", subscribers, "--count", expected,
                               "--stall", STALL))
        ready = sub.expect("ready", 30)
        if target.daemon is not None:
            # the daemon writes the topic to the connections it has accepted
            for port in ready["ports"]:
                target.daemon.waitLog(rf"hub-out\.\d+ connected from 127\.0\.0\.1:{port}\b",
                                      30)
        pub = cleanup.add(Peer(settings, "pubsubclient", "--role", "pub", "--format",
                               target.fmt, "--port", target.pubPort, "--topic", TOPIC,
                               "--connections", publishers, "--count", count))
        pub.expect("connected", 30)
        pub.send("go")
        started = pub.expect("started", 30)["t"]
        done = sub.expect("done", 60 + expected * subscribers / 20_000)
        unheard = None
        if target.fmt == "resp":
            acked = pub.poll("acked") or pub.expect("acked", 30)
            unheard = acked["unheard"]
    deliveries = done["deliveries"]
    lost = expected * subscribers - deliveries
    elapsed = done["last"] - started
    return {"rate": deliveries / elapsed if elapsed > 0 else None, "lost": lost,
            "deliveries": deliveries,
            "extra": done["extra"], "complete": done["complete"], "seconds": elapsed,
            "unheard": unheard}


def _result(runs):
    """A repetition's rate, or None when it lost messages (the loss is reported)."""
    return [r["rate"] if r["complete"] else None for r in runs]


def _lossNote(label, runs) -> str:
    lost = [r["lost"] for r in runs if r["lost"]]
    if not lost:
        return ""
    return f"; {label} LOST messages in {len(lost)} of {len(runs)} runs (up to {max(lost):,})"


def run(settings) -> list:
    """One daemon and one server of each kind for every case; repetitions
    alternate aiengine, Redis, mosquitto."""
    reps = settings.repetitions(3, 1)
    rows = []
    with Cleanup() as cleanup:
        daemon = cleanup.add(Daemon(settings, "pubsub", *daemonConfig()))
        targets = [Target("aiengine", "lines", daemon.port("hub-in"),
                          daemon.port("hub-out"), daemon)]
        skipped = {}
        for kind, fmt, label in PEERS:
            try:
                server = cleanup.add(servers.start(kind, settings))
            except servers.Unavailable as e:
                skipped[kind] = str(e)
                continue
            targets.append(Target(kind, fmt, server.port, server.port))
        for case, publishers, subscribers in CASES:
            runs = {t.name: [] for t in targets}
            for target in targets:  # warm-up, untimed: a tenth of a run
                runOnce(settings, target, publishers, subscribers, max(
                    1, published(settings, publishers, subscribers, target.name) // 10))
            for rep in range(reps):
                for target in targets:
                    count = published(settings, publishers, subscribers, target.name)
                    runs[target.name].append(
                        runOnce(settings, target, publishers, subscribers, count))
                settings.say(f"pubsub {case} {rep + 1}: " + ", ".join(
                    f"{name} {r[-1]['rate'] or 0:,.0f}/s"
                    + (f" (lost {r[-1]['lost']:,})" if r[-1]["lost"] else "")
                    for name, r in runs.items()))
            ours = runs["aiengine"]
            _, a, _ = spread(_result(ours))
            deliveries = published(settings, publishers, subscribers) * publishers \
                * subscribers
            measure = f"{case}: deliveries/s ({deliveries:,} x 99 B)"
            for kind, fmt, label in PEERS:
                target = TARGETS[(kind, case)]
                targetText = f">= {target}" if target else "info"
                if kind in skipped:
                    rows.append(Row(NAME, f"{measure} vs {label}", a, None, "msg/s",
                                    target=targetText, skipped=skipped[kind]))
                    continue
                theirs = runs[kind]
                _, b, _ = spread(_result(theirs))
                ratio = a / b if a and b else None
                lossless = not any(r["lost"] for r in ours)
                passed = (ratio >= target and lossless) if (target and ratio) else None
                if not lossless:
                    passed = False
                note = (describeSpread("aiengine min/median/max", _result(ours))
                        + "; " + describeSpread(f"{label}", _result(theirs))
                        + _lossNote("aiengine", ours) + _lossNote(label, theirs))
                if kind in SHARE:
                    n = published(settings, publishers, subscribers, kind)
                    note += (f"; {label} runs: {n * publishers * subscribers:,} "
                             f"deliveries each")
                if kind == "redis" and any(r["unheard"] for r in theirs):
                    note += "; some PUBLISH reached no subscriber"
                rows.append(Row(NAME, f"{measure} vs {label}", a, b, "msg/s", ratio,
                                targetText, passed, note=note,
                                details={"aiengine": ours, kind: theirs}))
    return rows


def profile(settings, path) -> None:
    """The 1 -> 10 case once against a daemon under cProfile."""
    with Cleanup() as cleanup:
        daemon = cleanup.add(Daemon(settings, "pubsub", *daemonConfig(), profile=path))
        target = Target("aiengine", "lines", daemon.port("hub-in"),
                        daemon.port("hub-out"), daemon)
        runOnce(settings, target, 1, 10, published(settings, 1, 10))
