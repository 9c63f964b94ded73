"""Tests for aiengine.channels: outbound channels ("active sockets").

Real loopback servers on 127.0.0.1 port 0 where connecting is the point;
``MemoryReactorClock`` and ``StringTransport`` where timing or transport
details are.
"""

import dataclasses
import random
import socket

from twisted.internet import defer, error, reactor, task
from twisted.internet.protocol import Factory
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import LogLevel, globalLogPublisher
from twisted.protocols.basic import LineReceiver
from twisted.protocols.policies import WrappingFactory
from twisted.trial import unittest
from twisted.web.resource import Resource
from twisted.web.server import Site

from aiengine import channels
from aiengine.broker import Broker
from aiengine.channels import (
    CONNECTED, CONNECTING, IDLE, STOPPED, WAITING, Channel, ChannelStopped,
    reconnectDelay,
)
from aiengine.config import ChannelConfig, ProtocolConfig, ProtocolSettings
from aiengine.protocols.base import FramingProtocol
from aiengine.testing import FakeServer, attempts, lastAttempt, stopChannel
from tests.support import ReservedPort, pendingCalls
from tests.test_broker import Producer


def makeConfig(port=4000, host="127.0.0.1", name="test", delimiter=b"\n",
               wait=30.0, maxPacket=1000000, **kw):
    settings = ProtocolSettings(name="text-messages", delimiter=delimiter,
                                wait_time_sec=wait, max_packet_size=maxPacket)
    return ChannelConfig(name=name, host=host, port=port,
                         protocol=ProtocolConfig("text-messages", settings, settings), **kw)


class LogCapture:
    """Events of one channel's log namespace, from now until cleanup."""

    def __init__(self, case, name="test"):
        self.namespace = f"ActiveSocket::{name}"
        self.events = []
        globalLogPublisher.addObserver(self)
        case.addCleanup(globalLogPublisher.removeObserver, self)

    def __call__(self, event):
        if event.get("log_namespace") == self.namespace:
            self.events.append(event)

    def warnings(self):
        return [e for e in self.events if e["log_level"] >= LogLevel.warn]


# -- real loopback servers --------------------------------------------------

class ServerConnection(LineReceiver):
    delimiter = b"\n"

    def connectionMade(self):
        self.lost = defer.Deferred()
        self.lines = []
        self.factory.connections.append(self)
        self.factory.open.append(self)
        if self.factory.dropOnConnect:
            self.transport.loseConnection()

    def lineReceived(self, line):
        self.lines.append(line)
        self.factory.lines.append(line)
        if self.factory.echo:
            self.sendLine(line)

    def connectionLost(self, reason):
        self.factory.open.remove(self)
        self.lost.callback(None)


class ServerFactory(Factory):
    protocol = ServerConnection

    def __init__(self, echo=True, dropOnConnect=False):
        self.echo = echo
        self.dropOnConnect = dropOnConnect
        self.connections = []  # every connection ever accepted
        self.open = []
        self.lines = []


class LoopbackMixin:
    """Servers on 127.0.0.1 and channels on the real reactor, cleaned up."""

    def listen(self, factory, reserved=None):
        """Serve ``factory`` on a new port, or on ``reserved`` (a
        :class:`~tests.support.ReservedPort` from :meth:`reservePort`)."""
        if reserved is None:
            listening = reactor.listenTCP(0, factory, interface="127.0.0.1")
        else:
            listening = reserved.listen(factory)

        def cleanup():
            for conn in list(factory.open):
                conn.transport.loseConnection()
            waits = [c.lost for c in factory.open]
            return defer.gatherResults(waits + [defer.maybeDeferred(listening.stopListening)])

        self.addCleanup(cleanup)
        return listening

    def reservePort(self, restartable=False):
        """A port held for this test: refused until :meth:`listen` serves on
        it, and nobody else's meanwhile (see :class:`~tests.support.ReservedPort`)."""
        reserved = ReservedPort(restartable)
        self.addCleanup(reserved.close)
        return reserved

    def channel(self, config, broker=None):
        broker = broker or Broker(reactor)
        ch = Channel(config, broker, reactor)
        self.addCleanup(ch.stop)
        return ch

    @defer.inlineCallbacks
    def waitFor(self, predicate, timeout=1.5, what="condition"):
        deadline = reactor.seconds() + timeout
        while not predicate():
            if reactor.seconds() > deadline:
                self.fail(f"timed out waiting for {what}")
            yield task.deferLater(reactor, 0.01, lambda: None)

    @defer.inlineCallbacks
    def assertNoAttempt(self, ch, server, seconds=0.1):
        """``ch`` does not connect by itself.

        The proof does not depend on timing: it is not connecting (every
        attempt starts in CONNECTING) and nothing of aiengine's is scheduled
        (no retry timer), so nothing can start an attempt without a call
        from outside.  The short wait then lets real sockets agree: the
        server sees no new connection.
        """
        before = (ch.state, ch.connects, ch.failures, len(server.connections))
        self.assertNotIn(ch.state, (CONNECTING, CONNECTED))
        self.assertEqual(pendingCalls(), [])
        yield task.deferLater(reactor, seconds, lambda: None)
        self.assertEqual((ch.state, ch.connects, ch.failures, len(server.connections)),
                         before)
        self.assertEqual(pendingCalls(), [])


