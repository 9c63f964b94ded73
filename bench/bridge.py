"""Bridge: messages/s and latency from daemon A to daemon B through mosquitto,
against a direct pair of paho-mqtt clients.

aiengine: two daemons and one mosquitto (``persistence false``,
``max_queued_messages`` 1,000,000 and ``max_inflight_messages`` 0, so that
the broker neither drops nor holds back).  Daemon A has, for each QoS, an
``in`` listener (``text-messages``, ``\\n``, ``topic-in`` ``bench<qos>``) and
its bridge sends that topic out as ``bench/t<qos>`` at that QoS; daemon B's
bridge takes ``bench/t<qos>`` in to its local ``bench<qos>``, which an ``out``
listener writes to its connections (docs/scale-out.md).  A publisher
(``bench.peers.pubsubclient``) writes 100-byte lines (a 99-byte body and its
newline) into A's listener as fast as A takes them; a subscriber counts the
lines from B's listener.  Figure: messages/s from the publisher's first
write to the subscriber's last line; every message is counted, and a lost
one fails the row.

Baseline: ``bench.peers.mqttclient``, a publisher and a subscriber with
paho-mqtt used as the bridge uses it (MQTT 5, driven by the reactor, its own
QoS 1 window of 1,000, No Local), the same 99-byte bodies on topic
``bench/direct<qos>`` of the same mosquitto, the same number of messages.
It carries none of the bridge's user properties (``origin``)
or content type: those are part of what the bridge costs.

Latency: the same paths at a fixed 2,000 messages/s, QoS 1, each message
carrying its send time: ``bench.peers.latencyclient`` into A's listener and
out of B's, against the paho pair (its publisher stamps a message just
before ``publish``, its subscriber takes the time of the read that brought
it).  3 s per run after 0.2 s of warm-up; p50 and p99 of the one-way latency.

Both daemons and the broker run for the whole benchmark.  Each QoS starts
with an untimed run of a tenth of the messages on each side; repetitions
alternate aiengine and the paho pair; the figure is the median of 3.
"""

from __future__ import annotations

import socket

from lxml import etree

from bench import latency, servers
from bench.harness import (BenchError, Cleanup, Daemon, Peer, Row, describeSpread,
                           spread)

NAME = "bridge"
#: messages per throughput run, for both sides (a fifth with --quick)
MESSAGES = 50_000
#: QoS -> ratio target against the paho pair
TARGETS = {0: 0.8, 1: 0.7}
#: QoS 1 messages/s the bridge must reach besides its ratio
QOS1_FLOOR = 5000
#: latency runs: messages/s, their QoS, warm-up seconds
RATE = 2000
LATENCY_QOS = 1
WARMUP = 0.2
BRIDGE = "cluster"
#: seconds without a delivery after which a subscriber reports what it has
STALL = 5.0
#: what mosquitto's configuration adds to :func:`bench.servers.mosquittoConf`
MOSQUITTO_EXTRA = ("max_queued_messages 1000000\n"
                   "max_inflight_messages 0\n")


def messages(settings) -> int:
    """Messages per throughput run."""
    return MESSAGES // 5 if settings.quick else MESSAGES


def seconds(settings) -> float:
    """Seconds of sending per latency run, after the warm-up."""
    return 1.0 if settings.quick else 3.0


def local(qos) -> str:
    return f"bench{qos}"


def remote(qos) -> str:
    return f"bench/t{qos}"


def direct(qos) -> str:
    return f"bench/direct{qos}"


def bridgeConfig(node, port, direction):
    """Bridge ``cluster`` of node ``node`` to the broker at ``port``: both
    topics, each at its QoS, in ``direction``."""
    return ((BRIDGE, {"engine": "mqtt", "host": "127.0.0.1", "port": port,
                      "node-id": node},
             [{"local": local(q), "remote": remote(q), "direction": direction,
               "qos": q} for q in TARGETS]),)


