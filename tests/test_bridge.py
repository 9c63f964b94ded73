"""MQTT bridges: configuration, and two engines sharing topics through a
real mosquitto on a free loopback port."""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time

from twisted.internet import defer, protocol, reactor, threads
from twisted.logger import LogLevel, formatEvent, globalLogPublisher
from twisted.trial import unittest

from aiengine.bridge import CONNECTED, READ_SIZE, STOPPED, WAITING
from aiengine.config import BridgeConfig, BridgeTopic, ConfigError, ServiceConfig, parse
from aiengine.console.interfaces import Call, CallError
from aiengine.engine import Engine
from aiengine.mqttwire import encodeProperties, splitPackets
from tests.support import waitFor

MOSQUITTO = "/usr/sbin/mosquitto"


def requireMosquitto() -> None:
    """Skip the test when the distribution's mosquitto is not installed."""
    if not os.access(MOSQUITTO, os.X_OK):
        raise unittest.SkipTest(f"mosquitto is not installed ({MOSQUITTO}); "
                                "apt-get install mosquitto")


def startEngine(case, config) -> Engine:
    """An Engine for ``config``, started, and stopped at ``case``'s cleanup."""
    engine = Engine(config, reactor=reactor)
    engine.startService()
    case.addCleanup(engine.stopService)
    return engine


def bridgeConnected(engine, what):
    """A Deferred that fires once ``engine``'s bridge ``cluster`` is connected."""
    return waitFor(lambda: engine.bridges["cluster"].state == CONNECTED, timeout=10,
                   what=what)


def freePort() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Mosquitto:
    """A mosquitto on 127.0.0.1:``port``, persistence off unless
    :meth:`configure` says otherwise."""

    def __init__(self, case):
        self.case = case
        self.port = freePort()
        self.dir = tempfile.mkdtemp(prefix="aiengine-mosquitto-")
        case.addCleanup(shutil.rmtree, self.dir, True)
        self.conf = os.path.join(self.dir, "mosquitto.conf")
        self.configure("persistence false")
        self.process = None
        case.addCleanup(self.stop)

    def configure(self, *lines):
        """Write its configuration: the listener and ``lines``."""
        with open(self.conf, "w") as f:
            f.write("\n".join([
                f"listener {self.port} 127.0.0.1", "allow_anonymous true",
                "log_dest none",
                # While a node reads nothing (its topic is busy), the broker
                # keeps its messages: more than mosquitto's 1,000.
                "max_queued_messages 100000",
                # Started as root, mosquitto becomes the user "mosquitto", who
                # may not read or write in our directory; as any other user,
                # this line changes nothing.
                f"user {pwd.getpwuid(os.geteuid()).pw_name}", *lines]) + "\n")

    def start(self):
        self.process = subprocess.Popen([MOSQUITTO, "-c", self.conf],
                                        stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"mosquitto did not start on {self.port}")
                time.sleep(0.02)

    def stop(self):
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None


def bridge(port, node, *topics, **settings):
    return BridgeConfig(name="cluster", host="127.0.0.1", port=port, node_id=node,
                        topics=tuple(BridgeTopic(*t) for t in topics),
                        reconnection_timeout=0.2, **settings)