class LoopbackTests(LoopbackMixin, unittest.TestCase):
    """Channels against real servers on loopback."""

    timeout = 10

    @defer.inlineCallbacks
    def test_echoThroughTopics(self):
        server = ServerFactory(echo=True)
        port = self.listen(server).getHost().port
        broker = Broker(reactor)
        ch = self.channel(makeConfig(port, redirect_in=True, redirect_out=True,
                                     topic_in="echo.in", topic_out="echo.out",
                                     msgtype="xml"), broker)
        ch.start()
        yield self.waitFor(lambda: ch.state == CONNECTED, what="connected")
        reply = yield broker.request("echo.out", "echo.in", b"hello", timeout=1.5)
        self.assertEqual(reply.body, b"hello")
        self.assertEqual(reply.source, "test")
        self.assertEqual(reply.msgtype, "xml")
        self.assertEqual(server.lines, [b"hello"])
        status = ch.status()
        self.assertEqual((status["messagesOut"], status["messagesIn"]), (1, 1))
        self.assertEqual((status["bytesOut"], status["bytesIn"]), (6, 6))
        self.assertEqual(status["connects"], 1)
        # With redirect-in nothing is kept for receive().
        self.assertEqual(status["inbox"], 0)
        # A vanished server is noticed in minutes, not the system's two hours.
        sock = ch._protocol.transport.getHandle()
        self.assertEqual(sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE), 1)
        # Small messages go out at once, not after the peer's delayed ACK.
        self.assertEqual(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY), 1)
        if hasattr(socket, "TCP_KEEPIDLE"):
            self.assertEqual(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE),
                             channels.KEEPALIVE_IDLE)

    @defer.inlineCallbacks
    def test_refusedThenServerStartsOnSamePort(self):
        reserved = self.reservePort()
        ch = self.channel(makeConfig(reserved.port, reconnection_timeout=0.2))
        ch.start()
        yield self.waitFor(lambda: ch.failures >= 1 and ch.state == WAITING,
                           what="a failed attempt")
        self.assertIn("cannot connect", ch.status()["lastError"])
        self.assertEqual(ch.connects, 0)
        server = ServerFactory()
        self.listen(server, reserved)
        yield self.waitFor(lambda: ch.state == CONNECTED, what="connected")
        self.assertEqual(ch.connects, 1)
        yield self.waitFor(lambda: len(server.connections) == 1, what="server side")

    @defer.inlineCallbacks
    def test_serverRestartDeliversOutageMessagesInOrder(self):
        # Held across the restart: nobody else can take the port meanwhile.
        reserved = self.reservePort(restartable=True)
        server = ServerFactory(echo=False)
        listening = self.listen(server, reserved)
        broker = Broker(reactor)
        ch = self.channel(makeConfig(reserved.port, redirect_out=True, topic_out="out",
                                     reconnection_timeout=0.2), broker)
        ch.start()
        yield self.waitFor(lambda: ch.state == CONNECTED, what="connected")
        broker.publish("out", b"a")
        yield self.waitFor(lambda: server.lines == [b"a"], what="first message")

        # The server goes away: stop listening, drop the connection.
        yield listening.stopListening()
        first = server.open[0]
        first.transport.loseConnection()
        yield first.lost
        yield self.waitFor(lambda: ch.state != CONNECTED, what="the drop")
        for body in (b"b", b"c", b"d"):
            broker.publish("out", body)
        self.assertEqual(ch.queued, 3)

        restarted = ServerFactory(echo=False)
        self.listen(restarted, reserved)
        yield self.waitFor(lambda: len(restarted.lines) == 3, what="queued messages")
        self.assertEqual(restarted.lines, [b"b", b"c", b"d"])
        self.assertEqual(ch.connects, 2)
        self.assertEqual(ch.queued, 0)
        broker.publish("out", b"e")
        yield self.waitFor(lambda: len(restarted.lines) == 4, what="a newer message")
        self.assertEqual(restarted.lines[-1], b"e")

    @defer.inlineCallbacks
    def test_reconnectsToServerThatDrops(self):
        server = ServerFactory(dropOnConnect=True)
        port = self.listen(server).getHost().port
        ch = self.channel(makeConfig(port, reconnection_timeout=0.1))
        ch.start()
        yield self.waitFor(lambda: len(server.connections) >= 3, what="three connections")
        self.assertGreaterEqual(ch.connects, 2)
        self.assertIn(ch.state, (CONNECTED, CONNECTING, WAITING))

    @defer.inlineCallbacks
    def test_receiveTimesOutOnSilentServer(self):
        server = ServerFactory(echo=False)
        port = self.listen(server).getHost().port
        ch = self.channel(makeConfig(port))
        ch.start()
        yield self.waitFor(lambda: ch.state == CONNECTED, what="connected")
        ch.send(b"anyone?")
        started = reactor.seconds()
        yield self.assertFailure(ch.receive(timeout=0.2), defer.TimeoutError)
        self.assertGreaterEqual(reactor.seconds() - started, 0.15)
        self.assertEqual(ch.messagesIn, 0)
        yield self.waitFor(lambda: server.lines == [b"anyone?"], what="the message")

    @defer.inlineCallbacks
    def test_onDemandConnectsOnSendClosesWhenIdle(self):
        server = ServerFactory(echo=True)
        port = self.listen(server).getHost().port
        ch = self.channel(makeConfig(port, permanent=False, idle_timeout=0.2,
                                     reconnection_timeout=0.05))
        ch.start()
        self.assertEqual(ch.state, IDLE)
        yield self.assertNoAttempt(ch, server)
        self.assertEqual(server.connections, [])

        ch.send(b"ping")
        self.assertEqual(ch.state, CONNECTING)
        reply = yield ch.receive(timeout=1)
        self.assertEqual(reply.body, b"ping")
        self.assertEqual(ch.state, CONNECTED)
        yield self.waitFor(lambda: ch.state == IDLE, what="idle close")
        yield server.connections[0].lost
        # No reconnect by itself.
        yield self.assertNoAttempt(ch, server)
        self.assertEqual(len(server.connections), 1)
        self.assertEqual((ch.state, ch.connects), (IDLE, 1))
        self.assertEqual(ch.status()["idleCloses"], 1)

        ch.send(b"again")
        reply = yield ch.receive(timeout=1)
        self.assertEqual(reply.body, b"again")
        self.assertEqual(ch.connects, 2)

    @defer.inlineCallbacks
    def test_disconnectStaysDownUntilConnect(self):
        server = ServerFactory(echo=False)
        port = self.listen(server).getHost().port
        ch = self.channel(makeConfig(port, reconnection_timeout=0.05))
        ch.start()
        yield self.waitFor(lambda: ch.state == CONNECTED, what="connected")
        yield ch.disconnect()
        self.assertEqual(ch.state, STOPPED)
        yield server.connections[0].lost
        ch.send(b"later")
        yield self.assertNoAttempt(ch, server)
        self.assertEqual((len(server.connections), ch.state, ch.queued), (1, STOPPED, 1))

        result = yield ch.connect()
        self.assertIs(result, ch)
        self.assertEqual((ch.state, ch.connects, ch.queued), (CONNECTED, 2, 0))
        yield self.waitFor(lambda: server.lines == [b"later"], what="the queued message")

    @defer.inlineCallbacks
    def test_stopFiresWhenClosedAndFailsWaiters(self):
        server = ServerFactory(echo=False)
        port = self.listen(server).getHost().port
        ch = self.channel(makeConfig(port))
        ch.start()
        connected = ch.connect()
        yield connected
        pending = ch.receive(timeout=5)
        yield ch.stop()
        self.assertEqual(ch.state, STOPPED)
        yield self.assertFailure(pending, ChannelStopped)
        yield server.connections[0].lost

    @defer.inlineCallbacks
    def test_stopFlushesToServerThatComesBack(self):
        reserved = self.reservePort()
        ch = self.channel(makeConfig(reserved.port, reconnection_timeout=0.1,
                                     flush_timeout=3.0))
        ch.start()
        yield self.waitFor(lambda: ch.failures >= 1, what="a failed attempt")
        for body in (b"a", b"b", b"c"):
            ch.send(body)
        started, failures = reactor.seconds(), ch.failures
        stopped = ch.stop()
        # The stop keeps trying while the server is down: at once, then again.
        yield self.waitFor(lambda: ch.failures >= failures + 2,
                           what="two failed attempts while stopping")
        self.assertFalse(stopped.called)
        server = ServerFactory(echo=False)
        self.listen(server, reserved)
        yield stopped
        self.assertLess(reactor.seconds() - started, 2.0)
        yield self.waitFor(lambda: len(server.lines) == 3, what="the queued messages")
        self.assertEqual(server.lines, [b"a", b"b", b"c"])
        self.assertEqual((ch.state, ch.unsent, ch.connects), (STOPPED, 0, 1))

    @defer.inlineCallbacks
    def test_stopGivesUpOnServerThatNeverComesBack(self):
        logs = LogCapture(self)
        reserved = self.reservePort()
        ch = self.channel(makeConfig(reserved.port, reconnection_timeout=0.1,
                                     flush_timeout=0.4))
        ch.start()
        yield self.waitFor(lambda: ch.failures >= 1, what="a failed attempt")
        for body in (b"a", b"b", b"c"):
            ch.send(body)
        started, failures = reactor.seconds(), ch.failures
        yield ch.stop()
        elapsed = reactor.seconds() - started
        # It kept trying (every ~0.1 s) until no attempt fitted in the 0.4 s.
        self.assertTrue(0.25 <= elapsed < 1.0, elapsed)
        self.assertGreaterEqual(ch.failures - failures, 3)
        self.assertEqual((ch.state, ch.unsent), (STOPPED, 3))
        unsent = [e for e in logs.warnings() if "not sent" in e["log_format"]]
        self.assertEqual([e["n"] for e in unsent], [3])


    @defer.inlineCallbacks
    def test_httpRepliesCarryRequestIdAndSession(self):
        class Page(Resource):
            isLeaf = True

            def render_GET(self, request):
                return b"page " + request.uri

        site = WrappingFactory(Site(Page()))
        listening = reactor.listenTCP(0, site, interface="127.0.0.1")

        @defer.inlineCallbacks
        def cleanup():
            yield listening.stopListening()
            for conn in list(site.protocols):
                conn.transport.loseConnection()
            yield self.waitFor(lambda: not site.protocols, what="server connections closed")

        self.addCleanup(cleanup)
        settings = ProtocolSettings(name="http")
        config = ChannelConfig(name="web", host="127.0.0.1", port=listening.getHost().port,
                               protocol=ProtocolConfig("http", settings, settings),
                               redirect_in=True, redirect_out=True,
                               topic_in="http.response", topic_out="http.request")
        broker = Broker(reactor)
        ch = self.channel(config, broker)
        ch.start()
        yield self.waitFor(lambda: ch.state == CONNECTED, what="connected")

        first = broker.request("http.request", "http.response", "/a", timeout=1.5,
                               session="S1")
        second = broker.request("http.request", "http.response", "/b", timeout=1.5,
                                session="S2")
        replyA, replyB = yield defer.gatherResults([first, second])
        self.assertEqual((replyA.body, replyA.session), (b"page /a", "S1"))
        self.assertEqual((replyB.body, replyB.session), (b"page /b", "S2"))
        self.assertEqual(replyA.attributes["status"], 200)
        self.assertEqual((ch.connects, ch.messagesOut, ch.messagesIn), (1, 2, 2))