def daemonConfigs(port):
    """``(listeners, channels, bridges)`` of daemon A and of daemon B."""
    common = {"port": 0, "protocol": "text-messages", "protocol.delimiter": r"\n"}
    a = tuple((f"in-qos{q}", dict(common, direction="in", **{"topic-in": local(q)}))
              for q in TARGETS)
    b = tuple((f"out-qos{q}", dict(common, direction="out", **{"topic-out": local(q)}))
              for q in TARGETS)
    return ((a, (), bridgeConfig("node-a", port, "out")),
            (b, (), bridgeConfig("node-b", port, "in")))


def mosquittoConf(port) -> str:
    """The broker's configuration: :func:`bench.servers.mosquittoConf`, and
    no limit on the messages it queues or has in flight for a client."""
    return servers.mosquittoConf(port) + MOSQUITTO_EXTRA


def startMosquitto(settings) -> servers.Server:
    """mosquitto with :func:`mosquittoConf`."""
    return servers.start("mosquitto", settings, MOSQUITTO_EXTRA, name="bridge-mosquitto")


class Nodes:
    """Daemons A and B, bridged through the broker at ``port``."""

    def __init__(self, settings, cleanup, port, profile=None):
        (la, ca, ba), (lb, cb, bb) = daemonConfigs(port)
        self.a = cleanup.add(Daemon(settings, "bridge-a", la, ca, profile=profile,
                                    bridges=ba))
        self.b = cleanup.add(Daemon(settings, "bridge-b", lb, cb, bridges=bb))
        self.inPorts = {q: self.a.port(f"in-qos{q}") for q in TARGETS}
        self.outPorts = {q: self.b.port(f"out-qos{q}") for q in TARGETS}
        connected = rf"\[Bridge::{BRIDGE}#info\] connected to 127\.0\.0\.1:{port}\b"
        for daemon in (self.b, self.a):
            daemon.waitLog(connected, 30)

    def waitSubscriber(self, qos, port):
        """B's ``out`` listener has accepted the subscriber on ``port``."""
        self.b.waitLog(rf"out-qos{qos}\.\d+ connected from 127\.0\.0\.1:{port}\b", 30)


def throughputOnce(settings, side, nodes, broker, qos, count) -> dict:
    """One run A -> B (``side`` "aiengine") or paho -> paho ("paho")."""
    with Cleanup() as cleanup:
        if side == "aiengine":
            sub = cleanup.add(Peer(settings, "pubsubclient", "--role", "sub", "--format",
                                   "lines", "--port", nodes.outPorts[qos], "--count",
                                   count, "--stall", STALL))
            nodes.waitSubscriber(qos, sub.expect("ready", 30)["ports"][0])
            pub = cleanup.add(Peer(settings, "pubsubclient", "--role", "pub", "--format",
                                   "lines", "--port", nodes.inPorts[qos], "--count",
                                   count))
        else:
            sub = cleanup.add(Peer(settings, "mqttclient", "--role", "sub", "--port",
                                   broker.port, "--topic", direct(qos), "--qos", qos,
                                   "--count", count, "--stall", STALL))
            sub.expect("ready", 30)
            pub = cleanup.add(Peer(settings, "mqttclient", "--role", "pub", "--port",
                                   broker.port, "--topic", direct(qos), "--qos", qos,
                                   "--count", count))
        pub.expect("connected", 30)
        pub.send("go")
        started = pub.expect("started", 30)["t"]
        done = sub.expect("done", 60 + count / 1000)
    deliveries = done["deliveries"]
    elapsed = done["last"] - started
    return {"rate": deliveries / elapsed if elapsed > 0 else None,
            "lost": count - deliveries, "deliveries": deliveries,
            "extra": done["extra"], "complete": done["complete"], "seconds": elapsed,
            "why": done.get("why")}