class BridgeConfigTests(unittest.TestCase):
    """``<bridges>`` in media.xml: defaults, and errors with file and line."""

    XML = """<service>
<bridges>
  <bridge name="cluster">
    <property name="engine" value="mqtt"/>
    <property name="host" value="127.0.0.1"/>
    <property name="node-id" value="node-a"/>
    <topic local="sensor" remote="aie/sensor" direction="out" qos="1"/>
    <topic local="chat" remote="aie/chat" direction="both"/>
  </bridge>
</bridges>
</service>"""

    def fails(self, xml):
        with self.assertRaises(ConfigError) as caught:
            parse(xml, "/etc/media.xml")
        return str(caught.exception)

    CONSOLE_BRIDGED = """<service><listeners>
<listener name="cmds"><property name="port" value="0"/>
<property name="interface" value="127.0.0.1"/><property name="msgtype" value="xmlcall"/>
<property name="protocol" value="xml-messages"/>
<property name="topic-in" value="b.cmd"/><property name="topic-out" value="b.res"/>
</listener></listeners>
<bridges><bridge name="cluster">
<property name="host" value="HOST"/><property name="node-id" value="b"/>EXTRA
<topic local="b.cmd" remote="n/b/cmd" direction="in" qos="1"/>
</bridge></bridges></service>"""

    def test_consoleOpenedToAnonymousBroker(self):
        """Calls brought in to an unauthenticated console from a broker that
        is not on loopback and takes anyone: refused, with the line."""
        xml = self.CONSOLE_BRIDGED.replace("EXTRA", "")
        message = self.fails(xml.replace("HOST", "192.0.2.7"))
        self.assertIn("/etc/media.xml:9: bridge 'cluster'", message)
        self.assertIn("the topic-in of console 'cmds'", message)
        # a loopback broker, or one the bridge logs in to, is accepted
        parse(xml.replace("HOST", "127.0.0.1"), "/etc/media.xml")
        parse(self.CONSOLE_BRIDGED.replace("HOST", "192.0.2.7").replace(
            "EXTRA", '<property name="username" value="node-b"/>'), "/etc/media.xml")

    def test_defaults(self):
        (b,) = parse(self.XML, "/etc/media.xml").bridges
        self.assertEqual((b.port, b.keepalive, b.session_expiry, b.queue_size,
                          b.reconnection_timeout, b.effective_client_id),
                         (1883, 60, 0, 10000, 10.0, "aiengine-node-a-cluster"))
        self.assertEqual(b.topics, (BridgeTopic("sensor", "aie/sensor", "out", 1, 7),
                                    BridgeTopic("chat", "aie/chat", "both", 0, 8)))

    def test_errors(self):
        for old, new, expected in (
                ('"mqtt"', '"amqp"', "/etc/media.xml:4: bridge 'cluster': property "
                                     "'engine': 'amqp' is not one of mqtt"),
                ('"both"', '"sideways"', "/etc/media.xml:8: bridge 'cluster': <topic>: "
                                         "attribute 'direction'"),
                ('qos="1"', 'qos="2"', "/etc/media.xml:7: bridge 'cluster': <topic>: "
                                       "attribute 'qos'"),
                ('"node-id" value', '"nodeid" value', "/etc/media.xml:6: bridge "
                                                      "'cluster': property 'nodeid': "
                                                      "unknown property"),
                ('aie/chat', 'aie/#', "/etc/media.xml:8: bridge 'cluster': <topic"),
                ('<topic local="chat"', '<topic lokal="chat"',
                 "/etc/media.xml:8: bridge 'cluster': <topic>: unknown attribute "
                 "'lokal'"),
                ('<property name="node-id" value="node-a"/>', '',
                 "/etc/media.xml:3: bridge 'cluster': property 'node-id': missing")):
            self.assertIn(old, self.XML)
            self.assertIn(expected, self.fails(self.XML.replace(old, new)))

    def test_passwordWithoutUser(self):
        secret = self.mktemp()
        with open(secret, "w") as f:
            f.write("pw\n")
        xml = self.XML.replace(
            '<property name="engine" value="mqtt"/>',
            f'<property name="password-file" value="{os.path.abspath(secret)}"/>')
        self.assertIn("/etc/media.xml:3: bridge 'cluster': property 'username'",
                      self.fails(xml))

    def test_checkedInCode(self):
        with self.assertRaises(ConfigError):
            Engine(ServiceConfig(path="<test>", bridges=(
                bridge(1883, "a", ("t", "r", "sideways")),)), reactor=reactor)


