"""Tests for aiengine.listeners, with real loopback sockets."""

from __future__ import annotations

from twisted.internet import defer, reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.error import ConnectionDone
from twisted.internet.task import deferLater
from twisted.internet.testing import StringTransport
from twisted.protocols.basic import LineOnlyReceiver
from twisted.python.failure import Failure
from twisted.trial import unittest

from aiengine import listeners
from aiengine.broker import Broker
from aiengine.config import ListenerConfig, ProtocolConfig, ProtocolSettings
from aiengine.listeners import RESUME_SLICE, ListenerFactory, ListenerService


def textProtocol(delimiter=b"\n", **kw):
    settings = ProtocolSettings(name="text-messages", delimiter=delimiter, **kw)
    return ProtocolConfig(name="text-messages", inbound=settings, outbound=settings)


class LineClient(LineOnlyReceiver):
    """Collects lines; ``waitLines(n)`` fires once ``n`` have arrived."""

    delimiter = b"\n"

    def __init__(self):
        self.lines = []
        self._waiters = []
        self.closed = defer.Deferred()

    def lineReceived(self, line):
        self.lines.append(line)
        for n, d in list(self._waiters):
            if len(self.lines) >= n:
                self._waiters.remove((n, d))
                d.callback(self.lines[:n])

    def waitLines(self, n):
        if len(self.lines) >= n:
            return defer.succeed(self.lines[:n])
        d = defer.Deferred()
        self._waiters.append((n, d))
        return d

    def connectionLost(self, reason):
        self.closed.callback(None)


def settle(seconds=0.05):
    return deferLater(reactor, seconds, lambda: None)


