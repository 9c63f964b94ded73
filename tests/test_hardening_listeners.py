"""Hardening of listeners and the engine: limits, idle timeouts, flow control,
authentication and TLS (SPEC section 8), with real loopback sockets where the
sockets are the point and ``Clock``/``StringTransport`` where time or the
transport's state is."""

from __future__ import annotations

import gc
import os
import socket
import time

from twisted.internet import defer, reactor
from twisted.internet.endpoints import (TCP4ClientEndpoint, connectProtocol,
                                        wrapClientTLS)
from twisted.internet.error import ConnectionDone
from twisted.internet.protocol import Protocol
from twisted.internet.ssl import Certificate, optionsForClientTLS
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import formatEvent, globalLogPublisher
from twisted.protocols.policies import ProtocolWrapper
from twisted.python.failure import Failure
from twisted.trial import unittest

from aiengine.broker import Broker
from aiengine.config import (ConfigError, ListenerConfig, ProtocolConfig,
                             ProtocolSettings, ServiceConfig, parse)
from aiengine.console.protocol import ConsoleFactory
from aiengine.engine import Engine
from aiengine.auth import readSecret
from aiengine.listeners import (RESUME_SLICE, GuardFactory, ListenerConnection, ListenerFactory,
                                ListenerService)
from aiengine.tls import serverTLSOptions
from tests.certs import makeCertificates
from tests.support import waitFor
from tests.test_broker import Producer
from tests.test_listeners import LineClient, settle, textProtocol


def xmlProtocol():
    settings = ProtocolSettings(name="xml-messages")
    return ProtocolConfig(name="xml-messages", inbound=settings, outbound=settings)

SECRET = b"s3cret-Pa55"



def openFds():
    return len(os.listdir("/proc/self/fd"))


def tcpTransport(connection):
    """The socket transport under a listener connection's wrappers."""
    transport = connection.framer.transport
    while isinstance(transport, ProtocolWrapper):
        transport = transport.transport
    return transport


class Closer(Protocol):
    """A client that only notices when it is closed."""

    def __init__(self):
        self.closed = defer.Deferred()

    def connectionLost(self, reason):
        self.closed.callback(None)


class ReasonClient(Protocol):
    """A client whose ``closed`` fires with the reason of its connection's end."""

    def __init__(self):
        self.closed = defer.Deferred()

    def connectionLost(self, reason):
        self.closed.callback([reason])  # a list: a Failure would errback


class BigLineClient(LineClient):
    MAX_LENGTH = 1 << 20


class Harness:
    """Starts a listener on 127.0.0.1:0 and connects clients, cleaning up."""

    #: seconds before trial fails a test that waits for what never happens
    timeout = 15

    def startListener(self, secret=None, tls=None, maxConnections=1000,
                      idleTimeout=3600.0, **kw):
        options = dict(name="lines", port=0, protocol=textProtocol(), topic_in="in",
                       topic_out="out")
        options.update(kw)
        config = ListenerConfig(**options)
        self.broker = Broker()
        self.factory = ListenerFactory(config, self.broker, secret=secret)
        self.service = ListenerService(config.name, self.factory, "127.0.0.1", 0,
                                       maxConnections=maxConnections,
                                       idleTimeout=idleTimeout, tls=tls)
        self.service.startService()
        self.addCleanup(self.service.stopService)
        self.guard = self.service.guard
        self.received = []
        self.broker.subscribe("in", self.received.append)
        return self.service.address[1]

    @defer.inlineCallbacks
    def connect(self, port, client=None, ca=None):
        client = LineClient() if client is None else client
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port)
        if ca is not None:
            with open(ca, "rb") as f:
                trust = Certificate.loadPEM(f.read())
            endpoint = wrapClientTLS(optionsForClientTLS("localhost", trustRoot=trust),
                                     endpoint)
        yield connectProtocol(endpoint, client)
        self.addCleanup(lambda: client.transport.loseConnection() or client.closed)
        return client

    def captureLogs(self):
        events = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        return events

    @staticmethod
    def logLines(events, containing):
        return [text for text in (formatEvent(e) for e in events) if containing in text]


# -- connection limits ----------------------------------------------------------------