# -- fakes for memory-reactor tests -------------------------------------------

class RecordingFramer(FramingProtocol):
    """Each packet is a reply to ``out-1`` for session S1; records what is sent."""

    inFlight = 0  # as the http framer says it

    def __init__(self, settings, receiver, log=None):
        FramingProtocol.__init__(self, settings, receiver, log)
        self.sent = []

    def framedDataReceived(self, data):
        self.deliver(data, {"in-reply-to": "out-1", "session": "S1", "status": 200})

    def sendMessage(self, message, attributes=None):
        self.sent.append((message, attributes))
        FramingProtocol.sendMessage(self, message, attributes)


#: stop a channel of a memory-reactor test, closing its fake servers
stopInMemory = stopChannel


class MemoryHarness:
    """Channels on a MemoryReactorClock, with helpers to drive their attempts."""

    timeout = 10

    def setUp(self):
        self.reactor = MemoryReactorClock()
        self.broker = Broker(self.reactor)
        self.servers = {}  # the server end of each connection, by the client protocol

    def make(self, **kw):
        ch = Channel(makeConfig(**kw), self.broker, self.reactor)
        self.addCleanup(stopInMemory, ch)
        return ch

    def attempt(self, index=-1):
        return FakeServer(self.reactor, index).factory

    def succeed(self, ch, transport=None):
        """Complete the current attempt: build the protocol, connect it."""
        server = lastAttempt(self.reactor, channel=ch).accept(transport)
        self.servers[server.protocol] = server
        return server.protocol, server.transport

    def drop(self, ch, protocol, reason=None):
        self.servers[protocol].close(reason or error.ConnectionLost("peer went away"))

    def refuse(self, ch):
        lastAttempt(self.reactor, channel=ch).refuse()

    def pendingDelay(self):
        calls = self.reactor.getDelayedCalls()
        self.assertEqual(len(calls), 1)
        return calls[0].getTime() - self.reactor.seconds()

    def countConnects(self, ch):
        """Attempts from now on (len() of it)."""
        reactor, start = self.reactor, attempts(self.reactor)

        class Since:
            def __len__(self):
                return attempts(reactor) - start

        return Since()