def latencyOnce(settings, side, nodes, broker, count, skip) -> dict:
    """One latency run: the subscriber's summary and the publisher's pace."""
    qos = LATENCY_QOS
    with Cleanup() as cleanup:
        if side == "aiengine":
            sub = cleanup.add(Peer(settings, "latencyclient", "--role", "sub", "--format",
                                   "lines", "--port", nodes.outPorts[qos], "--count",
                                   count, "--skip", skip, "--stall", STALL))
            nodes.waitSubscriber(qos, sub.expect("ready", 30)["port"])
            pub = cleanup.add(Peer(settings, "latencyclient", "--role", "pub", "--format",
                                   "lines", "--port", nodes.inPorts[qos], "--count",
                                   count, "--rate", RATE))
        else:
            sub = cleanup.add(Peer(settings, "mqttclient", "--role", "sub", "--port",
                                   broker.port, "--topic", direct(qos), "--qos", qos,
                                   "--count", count, "--skip", skip, "--stall", STALL))
            sub.expect("ready", 30)
            pub = cleanup.add(Peer(settings, "mqttclient", "--role", "pub", "--port",
                                   broker.port, "--topic", direct(qos), "--qos", qos,
                                   "--count", count, "--rate", RATE))
        pub.expect("connected", 30)
        pub.send("go")
        done = sub.expect("done", 60 + count / RATE)
        sent = pub.poll("sent") or pub.expect("sent", 30)
    if done["lost"]:
        raise BenchError(f"bridge latency ({side}): {done['lost']} of {count} messages "
                         f"did not arrive")
    return dict(done, rate=sent["rate"], late=sent["late"])


def bridgeStatus(daemon) -> dict:
    """``Bridges.status name=cluster`` at the daemon's console: its counters."""
    request = (f'<xmlcall class="Bridges" method="status" requestId="status">'
               f'<parameters><property name="name" value="{BRIDGE}"/></parameters>'
               f'</xmlcall>\x01').encode()
    with socket.create_connection(("127.0.0.1", daemon.port("console")), timeout=30) as s:
        s.sendall(request)
        answer = b""
        while b"\x01" not in answer:
            data = s.recv(65536)
            if not data:
                break
            answer += data
    root = etree.fromstring(answer.partition(b"\x01")[0])
    for element in root.iter():
        if "state" in element.attrib:
            return dict(element.attrib)
    raise BenchError(f"Bridges.status: unexpected answer {answer[:300]!r}")


def _warnings(daemon) -> list:
    """The daemon's log lines that warn or tell of an error, so far."""
    daemon._readLog()
    return [line for line in daemon.lines if "#warn]" in line or "#error]" in line
            or "Traceback" in line]


def _result(runs):
    """A repetition's rate, or None when it lost messages (the loss is reported)."""
    return [r["rate"] if r["complete"] else None for r in runs]


def _lossNote(label, runs) -> str:
    lost = [r for r in runs if r["lost"] or not r["complete"]]
    if not lost:
        return ""
    return (f"; {label} LOST messages in {len(lost)} of {len(runs)} runs (up to "
            f"{max(r['lost'] for r in lost):,}; {lost[0]['why']})")