class ConnectionLimitTests(Harness, unittest.TestCase):
    @defer.inlineCallbacks
    def test_limitRefusesBeyondMax(self):
        """With max-connections 5 the 6th is accepted and closed at once;
        once one closes, a new one is served again."""
        events = self.captureLogs()
        port = self.startListener(maxConnections=5)
        clients = []
        for _ in range(5):
            clients.append((yield self.connect(port)))
        yield waitFor(lambda: len(self.factory.connections) == 5, what="5 connections")
        sixth = yield self.connect(port, Closer())
        yield sixth.closed
        self.assertEqual(self.guard.refused, 1)
        self.assertEqual(len(self.factory.connections), 5)
        self.assertEqual(len(self.logLines(events, "max-connections limit")), 1)
        clients[0].transport.loseConnection()
        yield clients[0].closed
        yield waitFor(lambda: len(self.guard.protocols) == 4, what="one closed")
        again = yield self.connect(port)
        again.sendLine(b"served")
        yield waitFor(lambda: self.received, what="publish")
        self.assertEqual(self.received[0].body, b"served")

    def test_refusalsLoggedFirstAndEvery100th(self):
        events = self.captureLogs()
        inner = ListenerFactory(ListenerConfig(name="x", port=0, protocol=textProtocol(),
                                               topic_in="in"), Broker())
        guard = GuardFactory(inner, inner.log, maxConnections=1, idleTimeout=0,
                             reactor=Clock())
        guard.protocols[object()] = 1  # one connection open: the limit
        for _ in range(250):
            self.assertIsNone(guard.buildProtocol(None))
        self.assertEqual(guard.refused, 250)
        lines = self.logLines(events, "max-connections limit")
        self.assertEqual(len(lines), 3)  # the 1st, 100th and 200th
        self.assertIn("200 refused so far", lines[-1])

    @defer.inlineCallbacks
    def test_hundredsIdleDoNotStarveANewOne(self):
        port = self.startListener()
        idle = yield defer.gatherResults([self.connect(port) for _ in range(300)])
        self.assertEqual(len(idle), 300)
        yield waitFor(lambda: len(self.factory.connections) == 300, what="300 idle")
        started = time.monotonic()
        client = yield self.connect(port)
        client.sendLine(b"hello")
        yield waitFor(lambda: self.received, what="publish")
        self.broker.publish("out", b"reply", session=self.received[0].session,
                            attributes={"in-reply-to": self.received[0].id})
        self.assertEqual((yield client.waitLines(1)), [b"reply"])
        self.assertLess(time.monotonic() - started, 1.0)
        self.assertEqual(self.received[0].session, "lines.301")
        self.assertEqual(self.guard.refused, 0)

    @defer.inlineCallbacks
    def test_connectCloseCyclesLeakNothing(self):
        """2,000 connect/close cycles, 200 at a time: no connection stays
        tracked, no ListenerConnection stays alive, no fd stays open."""
        port = self.startListener()
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port)
        yield settle(0.01)
        before = openFds()
        for batch in range(10):
            clients = yield defer.gatherResults(
                [connectProtocol(endpoint, Closer()) for _ in range(200)])
            for i, client in enumerate(clients):
                if i % 2:
                    client.transport.write(b"bye\n")
                client.transport.loseConnection()
            yield defer.gatherResults([c.closed for c in clients])
        yield waitFor(lambda: not self.guard.protocols and not self.factory.connections,
                      what="every server side closed")
        self.assertEqual(self.guard.accepted, 2000)
        self.assertEqual(self.factory.count, 2000)
        gc.collect()
        alive = [o for o in gc.get_objects()
                 if isinstance(o, ListenerConnection) and o.factory is self.factory]
        self.assertEqual(alive, [])
        after = openFds()
        self.assertLessEqual(abs(after - before), 3, f"fds before {before}, after {after}")


# -- idle timeout ------------------------------------------------------------------

class IdleTimeoutTests(Harness, unittest.TestCase):
    @defer.inlineCallbacks
    def test_idleConnectionClosed(self):
        events = self.captureLogs()
        port = self.startListener(idleTimeout=0.2)
        # Real sockets, the guard's time on a Clock: exactly 0.2 s, on any machine.
        clock = self.guard.reactor = Clock()
        client = yield self.connect(port)
        yield waitFor(lambda: self.guard.protocols, what="the server side")
        clock.advance(0.199)
        self.assertEqual(self.guard.timedOut, 0)
        self.assertFalse(client.closed.called)
        clock.advance(0.001)
        yield client.closed
        self.assertEqual(self.guard.timedOut, 1)
        self.assertEqual(self.logLines(events, "idle for 0.2 s, closing")[0],
                         "lines.1: idle for 0.2 s, closing")
        yield waitFor(lambda: not self.guard.protocols, what="server side closed")

    def guarded(self, idleTimeout):
        """A guard on a Clock with one connection over a StringTransport."""
        clock = Clock()
        config = ListenerConfig(name="lines", port=0, protocol=textProtocol(),
                                topic_in="in", topic_out="out")
        broker = Broker()
        inner = ListenerFactory(config, broker)
        guard = GuardFactory(inner, inner.log, idleTimeout=idleTimeout, reactor=clock,
                             closeGrace=1.0)
        guard.doStart()
        self.addCleanup(guard.doStop)
        protocol = guard.buildProtocol(None)
        transport = StringTransport()
        protocol.makeConnection(transport)
        return clock, broker, protocol, transport

    def test_trafficEitherWayResetsTheTimer(self):
        clock, broker, protocol, transport = self.guarded(10)
        clock.advance(8)
        protocol.dataReceived(b"in\n")
        clock.advance(8)
        broker.publish("out", b"out")
        clock.advance(8)
        self.assertFalse(transport.disconnecting)
        self.assertEqual(transport.value(), b"out\n")
        clock.advance(2)
        self.assertTrue(transport.disconnecting)
        self.assertEqual(protocol.factory.timedOut, 1)
        protocol.connectionLost(Failure(ConnectionError("closed")))
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_peerThatDoesNotTakeTheCloseIsAborted(self):
        clock, broker, protocol, transport = self.guarded(10)
        clock.advance(10)
        self.assertTrue(transport.disconnecting)
        self.assertIsNone(transport.producer)  # unregistered so the close can happen
        self.assertFalse(transport.disconnected)
        clock.advance(1)
        self.assertTrue(transport.disconnected)  # StringTransport's "aborted"
        self.assertEqual(protocol.factory.aborted, 1)
        protocol.connectionLost(Failure(ConnectionError("aborted")))

    def test_zeroMeansNever(self):
        clock, broker, protocol, transport = self.guarded(0)
        self.assertEqual(clock.getDelayedCalls(), [])
        clock.advance(1e6)
        self.assertFalse(transport.disconnecting)
        protocol.connectionLost(Failure(ConnectionError("closed")))