class ListenerTests(unittest.TestCase):
    def startListener(self, **kw):
        options = dict(name="lines", port=0, protocol=textProtocol(), topic_in="in",
                       topic_out="out")
        options.update(kw)
        config = ListenerConfig(**options)
        self.broker = Broker()
        self.factory = ListenerFactory(config, self.broker)
        self.service = ListenerService(config.name, self.factory, "127.0.0.1", 0)
        self.service.startService()
        self.addCleanup(self.service.stopService)
        return self.service.address[1]

    @defer.inlineCallbacks
    def connect(self, port):
        client = LineClient()
        yield connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), client)
        self.addCleanup(lambda: client.transport.loseConnection() or client.closed)
        return client

    @defer.inlineCallbacks
    def test_inboundPublishedWithSession(self):
        port = self.startListener()
        received = []
        self.broker.subscribe("in", received.append)
        first = yield self.connect(port)
        second = yield self.connect(port)
        first.sendLine(b"from one")
        second.sendLine(b"from two")
        while len(received) < 2:
            yield settle(0.01)
        bySession = {m.session: m for m in received}
        self.assertEqual(set(bySession), {"lines.1", "lines.2"})
        for session, message in bySession.items():
            self.assertEqual(message.source, session)
            self.assertEqual(message.topic, "in")
        self.assertEqual(sorted(m.body for m in received), [b"from one", b"from two"])

    @defer.inlineCallbacks
    def test_outboundRouting(self):
        """A reply reaches the connection of its session only; every other
        message, whatever its session, reaches every connection."""
        port = self.startListener()
        first = yield self.connect(port)
        second = yield self.connect(port)
        while len(self.factory.connections) < 2:
            yield settle(0.01)
        self.broker.publish("out", b"everyone")
        self.broker.publish("out", b"only two", session="lines.2",
                            attributes={"in-reply-to": "in-1"})
        self.broker.publish("out", b"nobody here", session="elsewhere.1",
                            attributes={"in-reply-to": "in-2"})
        self.broker.publish("out", b"said by two", session="lines.2")
        self.broker.publish("out", b"everyone again")
        # Last, for everyone: once it has arrived, whatever was written to a
        # connection before it has arrived too (one stream, in order).
        self.broker.publish("out", b"the end")
        lines = yield second.waitLines(5)
        self.assertEqual(lines, [b"everyone", b"only two", b"said by two",
                                 b"everyone again", b"the end"])
        yield first.waitLines(4)
        self.assertEqual(first.lines, [b"everyone", b"said by two", b"everyone again",
                                       b"the end"])

    @defer.inlineCallbacks
    def test_replyForClosedConnectionCounted(self):
        """A reply for a session of ours that has gone is counted, not lost
        silently; so is a message for everyone while nobody is connected."""
        port = self.startListener()
        client = yield self.connect(port)
        while not self.factory.connections:
            yield settle(0.01)
        client.transport.loseConnection()
        yield client.closed
        while self.factory.connections:
            yield settle(0.01)
        self.broker.publish("out", b"too late", session="lines.1",
                            attributes={"in-reply-to": "in-1"})
        self.broker.publish("out", b"not ours", session="other.1",
                            attributes={"in-reply-to": "in-2"})
        self.broker.publish("out", b"for everyone")
        self.assertEqual((self.factory.undeliverable, self.factory.unrouted), (1, 1))
        self.assertEqual(self.factory.stats()["unrouted"], 1)

    @defer.inlineCallbacks
    def test_directionOutIgnoresInput(self):
        port = self.startListener(direction="out")
        received = []
        self.broker.subscribe("in", received.append)
        client = yield self.connect(port)
        client.sendLine(b"ignored")
        while self.factory.ignored < 1:
            yield settle(0.01)
        self.assertEqual(received, [])
        self.broker.publish("out", b"still written")
        self.assertEqual((yield client.waitLines(1)), [b"still written"])

    @defer.inlineCallbacks
    def test_directionInWritesNothing(self):
        port = self.startListener(direction="in")
        client = yield self.connect(port)
        while not self.factory.connections:
            yield settle(0.01)
        [connection] = self.factory.connections.values()
        written = []
        transport = connection.framer.transport
        self.patch(transport, "write", written.append)
        self.patch(transport, "writeSequence", written.extend)
        # Writing is synchronous: had the message been for this connection,
        # it would be in ``written`` now, whatever the speed of the sockets.
        self.broker.publish("out", b"not for sockets")
        self.assertEqual((written, self.factory.messagesOut), ([], 0))
        # Nor can it come later: the listener does not even subscribe to the
        # topic.  The short wait lets real sockets agree.
        self.assertEqual(list(self.broker.topic("out").subscriptions), [])
        yield settle()
        self.assertEqual((written, client.lines), ([], []))

    def test_xmlFramingNotParsedTwice(self):
        """With xml-messages framing, msgtype=xml does not parse each message again."""
        calls = []
        self.patch(listeners, "parseDocument", lambda *a: calls.append(a))
        settings = ProtocolSettings(name="xml-messages")
        config = ListenerConfig(name="docs", port=0, msgtype="xml", topic_in="in",
                                protocol=ProtocolConfig("xml-messages", settings, settings))
        broker = Broker()
        received = []
        broker.subscribe("in", received.append)
        factory = ListenerFactory(config, broker)
        protocol = factory.buildProtocol(None)
        protocol.makeConnection(StringTransport())
        protocol.dataReceived(b"<a/><b>x</b>")
        self.assertEqual([m.body for m in received], [b"<a/>", b"<b>x</b>"])
        self.assertEqual(calls, [])
        protocol.connectionLost(Failure(ConnectionDone()))

    @defer.inlineCallbacks
    def test_oneFailingConnectionDoesNotStopTheOthers(self):
        port = self.startListener()
        first = yield self.connect(port)
        second = yield self.connect(port)
        while len(self.factory.connections) < 2:
            yield settle(0.01)

        def broken(message):
            raise RuntimeError("cannot write")

        self.factory.connections["lines.1"].send = broken
        self.broker.publish("out", b"still sent")
        self.assertEqual((yield second.waitLines(1)), [b"still sent"])
        self.assertEqual(self.factory.errors, 1)
        self.assertEqual(first.lines, [])

    @defer.inlineCallbacks
    def test_xmlMessagesMustBeWellFormed(self):
        port = self.startListener(msgtype="xml")
        received = []
        self.broker.subscribe("in", received.append)
        client = yield self.connect(port)
        client.sendLine(b"<a>broken")
        client.sendLine(b"<a>fine</a>")
        while not received:
            yield settle(0.01)
        self.assertEqual([m.body for m in received], [b"<a>fine</a>"])
        self.assertEqual(received[0].msgtype, "xml")
        self.assertEqual(self.factory.errors, 1)

    @defer.inlineCallbacks
    def test_tooLargeClosesConnection(self):
        port = self.startListener(protocol=textProtocol(max_packet_size=10))
        client = yield self.connect(port)
        client.transport.write(b"x" * 100)
        yield client.closed
        self.assertEqual(self.factory.errors, 1)

    @defer.inlineCallbacks
    def test_busySubscriberHoldsThenPausesReading(self):
        """A subscriber that returns an unfired Deferred makes the connection
        hold what it reads; past maxHeldBytes the socket is no longer read."""
        port = self.startListener()
        self.factory.maxHeldBytes = 10
        gate = defer.Deferred()
        received = []

        def slow(message):
            received.append(message.body)
            return gate

        self.broker.subscribe("in", slow)
        client = yield self.connect(port)
        client.sendLine(b"first")
        while not received:
            yield settle(0.01)
        # The socket under the listener's connection wrapper:
        [wrapper] = self.service.guard.protocols
        connection = self.factory.connections["lines.1"]
        client.sendLine(b"second")
        while not connection._held:
            yield settle(0.01)
        self.assertIn(wrapper.transport, reactor.getReaders())
        client.sendLine(b"third, long enough")
        while len(connection._held) < 2:
            yield settle(0.01)
        self.assertNotIn(wrapper.transport, reactor.getReaders())
        self.assertEqual(received, [b"first"])
        gate.callback(None)
        while len(received) < 3:
            yield settle(0.01)
        self.assertEqual(received, [b"first", b"second", b"third, long enough"])
        self.assertIn(wrapper.transport, reactor.getReaders())

    @defer.inlineCallbacks
    def test_stopClosesConnections(self):
        port = self.startListener()
        client = yield self.connect(port)
        while not self.factory.connections:
            yield settle(0.01)
        yield self.service.stopService()
        yield client.closed
        self.assertEqual(self.factory.connections, {})
        self.assertIsNone(self.service.address)