class MemoryTests(MemoryHarness, unittest.TestCase):
    """Channel behaviour on a MemoryReactorClock."""

    def test_stateTransitionsInStatus(self):
        ch = self.make(reconnection_timeout=2.0, connect_timeout=7.0)
        self.assertEqual(ch.status()["state"], STOPPED)
        ch.start()
        self.assertEqual(ch.status()["state"], CONNECTING)
        host, port, factory, timeout, bind = self.reactor.tcpClients[0]
        self.assertEqual((host, port, timeout), ("127.0.0.1", 4000, 7.0))
        self.refuse(ch)
        status = ch.status()
        self.assertEqual((status["state"], status["failures"]), (WAITING, 1))
        self.assertIn("Connection was refused", status["lastError"])
        connects = self.countConnects(ch)
        self.reactor.advance(2.5)
        self.assertEqual((ch.status()["state"], len(connects)), (CONNECTING, 1))
        protocol, transport = self.succeed(ch)
        status = ch.status()
        self.assertEqual((status["state"], status["connects"]), (CONNECTED, 1))
        for key in ("name", "host", "port", "protocol", "permanent", "messagesIn",
                    "messagesOut", "bytesIn", "bytesOut", "dropped", "errors", "queued",
                    "lastError"):
            self.assertIn(key, status)
        self.assertEqual((status["protocol"], status["permanent"]), ("text-messages", True))
        self.drop(ch, protocol)
        self.assertEqual(ch.status()["state"], WAITING)
        d = ch.stop()
        self.assertEqual(self.successResultOf(d), None)
        self.assertEqual(ch.status()["state"], STOPPED)
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_failedAttemptsWaitTimeoutThenResetAfterConnection(self):
        ch = self.make(reconnection_timeout=4.0)
        ch.start()
        self.countConnects(ch)
        for _ in range(3):
            self.refuse(ch)
            delay = self.pendingDelay()
            self.assertTrue(3.6 <= delay <= 4.4, delay)
            self.reactor.advance(delay)
        protocol, transport = self.succeed(ch)
        self.reactor.advance(5)  # up long enough to count as a real connection
        self.drop(ch, protocol)
        delay = self.pendingDelay()
        self.assertTrue(0 <= delay <= 1.0, delay)
        self.reactor.advance(delay)
        self.assertEqual(ch.state, CONNECTING)

    def test_connectionDroppedAtOnceCountsAsFailure(self):
        ch = self.make(reconnection_timeout=4.0)
        ch.start()
        protocol, transport = self.succeed(ch)
        self.drop(ch, protocol)
        self.assertTrue(3.6 <= self.pendingDelay() <= 4.4)

    def test_onDemandFailedAttemptDoesNotRetry(self):
        ch = self.make(permanent=False)
        ch.start()
        self.assertEqual((ch.state, self.reactor.tcpClients), (IDLE, []))
        ch.send(b"one")
        self.assertEqual((ch.state, len(self.reactor.tcpClients)), (CONNECTING, 1))
        connected = ch.connect()
        self.refuse(ch)
        self.failureResultOf(connected, error.ConnectionRefusedError)
        self.assertEqual((ch.state, ch.queued, ch.connects), (IDLE, 1, 0))
        self.assertIsNotNone(ch.lastError)
        self.assertEqual(self.reactor.getDelayedCalls(), [])
        connects = self.countConnects(ch)
        ch.send(b"two")
        self.assertEqual((len(connects), ch.state, ch.queued), (1, CONNECTING, 2))
        protocol, transport = self.succeed(ch)
        self.assertEqual(transport.value(), b"one\ntwo\n")
        # The idle close does not lead to a reconnect.
        self.reactor.advance(30)
        self.assertTrue(transport.disconnecting)
        self.drop(ch, protocol, error.ConnectionDone())
        self.assertEqual((ch.state, len(connects)), (IDLE, 1))
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_idleTimeoutResetByTraffic(self):
        ch = self.make(idle_timeout=5.0)
        ch.start()
        protocol, transport = self.succeed(ch)
        self.reactor.advance(4)
        ch.send(b"x")
        self.reactor.advance(4)
        protocol.dataReceived(b"y\n")
        self.reactor.advance(4)
        self.assertFalse(transport.disconnecting)
        self.reactor.advance(1.5)
        self.assertTrue(transport.disconnecting)

    def test_noIdleTimeoutForPermanentByDefault(self):
        ch = self.make()
        ch.start()
        protocol, transport = self.succeed(ch)
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_keepalive(self):
        ch = self.make()
        ch.start()
        protocol, transport = self.succeed(ch)
        self.assertEqual(transport.keepalive, 1)

        other = self.make(name="nokeep", keepalive=False)
        other.start()
        protocol, transport = self.succeed(other)
        self.assertIsNone(transport.keepalive)

    def test_queueOverflowDropsAndLogsSparingly(self):
        events = []

        def observe(event):
            if event.get("log_namespace") == "ActiveSocket::test" and \
                    "dropped" in event.get("log_format", ""):
                events.append(event)

        globalLogPublisher.addObserver(observe)
        self.addCleanup(globalLogPublisher.removeObserver, observe)
        ch = self.make(queue_size=3)
        ch.start()
        for i in range(253):
            ch.send(b"m%d" % i)
        self.assertEqual((ch.queued, ch.dropped), (3, 250))
        self.assertEqual([e["dropped"] for e in events], [1, 100, 200])
        protocol, transport = self.succeed(ch)
        self.assertEqual(transport.value(), b"m0\nm1\nm2\n")

    def test_queuedMessagesGoBeforeNewer(self):
        ch = self.make()
        ch.send(b"early")  # not started: queued, no attempt
        self.assertEqual(self.reactor.tcpClients, [])
        ch.start()
        ch.send(b"while connecting")
        self.assertEqual(ch.queued, 2)
        protocol, transport = self.succeed(ch)
        ch.send(b"newer")
        self.assertEqual(transport.value(), b"early\nwhile connecting\nnewer\n")
        self.assertEqual((ch.queued, ch.messagesOut), (0, 3))

    def test_inboxBoundedDropsOldest(self):
        ch = self.make(inbox_size=2)
        ch.start()
        protocol, transport = self.succeed(ch)
        protocol.dataReceived(b"1\n2\n3\n4\n")
        status = ch.status()
        self.assertEqual((status["inbox"], status["inboxDropped"], status["messagesIn"]),
                         (2, 2, 4))
        first = self.successResultOf(ch.receive(timeout=1))
        second = self.successResultOf(ch.receive(timeout=1))
        self.assertEqual((first.body, second.body), (b"3", b"4"))
        self.assertEqual((first.source, first.topic), ("test", "test"))
        self.assertNotEqual(first.id, second.id)

    def test_receiveWaitsThenTimesOutWithDefault(self):
        ch = self.make(wait=3.0)
        ch.start()
        protocol, transport = self.succeed(ch)
        d = ch.receive()
        self.reactor.advance(2.9)
        self.assertNoResult(d)
        protocol.dataReceived(b"late\n")
        self.assertEqual(self.successResultOf(d).body, b"late")
        d = ch.receive()
        self.reactor.advance(3.1)
        self.failureResultOf(d, defer.TimeoutError)
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_receiveFixedAcrossMessagesKeepsRemainder(self):
        ch = self.make(delimiter=b";")
        ch.start()
        protocol, transport = self.succeed(ch)
        protocol.dataReceived(b"abc;defg;")
        self.assertEqual(self.successResultOf(ch.receiveFixed(5, timeout=1)), b"abcde")
        self.assertEqual(self.successResultOf(ch.receive(timeout=1)).body, b"fg")
        d = ch.receiveFixed(4, timeout=1)
        protocol.dataReceived(b"hi;")
        self.assertNoResult(d)
        protocol.dataReceived(b"jk;lm;")
        self.assertEqual(self.successResultOf(d), b"hijk")
        self.assertEqual(self.successResultOf(ch.receive(timeout=1)).body, b"lm")

    def test_receiveFixedTimeoutPutsBytesBack(self):
        ch = self.make(delimiter=b";")
        ch.start()
        protocol, transport = self.succeed(ch)
        protocol.dataReceived(b"ab;")
        d = ch.receiveFixed(10, timeout=2)
        self.reactor.advance(2.5)
        self.failureResultOf(d, defer.TimeoutError)
        self.assertEqual(self.successResultOf(ch.receiveFixed(2, timeout=1)), b"ab")
        self.failureResultOf(ch.receiveFixed(-1), ValueError)
        self.assertEqual(self.successResultOf(ch.receiveFixed(0)), b"")

    def test_messageHoldingTheDelimiterRefused(self):
        """A message that would arrive at the server as two is not written:
        counted as an error, not as sent, and the connection stays."""
        ch = self.make(redirect_in=True, topic_in="in", redirect_out=True,
                       topic_out="out")
        ch.start()
        protocol, transport = self.succeed(ch)
        self.broker.publish("out", b"two\nlines")
        self.broker.publish("out", b"ok")
        # A batch, as a relay hands it over.
        topic = self.broker.topic("out")
        topic.publishBatch(topic.messages([b"x", b"y\nz", b"w"]))
        self.assertEqual(transport.value(), b"ok\nx\nw\n")
        status = ch.status()
        self.assertEqual((status["messagesOut"], status["errors"], status["state"]),
                         (3, 2, CONNECTED))
        self.assertIn("holds the delimiter", status["lastError"])

    def test_manyReceiversGiveUpInAnyOrder(self):
        """Receivers that give up leave the queue of waiters lazily (no O(n)
        removal); the others are served in order, each message once."""
        ch = self.make(delimiter=b";")
        ch.start()
        protocol, transport = self.succeed(ch)
        waits = [ch.receive(timeout=60) for _ in range(2000)]
        for d in reversed(waits[::2]):
            d.cancel()
            self.failureResultOf(d)
        protocol.dataReceived(b"".join(b"m%d;" % i for i in range(1000)))
        self.assertEqual([self.successResultOf(d).body for d in waits[1::2]],
                         [b"m%d" % i for i in range(1000)])
        self.assertEqual((ch.inbox.waiting, ch.status()["inbox"]), (False, 0))
        later = ch.receive(timeout=1)
        protocol.dataReceived(b"last;")
        self.assertEqual(self.successResultOf(later).body, b"last")

    def test_receiveFixedBoundedByMaxPacketSize(self):
        """A fixed read gathers its bytes outside the inbox's bound: it may not
        ask for more than one message may hold (size=10**12 took +600 MB)."""
        ch = self.make(delimiter=b";", maxPacket=100)
        ch.start()
        protocol, transport = self.succeed(ch)
        failure = self.failureResultOf(ch.receiveFixed(10 ** 12), ValueError)
        self.assertEqual(str(failure.value), "size must be at most 100 bytes (the "
                         "channel's protocol.max-packet-size), not 1000000000000")
        d = ch.receiveFixed(100, timeout=1)
        protocol.dataReceived(b"x" * 60 + b";" + b"y" * 60 + b";")
        self.assertEqual(self.successResultOf(d), b"x" * 60 + b"y" * 40)

    def test_redirectInKeepsOnlyWhatAFixedReadLeft(self):
        ch = self.make(redirect_in=True, topic_in="in")
        published = []
        self.broker.subscribe("in", published.append)
        ch.start()
        protocol, transport = self.succeed(ch)
        protocol.dataReceived(b"nobody waits\n")
        self.assertEqual((len(published), ch.status()["inbox"]), (1, 0))
        d = ch.receiveFixed(3, timeout=1)
        protocol.dataReceived(b"abcde\n")
        self.assertEqual(self.successResultOf(d), b"abc")
        self.assertEqual(ch.status()["inbox"], 1)
        self.assertEqual(self.successResultOf(ch.receive(timeout=1)).body, b"de")
        self.assertEqual([m.body for m in published], [b"nobody waits", b"abcde"])

    def test_onDemandDisconnectedQueuesWithoutConnecting(self):
        ch = self.make(permanent=False)
        ch.start()
        self.successResultOf(ch.disconnect())
        ch.send(b"held")
        self.assertEqual((self.reactor.tcpClients, ch.queued, ch.state), ([], 1, STOPPED))
        d = ch.connect()
        self.assertEqual(len(self.reactor.tcpClients), 1)
        protocol, transport = self.succeed(ch)
        self.assertIs(self.successResultOf(d), ch)
        self.assertEqual(transport.value(), b"held\n")

    def test_connectRightAfterDisconnectFires(self):
        ch = self.make()
        ch.start()
        protocol, transport = self.succeed(ch)
        connects = self.countConnects(ch)
        again = []
        ch.disconnect().addCallback(lambda _: again.append(ch.connect()))
        self.assertEqual(again, [])
        self.drop(ch, protocol, error.ConnectionDone())
        self.assertEqual((len(again), len(connects), ch.state), (1, 1, CONNECTING))
        self.succeed(ch)
        self.assertIs(self.successResultOf(again[0]), ch)
        self.assertEqual(ch.connects, 2)

    def test_connectWhileClosingAttemptsWhenClosed(self):
        # connect() before the old connection's close completes: the next
        # attempt starts as soon as it does, with no retry delay.
        ch = self.make(reconnection_timeout=30.0)
        ch.start()
        protocol, transport = self.succeed(ch)
        connects = self.countConnects(ch)
        ch.disconnect()
        d = ch.connect()
        self.assertEqual((len(connects), ch.state), (0, CONNECTING))
        self.drop(ch, protocol, error.ConnectionDone())
        self.assertEqual((len(connects), self.reactor.getDelayedCalls()), (1, []))
        self.succeed(ch)
        self.assertIs(self.successResultOf(d), ch)
        self.assertEqual((ch.connects, ch.failures, ch.drops), (2, 0, 0))

    def test_protocolErrorCountedAndRemembered(self):
        ch = self.make(maxPacket=5)
        ch.start()
        protocol, transport = self.succeed(ch)
        protocol.dataReceived(b"far too long\n")
        status = ch.status()
        self.assertEqual(status["errors"], 1)
        self.assertIn("max-packet-size", status["lastError"])
        self.assertTrue(transport.disconnecting)

    def test_ipv6LiteralHosts(self):
        for host in ("::1", "[::1]"):
            ch = self.make(host=host, name="v6" + host)
            ch.start()
            self.assertEqual(self.reactor.tcpClients[-1][0], "::1")

    def test_stopClosesAndAbortsAStuckConnection(self):
        ch = self.make()
        ch.start()
        protocol, transport = self.succeed(ch)
        d = ch.stop()
        self.assertTrue(transport.disconnecting)
        self.assertNoResult(d)
        self.reactor.advance(channels.CLOSE_GRACE + 0.1)
        self.assertTrue(transport.aborted)
        self.drop(ch, protocol, error.ConnectionAborted())
        self.successResultOf(d)
        self.assertEqual((ch.state, self.reactor.getDelayedCalls()), (STOPPED, []))

    def test_backpressurePausesTransport(self):
        ch = self.make(redirect_in=True, topic_in="in")
        gate = defer.Deferred()
        self.broker.subscribe("in", lambda m: gate)
        ch.start()
        protocol, transport = self.succeed(ch)
        protocol.dataReceived(b"one\n")
        self.assertEqual(transport.producerState, "paused")
        gate.callback(None)
        self.assertEqual(transport.producerState, "producing")

    # -- stop() with queued messages: the flush window -------------------------

    def unsentWarnings(self, logs):
        return [e for e in logs.warnings() if "not sent" in e["log_format"]]

    def test_stopWhileWaitingTriesAtOnceAndSends(self):
        logs = LogCapture(self)
        ch = self.make(reconnection_timeout=10.0, flush_timeout=5.0)
        ch.start()
        self.refuse(ch)
        ch.send(b"a")
        ch.send(b"b")
        connects = self.countConnects(ch)
        d = ch.stop()
        self.assertEqual((len(connects), ch.state), (1, CONNECTING))
        self.assertNoResult(d)
        protocol, transport = self.succeed(ch)
        self.assertEqual(transport.value(), b"a\nb\n")
        # Written, then closed the gentle way: the buffer drains first.
        self.assertTrue(transport.disconnecting)
        self.assertFalse(transport.aborted)
        self.assertNoResult(d)
        self.drop(ch, protocol, error.ConnectionDone())
        self.successResultOf(d)
        self.assertEqual((ch.state, ch.unsent, ch.queued), (STOPPED, 0, 0))
        self.assertEqual(self.unsentWarnings(logs), [])
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_stopGivesUpAfterFlushTimeout(self):
        logs = LogCapture(self)
        ch = self.make(reconnection_timeout=1.0, flush_timeout=3.0)
        ch.start()
        self.refuse(ch)
        for body in (b"a", b"b", b"c"):
            ch.send(body)
        d = ch.stop()
        for _ in range(2):
            self.refuse(ch)  # still refused: retried within the window
            self.assertEqual(ch.state, WAITING)
            self.reactor.advance(1.1)
            self.assertEqual(ch.state, CONNECTING)
        self.assertNoResult(d)
        self.reactor.advance(3.0 - 2.2)
        self.successResultOf(d)
        status = ch.status()
        self.assertEqual((status["state"], status["unsent"], status["queued"]),
                         (STOPPED, 3, 0))
        self.assertEqual([e["n"] for e in self.unsentWarnings(logs)], [3])
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_stopEndsAtOnceWhenNoAttemptFitsTheWindow(self):
        ch = self.make(reconnection_timeout=10.0, flush_timeout=5.0)
        ch.start()
        self.refuse(ch)
        ch.send(b"a")
        d = ch.stop()
        self.refuse(ch)  # the next try would come after the window
        self.successResultOf(d)
        self.assertEqual((ch.state, ch.unsent), (STOPPED, 1))
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_secondStopWhileFlushing(self):
        """stop() and disconnect() again while a stop is closing all end together."""
        ch = self.make(flush_timeout=5.0)
        ch.start()
        protocol, transport = self.succeed(ch)
        transport.producer.pauseProducing()
        ch.send(b"a")
        first = ch.stop()
        transport.producer.resumeProducing()  # flushed: the stop is closing now
        second = ch.disconnect()
        third = ch.disconnect()
        self.drop(ch, protocol, error.ConnectionDone())
        for d in (first, second, third):
            self.assertIsNone(self.successResultOf(d))
        self.assertEqual(ch.state, STOPPED)

    def test_stopWaitsForAServerThatReadsAgain(self):
        ch = self.make(flush_timeout=5.0)
        ch.start()
        protocol, transport = self.succeed(ch)
        self.assertIs(transport.producer, protocol.gate)
        transport.producer.pauseProducing()  # what a full transport buffer does
        ch.send(b"a")
        ch.send(b"b")
        self.assertEqual((transport.value(), ch.queued), (b"", 2))
        d = ch.stop()
        self.reactor.advance(2)
        self.assertNoResult(d)
        transport.producer.resumeProducing()
        self.assertEqual(transport.value(), b"a\nb\n")
        self.assertTrue(transport.disconnecting)
        self.drop(ch, protocol, error.ConnectionDone())
        self.successResultOf(d)
        self.assertEqual(ch.unsent, 0)

    def test_serverNotReadingPausesPublishers(self):
        """While the server does not read, topic-out's publishers are paused
        (broker backpressure) instead of the channel's queue overflowing."""
        ch = self.make(redirect_out=True, topic_out="out", queue_size=2)
        ch.start()
        protocol, transport = self.succeed(ch)
        publisher = StringTransport()
        self.broker.topic("out").registerProducer(publisher)
        transport.producer.pauseProducing()  # what a full transport buffer does
        for n in range(10):
            self.broker.publish("out", b"%d" % n)
        self.assertEqual(publisher.producerState, "paused")
        self.assertEqual(ch.dropped, 0)
        transport.producer.resumeProducing()
        self.assertEqual(publisher.producerState, "producing")
        self.assertEqual(transport.value(), b"".join(b"%d\n" % n for n in range(10)))
        self.assertEqual(ch.dropped, 0)

    def test_relayInBatches(self):
        """Lines of one packet go from one channel to another in one write,
        in order, and queued messages keep their place before them."""
        a = self.make(name="a", redirect_in=True, topic_in="relay")
        b = self.make(name="b", redirect_out=True, topic_out="relay")
        a.start()
        b.start()
        inbound, _ = self.succeed(a)
        outbound, transport = self.succeed(b)
        writes = []
        transport.write = lambda data: writes.append(data)
        inbound.dataReceived(b"1\n2\n3\n")
        self.assertEqual(writes, [b"1\n2\n3\n"])
        self.assertEqual((a.messagesIn, b.messagesOut), (3, 3))
        transport.producer.pauseProducing()
        inbound.dataReceived(b"4\n5\n")  # queued: the server is not reading
        self.assertEqual(b.queued, 2)
        transport.producer.resumeProducing()
        inbound.dataReceived(b"6\n7\n")
        self.assertEqual(b"".join(writes), b"".join(b"%d\n" % n for n in range(1, 8)))
        self.assertEqual(self.broker.topic("relay").published, 7)

    def test_lostConnectionReleasesPublishers(self):
        ch = self.make(redirect_out=True, topic_out="out", flush_timeout=0.0)
        ch.start()
        protocol, transport = self.succeed(ch)
        publisher = StringTransport()
        self.broker.topic("out").registerProducer(publisher)
        transport.producer.pauseProducing()
        self.broker.publish("out", b"x")
        self.assertEqual(publisher.producerState, "paused")
        self.drop(ch, protocol)
        self.assertEqual(publisher.producerState, "producing")

    def test_stopAbortsAServerThatNeverReadsAgain(self):
        logs = LogCapture(self)
        ch = self.make(flush_timeout=2.0)
        ch.start()
        protocol, transport = self.succeed(ch)
        transport.producer.pauseProducing()
        ch.send(b"a")
        d = ch.stop()
        self.reactor.advance(2.1)
        self.assertTrue(transport.aborted)
        self.drop(ch, protocol, error.ConnectionAborted())
        self.successResultOf(d)
        self.assertEqual(ch.unsent, 1)
        self.assertEqual([e["n"] for e in self.unsentWarnings(logs)], [1])
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_onDemandStopTriesOnce(self):
        ch = self.make(permanent=False, flush_timeout=5.0)
        ch.start()
        ch.send(b"a")
        self.refuse(ch)
        self.assertEqual((ch.state, ch.queued), (IDLE, 1))
        connects = self.countConnects(ch)
        d = ch.stop()
        self.assertEqual((len(connects), ch.state), (1, CONNECTING))
        protocol, transport = self.succeed(ch)
        self.assertEqual(transport.value(), b"a\n")
        self.drop(ch, protocol, error.ConnectionDone())
        self.successResultOf(d)
        self.assertEqual(ch.unsent, 0)

    def test_onDemandStopEndsWhenItsAttemptFails(self):
        ch = self.make(permanent=False, flush_timeout=5.0)
        ch.start()
        ch.send(b"a")
        d = ch.stop()
        self.assertNoResult(d)
        self.refuse(ch)
        self.successResultOf(d)
        self.assertEqual((ch.state, ch.unsent), (STOPPED, 1))
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_stopWithoutFlushWindowReportsAtOnce(self):
        logs = {name: LogCapture(self, name) for name in ("zero", "unstarted")}
        for name, kw, started in (("zero", dict(flush_timeout=0.0), True),
                                  ("unstarted", {}, False)):
            ch = self.make(name=name, **kw)
            if started:
                ch.start()
            ch.send(b"a")
            ch.send(b"b")
            self.successResultOf(ch.stop())
            self.assertEqual((ch.state, ch.unsent), (STOPPED, 2))
            self.assertEqual([e["n"] for e in self.unsentWarnings(logs[name])], [2])
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_secondStopWaitsForTheFirst(self):
        ch = self.make(flush_timeout=5.0)
        ch.start()
        ch.send(b"a")
        first = ch.stop()
        second = ch.stop()
        self.assertNoResult(second)
        protocol, transport = self.succeed(ch)
        self.drop(ch, protocol, error.ConnectionDone())
        self.successResultOf(first)
        self.successResultOf(second)
        self.assertEqual(transport.value(), b"a\n")
        self.successResultOf(ch.stop())  # and later ones fire at once