def run(settings) -> list:
    """One broker and daemons A and B for every row; repetitions alternate
    aiengine and the paho pair."""
    reps = settings.repetitions(3, 1)
    count = messages(settings)
    skip = int(RATE * WARMUP)
    latencyCount = skip + int(RATE * seconds(settings))
    measures = {q: f"QoS {q}: msg/s A -> B ({count:,} x 99 B) vs paho pair"
                for q in TARGETS}
    latencyMeasure = (f"{RATE:,} msg/s, QoS {LATENCY_QOS}, A -> B one-way) vs paho "
                      f"pair")
    rows = []
    with Cleanup() as cleanup:
        try:
            broker = cleanup.add(startMosquitto(settings))
        except servers.Unavailable as e:
            return ([Row(NAME, measures[q], target=_targetText(q), skipped=str(e))
                     for q in TARGETS]
                    + [Row(NAME, f"latency {p} ({latencyMeasure}", target="info",
                           skipped=str(e)) for p in ("p50", "p99")])
        nodes = Nodes(settings, cleanup, broker.port)
        sides = ("aiengine", "paho")
        for qos in TARGETS:
            runs = {side: [] for side in sides}
            for side in sides:  # warm-up, untimed: a tenth of a run
                throughputOnce(settings, side, nodes, broker, qos, max(1, count // 10))
            for rep in range(reps):
                for side in sides:
                    runs[side].append(throughputOnce(settings, side, nodes, broker, qos,
                                                     count))
                settings.say(f"bridge QoS {qos} {rep + 1}: " + ", ".join(
                    f"{side} {r[-1]['rate'] or 0:,.0f}/s"
                    + (f" (lost {r[-1]['lost']:,})" if r[-1]["lost"] else "")
                    for side, r in runs.items()))
            rows.append(_throughputRow(qos, measures[qos], runs))
        runs = {side: [] for side in sides}
        for rep in range(reps):
            for side in sides:
                runs[side].append(latencyOnce(settings, side, nodes, broker,
                                              latencyCount, skip))
            settings.say(f"bridge latency {rep + 1}: " + ", ".join(
                f"{side} p50 {r[-1]['p50'] * 1e6:.0f} us p99 {r[-1]['p99'] * 1e6:.0f} us"
                for side, r in runs.items()))
        rows.extend(_latencyRows(latencyMeasure, runs))
        statuses = {"A": bridgeStatus(nodes.a), "B": bridgeStatus(nodes.b)}
        warnings = _warnings(nodes.a) + _warnings(nodes.b)
    counters = "; ".join(
        f"{node}: " + ", ".join(f"{k} {status.get(k, '?')}" for k in (
            "messagesOut" if node == "A" else "messagesIn", "dropped",
            "duplicatesDropped", "reconnects", "paused", "inboundPaused"))
        for node, status in statuses.items())
    rows[0].note += f"; bridges at the end: {counters}"
    if warnings:
        rows[0].note += (f"; {len(warnings)} warning/error line(s) in the daemons' logs, "
                         f"first: {warnings[0].strip()[:200]}")
    for row in rows:
        row.details["bridges"] = statuses
    return rows


def _targetText(qos) -> str:
    text = f">= {TARGETS[qos]}"
    return text + f", >= {QOS1_FLOOR:,}/s" if qos == 1 else text


def _throughputRow(qos, measure, runs) -> Row:
    ours, theirs = runs["aiengine"], runs["paho"]
    _, a, _ = spread(_result(ours))
    _, b, _ = spread(_result(theirs))
    ratio = a / b if a and b else None
    lossless = not any(r["lost"] or not r["complete"] for r in ours)
    passed = None
    if ratio is not None:
        passed = ratio >= TARGETS[qos] and (qos != 1 or a >= QOS1_FLOOR)
    if not lossless:
        passed = False
    note = (describeSpread("aiengine min/median/max", _result(ours))
            + "; " + describeSpread("paho pair", _result(theirs))
            + _lossNote("aiengine", ours) + _lossNote("paho pair", theirs))
    return Row(NAME, measure, a, b, "msg/s", ratio, _targetText(qos), passed, note=note,
               details={"aiengine": ours, "paho": theirs})


def _latencyRows(measure, runs) -> list:
    ours, theirs = runs["aiengine"], runs["paho"]
    rows = []
    for q in ("p50", "p99"):
        a = spread([r[q] * 1e6 for r in ours])[1]
        b = spread([r[q] * 1e6 for r in theirs])[1]
        ratio = a / b if a and b else None
        rows.append(Row(NAME, f"latency {q} ({measure}", a, b, "us", ratio, "info", None,
                        note=latency.note(q, ours, theirs, "paho pair"),
                        details={"aiengine": ours, "paho": theirs}))
    return rows


def profile(settings, path) -> None:
    """One QoS 1 run with daemon A (the sending side) under cProfile."""
    with Cleanup() as cleanup:
        broker = cleanup.add(startMosquitto(settings))
        nodes = Nodes(settings, cleanup, broker.port, profile=path)
        throughputOnce(settings, "aiengine", nodes, broker, 1, messages(settings))