class ListenerServiceTests(unittest.TestCase):
    def test_fromConfig(self):
        """The service takes its limits from the listener's configuration."""
        config = ListenerConfig(name="lines", port=0, protocol=textProtocol(),
                                topic_in="in", max_connections=7, idle_timeout=0.0)
        factory = ListenerFactory(config, Broker())
        service = ListenerService.fromConfig(config, factory, reactor)
        self.assertEqual((service.name, service.interface, service.port),
                         ("lines", "127.0.0.1", 0))
        self.assertEqual((service.maxConnections, service.idleTimeout, service.tls),
                         (7, 0.0, None))
        service.startService()
        self.addCleanup(service.stopService)
        self.assertEqual((service.guard.maxConnections, service.guard.timeoutPeriod),
                         (7, None))
        self.assertIs(service.guard.wrappedFactory, factory)

    def test_startFailureIsRaised(self):
        """A port in use stops start-up with the error, not a log line."""
        config = ListenerConfig(name="lines", port=0, protocol=textProtocol(),
                                topic_in="in")
        first = ListenerService("one", ListenerFactory(config, Broker()), "127.0.0.1", 0)
        first.startService()
        self.addCleanup(first.stopService)
        second = ListenerService("two", ListenerFactory(config, Broker()), "127.0.0.1",
                                 first.address[1])
        from twisted.internet.error import CannotListenError
        self.assertRaises(CannotListenError, second.startService)

    @defer.inlineCallbacks
    def test_stats(self):
        config = ListenerConfig(name="lines", port=0, protocol=textProtocol(),
                                topic_in="in", topic_out="out")
        broker = Broker()
        factory = ListenerFactory(config, broker)
        service = ListenerService("lines", factory, "127.0.0.1", 0)
        service.startService()
        self.addCleanup(service.stopService)
        client = LineClient()
        yield connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1",
                                                 service.address[1]), client)
        self.addCleanup(lambda: client.transport.loseConnection() or client.closed)
        client.sendLine(b"one")
        while factory.messagesIn < 1:
            yield settle(0.01)
        broker.publish("out", b"two")
        yield client.waitLines(1)
        stats = factory.stats()
        self.assertEqual((stats["count"], stats["openConnections"], stats["messagesIn"],
                          stats["messagesOut"], stats["dropped"]), (1, 1, 1, 1, 0))