class BatchEquivalenceTests(MemoryHarness, unittest.TestCase):
    """The batch path (several messages of one packet at once) and the single
    path give the same ids, order, counts and proofs."""

    def deliverBoth(self, showMessages):
        """One failed attempt, then a connection that delivers two packets;
        with ``showMessages`` the framer hands messages over one by one."""
        self.reactor = MemoryReactorClock()
        self.broker = Broker(self.reactor)
        settings = ProtocolSettings(name="text-messages", delimiter=b"\n",
                                    show_messages=showMessages)
        config = dataclasses.replace(makeConfig(redirect_in=True, topic_in="in"),
                                     protocol=ProtocolConfig("text-messages", settings,
                                                             settings))
        ch = Channel(config, self.broker, self.reactor)
        self.addCleanup(stopInMemory, ch)
        published = []
        self.broker.subscribe("in", published.append)
        logs = LogCapture(self)
        ch.start()
        self.refuse(ch)
        self.reactor.advance(11)
        protocol, transport = self.succeed(ch)
        self.assertEqual(ch.status()["failedInRow"], 1)
        protocol.dataReceived(b"a\nb\nc\n")
        protocol.dataReceived(b"d\ne\n")
        status = ch.status()
        recovered = [e for e in logs.events if "again after" in e["log_format"]]
        return ([(m.id, m.body, m.source, m.session) for m in published],
                {key: status[key] for key in ("messagesIn", "failedInRow", "failures",
                                              "bytesIn", "errors")},
                len(recovered))

    def test_sameBothWays(self):
        batch, single = self.deliverBoth(False), self.deliverBoth(True)
        self.assertEqual(batch, single)
        self.assertEqual(batch[0][0], ("in-1", b"a", "test", None))
        self.assertEqual(batch[1]["failedInRow"], 0)  # the messages proved it
        self.assertEqual(batch[2], 1)


