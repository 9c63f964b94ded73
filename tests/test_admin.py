"""The admin listener (msgtype admin): /metrics and /health over HTTP.

An engine is built from media.xml text with a console, an admin listener, a
message listener and a channel connected to a local echo server, all on
loopback ports the system picks.  Requests go through Twisted's HTTP client
(``Agent``), over a connection pool that each test closes.  The bridge tests
give their engine an MQTT bridge to a loopback port that refuses (no broker):
it stays down, and its counters are set on it directly.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import replace

from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import defer, reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Factory
from twisted.internet.ssl import Certificate
from twisted.protocols.basic import LineOnlyReceiver
from twisted.trial import unittest
from twisted.web.client import (Agent, BrowserLikePolicyForHTTPS, HTTPConnectionPool,
                                readBody)
from twisted.web.http_headers import Headers

from aiengine import admin as adminModule
from aiengine.admin import health
from aiengine.bridge import CONNECTED, COUNTERS, WAITING
from aiengine.config import (BridgeConfig, BridgeTopic, ConfigError, ListenerConfig,
                             ProtocolConfig, checkListener, parse)
from aiengine.console.registry import CALL_BUCKETS, CallRegistry
from aiengine.engine import Engine
from tests.certs import makeCertificates
from tests.support import ReservedPort, waitFor
from tests.test_console import Slow, xmlcall
from tests.test_listeners import LineClient
from tests.test_routing import RoutingTestCase, channel, listener


class Echo(LineOnlyReceiver):
    """Answers every line with itself."""

    delimiter = b"\n"

    def connectionMade(self):
        self.factory.connections.append(self)

    def connectionLost(self, reason):
        self.factory.connections.remove(self)

    def lineReceived(self, line):
        self.sendLine(line)


def admin(name="admin", **properties):
    lines = [f'<listener name="{name}">', '<property name="port" value="0"/>',
             '<property name="msgtype" value="admin"/>']
    lines += [f'<property name="{k}" value="{v}"/>' for k, v in properties.items()]
    return "\n".join(lines + ["</listener>"])


def samples(body: bytes) -> dict:
    """``{(sample name, ((label, value), ...)): value}`` of an exposition."""
    found = {}
    for family in text_string_to_metric_families(body.decode("utf-8")):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def metric(found, name, **labels):
    return found[(name, tuple(sorted(labels.items())))]


def types(body: bytes) -> dict:
    """``{sample name: family type}`` of an exposition."""
    return {sample.name: family.type
            for family in text_string_to_metric_families(body.decode("utf-8"))
            for sample in family.samples}


#: Bridge counter -> (sample name, labels besides bridge, type), written out
#: for the counters of today.
BRIDGE_SERIES = {
    "messagesIn": ("aiengine_bridge_messages_total", {"direction": "in"}, "counter"),
    "messagesOut": ("aiengine_bridge_messages_total", {"direction": "out"}, "counter"),
    "duplicatesDropped": ("aiengine_bridge_duplicates_dropped_total", {}, "counter"),
    "loopsDropped": ("aiengine_bridge_loops_dropped_total", {}, "counter"),
    "queued": ("aiengine_bridge_queued", {}, "gauge"),
    "dropped": ("aiengine_bridge_dropped_total", {}, "counter"),
    "reconnects": ("aiengine_bridge_reconnects_total", {}, "counter"),
    "paused": ("aiengine_bridge_paused_total", {}, "counter"),
    "inboundPaused": ("aiengine_bridge_inbound_paused_total", {}, "counter"),
    "heldAcks": ("aiengine_bridge_held_acks", {}, "gauge"),
}


def bridgeSeries(key):
    """The series of bridge counter ``key``: as written out above, else by
    the rule for new ones (``heldFoo``: gauge ``aiengine_bridge_held_foo``;
    ``fooBar``: counter ``aiengine_bridge_foo_bar_total``)."""
    if key in BRIDGE_SERIES:
        return BRIDGE_SERIES[key]
    snake = re.sub("([A-Z])", lambda m: "_" + m.group(1).lower(), key)
    if key.startswith("held"):
        return f"aiengine_bridge_{snake}", {}, "gauge"
    return f"aiengine_bridge_{snake}_total", {}, "counter"


class AdminTestCase(RoutingTestCase):
    """An engine with an admin listener, an echo server, and an HTTP client."""

    def setUp(self):
        self.echo = Factory.forProtocol(Echo)
        self.echo.connections = []
        self.echoPort = reactor.listenTCP(0, self.echo, interface="127.0.0.1")
        self.addCleanup(self.stopEcho)
        self.pool = HTTPConnectionPool(reactor, persistent=True)
        # Cleanups run last-in first-out: the client's connections close
        # before the engine stops.
        self.addCleanup(self.pool.closeCachedConnections)
        self.agent = Agent(reactor, pool=self.pool)

    def stopEcho(self):
        """Stop the echo server and close its connections."""
        for protocol in list(self.echo.connections):
            protocol.transport.loseConnection()
        return defer.maybeDeferred(self.echoPort.stopListening)

    def startAdmin(self, adminListener=None, extraListeners=""):
        """The engine: console, admin, a listener gateway in front of the echo
        channel (lines in on gate.in, the echoes back out)."""
        return self.startEngine(
            listeners=(adminListener or admin()) + listener(
                "gate", **{"topic-in": "echo.out", "topic-out": "echo.in"})
            + extraListeners,
            channels=channel("echo", self.echoPort.getHost().port, topicIn="echo.in",
                             topicOut="echo.out"),
            connected=("echo",))

    @defer.inlineCallbacks
    def startBridged(self):
        """The engine: an admin listener and a bridge ``cluster`` (one topic
        out, one in) whose MQTT broker is not there: a loopback port that
        refuses.  Returns the bridge once its first attempt has failed; its
        next one would be a minute later (the engine's stop cancels it)."""
        closed = ReservedPort()
        self.addCleanup(closed.close)
        config = replace(
            parse(f"<service><listeners>{admin()}</listeners></service>".encode()),
            bridges=(BridgeConfig(
                name="cluster", host="127.0.0.1", port=closed.port, node_id="node-a",
                topics=(BridgeTopic("sensor", "aie/sensor", "out", 1),
                        BridgeTopic("chat", "aie/chat", "in", 0)),
                reconnection_timeout=60.0),))
        self.engine = Engine(config, reactor)
        self.engine.startService()
        self.addCleanup(self.engine.stopService)
        bridge = self.engine.bridges["cluster"]
        yield waitFor(lambda: bridge.state == WAITING, what="the bridge's failed attempt")
        return bridge

    @defer.inlineCallbacks
    def get(self, path, method=b"GET", headers=None, listenerName="admin"):
        """``(response, body)`` of one request to the admin listener."""
        url = f"http://127.0.0.1:{self.port(listenerName)}{path}".encode()
        response = yield self.agent.request(method, url, Headers(headers or {}))
        body = yield readBody(response)
        return response, body

    @defer.inlineCallbacks
    def scrape(self):
        response, body = yield self.get("/metrics")
        self.assertEqual(response.code, 200)
        return samples(body)

    @defer.inlineCallbacks
    def gateClient(self):
        client = yield connectProtocol(
            TCP4ClientEndpoint(reactor, "127.0.0.1", self.port("gate")), LineClient())
        self.addCleanup(lambda: client.transport.loseConnection() or client.closed)
        return client


class MetricsTests(AdminTestCase):
    """GET /metrics: the live counters, in the Prometheus text format."""

    @defer.inlineCallbacks
    def test_format(self):
        """Prometheus text format 0.0.4, parseable, every family present."""
        yield self.startAdmin()
        response, body = yield self.get("/metrics")
        self.assertEqual(response.code, 200)
        self.assertEqual(response.headers.getRawHeaders(b"content-type"),
                         [b"text/plain; version=0.0.4; charset=utf-8"])
        names = {f.name for f in text_string_to_metric_families(body.decode())}
        for name in ("aiengine_channel_up", "aiengine_channel_messages",
                     "aiengine_channel_bytes", "aiengine_channel_queued",
                     "aiengine_channel_dropped", "aiengine_channel_connects",
                     "aiengine_channel_connect_failures",
                     "aiengine_channel_connection_drops", "aiengine_listener_up",
                     "aiengine_listener_connections", "aiengine_listener_accepted",
                     "aiengine_listener_refused", "aiengine_listener_messages",
                     "aiengine_listener_dropped", "aiengine_topic_published",
                     "aiengine_topic_delivered", "aiengine_topic_unrouted",
                     "aiengine_topic_dropped", "aiengine_topic_expired",
                     "aiengine_console_calls", "aiengine_console_call_duration_seconds",
                     # no bridge: the families all the same, without series
                     "aiengine_bridge_up", "aiengine_bridge_messages"):
            self.assertIn(name, names)
        for key in COUNTERS:
            self.assertIn(bridgeSeries(key)[0].removesuffix("_total"), names, key)
        # Nothing from prometheus_client's global registry (process metrics).
        self.assertNotIn(b"process_", body)
        self.assertNotIn(b"python_gc", body)

    @defer.inlineCallbacks
    def test_trafficMovesTheCounters(self):
        """Lines through the gateway and the echo channel show in the next scrape."""
        yield self.startAdmin()
        before = yield self.scrape()
        self.assertEqual(metric(before, "aiengine_channel_up", channel="echo"), 1)
        self.assertEqual(metric(before, "aiengine_channel_connects_total", channel="echo"), 1)
        for direction in ("in", "out"):
            self.assertEqual(metric(before, "aiengine_channel_messages_total",
                                    channel="echo", direction=direction), 0)
            self.assertEqual(metric(before, "aiengine_listener_messages_total",
                                    listener="gate", direction=direction), 0)
        self.assertEqual(metric(before, "aiengine_listener_connections", listener="gate"),
                         0)
        self.assertEqual(metric(before, "aiengine_topic_published_total",
                                topic="echo.out"), 0)

        client = yield self.gateClient()
        client.transport.write(b"one\ntwo\nthree\n")
        lines = yield client.waitLines(3)
        self.assertEqual(lines, [b"one", b"two", b"three"])

        after = yield self.scrape()
        for direction in ("in", "out"):
            self.assertEqual(metric(after, "aiengine_channel_messages_total",
                                    channel="echo", direction=direction), 3)
            self.assertEqual(metric(after, "aiengine_channel_bytes_total",
                                    channel="echo", direction=direction),
                             len(b"one\ntwo\nthree\n"))
            self.assertEqual(metric(after, "aiengine_listener_messages_total",
                                    listener="gate", direction=direction), 3)
        self.assertEqual(metric(after, "aiengine_listener_connections", listener="gate"), 1)
        self.assertEqual(metric(after, "aiengine_listener_accepted_total",
                                listener="gate"), 1)
        for topic in ("echo.out", "echo.in"):
            self.assertEqual(metric(after, "aiengine_topic_published_total", topic=topic),
                             3)
            self.assertEqual(metric(after, "aiengine_topic_delivered_total", topic=topic),
                             3)
            self.assertEqual(metric(after, "aiengine_topic_unrouted_total", topic=topic),
                             0)
        self.assertEqual(metric(after, "aiengine_channel_queued", channel="echo"), 0)
        self.assertEqual(metric(after, "aiengine_channel_dropped_total", channel="echo"), 0)
        # The scrape sees its own connection on the admin listener.
        self.assertGreaterEqual(
            metric(after, "aiengine_listener_connections", listener="admin"), 1)
        self.assertEqual(metric(after, "aiengine_listener_up", listener="admin"), 1)

    @defer.inlineCallbacks
    def test_queuedAndDropped(self):
        """Messages for a channel whose server is gone wait in its queue, and
        those beyond queue-size are dropped: both show."""
        yield self.startEngine(
            listeners=admin(),
            channels=channel("echo", self.echoPort.getHost().port, topicOut="echo.out",
                             **{"queue-size": "2"}),
            connected=("echo",))
        yield self.stopEcho()
        yield waitFor(lambda: self.engine.channels["echo"].state != "connected",
                      what="the channel to notice its server is gone")
        for n in range(5):
            self.engine.broker.publish("echo.out", b"line %d" % n)
        found = yield self.scrape()
        self.assertEqual(metric(found, "aiengine_channel_up", channel="echo"), 0)
        self.assertEqual(metric(found, "aiengine_channel_queued", channel="echo"), 2)
        self.assertEqual(metric(found, "aiengine_channel_dropped_total", channel="echo"), 3)
        # A connection that carried nothing ended early: a failed attempt, as
        # are the refused ones after it.
        self.assertGreaterEqual(metric(found, "aiengine_channel_connect_failures_total",
                                       channel="echo"), 1)

    @defer.inlineCallbacks
    def test_bridge(self):
        """A bridge's state and every counter of Bridges.status, each of the
        type it is (queued a gauge: what waits now; the others counters)."""
        bridge = yield self.startBridged()
        # Waiting for a broker: what is published on its outbound topic queues.
        for n in range(3):
            self.engine.broker.publish("sensor", b"m%d" % n)
        yield waitFor(lambda: bridge.status()["queued"] == 3, what="3 queued")
        for n, key in enumerate(COUNTERS):
            if bridgeSeries(key)[2] == "counter":
                bridge.counters[key] = 10 + n
        response, body = yield self.get("/metrics")
        found, kinds = samples(body), types(body)
        self.assertEqual(metric(found, "aiengine_bridge_up", bridge="cluster"), 0)
        self.assertEqual(kinds["aiengine_bridge_up"], "gauge")
        status = bridge.status()
        self.assertEqual(status["queued"], 3)
        for key in COUNTERS:
            name, labels, kind = bridgeSeries(key)
            self.assertEqual(metric(found, name, bridge="cluster", **labels),
                             status[key], key)
            self.assertEqual(kinds[name], kind, key)
        self.assertEqual(metric(found, "aiengine_bridge_queued", bridge="cluster"), 3)
        self.assertEqual(metric(found, "aiengine_bridge_reconnects_total",
                                bridge="cluster"), 10 + COUNTERS.index("reconnects"))

        # Connected (as if: these tests have no broker): up.
        bridge.state = CONNECTED
        found = yield self.scrape()
        self.assertEqual(metric(found, "aiengine_bridge_up", bridge="cluster"), 1)

    @defer.inlineCallbacks
    def test_bridgeCountersAddedLater(self):
        """A counter added to aiengine.bridge.COUNTERS later is exported with
        no change here: a held... one as a gauge, any other as a counter."""
        bridge = yield self.startBridged()
        self.patch(adminModule, "BRIDGE_COUNTERS", COUNTERS + ("heldProbes", "probeRuns"))
        bridge.counters.update(heldProbes=4, probeRuns=7)
        response, body = yield self.get("/metrics")
        found, kinds = samples(body), types(body)
        self.assertEqual(metric(found, "aiengine_bridge_held_probes", bridge="cluster"), 4)
        self.assertEqual(kinds["aiengine_bridge_held_probes"], "gauge")
        self.assertEqual(metric(found, "aiengine_bridge_probe_runs_total",
                                bridge="cluster"), 7)
        self.assertEqual(kinds["aiengine_bridge_probe_runs_total"], "counter")

    @defer.inlineCallbacks
    def test_consoleCalls(self):
        """Console calls are counted by class, method and outcome, and timed."""
        yield self.startAdmin()
        console = yield self.console()
        yield self.call(console, xmlcall("Engine", "ping", "p1") + xmlcall(
            "Engine", "ping", "p2") + xmlcall("Media", "status", "s1", channel="nope")
            + xmlcall("Nope", "ping", "n1") + xmlcall(
                "Media", "receive", "r1", channel="echo", timeout="0.2"),
            ["p1", "p2", "s1", "n1", "r1"])
        found = yield self.scrape()
        self.assertEqual(metric(found, "aiengine_console_calls_total", **{
            "class": "Engine", "method": "ping", "status": "ok"}), 2)
        # Failed through its Deferred (an unknown channel), or after a timeout.
        self.assertEqual(metric(found, "aiengine_console_calls_total", **{
            "class": "Media", "method": "status", "status": "exception"}), 1)
        self.assertEqual(metric(found, "aiengine_console_calls_total", **{
            "class": "Media", "method": "receive", "status": "exception"}), 1)
        # A class nobody registered makes no series: peers cannot add labels.
        self.assertFalse([key for key in found if ("class", "Nope") in key[1]])
        ping = {"class": "Engine", "method": "ping"}
        self.assertEqual(metric(found, "aiengine_console_call_duration_seconds_count",
                                **ping), 2)
        self.assertEqual(metric(found, "aiengine_console_call_duration_seconds_bucket",
                                le="+Inf", **ping), 2)
        self.assertLess(metric(found, "aiengine_console_call_duration_seconds_sum",
                               **ping), 1)
        # Media.receive waited its 0.2 s timeout: above the 0.1 bucket.
        receive = {"class": "Media", "method": "receive"}
        self.assertEqual(metric(found, "aiengine_console_call_duration_seconds_bucket",
                                le="0.1", **receive), 0)
        self.assertEqual(metric(found, "aiengine_console_call_duration_seconds_bucket",
                                le="0.25", **receive), 1)
        self.assertGreaterEqual(metric(
            found, "aiengine_console_call_duration_seconds_sum", **receive), 0.2)

        yield self.call(console, xmlcall("Engine", "ping", "p3"), ["p3"])
        again = yield self.scrape()
        self.assertEqual(metric(again, "aiengine_console_calls_total", **{
            "class": "Engine", "method": "ping", "status": "ok"}), 3)

    @defer.inlineCallbacks
    def test_consoleTopicCalls(self):
        """Calls a console executes from its topic-in are counted too."""
        ops = listener("ops", msgtype="xmlcall", **{"topic-in": "ops.calls",
                                                     "topic-out": "ops.answers"})
        yield self.startEngine(listeners=admin() + ops)
        answers = []
        self.engine.broker.subscribe("ops.answers", answers.append)
        self.engine.broker.publish("ops.calls", xmlcall("Engine", "ping", "t1"))
        self.engine.broker.publish("ops.calls", xmlcall("Media", "status", "t2",
                                                        channel="nope"))
        yield waitFor(lambda: len(answers) == 2, what="two answers on ops.answers")
        found = yield self.scrape()
        self.assertEqual(metric(found, "aiengine_console_calls_total", **{
            "class": "Engine", "method": "ping", "status": "ok"}), 1)
        self.assertEqual(metric(found, "aiengine_console_calls_total", **{
            "class": "Media", "method": "status", "status": "exception"}), 1)

    @defer.inlineCallbacks
    def test_concurrentScrapes(self):
        """Ten scrapes at once all get the whole exposition."""
        yield self.startAdmin()
        results = yield defer.gatherResults([self.get("/metrics") for _ in range(10)])
        self.assertEqual([response.code for response, _ in results], [200] * 10)
        series = [samples(body) for _, body in results]
        for found in series:
            self.assertEqual(metric(found, "aiengine_channel_up", channel="echo"), 1)
            self.assertEqual(set(found), set(series[0]))
        # Each was served on a connection of its own, open at once.
        self.assertGreater(max(metric(found, "aiengine_listener_connections",
                                      listener="admin") for found in series), 1)
        self.assertEqual(self.engine.listeners["admin"].guard.accepted, 10)

    @defer.inlineCallbacks
    def test_head(self):
        """HEAD answers like GET, without a body."""
        yield self.startAdmin()
        response, body = yield self.get("/metrics", method=b"HEAD")
        self.assertEqual((response.code, body), (200, b""))
        response, body = yield self.get("/health", method=b"HEAD")
        self.assertEqual((response.code, body), (200, b""))


class HealthTests(AdminTestCase):
    """GET /health: 200 while everything is up, 503 naming what is not."""

    @defer.inlineCallbacks
    def test_upThenDown(self):
        yield self.startAdmin()
        response, body = yield self.get("/health")
        self.assertEqual(response.code, 200)
        self.assertEqual(response.headers.getRawHeaders(b"content-type"),
                         [b"application/json"])
        self.assertEqual(json.loads(body), {"status": "ok", "down": []})

        yield self.stopEcho()
        yield waitFor(lambda: self.engine.channels["echo"].state != "connected",
                      what="the channel to notice its server is gone")
        response, body = yield self.get("/health")
        self.assertEqual(response.code, 503)
        answer = json.loads(body)
        self.assertEqual(answer["status"], "down")
        self.assertEqual([(d["kind"], d["name"]) for d in answer["down"]],
                         [("channel", "echo")])
        self.assertIn(answer["down"][0]["state"], ("connecting", "waiting"))

    @defer.inlineCallbacks
    def test_onDemandChannelIsNotDown(self):
        """An on-demand channel connects when needed: not connected is fine."""
        yield self.startEngine(
            listeners=admin(),
            channels=channel("later", self.echoPort.getHost().port, permanent="false"))
        response, body = yield self.get("/health")
        self.assertEqual((response.code, json.loads(body)["status"]), (200, "ok"))

    @defer.inlineCallbacks
    def test_bridgeNotConnected(self):
        """A bridge not connected to its MQTT broker is down; connected, it is not."""
        bridge = yield self.startBridged()
        response, body = yield self.get("/health")
        self.assertEqual(response.code, 503)
        self.assertEqual(json.loads(body), {"status": "down", "down": [
            {"kind": "bridge", "name": "cluster", "state": "waiting"}]})
        # Connected (as if: these tests have no broker).
        bridge.state = CONNECTED
        response, body = yield self.get("/health")
        self.assertEqual((response.code, json.loads(body)), (200, {"status": "ok",
                                                                   "down": []}))

    @defer.inlineCallbacks
    def test_listenerNotListening(self):
        """A listener that stopped listening is down."""
        yield self.startAdmin()
        yield self.engine.listeners["gate"].stopService()
        response, body = yield self.get("/health")
        self.assertEqual(response.code, 503)
        self.assertEqual(json.loads(body)["down"], [
            {"kind": "listener", "name": "gate", "state": "not listening"}])
        self.assertEqual(health(self.engine)["status"], "down")


class RequestTests(AdminTestCase):
    """Paths and methods that are not served."""

    @defer.inlineCallbacks
    def test_listedAtTheConsole(self):
        """Engine.listeners, both forms, with an admin listener among them:
        its guard's counters (its web site counts nothing of its own)."""
        yield self.startAdmin()
        yield self.get("/health")
        client = yield self.console()
        [listeners, table] = yield self.call(client, xmlcall(
            "Engine", "listeners", requestId="x") + xmlcall(
            "Engine", "listeners", requestId="t", format="table"), ["x", "t"])
        self.assertEqual((listeners.get("status"), table.get("status")), ("OK", "OK"))
        [adminElement] = [e for e in listeners.findall("listener")
                          if e.get("name") == "admin"]
        self.assertEqual(adminElement.get("accepted"), "1")
        self.assertIn("openConnections", adminElement.attrib)
        [row] = [line for line in table.findtext("table").splitlines()
                 if line.startswith("admin ")]
        self.assertEqual(row.split()[1], f"127.0.0.1:{self.port('admin')}")

    @defer.inlineCallbacks
    def test_notFound(self):
        yield self.startAdmin()
        # "/" is the dashboard's (tests/test_dashboard.py).
        for path in ("/api/nope", "/metrics/", "/healthz", "/metrics/x"):
            response, _ = yield self.get(path)
            self.assertEqual(response.code, 404, path)

    @defer.inlineCallbacks
    def test_methodNotAllowed(self):
        yield self.startAdmin()
        for method in (b"POST", b"PUT", b"DELETE"):
            response, _ = yield self.get("/metrics", method=method)
            self.assertEqual(response.code, 405)
            self.assertEqual(response.headers.getRawHeaders(b"allow"), [b"GET, HEAD"])

    @defer.inlineCallbacks
    def test_maxConnections(self):
        """max-connections applies: a second connection is closed at once."""
        yield self.startAdmin(admin(**{"max-connections": "1"}))
        first = yield self.get("/health")
        self.assertEqual(first[0].code, 200)  # its connection stays in the pool
        fresh = Agent(reactor, pool=HTTPConnectionPool(reactor, persistent=False))
        url = f"http://127.0.0.1:{self.port('admin')}/health".encode()
        yield self.assertFailure(fresh.request(b"GET", url), Exception)
        self.assertEqual(self.engine.listeners["admin"].guard.refused, 1)

    @defer.inlineCallbacks
    def test_idleTimeout(self):
        """idle-timeout applies: a kept-alive connection left idle is closed."""
        yield self.startAdmin(admin(**{"idle-timeout": "0.1"}))
        response, _ = yield self.get("/health")
        self.assertEqual(response.code, 200)
        guard = self.engine.listeners["admin"].guard
        yield waitFor(lambda: guard.timedOut == 1 and not guard.protocols,
                      what="the idle connection to be closed")

    @defer.inlineCallbacks
    def test_tls(self):
        """With tls.certificate and tls.key it serves HTTPS."""
        files = makeCertificates(self.mktemp())
        yield self.startAdmin(admin(**{"tls.certificate": files["certificate"],
                                       "tls.key": files["key"]}))
        with open(files["ca"], "rb") as f:
            policy = BrowserLikePolicyForHTTPS(trustRoot=Certificate.loadPEM(f.read()))
        agent = Agent(reactor, contextFactory=policy, pool=self.pool)
        url = f"https://127.0.0.1:{self.port('admin')}/health".encode()
        response = yield agent.request(b"GET", url)
        body = yield readBody(response)
        self.assertEqual((response.code, json.loads(body)["status"]), (200, "ok"))
        # Plain HTTP gets no answer from a TLS listener.
        yield self.assertFailure(
            Agent(reactor, pool=HTTPConnectionPool(reactor, persistent=False)).request(
                b"GET", url.replace(b"https:", b"http:")), Exception)


class AuthTests(AdminTestCase):
    """auth=true: requests need ``Authorization: Bearer <secret>``."""

    def secretFile(self, secret=b"s3cret-token"):
        path = self.mktemp()
        with open(path, "wb") as f:
            f.write(secret + b"\n")
        os.chmod(path, 0o600)
        return os.path.abspath(path)

    @defer.inlineCallbacks
    def test_bearer(self):
        yield self.startAdmin(admin(**{"auth": "true",
                                       "auth.secret-file": self.secretFile()}))
        right = {b"authorization": [b"Bearer s3cret-token"]}
        response, body = yield self.get("/health", headers=right)
        self.assertEqual(response.code, 200)
        response, body = yield self.get("/metrics", headers=right)
        self.assertEqual(response.code, 200)
        self.assertIn(b"aiengine_channel_up", body)

        for headers in (None, {b"authorization": [b"Basic czNjcmV0LXRva2Vu"]},
                        {b"authorization": [b"Bearer"]}):
            for path in ("/metrics", "/health", "/nope"):
                response, body = yield self.get(path, headers=headers)
                self.assertEqual(response.code, 401, (path, headers))
                self.assertEqual(response.headers.getRawHeaders(b"www-authenticate"),
                                 [b'Bearer realm="aiengine"'])
                self.assertNotIn(b"aiengine_", body)

        resource = self.engine.listeners["admin"].factory.resource
        # A long first wait, so that the next request surely comes before its end.
        resource.throttle.first = 30.0
        response, body = yield self.get("/metrics",
                                        headers={b"authorization": [b"Bearer wrong"]})
        self.assertEqual(response.code, 401)
        # After a wrong secret, the address waits: even the right one is not
        # checked meanwhile.
        response, body = yield self.get("/metrics", headers=right)
        self.assertEqual(response.code, 429)
        self.assertIn(response.headers.getRawHeaders(b"retry-after"), ([b"30"], [b"29"]))
        self.assertNotIn(b"aiengine_", body)
        self.assertEqual(resource.authThrottled, 1)
        resource.throttle.succeeded("127.0.0.1")
        response, body = yield self.get("/metrics", headers=right)
        self.assertEqual(response.code, 200)

    def test_nonLoopbackNeedsAuth(self):
        """As for the console: an admin listener on another interface needs auth."""
        text = ("<service><listeners>" + admin(interface="0.0.0.0")
                + "</listeners></service>")
        e = self.assertRaises(ConfigError, parse, text.encode())
        self.assertIn("an admin listener reachable from other machines (0.0.0.0) must "
                      "require authentication", str(e))
        self.assertEqual(e.prop, "interface")
        text = ("<service><listeners>" + admin(**{
            "interface": "0.0.0.0", "auth": "true",
            "auth.secret-file": self.secretFile()}) + "</listeners></service>")
        config = parse(text.encode())
        self.assertEqual(config.listeners[0].msgtype, "admin")
        self.assertTrue(config.listeners[0].auth)
        # run="false": nothing is exposed, nothing to refuse.
        parse(text.replace('<listener name="admin">',
                           '<listener name="admin" run="false">').replace(
            '<property name="auth" value="true"/>', "").encode())


class ConfigTests(unittest.TestCase):
    """media.xml rules for msgtype admin."""

    def parse(self, listenerXml):
        return parse(f"<service><listeners>{listenerXml}</listeners></service>".encode(),
                     "t.xml")

    def test_minimal(self):
        """No protocol needed; loopback by default."""
        config = self.parse(admin()).listeners[0]
        self.assertEqual((config.msgtype, config.interface), ("admin", "127.0.0.1"))

    def test_protocolIgnored(self):
        """Protocol settings are accepted and not used."""
        self.parse(admin(protocol="binary-stream", **{"protocol.showmessages": "true"}))

    def test_topicsRefused(self):
        for prop in ("topic-in", "topic-out"):
            e = self.assertRaises(ConfigError, self.parse, admin(**{prop: "t"}))
            self.assertEqual(e.prop, prop)
            self.assertIn("an admin listener serves the dashboard, /metrics and /health "
                          "over HTTP and routes no messages: remove it", str(e))
            self.assertTrue(str(e).startswith("t.xml:"), str(e))
            self.assertIn("listener 'admin'", str(e))

    def test_directionRefused(self):
        e = self.assertRaises(ConfigError, self.parse, admin(direction="in"))
        self.assertEqual(e.prop, "direction")

    def test_overflowRefused(self):
        e = self.assertRaises(ConfigError, self.parse, admin(overflow="drop"))
        self.assertEqual(e.prop, "overflow")

    def test_inCode(self):
        """checkListener applies the same rules to a configuration built in code."""
        protocol = ProtocolConfig.of("text-messages")
        checkListener(ListenerConfig(name="a", port=0, protocol=protocol, msgtype="admin"))
        self.assertRaises(ConfigError, checkListener, ListenerConfig(
            name="a", port=0, protocol=protocol, msgtype="admin", topic_out="t"))
        self.assertRaises(ConfigError, checkListener, ListenerConfig(
            name="a", port=0, protocol=protocol, msgtype="admin", interface="::"))

    def test_unknownMsgtype(self):
        e = self.assertRaises(ConfigError, self.parse, admin().replace(
            'value="admin"', 'value="admn"'))
        self.assertIn("did you mean 'admin'?", str(e))


class CallCountTests(unittest.TestCase):
    """CallRegistry.called: counts and buckets, without the network."""

    def test_buckets(self):
        registry = CallRegistry()
        from aiengine.console.builtins import registerBuiltins
        registerBuiltins(registry)
        ping = registry.lookup("Engine", "ping")
        for seconds in (0.00005, 0.0001, 0.3, 100.0):
            registry.called(ping, True, seconds)
        registry.called(ping, False, 0.001)
        self.assertEqual(registry.calls, {("Engine", "ping", "ok"): 4,
                                          ("Engine", "ping", "exception"): 1})
        stats = registry.callStats[("Engine", "ping")]
        self.assertEqual(stats[:2], [4, 1])
        times = stats[2:]
        self.assertEqual(len(times), len(CALL_BUCKETS) + 2)
        # le semantics: 0.0001 is in the 0.0001 bucket.
        self.assertEqual(times[0], 2)
        self.assertEqual(times[CALL_BUCKETS.index(0.001)], 1)
        self.assertEqual(times[CALL_BUCKETS.index(0.5)], 1)
        self.assertEqual(times[len(CALL_BUCKETS)], 1)  # above the last bound
        self.assertAlmostEqual(times[-1], 0.00005 + 0.0001 + 0.3 + 100.0 + 0.001)
        self.assertEqual(sum(times[:-1]), 5)

    def test_reRegistered(self):
        """A class registered again under its name goes on counting."""
        registry = CallRegistry()
        registry.register(Slow())
        registry.called(registry.lookup("Slow", "boom"), True, 0.01)
        registry.unregister("Slow")
        registry.register(Slow())
        registry.called(registry.lookup("Slow", "boom"), False, 0.01)
        self.assertEqual(registry.calls, {("Slow", "boom", "ok"): 1,
                                          ("Slow", "boom", "exception"): 1})