class _CountingTransport(StringTransport):
    """Counts write calls."""

    def __init__(self):
        super().__init__()
        self.writes = 0

    def write(self, data):
        self.writes += 1
        super().write(data)


class OutboundBatchTests(unittest.TestCase):
    """topic-out's batches (a packet's messages from another connection)
    reach each connection in one write, the same bytes and counts as one by
    one."""

    def connections(self, n, **kw):
        config = ListenerConfig(name="out", port=0, protocol=textProtocol(),
                                topic_out="t", direction="out", **kw)
        broker = Broker()
        factory = ListenerFactory(config, broker)
        factory.startFactory()
        self.addCleanup(factory.stopFactory)
        transports = []
        for _ in range(n):
            protocol = factory.buildProtocol(None)
            transport = _CountingTransport()
            protocol.makeConnection(transport)
            transports.append(transport)
        return broker.topic("t"), factory, transports

    def test_oneWritePerConnection(self):
        topic, factory, transports = self.connections(3)
        bodies = [b"one", b"two", b"three"]
        topic.publishBatch(topic.messages(bodies))
        for transport in transports:
            self.assertEqual(transport.value(), b"one\ntwo\nthree\n")
            self.assertEqual(transport.writes, 1)
        self.assertEqual(factory.messagesOut, 9)
        # the same as one by one
        single, singleFactory, singleTransports = self.connections(3)
        for body in bodies:
            single.publish(single.message(body))
        self.assertEqual([t.value() for t in singleTransports],
                         [t.value() for t in transports])
        self.assertEqual(singleFactory.messagesOut, factory.messagesOut)

    def test_pausedConnectionQueuesTheBatch(self):
        topic, factory, (fast, slow) = self.connections(2)
        [_, slowConnection] = factory.connections.values()
        slowConnection.pauseProducing()
        topic.publishBatch(topic.messages([b"a", b"b"]))
        self.assertEqual(fast.value(), b"a\nb\n")
        self.assertEqual((slow.value(), slowConnection.queued), (b"", 2))
        slowConnection.resumeProducing()
        self.assertEqual(slow.value(), b"a\nb\n")
        self.assertEqual(factory.messagesOut, 4)

    def test_resumeWritesTheQueueInSlices(self):
        """A peer that has read its buffer gets the queue back in writes of
        RESUME_SLICE messages, stopping as soon as the transport pauses again."""
        topic, factory, [transport] = self.connections(1)
        [connection] = factory.connections.values()
        connection.pauseProducing()
        count = RESUME_SLICE * 2 + 10
        for i in range(count):
            topic.publish(topic.message(b"%d" % i))
        self.assertEqual(connection.queued, count)
        connection.resumeProducing()
        self.assertEqual(transport.writes, 3)
        self.assertEqual(transport.value(), b"".join(b"%d\n" % i for i in range(count)))
        self.assertEqual((connection.queued, connection._queuedBytes), (0, 0))
        self.assertEqual(factory.messagesOut, count)

        # The transport pauses the connection inside the first write.
        connection.pauseProducing()
        for i in range(count):
            topic.publish(topic.message(b"x"))
        write = transport.write
        transport.write = lambda data: (write(data), connection.pauseProducing())
        connection.resumeProducing()
        self.assertEqual(transport.writes, 4)
        self.assertEqual(connection.queued, count - RESUME_SLICE)
        self.assertEqual(connection._queuedBytes, count - RESUME_SLICE)

    def test_noConnectionCountsTheWholeBatch(self):
        topic, factory, _ = self.connections(0)
        topic.publishBatch(topic.messages([b"a", b"b", b"c"]))
        self.assertEqual(factory.unrouted, 3)