class OrderedRepliesTests(MemoryHarness, unittest.TestCase):
    """replies=ordered: inbound messages paired with the oldest unanswered one;
    stale queued messages dropped and counted."""

    def connected(self, **kw):
        ch = self.make(redirect_in=True, redirect_out=True, topic_in="in",
                       topic_out="out", **kw)
        ch.start()
        protocol, transport = self.succeed(ch)
        replies = []
        self.broker.subscribe("in", replies.append)
        return ch, protocol, transport, replies

    def test_repliesStampedInOrder(self):
        ch, protocol, transport, replies = self.connected(replies="ordered",
                                                          max_in_flight=2)
        first = self.broker.publish("out", b"a", session="S1")
        second = self.broker.publish("out", b"b", session="S2")
        self.broker.publish("out", b"c")
        # Two in flight at most: c waits for the channel, which pauses topic-out.
        self.assertEqual(transport.value(), b"a\nb\n")
        self.assertEqual(ch.status()["inFlight"], 2)
        [subscription] = self.broker.topic("out").subscriptions
        self.assertEqual(subscription.queued, 1)
        protocol.dataReceived(b"A\n")
        self.assertEqual(transport.value(), b"a\nb\nc\n")
        protocol.dataReceived(b"B\nC\nunasked\n")
        self.assertEqual([(m.body, m.inReplyTo, m.session) for m in replies], [
            (b"A", first.id, "S1"), (b"B", second.id, "S2"), (b"C", "out-3", None),
            (b"unasked", None, None)])
        self.assertEqual(ch.status()["inFlight"], 0)

    def test_eachReplyRestartsTheResponseTimer(self):
        """The next reply is owed within response-timeout of the last reply,
        not of its request; with nothing owed no timer runs."""
        ch, protocol, transport, replies = self.connected(replies="ordered",
                                                          response_timeout=10)
        for body in (b"a", b"b", b"c"):
            self.broker.publish("out", body)
        self.reactor.advance(8)
        protocol.dataReceived(b"A\n")
        self.reactor.advance(8)
        protocol.dataReceived(b"B\n")
        self.reactor.advance(9.5)
        self.assertEqual(ch.responseTimeouts, 0)
        self.assertTrue(protocol.awaitingResponse)
        protocol.dataReceived(b"C\n")
        self.assertFalse(protocol.awaitingResponse)
        self.reactor.advance(60)
        self.assertEqual(ch.responseTimeouts, 0)
        self.broker.publish("out", b"d")
        self.reactor.advance(9.5)
        self.assertEqual(ch.responseTimeouts, 0)
        self.reactor.advance(1)
        self.assertEqual(ch.responseTimeouts, 1)

    def test_inFlightFullPausesPublishers(self):
        ch, protocol, transport, replies = self.connected(replies="ordered",
                                                          max_in_flight=1)
        producer = Producer()
        self.broker.topic("out").registerProducer(producer)
        self.broker.publish("out", b"a")
        self.assertTrue(producer.paused)
        protocol.dataReceived(b"A\n")
        self.assertFalse(producer.paused)

    def test_unansweredCountedWhenTheConnectionGoes(self):
        ch, protocol, transport, replies = self.connected(replies="ordered")
        self.broker.publish("out", b"a")
        self.broker.publish("out", b"b")
        protocol.dataReceived(b"A\n")
        self.drop(ch, protocol)
        self.assertEqual((ch.status()["unanswered"], ch.status()["inFlight"]), (1, 0))
        # The next connection starts over: its first message pairs with nothing old.
        self.reactor.advance(2)
        protocol, transport = self.succeed(ch)
        protocol.dataReceived(b"late B\n")
        self.assertEqual(replies[-1].inReplyTo, None)

    def test_staleQueuedMessagesDropped(self):
        ch = self.make(redirect_out=True, topic_out="out", queue_size=3)
        ch.start()
        self.broker.publish("out", b"expires", ttl=1)
        ch.send(b"also expires", ttl=1)
        kept = self.broker.publish("out", b"kept")
        self.reactor.advance(1)
        # A full queue first makes room by dropping what went stale.
        ch.send(b"fits")
        self.assertEqual((ch.queued, ch.dropped, ch.expired), (2, 0, 2))
        kept.withdrawn = True
        protocol, transport = self.succeed(ch)
        self.assertEqual(transport.value(), b"fits\n")
        self.assertEqual((ch.expired, ch.withdrawn, ch.queued), (2, 1, 0))