class ConsoleGuardTests(Harness, unittest.TestCase):
    """The console's listening side gets the same limits."""

    @defer.inlineCallbacks
    def test_consoleLimitAndIdleTimeout(self):
        from aiengine.console.registry import CallRegistry
        factory = ConsoleFactory(CallRegistry(), None, name="console")
        service = ListenerService("console", factory, "127.0.0.1", 0,
                                  maxConnections=1, idleTimeout=0.3)
        service.startService()
        self.addCleanup(service.stopService)
        port = service.address[1]
        first = yield self.connect(port, Closer())
        yield waitFor(lambda: factory.openConnections == 1, what="console connection")
        second = yield self.connect(port, Closer())
        yield second.closed
        self.assertEqual((service.guard.refused, factory.connections), (1, 1))
        yield first.closed
        self.assertEqual(service.guard.timedOut, 1)
        yield waitFor(lambda: factory.openConnections == 0, what="console closed")


# -- outbound flow control ---------------------------------------------------------------

class PausingTransport(StringTransport):
    """Pauses its producer once ``room`` writes have been made."""

    room = 2

    def write(self, data):
        StringTransport.write(self, data)
        self.room -= 1
        if self.room <= 0 and self.producer is not None:
            self.producer.pauseProducing()


class FlowControlUnitTests(Harness, unittest.TestCase):
    """overflow drop: a full queue drops, counted, and never slows the topic."""

    overflow = "drop"

    def connection(self, transport=None, **bounds):
        config = ListenerConfig(name="lines", port=0, protocol=textProtocol(),
                                topic_in="in", topic_out="out", overflow=self.overflow,
                                slow_consumer_timeout=5.0)
        self.broker = Broker()
        factory = ListenerFactory(config, self.broker)
        for key, value in bounds.items():
            setattr(factory, key, value)
        factory.doStart()
        self.addCleanup(factory.doStop)
        transport = StringTransport() if transport is None else transport
        factory.buildProtocol(None).makeConnection(transport)
        connection = factory.connections["lines.1"]
        self.assertIs(transport.producer, connection)
        return factory, connection, transport

    def test_queueBoundedByMessages(self):
        factory, connection, transport = self.connection(maxQueuedMessages=5)
        connection.pauseProducing()
        for i in range(8):
            self.broker.publish("out", b"%d" % i)
        self.assertEqual(transport.value(), b"")
        self.assertEqual((connection.queued, connection.dropped, factory.dropped), (5, 3, 3))
        connection.resumeProducing()
        self.assertEqual(transport.value(), b"0\n1\n2\n3\n4\n")
        self.broker.publish("out", b"direct")
        self.assertEqual(transport.value(), b"0\n1\n2\n3\n4\ndirect\n")
        self.assertEqual((connection.queued, connection.messagesOut), (0, 6))

    def test_queueBoundedByBytes(self):
        factory, connection, transport = self.connection(maxQueuedBytes=100)
        connection.pauseProducing()
        for i in range(4):
            self.broker.publish("out", b"%d" % i * 30)
        self.assertEqual((connection.queued, connection.dropped), (3, 1))
        connection.resumeProducing()
        connection.pauseProducing()
        # One message is always taken into an empty queue, however large.
        self.broker.publish("out", b"y" * 500)
        self.broker.publish("out", b"z")
        self.assertEqual((connection.queued, connection.dropped), (1, 2))

    def test_resumeWritesUntilPausedAgain(self):
        factory, connection, transport = self.connection(PausingTransport())
        connection.pauseProducing()
        # The queue is written back a slice (one write) at a time.
        count = 2 * RESUME_SLICE + 3
        for i in range(count):
            self.broker.publish("out", b"%d" % i)
        transport.room = 1
        connection.resumeProducing()
        self.assertEqual(transport.value(),
                         b"".join(b"%d\n" % i for i in range(RESUME_SLICE)))
        self.assertEqual(connection.queued, count - RESUME_SLICE)
        self.broker.publish("out", b"last")  # behind the queue, not around it
        transport.room = 100
        connection.resumeProducing()
        self.assertEqual(transport.value(),
                         b"".join(b"%d\n" % i for i in range(count)) + b"last\n")
        self.assertEqual(connection.messagesOut, count + 1)

    def test_dropsLoggedFirstAndEvery1000th(self):
        events = self.captureLogs()
        factory, connection, transport = self.connection(maxQueuedMessages=1)
        connection.pauseProducing()
        for i in range(2501):
            self.broker.publish("out", b"m")
        self.assertEqual((connection.queued, factory.dropped), (1, 2500))
        self.assertEqual(len(self.logLines(events, "peer is not reading")), 3)

    def test_queuedMessagesCountedWhenTheConnectionGoes(self):
        factory, connection, transport = self.connection()
        connection.pauseProducing()
        self.broker.publish("out", b"a")
        self.broker.publish("out", b"b")
        connection.framer.connectionLost(Failure(ConnectionError("gone")))
        self.assertEqual((connection.queued, factory.dropped), (0, 2))
        self.assertEqual(factory.connections, {})

    def test_resumeWhileClosingLetsTheCloseHappen(self):
        factory, connection, transport = self.connection()
        connection.pauseProducing()
        transport.loseConnection()
        connection.resumeProducing()
        self.assertIsNone(transport.producer)