class BridgeTests(unittest.TestCase):
    """Two engines, node-a and node-b, bridged through one mosquitto."""

    timeout = 60

    def setUp(self):
        requireMosquitto()
        self.mosquitto = Mosquitto(self)
        self.mosquitto.start()

    @defer.inlineCallbacks
    def engine(self, node, *topics, wait=True, **settings):
        engine = startEngine(self, ServiceConfig(path="<test>", bridges=(
            bridge(self.mosquitto.port, node, *topics, **settings),)))
        if wait:
            yield bridgeConnected(engine, f"{node} connected")
        return engine

    def collect(self, engine, topic):
        got = []
        engine.broker.subscribe(topic, got.append)
        return got

    @defer.inlineCallbacks
    def flow(self, qos, count=1000):
        a = yield self.engine("node-a", ("sensor", "aie/sensor", "out", qos))
        b = yield self.engine("node-b", ("sensor", "aie/sensor", "in", qos))
        got = self.collect(b, "sensor")
        for n in range(count):
            a.broker.publish("sensor", f"m{n}")
        yield waitFor(lambda: len(got) >= count, timeout=20, what="messages at B")
        yield threads.deferToThread(time.sleep, 0.2)  # none more may come
        self.assertEqual([m.text for m in got], [f"m{n}" for n in range(count)])
        self.assertTrue(all(m.source == "bridge:cluster" and m.session is None
                            for m in got))
        self.assertEqual(a.bridges["cluster"].status()["messagesOut"], count)
        self.assertEqual(b.bridges["cluster"].status()["messagesIn"], count)

    def test_qos0(self):
        return self.flow(0)

    def test_busySubscriberAtBHoldsAcks(self):
        """B's only local subscriber is busy for a while: B holds its acks,
        so the broker sends it no more than its receive-maximum; A's window
        and then its queue fill, A's publishers pause; nothing is dropped
        anywhere, and everything arrives in order."""
        return self.busyAtB("in", 1)

    def test_busySubscriberAtBothHoldsAcks(self):
        """The same with a ``both`` topic at B, whose bridge must go on
        reading (its own acks come on the same socket)."""
        return self.busyAtB("both", 1)

    def test_busySubscriberAtBStopsReadingQoS0(self):
        """QoS 0 has no acks to hold: an in-only bridge stops reading, and
        the broker keeps the messages."""
        return self.busyAtB("in", 0)

    @defer.inlineCallbacks
    def busyAtB(self, direction, qos):
        # More than a busy subscriber's queue holds (10,000), and no more than
        # A's queue and its own subscription's queue take while A publishes
        # them all at once (2,000 + 10,000): the test is not a paused producer.
        count = 11000
        a = yield self.engine("node-a", ("sensor", "aie/sensor", "out", qos),
                              queue_size=2000)
        b = yield self.engine("node-b", ("sensor", "aie/sensor", direction, qos),
                              receive_maximum=50)
        got, gate = [], defer.Deferred()

        def slow(message):
            got.append(message.text)
            if len(got) == 1:
                return gate  # busy until the test opens the gate
            return None

        subscription = b.broker.subscribe("sensor", slow, name="slow")
        for n in range(count):
            a.broker.publish("sensor", f"m{n}")
        yield waitFor(lambda: b.bridges["cluster"].counters["inboundPaused"] >= 1,
                      what="B paused")
        # A sends everything (the broker takes it) while B's subscriber is busy.
        yield waitFor(lambda: a.bridges["cluster"].counters["messagesOut"] == count,
                      timeout=30, what="A sent everything")
        yield threads.deferToThread(time.sleep, 0.3)
        self.assertEqual(len(got), 1)
        # The broker keeps the messages, not B's memory: at most
        # receive-maximum (QoS 1), or what one read had brought in (QoS 0),
        # waits for the subscriber.
        if qos:
            self.assertLessEqual(subscription.queued, 50)
            self.assertEqual(b.bridges["cluster"].status()["heldAcks"],
                             subscription.queued + 1)
        else:
            # every PUBLISH here is more than 40 bytes
            self.assertLess(subscription.queued, READ_SIZE // 40)
        gate.callback(None)
        yield waitFor(lambda: len(got) >= count, timeout=30, what="every message at B")
        self.assertEqual(got, [f"m{n}" for n in range(count)])
        self.assertEqual((b.broker.topic("sensor").dropped,
                          a.broker.topic("sensor").dropped,
                          a.bridges["cluster"].counters["dropped"]), (0, 0, 0))

    def test_qos1(self):
        return self.flow(1)

    @defer.inlineCallbacks
    def test_bothNoEchoNoLoop(self):
        a = yield self.engine("node-a", ("chat", "aie/chat", "both", 1))
        b = yield self.engine("node-b", ("chat", "aie/chat", "both", 1))
        atA, atB = self.collect(a, "chat"), self.collect(b, "chat")
        a.broker.publish("chat", "from a")
        yield waitFor(lambda: atB, what="a's message at B")
        b.broker.publish("chat", "from b")
        yield waitFor(lambda: len(atA) == 2, what="b's message at A")
        yield threads.deferToThread(time.sleep, 0.3)
        self.assertEqual([m.text for m in atA], ["from a", "from b"])
        self.assertEqual([m.text for m in atB], ["from a", "from b"])
        self.assertEqual(atA[1].source, "bridge:cluster")
        self.assertEqual(atB[0].source, "bridge:cluster")
        for engine in (a, b):
            status = engine.bridges["cluster"].status()
            self.assertEqual((status["messagesIn"], status["messagesOut"]), (1, 1))
            # the message that came in was seen on the way out, and kept in
            self.assertEqual(status["loopsDropped"], 1)

    @defer.inlineCallbacks
    def test_attributesAndBinary(self):
        a = yield self.engine("node-a", ("data", "aie/data", "out", 1))
        b = yield self.engine("node-b", ("data", "aie/data", "in", 1))
        got = self.collect(b, "data")
        body = bytes(range(256)) * 4
        a.broker.publish("data", body, msgtype="xml",
                         attributes={"status": "200", "x-name": "é ü"})
        yield waitFor(lambda: got, what="the message at B")
        self.assertEqual(got[0].body, body)
        self.assertEqual(got[0].msgtype, "xml")
        self.assertEqual(dict(got[0].attributes), {"status": "200", "x-name": "é ü"})

    @defer.inlineCallbacks
    def test_connectedMeansSubscribed(self):
        a = yield self.engine("node-a", ("t", "aie/t", "out", 0))
        b = yield self.engine("node-b", ("t", "aie/t", "in", 0), wait=False)
        got = self.collect(b, "t")
        bridgeB = b.bridges["cluster"]
        sent = defer.Deferred()
        seen = []

        def poll():
            # publish in the very turn B reports connected
            if bridgeB.state == CONNECTED and not seen:
                seen.append(True)
                a.broker.publish("t", "first")
                sent.callback(None)
            elif not seen:
                reactor.callLater(0, poll)

        poll()
        yield sent
        yield waitFor(lambda: got, what="the message published right after connected")
        self.assertEqual([m.text for m in got], ["first"])

    @defer.inlineCallbacks
    def test_console(self):
        a = yield self.engine("node-a", ("t", "aie/t", "out", 0))
        listed = a.registry.lookup("Bridges", "list").function(Call({}, None, a))
        self.assertEqual([(e.tag, dict(e.attrib)) for e in listed],
                         [("bridge", {"name": "cluster", "state": "connected"})])
        a.broker.publish("t", "x")
        status = a.registry.lookup("Bridges", "status").function(
            Call({"name": "cluster"}, None, a))
        self.assertEqual(status.get("state"), "connected")
        self.assertEqual(status.get("messagesOut"), "1")
        for counter in ("messagesIn", "duplicatesDropped", "loopsDropped", "queued",
                        "dropped", "reconnects", "paused"):
            self.assertEqual(status.get(counter), "0", counter)
        with self.assertRaises(CallError) as caught:
            a.registry.lookup("Bridges", "status").function(
                Call({"name": "clustr"}, None, a))
        self.assertIn("did you mean 'cluster'", str(caught.exception))

    @defer.inlineCallbacks
    def test_brokerRestart(self):
        a = yield self.engine("node-a", ("sensor", "aie/sensor", "out", 1),
                              queue_size=100)
        b = yield self.engine("node-b", ("sensor", "aie/sensor", "in", 1))
        got = self.collect(b, "sensor")
        bridgeA = a.bridges["cluster"]
        a.broker.publish("sensor", "before")
        yield waitFor(lambda: got, what="the first message")
        # Without persistence the restarted broker knows no subscription: A
        # may connect again only once B has subscribed again, or B would miss
        # some of A's messages.
        bridgeB, connect = b.bridges["cluster"], bridgeA._connect
        bridgeA._connect = lambda: (
            connect() if bridgeB.state == CONNECTED and bridgeB.counters["reconnects"]
            else bridgeA._schedule(0.05))
        yield threads.deferToThread(self.mosquitto.stop)
        yield waitFor(lambda: bridgeA.state != CONNECTED, what="A notices")
        # 150 messages for a queue of 100: the publisher is paused, not dropped
        # (the topic's subscription holds the rest)
        for n in range(150):
            a.broker.publish("sensor", f"m{n}")
        self.assertIn(bridgeA.state, (WAITING, "connecting"))
        self.assertEqual(bridgeA.status()["queued"], 100)
        self.assertEqual(bridgeA.status()["paused"], 1)
        self.assertEqual(bridgeA.status()["dropped"], 0)
        yield threads.deferToThread(self.mosquitto.start)
        yield waitFor(lambda: len(got) >= 151, timeout=20, what="the queued messages")
        yield threads.deferToThread(time.sleep, 0.2)
        self.assertEqual([m.text for m in got], ["before"] + [f"m{n}" for n in range(150)])
        self.assertGreaterEqual(bridgeA.status()["reconnects"], 1)
        self.assertEqual(bridgeA.status()["queued"], 0)

    @defer.inlineCallbacks
    def test_stopWhileConnecting(self):
        """A bridge stopped while connecting leaves nothing behind."""
        self.mosquitto.stop()
        a = yield self.engine("node-a", ("t", "aie/t", "out", 0), wait=False)
        yield waitFor(lambda: a.bridges["cluster"].state == WAITING,
                      what="the failed attempt")
        yield a.stopService()
        self.assertEqual(a.bridges["cluster"].state, STOPPED)


class _FakeBroker(protocol.Protocol):
    """Just enough of an MQTT 5 broker: CONNACK, SUBACK, and the packets
    that the bridge sends, kept for the test."""

    def connectionMade(self):
        self.factory.connections.append(self)
        self.buffer = b""
        self.packets = []

    def dataReceived(self, data):
        self.buffer += data
        packets, end = splitPackets(self.buffer)
        for start, body, stop in packets:
            kind = self.buffer[start] >> 4
            self.packets.append((kind, self.buffer[body:stop]))
            if kind == 1:  # CONNECT
                self.transport.write(b"\x20\x03\x00\x00\x00")
            elif kind == 8:  # SUBSCRIBE: grant QoS 1
                self.transport.write(b"\x90\x04" + self.buffer[body:body + 2] + b"\x00\x01")
        self.buffer = self.buffer[end:]

    def acks(self):
        return [int.from_bytes(body[:2], "big") for kind, body in self.packets if kind == 4]


def _publishPacket(topic, qos, mid, body, origin):
    block = encodeProperties(None, [("origin", origin)])
    rest = len(topic).to_bytes(2, "big") + topic.encode()
    if qos:
        rest += mid.to_bytes(2, "big")
    rest += block + body
    assert len(rest) < 128
    return bytes((0x30 | qos << 1, len(rest))) + rest


class FakeBrokerTests(unittest.TestCase):
    """The bridge's own handling of PUBLISH packets and their acks, on the
    wire, against a scripted broker on loopback."""

    @defer.inlineCallbacks
    def setUp(self):
        factory = protocol.Factory.forProtocol(_FakeBroker)
        factory.connections = []
        self.broker = factory
        port = reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        self.engine = Engine(ServiceConfig(path="<test>", bridges=(bridge(
            port.getHost().port, "node-b", ("sensor", "aie/sensor", "in", 1)),)),
            reactor=reactor)
        self.engine.startService()
        self.addCleanup(self.engine.stopService)
        self.bridge = self.engine.bridges["cluster"]
        yield waitFor(lambda: self.bridge.state == CONNECTED, what="connected")
        self.peer = factory.connections[-1]
        self.addCleanup(lambda: [c.transport.loseConnection() for c in factory.connections])

    @defer.inlineCallbacks
    def test_acksHeldWhileBusy(self):
        """PUBACKs go out once the message is published locally, and not
        while the local subscriber is busy; then all of them, in order."""
        got, gate = [], defer.Deferred()

        def slow(message):
            got.append(message.text)
            return gate if len(got) == 1 else None

        self.engine.broker.subscribe("sensor", slow)
        self.peer.transport.write(b"".join(
            _publishPacket("aie/sensor", 1, mid, b"m%d" % mid, f"node-a:1/{mid}")
            for mid in (11, 12, 13)))
        yield waitFor(lambda: self.bridge.status()["heldAcks"] == 3, what="acks held")
        yield threads.deferToThread(time.sleep, 0.1)
        self.assertEqual(self.peer.acks(), [])
        gate.callback(None)
        yield waitFor(lambda: len(self.peer.acks()) == 3, what="acks")
        self.assertEqual(self.peer.acks(), [11, 12, 13])
        self.assertEqual(got, ["m11", "m12", "m13"])

    @defer.inlineCallbacks
    def test_duplicateAckedNotDelivered(self):
        """A copy sent again (same origin) is acknowledged, not delivered."""
        got = []
        self.engine.broker.subscribe("sensor", lambda m: got.append(m.text))
        self.peer.transport.write(_publishPacket("aie/sensor", 1, 1, b"x", "node-a:1/7"))
        self.peer.transport.write(_publishPacket("aie/sensor", 1, 2, b"x", "node-a:1/7"))
        yield waitFor(lambda: len(self.peer.acks()) == 2, what="both acked")
        self.assertEqual((got, self.bridge.counters["duplicatesDropped"]), (["x"], 1))

    @defer.inlineCallbacks
    def test_malformedPublishReconnects(self):
        """A malformed PUBLISH ends the connection with a warning; what came
        before it in the same read is delivered, and the bridge connects
        again."""
        got = []
        self.engine.broker.subscribe("sensor", lambda m: got.append(m.text))
        lines = []

        def observe(event):
            if event.get("log_level") == LogLevel.warn:
                lines.append(formatEvent(event))

        globalLogPublisher.addObserver(observe)
        self.addCleanup(globalLogPublisher.removeObserver, observe)
        self.peer.transport.write(_publishPacket("aie/sensor", 0, None, b"good", "node-a:1/1")
                                  + b"\x30\x06\x00\x01t\x02\x11\x00")
        yield waitFor(lambda: len(self.broker.connections) == 2, what="reconnected")
        yield waitFor(lambda: self.bridge.state == CONNECTED, what="connected again")
        self.assertEqual(got, ["good"])
        self.assertEqual(self.bridge.counters["reconnects"], 1)
        self.assertTrue(any("sent a malformed PUBLISH (property 0x11 in a PUBLISH)" in line
                            for line in lines), lines)


class TlsBridgeTests(unittest.TestCase):
    """Bridges speaking TLS to a mosquitto whose certificate names
    ``localhost``, checked against ``tls.ca`` and ``tls.hostname``."""

    def setUp(self):
        requireMosquitto()
        from tests.certs import makeCertificates
        self.mosquitto = Mosquitto(self)
        self.certs = makeCertificates(os.path.join(self.mosquitto.dir, "certs"))
        self.mosquitto.configure("persistence false", f"cafile {self.certs['ca']}",
                                 f"certfile {self.certs['certificate']}",
                                 f"keyfile {self.certs['key']}")
        self.mosquitto.start()

    def engine(self, node, direction, **settings):
        return startEngine(self, ServiceConfig(path="<test>", bridges=(bridge(
            self.mosquitto.port, node, ("sensor", "aie/sensor", direction, 1),
            tls=True, **settings),)))

    @defer.inlineCallbacks
    def test_flow(self):
        a = self.engine("node-a", "out", tls_ca=self.certs["ca"], tls_hostname="localhost")
        b = self.engine("node-b", "in", tls_ca=self.certs["ca"], tls_hostname="localhost")
        for engine in (a, b):
            yield bridgeConnected(engine, "connected over TLS")
        got = []
        b.broker.subscribe("sensor", lambda m: got.append(m.text))
        for n in range(2000):
            a.broker.publish("sensor", f"m{n}")
        yield waitFor(lambda: len(got) >= 2000, timeout=20, what="messages at B")
        self.assertEqual(got, [f"m{n}" for n in range(2000)])

    @defer.inlineCallbacks
    def test_wrongHostnameRefused(self):
        """A certificate that does not name ``tls.hostname``: never connected,
        and the reason is logged."""
        a = self.engine("node-a", "out", tls_ca=self.certs["ca"],
                        tls_hostname="elsewhere.example")
        bridge_ = a.bridges["cluster"]
        yield waitFor(lambda: bridge_._streak.count >= 1, timeout=10, what="a failure")
        self.assertNotEqual(bridge_.state, CONNECTED)