class AttributeTests(unittest.TestCase):
    """What travels with messages each way (recording framer)."""

    timeout = 10

    def setUp(self):
        self.reactor = MemoryReactorClock()
        self.broker = Broker(self.reactor)
        self.framers = []

        def build(protocol, receiver, log, host, port):
            framer = RecordingFramer(protocol.inbound, receiver, log)
            self.framers.append((framer, host, port))
            return framer

        self.patch(channels.channel, "_buildFramer", build)

    def test_attributesBothWays(self):
        """An http channel hands each request's id and session to its framer,
        and publishes a response with the session its framer reports."""
        http = ProtocolSettings(name="http")
        config = dataclasses.replace(
            makeConfig(redirect_in=True, redirect_out=True, topic_in="in",
                       topic_out="out", port=8080, host="example.org"),
            protocol=ProtocolConfig("http", http, http))
        ch = Channel(config, self.broker, self.reactor)
        self.addCleanup(stopInMemory, ch)
        ch.start()
        protocol = lastAttempt(self.reactor).accept().protocol
        framer, host, port = self.framers[0]
        self.assertEqual((host, port), ("example.org", 8080))
        request = self.broker.publish("out", b"GET", session="S1")
        self.assertEqual(framer.sent, [(b"GET", {"in-reply-to": request.id,
                                                  "session": "S1"})])
        got = []
        self.broker.subscribe("in", got.append, session="S1")
        other = []
        self.broker.subscribe("in", other.append, session="S2")
        waiter = ch.receive(timeout=1)
        protocol.dataReceived(b"reply")
        self.assertEqual(len(got), 1)
        self.assertEqual(other, [])
        message = got[0]
        self.assertEqual((message.body, message.session, message.source),
                         (b"reply", "S1", "test"))
        self.assertEqual(message.attributes["status"], 200)
        # Offered to the pending receive() as well, and not kept beyond it.
        self.assertIs(self.successResultOf(waiter), message)
        protocol.dataReceived(b"unread")
        self.assertEqual(ch.status()["inbox"], 0)

    def test_framerFailureOnSendIsCounted(self):
        class Broken(Exception):
            pass

        def boom(message, attributes=None):
            raise Broken("cannot encode")

        ch = Channel(makeConfig(), self.broker, self.reactor)
        self.addCleanup(stopInMemory, ch)
        ch.start()
        lastAttempt(self.reactor).accept()
        self.framers[0][0].sendMessage = boom
        ch.send(b"x")
        self.assertEqual(ch.errors, 1)
        self.assertIn("cannot encode", ch.lastError)
        self.assertEqual(len(self.flushLoggedErrors(Broken)), 1)