class FlowControlPauseTests(unittest.TestCase):
    """overflow pause: a full queue pauses the topic's publishers instead of
    dropping; a connection full for slow-consumer-timeout is cut off."""

    def setUp(self):
        self.clock = Clock()
        self.broker = Broker(clock=self.clock)
        config = ListenerConfig(name="lines", port=0, protocol=textProtocol(),
                                topic_in="in", topic_out="out", slow_consumer_timeout=5.0)
        self.factory = ListenerFactory(config, self.broker)
        self.factory.maxQueuedMessages = 3
        self.factory.doStart()
        self.addCleanup(self.factory.doStop)
        self.transports = []
        for _ in range(2):
            transport = StringTransport()
            self.factory.buildProtocol(None).makeConnection(transport)
            self.transports.append(transport)
        self.slow, self.quick = (self.factory.connections[f"lines.{n}"] for n in (1, 2))
        self.producer = Producer()
        self.broker.topic("out").registerProducer(self.producer)

    def lines(self, transport):
        return transport.value().split(b"\n")[:-1]

    def test_fullQueuePausesPublishersDropsNothing(self):
        self.slow.pauseProducing()
        for i in range(6):
            self.broker.publish("out", b"%d" % i)
        self.assertTrue(self.producer.paused)
        # The quick one waits too: the topic is paused as a whole.
        self.assertEqual(self.lines(self.transports[1]), [b"0", b"1", b"2"])
        self.assertEqual((self.slow.queued, self.factory.dropped), (3, 0))
        self.slow.resumeProducing()
        self.assertFalse(self.producer.paused)
        for transport in self.transports:
            self.assertEqual(self.lines(transport), [b"%d" % i for i in range(6)])
        self.assertEqual((self.factory.dropped, self.factory.slowConsumers), (0, 0))
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_slowConsumerCutOff(self):
        events = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        self.slow.pauseProducing()
        for i in range(5):
            self.broker.publish("out", b"%d" % i)
        self.clock.advance(4.9)
        self.assertTrue(self.producer.paused)
        self.assertFalse(self.transports[0].disconnecting)
        self.clock.advance(0.1)
        self.assertEqual(self.factory.slowConsumers, 1)
        self.assertEqual((self.slow.dropped, self.factory.dropped), (3, 3))
        self.assertFalse(self.producer.paused)
        # The others got everything, the cut-off one is out of the routing.
        self.assertEqual(self.lines(self.transports[1]), [b"%d" % i for i in range(5)])
        self.assertEqual(list(self.factory.connections), ["lines.2"])
        self.broker.publish("out", b"after")
        self.assertEqual(self.slow.queued, 0)
        logged = [formatEvent(e) for e in events if "slow consumer" in e.get("log_format", "")]
        self.assertEqual(len(logged), 1)
        self.assertIn("lines.1", logged[0])

    def test_closedWhileFullReleasesPublishers(self):
        self.slow.pauseProducing()
        for i in range(4):
            self.broker.publish("out", b"%d" % i)
        self.assertTrue(self.producer.paused)
        self.slow.framer.connectionLost(Failure(ConnectionDone()))
        self.assertFalse(self.producer.paused)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(self.lines(self.transports[1]), [b"0", b"1", b"2", b"3"])
        self.assertEqual(self.factory.dropped, 3)