class ReconnectDelayTests(unittest.TestCase):
    """reconnectDelay is a pure function of timeout, failures and a random source."""

    class Bounds:
        def __init__(self, pick):
            self.pick = pick

        def uniform(self, a, b):
            return a if self.pick == "low" else b

    def test_afterDropRetrySoon(self):
        self.assertEqual(reconnectDelay(10, 0, self.Bounds("low")), 0)
        self.assertEqual(reconnectDelay(10, 0, self.Bounds("high")), 1.0)
        self.assertEqual(reconnectDelay(0.4, 0, self.Bounds("high")), 0.4)

    def test_afterFailureWaitTimeoutWithJitter(self):
        self.assertAlmostEqual(reconnectDelay(10, 1, self.Bounds("low")), 9.0)
        self.assertAlmostEqual(reconnectDelay(10, 5, self.Bounds("high")), 11.0)
        self.assertEqual(reconnectDelay(0, 3, self.Bounds("high")),
                         channels.MIN_FAILED_DELAY)

    def test_jitterSpreadsChannels(self):
        rng = random.Random(7)
        delays = [reconnectDelay(10, 1, rng) for _ in range(50)]
        self.assertTrue(all(9.0 <= d <= 11.0 for d in delays))
        self.assertGreater(len(set(delays)), 40)


class MachineTests(unittest.TestCase):
    """The transition table refuses moves it does not have."""

    def test_tableMovesAreAllowedOthersRefused(self):
        from aiengine.channels.machine import (
            STATES, TRANSITIONS, ChannelMachine, InvalidTransition)
        for here in STATES:
            for to in STATES:
                machine = ChannelMachine()
                machine.state = here
                if (here, to) in TRANSITIONS:
                    machine.move(to)
                    self.assertEqual(machine.state, to)
                else:
                    e = self.assertRaises(InvalidTransition, machine.move, to)
                    self.assertIn(f"from {here} to {to}", str(e))
                    self.assertEqual(machine.state, here)

    def test_connectedOnlyFromConnecting(self):
        from aiengine.channels.machine import TRANSITIONS
        self.assertEqual({a for a, b in TRANSITIONS if b == CONNECTED}, {CONNECTING})