class FlowControlSocketTests(Harness, unittest.TestCase):
    @defer.inlineCallbacks
    def slowAndFast(self, count, size=8000, batch=10, receiveBuffer=1 << 16):
        """Publish ``count`` broadcast messages to a peer that reads and one
        that does not; returns the two clients."""
        port = self.startListener(overflow="drop")
        self.factory.maxQueuedMessages = 20
        slow = yield self.connect(port, BigLineClient())
        yield waitFor(lambda: "lines.1" in self.factory.connections, what="slow")
        fast = yield self.connect(port, BigLineClient())
        yield waitFor(lambda: "lines.2" in self.factory.connections, what="fast")
        # Small kernel buffers so the test need not fill megabytes.  (Below
        # the loopback MSS the peer would reopen its window only slowly.)
        slow.transport.pauseProducing()
        slow.transport.getHandle().setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF,
                                              receiveBuffer)
        tcpTransport(self.factory.connections["lines.1"]).getHandle().setsockopt(
            socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        payload = b"x" * size
        for start in range(0, count, batch):
            for i in range(start, min(start + batch, count)):
                self.broker.publish("out", b"%06d " % i + payload)
            yield fast.waitLines(min(start + batch, count))
        return slow, fast

    @defer.inlineCallbacks
    def test_slowPeerDoesNotSlowOthersAndIsBounded(self):
        count = 300
        slow, fast = yield self.slowAndFast(count)
        slowConnection = self.factory.connections["lines.1"]
        fastConnection = self.factory.connections["lines.2"]
        self.assertEqual([int(line[:6]) for line in fast.lines], list(range(count)))
        self.assertEqual(fastConnection.dropped, 0)
        self.assertGreater(slowConnection.dropped, 0)
        self.assertLessEqual(slowConnection.queued, 20)
        self.assertEqual(self.factory.dropped, slowConnection.dropped)
        # The slow peer reads again: it gets what was kept, in order.
        kept = count - slowConnection.dropped
        slow.transport.resumeProducing()
        yield waitFor(lambda: len(slow.lines) == kept, what=f"{kept} lines")
        numbers = [int(line[:6]) for line in slow.lines]
        self.assertEqual(numbers, sorted(set(numbers)))
        self.assertEqual(numbers[0], 0)
        self.assertEqual(slowConnection.messagesOut, kept)

    @defer.inlineCallbacks
    def test_stopDoesNotHangOnAPeerThatDoesNotRead(self):
        slow, fast = yield self.slowAndFast(300, receiveBuffer=4096)
        self.assertGreater(self.factory.connections["lines.1"].dropped, 0)  # stuck
        self.service.closeGrace = 0.2
        # The grace runs on a Clock: the stop ends when it is over, on any machine.
        clock = self.guard.reactor = Clock()
        stopping = self.service.stopService()
        yield waitFor(lambda: len(self.guard.protocols) == 1, what="the fast peer closed")
        clock.advance(0.199)
        self.assertEqual(self.guard.aborted, 0)
        self.assertFalse(stopping.called)
        clock.advance(0.001)
        yield stopping
        slow.transport.resumeProducing()  # a client that does not read sees no close
        yield slow.closed
        self.assertGreaterEqual(self.guard.aborted, 1)
        self.assertEqual(self.guard.protocols, {})


# -- authentication ------------------------------------------------------------------

class AuthenticationTests(Harness, unittest.TestCase):
    @defer.inlineCallbacks
    def test_rightSecretThenMessages(self):
        events = self.captureLogs()
        port = self.startListener(secret=SECRET)
        client = yield self.connect(port)
        client.sendLine(b"  " + SECRET + b" \r")  # surrounding whitespace ignored
        client.sendLine(b"first message")
        yield waitFor(lambda: self.received, what="publish")
        self.assertEqual([m.body for m in self.received], [b"first message"])
        self.assertTrue(self.factory.connections["lines.1"].authenticated)
        self.assertEqual((self.factory.authenticated, self.factory.authFailures), (1, 0))
        self.assertEqual(self.logLines(events, "authenticated"), ["lines.1 authenticated"])
        self.assertEqual(self.logLines(events, SECRET.decode()), [])

    @defer.inlineCallbacks
    def test_wrongSecretCloses(self):
        events = self.captureLogs()
        port = self.startListener(secret=SECRET)
        client = yield self.connect(port)
        client.sendLine(SECRET[:-1] + b"X")
        client.sendLine(b"never published")
        yield client.closed
        # Once the server side is gone too, nothing of it can be published.
        yield waitFor(lambda: not self.guard.protocols, what="the server side closed")
        self.assertEqual(self.received, [])
        self.assertEqual(self.factory.authFailures, 1)
        failed = self.logLines(events, "authentication failed")
        self.assertEqual(len(failed), 1)
        self.assertIn("from 127.0.0.1:", failed[0])
        self.assertEqual(self.logLines(events, SECRET[:-1].decode()), [])
        # The right secret at once from the same address is not even checked.
        client = yield self.connect(port)
        client.sendLine(SECRET)
        client.sendLine(b"still not published")
        yield client.closed
        yield waitFor(lambda: not self.guard.protocols, what="the server side closed")
        self.assertEqual(self.received, [])
        self.assertEqual((self.factory.authFailures, self.factory.authThrottled), (1, 1))

    @defer.inlineCallbacks
    def test_nothingWrittenBeforeAuthentication(self):
        port = self.startListener(secret=SECRET)
        outsider = yield self.connect(port)
        member = yield self.connect(port)
        member.sendLine(SECRET)
        yield waitFor(lambda: self.factory.authenticated == 1, what="authentication")
        self.broker.publish("out", b"news")
        self.broker.publish("out", b"private", session="lines.1",
                            attributes={"in-reply-to": "in-1"})
        self.assertEqual((yield member.waitLines(1)), [b"news"])
        self.assertEqual(outsider.lines, [])
        self.assertEqual(self.factory.withheld, 2)
        outsider.sendLine(SECRET)
        yield waitFor(lambda: self.factory.authenticated == 2, what="authentication")
        self.broker.publish("out", b"later", session="lines.1",
                            attributes={"in-reply-to": "in-2"})
        yield outsider.waitLines(1)
        # Anything written to it before would have arrived first: one stream.
        self.assertEqual(outsider.lines, [b"later"])

    def test_noSecondGuessInTheSamePacket(self):
        """Data read together with a wrong secret is not tried as a secret."""
        config = ListenerConfig(name="lines", port=0, protocol=textProtocol(),
                                topic_in="in")
        factory = ListenerFactory(config, Broker(), secret=SECRET)
        protocol = factory.buildProtocol(None)
        protocol.makeConnection(StringTransport())
        connection = factory.connections["lines.1"]
        protocol.dataReceived(b"wrong\n" + SECRET + b"\n")
        protocol.dataReceived(SECRET + b"\n")
        self.assertFalse(connection.authenticated)
        self.assertEqual((factory.authFailures, factory.rejected), (1, 2))
        self.assertTrue(protocol.transport.disconnecting)

    def test_secretLineBeforeAnyFraming(self):
        """The secret is a line even when the listener frames XML documents,
        and may arrive split over packets together with the first document."""
        config = ListenerConfig(name="docs", port=0, protocol=xmlProtocol(),
                                msgtype="xml", topic_in="in")
        broker = Broker()
        received = []
        broker.subscribe("in", received.append)
        factory = ListenerFactory(config, broker, secret=SECRET)
        protocol = factory.buildProtocol(None)
        protocol.makeConnection(StringTransport())
        protocol.dataReceived(SECRET[:4])
        protocol.dataReceived(SECRET[4:] + b"\r\n<a>one</a>")
        protocol.dataReceived(b"<b/>")
        self.assertTrue(factory.connections["docs.1"].authenticated)
        self.assertEqual([m.body for m in received], [b"<a>one</a>", b"<b/>"])

    def test_overlongSecretLineRefused(self):
        config = ListenerConfig(name="lines", port=0, protocol=textProtocol(),
                                topic_in="in")
        factory = ListenerFactory(config, Broker(), secret=SECRET)
        protocol = factory.buildProtocol(None)
        protocol.makeConnection(StringTransport())
        protocol.dataReceived(b"x" * 5000)
        self.assertEqual(factory.authFailures, 1)
        self.assertTrue(protocol.transport.disconnecting)

    def test_emptySecretRefused(self):
        config = ListenerConfig(name="x", port=0, protocol=textProtocol(), topic_in="in")
        self.assertRaises(ValueError, ListenerFactory, config, Broker(), secret=b"")


# -- TLS ---------------------------------------------------------------------------------

class TLSTests(Harness, unittest.TestCase):
    def setUp(self):
        self.files = makeCertificates(self.mktemp())

    @defer.inlineCallbacks
    def test_tlsClientPublishesPlainClientDoesNot(self):
        options = serverTLSOptions("lines", self.files["certificate"], self.files["key"])
        port = self.startListener(tls=options)
        plain = yield self.connect(port, Closer())
        plain.transport.write(b"plain text\n")
        yield plain.closed
        secure = yield self.connect(port, ca=self.files["ca"])
        secure.sendLine(b"over tls")
        yield waitFor(lambda: self.received, what="publish")
        self.assertEqual([m.body for m in self.received], [b"over tls"])
        self.broker.publish("out", b"answer", session=self.received[0].session,
                            attributes={"in-reply-to": self.received[0].id})
        self.assertEqual((yield secure.waitLines(1)), [b"answer"])

    @defer.inlineCallbacks
    def test_idleTlsConnectionClosedCleanly(self):
        """An idle TLS connection is closed with TLS's own close, not cut off."""
        options = serverTLSOptions("lines", self.files["certificate"], self.files["key"])
        port = self.startListener(tls=options, idleTimeout=0.2)
        client = ReasonClient()
        yield self.connect(port, client, ca=self.files["ca"])
        [reason] = yield client.closed
        self.assertTrue(reason.check(ConnectionDone), reason)
        self.assertEqual((self.guard.timedOut, self.guard.aborted), (1, 0))

    @defer.inlineCallbacks
    def test_stalledHandshakeClosed(self):
        """A client that connects to a TLS listener and never completes the
        handshake is closed after the handshake timeout, not idle-timeout."""
        self.patch(GuardFactory, "handshakeTimeout", 0.2)
        options = serverTLSOptions("lines", self.files["certificate"], self.files["key"])
        port = self.startListener(tls=options)
        # Real sockets, the guard's time on a Clock: exactly 0.2 s, on any machine.
        clock = self.guard.reactor = Clock()
        silent = yield self.connect(port, Closer())
        half = yield self.connect(port, Closer())
        half.transport.write(b"\x16\x03\x01\x00")  # the start of a ClientHello
        yield waitFor(lambda: len(self.guard.protocols) == 2, what="both accepted")
        clock.advance(0.199)
        self.assertEqual(self.guard.handshakeTimeouts, 0)
        clock.advance(0.001)
        yield silent.closed
        yield half.closed
        self.assertEqual(self.guard.handshakeTimeouts, 2)
        # A client that completes its handshake is not affected, however long
        # after it the handshake timeout would have been.
        client = yield self.connect(port, ca=self.files["ca"])
        client.sendLine(b"after the handshake")
        yield waitFor(lambda: self.received, what="a message over TLS")
        clock.advance(10 * GuardFactory.handshakeTimeout)
        self.assertEqual(self.guard.handshakeTimeouts, 2)
        self.assertFalse(client.closed.called)
        client.sendLine(b"still there")
        yield waitFor(lambda: len(self.received) == 2, what="a second message")

    def writeFile(self, name, data):
        path = os.path.join(os.path.dirname(self.files["ca"]), name)
        with open(path, "wb") as f:
            f.write(data)
        return path

    def assertConfigError(self, certificate, key, *fragments):
        error = self.assertRaises(ConfigError, serverTLSOptions, "web", certificate, key)
        for fragment in ("listener 'web'",) + fragments:
            self.assertIn(fragment, str(error))

    def test_badCertificate(self):
        bad = self.writeFile("bad.pem", b"-----BEGIN CERTIFICATE-----\nnot base64!"
                             b"\n-----END CERTIFICATE-----\n")
        self.assertConfigError(bad, self.files["key"], bad, "tls.certificate")
        empty = self.writeFile("empty.pem", b"")
        self.assertConfigError(empty, self.files["key"], empty, "no PEM certificate")

    def test_badKey(self):
        bad = self.writeFile("bad.key", b"garbage")
        self.assertConfigError(self.files["certificate"], bad, bad, "tls.key")

    def test_keyOfAnotherCertificate(self):
        other = makeCertificates(self.mktemp())
        self.assertConfigError(self.files["certificate"], other["key"], "does not fit",
                               other["key"])

    def test_certificateChainAccepted(self):
        with open(self.files["certificate"], "rb") as f, open(self.files["ca"], "rb") as g:
            chain = self.writeFile("chain.pem", f.read() + g.read())
        options = serverTLSOptions("web", chain, self.files["key"])
        self.assertIsNotNone(options.getContext())


# -- the engine ----------------------------------------------------------------------------

LISTENER_XML = """<service>
  <listeners>
    <listener name="console">
      <property name="port" value="0"/>
      <property name="msgtype" value="xmlcall"/>
    </listener>
    <listener name="lines">
      <property name="port" value="0"/>
      <property name="protocol" value="text-messages"/>
      <property name="topic-in" value="in"/>
      <property name="topic-out" value="out"/>
      {extra}
    </listener>
  </listeners>
</service>
"""


def prop(name, value):
    return f'<property name="{name}" value="{value}"/>'


class EngineTests(Harness, unittest.TestCase):
    def setUp(self):
        self.directory = os.path.abspath(self.mktemp())
        self.files = makeCertificates(self.directory)

    def engine(self, *properties, secret=b"  " + SECRET + b"\n"):
        with open(os.path.join(self.directory, "secret"), "wb") as f:
            f.write(secret)
        text = LISTENER_XML.format(extra="\n".join(properties))
        config = parse(text.encode(), path=os.path.join(self.directory, "media.xml"))
        return Engine(config, reactor)

    @defer.inlineCallbacks
    def test_tlsAuthAndLimitsFromMediaXml(self):
        engine = self.engine(prop("auth", "true"), prop("auth.secret-file", "secret"),
                             prop("tls.certificate", "server.pem"),
                             prop("tls.key", "server.key"),
                             prop("max-connections", "3"), prop("idle-timeout", "5"))
        service = engine.listeners["lines"]
        self.assertEqual((service.maxConnections, service.idleTimeout), (3, 5.0))
        self.assertEqual(service.factory.secret, SECRET)
        received = []
        engine.broker.subscribe("in", received.append)
        engine.startService()
        self.addCleanup(engine.stopService)
        client = yield self.connect(service.address[1], ca=self.files["ca"])
        client.sendLine(SECRET)
        client.sendLine(b"hello")
        yield waitFor(lambda: received, what="publish")
        self.assertEqual([m.body for m in received], [b"hello"])
        self.assertEqual(service.guard.maxConnections, 3)

    def test_emptySecretIsAStartUpError(self):
        error = self.assertRaises(ConfigError, self.engine, prop("auth", "true"),
                                  prop("auth.secret-file", "secret"), secret=b" \n\t")
        message = str(error)
        for fragment in ("listener 'lines'", "auth.secret-file", "is empty",
                         os.path.join(self.directory, "secret"), "media.xml"):
            self.assertIn(fragment, message)

    def test_badPemIsAStartUpError(self):
        with open(os.path.join(self.directory, "broken.pem"), "w") as f:
            f.write("not a certificate")
        error = self.assertRaises(ConfigError, self.engine,
                                  prop("tls.certificate", "broken.pem"),
                                  prop("tls.key", "server.key"))
        self.assertIn("listener 'lines'", str(error))
        self.assertIn(os.path.join(self.directory, "broken.pem"), str(error))

    def test_readSecretStrips(self):
        path = os.path.join(self.directory, "s")
        with open(path, "wb") as f:
            f.write(b"\n\t" + SECRET + b"  \r\n")
        os.chmod(path, 0o600)
        self.assertEqual(readSecret(path, "x"), SECRET)
        error = self.assertRaises(ConfigError, readSecret, path + ".missing", "x")
        self.assertIn("cannot read", str(error))

    def test_secretNoClientCouldType(self):
        """A byte order mark, a NUL or bytes that are not UTF-8 stop start-up
        (and --check): no client would send the same bytes."""
        path = os.path.join(self.directory, "odd")
        for content, why in [(b"\xef\xbb\xbf" + SECRET, "starts with a byte order mark"),
                             (SECRET + b"\x00x", "holds a NUL byte"),
                             (b"caf\xe9", "is not UTF-8 (byte 3)")]:
            with open(path, "wb") as f:
                f.write(content)
            error = self.assertRaises(ConfigError, readSecret, path, "x")
            self.assertIn(why, str(error))
            self.assertEqual(error.prop, "auth.secret-file")

    def test_worldReadableSecretWarned(self):
        events = self.captureLogs()
        path = os.path.join(self.directory, "open")
        with open(path, "wb") as f:
            f.write(SECRET)
        os.chmod(path, 0o644)
        self.assertEqual(readSecret(path, "gate"), SECRET)
        [line] = self.logLines(events, "can be read by other users")
        self.assertIn("mode 644", line)
        self.assertIn("chmod 600", line)
        os.chmod(path, 0o600)
        readSecret(path, "gate")
        self.assertEqual(len(self.logLines(events, "can be read by other users")), 1)

    def test_exposedConsoleWithoutAuthRefused(self):
        settings = ListenerConfig(name="console", port=0, interface="0.0.0.0",
                                  msgtype="xmlcall", protocol=textProtocol())
        error = self.assertRaises(ConfigError, Engine,
                                  ServiceConfig(path="built", listeners=(settings,)),
                                  reactor)
        self.assertIn("must require authentication", str(error))

    def test_consoleGetsTheSecret(self):
        text = LISTENER_XML.replace(
            '<property name="msgtype" value="xmlcall"/>',
            '<property name="msgtype" value="xmlcall"/>' + prop("auth", "true")
            + prop("auth.secret-file", "secret"))
        with open(os.path.join(self.directory, "secret"), "wb") as f:
            f.write(SECRET + b"\n")
        config = parse(text.format(extra="").encode(),
                       path=os.path.join(self.directory, "media.xml"))
        engine = Engine(config, reactor)
        factory = engine.listeners["console"].factory
        self.assertIsInstance(factory, ConsoleFactory)
        self.assertEqual(factory.secret, SECRET)
        self.assertIsNone(engine.listeners["lines"].factory.secret)
