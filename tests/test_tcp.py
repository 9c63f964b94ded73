"""TCP for listeners and channels (issue 11): TCP_NODELAY on every listener,
console and channel socket unless ``tcp.nodelay=false`` says otherwise, and
transports that send a write at once when nothing is buffered ahead of it."""

from __future__ import annotations

import socket

from twisted.internet import defer, reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import ClientFactory, Factory, Protocol
from twisted.internet.task import deferLater
from twisted.internet.testing import MemoryReactor
from twisted.trial import unittest

from aiengine import tcp
from aiengine.config import parse
from aiengine.engine import Engine
from tests.support import waitFor


def listener(name, nodelay=None, msgtype="text"):
    extra = ("" if nodelay is None
             else f'<property name="tcp.nodelay" value="{nodelay}"/>')
    topics = ("" if msgtype == "xmlcall"
              else '<property name="topic-in" value="t"/>')
    return (f'<listener name="{name}"><property name="port" value="0"/>'
            f'<property name="protocol" value="text-messages"/>'
            f'<property name="msgtype" value="{msgtype}"/>{topics}{extra}</listener>')


def channel(name, port, nodelay):
    return (f'<channel name="{name}"><property name="host" value="127.0.0.1"/>'
            f'<property name="port" value="{port}"/>'
            f'<property name="protocol" value="text-messages"/>'
            f'<property name="tcp.nodelay" value="{nodelay}"/></channel>')


def nodelay(transport) -> int:
    return transport.getHandle().getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)


class NoDelayTests(unittest.TestCase):
    timeout = 20

    def setUp(self):
        self.server = Factory.forProtocol(Protocol)
        self.port = reactor.listenTCP(0, self.server, interface="127.0.0.1")
        self.addCleanup(self.port.stopListening)
        text = ("<service><listeners>" + listener("on") + listener("off", "false")
                + listener("console", msgtype="xmlcall")
                + "</listeners><directchannels>"
                + channel("fast", self.port.getHost().port, "true")
                + channel("nagle", self.port.getHost().port, "false")
                + "</directchannels></service>")
        self.engine = Engine(parse(text.encode()), reactor)
        self.engine.startService()
        self.addCleanup(self.engine.stopService)

    @defer.inlineCallbacks
    def accepted(self, name):
        """The daemon's side of a new connection to listener ``name``."""
        service = self.engine.listeners[name]
        client = yield connectProtocol(
            TCP4ClientEndpoint(reactor, "127.0.0.1", service.address[1]), Protocol())
        self.addCleanup(client.transport.loseConnection)
        yield waitFor(lambda: service.guard.protocols, what=f"{name} accepted")
        [guard] = service.guard.protocols
        return guard.transport

    @defer.inlineCallbacks
    def test_listenersAndConsole(self):
        self.assertEqual(nodelay((yield self.accepted("on"))), 1)
        self.assertEqual(nodelay((yield self.accepted("console"))), 1)
        self.assertEqual(nodelay((yield self.accepted("off"))), 0)

    @defer.inlineCallbacks
    def test_channels(self):
        channels = self.engine.channels
        yield waitFor(lambda: all(c.state == "connected" for c in channels.values()),
                      what="channels connected")
        self.assertEqual(nodelay(channels["fast"]._protocol.transport), 1)
        self.assertEqual(nodelay(channels["nagle"]._protocol.transport), 0)

    def test_defaults(self):
        config = parse(("<service><listeners>" + listener("l")
                        + "</listeners></service>").encode())
        self.assertTrue(config.listeners[0].tcp_nodelay)


class _Collect(Protocol):
    """Keeps what it receives; ``lost`` fires when the connection ends."""

    def __init__(self):
        self.data = bytearray()
        self.made = defer.Deferred()
        self.lost = defer.Deferred()

    def connectionMade(self):
        self.made.callback(self)

    def dataReceived(self, data):
        self.data += data

    def connectionLost(self, reason):
        self.reason = reason
        self.lost.callback(None)


class WriteThroughTests(unittest.TestCase):
    """Writes on listener and channel transports leave at once; what the
    socket does not take is buffered and follows in order."""

    timeout = 20

    def serve(self):
        """A write-through port on loopback; its accepted protocols in order."""
        accepted = []

        def build(addr):
            protocol = _Collect()
            accepted.append(protocol)
            return protocol

        factory = Factory()
        factory.buildProtocol = build
        port = tcp.listenTCP(reactor, 0, factory, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        return port.getHost().port, accepted

    @defer.inlineCallbacks
    def connected(self, port, connect=None):
        """A client connection to ``port`` (by :func:`aiengine.tcp.connectTCP`
        when ``connect`` says so) and its protocol."""
        client = _Collect()
        if connect:
            factory = ClientFactory()
            factory.buildProtocol = lambda addr: client
            connector = tcp.connectTCP(reactor, "127.0.0.1", port, factory)
            self.addCleanup(connector.disconnect)
        else:
            yield connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), client)
        yield client.made
        self.addCleanup(lambda: client.transport.loseConnection() or client.lost)
        return client

    @defer.inlineCallbacks
    def test_serverWriteLeavesAtOnce(self):
        port, accepted = self.serve()
        client = yield self.connected(port)
        yield waitFor(lambda: accepted, what="accepted")
        server = accepted[0]
        server.transport.write(b"now")
        # Sent, not buffered: the transport does not wait for the reactor to
        # say that its socket is writable.
        self.assertNotIn(server.transport, reactor.getWriters())
        yield waitFor(lambda: bytes(client.data) == b"now", what="the write")

    @defer.inlineCallbacks
    def test_clientWriteLeavesAtOnce(self):
        port, accepted = self.serve()
        client = yield self.connected(port, connect=True)
        client.transport.write(b"hello")
        self.assertNotIn(client.transport, reactor.getWriters())
        yield waitFor(lambda: accepted and bytes(accepted[0].data) == b"hello",
                      what="the write")

    @defer.inlineCallbacks
    def test_whatTheSocketRefusesFollowsInOrder(self):
        """A peer that does not read: the first write fills the socket, the rest
        is buffered, later writes queue behind it, and all of it arrives in
        order once the peer reads."""
        port, accepted = self.serve()
        client = yield self.connected(port)
        client.transport.pauseProducing()
        yield waitFor(lambda: accepted, what="accepted")
        server = accepted[0]
        big = bytes(range(256)) * 40000  # 10 MB: more than loopback buffers hold
        server.transport.write(big)
        self.assertIn(server.transport, reactor.getWriters())
        server.transport.write(b"after")
        self.assertIn(server.transport, reactor.getWriters())
        client.transport.resumeProducing()
        yield waitFor(lambda: len(client.data) == len(big) + 5, what="everything")
        self.assertEqual(bytes(client.data[-5:]), b"after")
        self.assertTrue(bytes(client.data[:len(big)]) == big)
        yield waitFor(lambda: server.transport not in reactor.getWriters(),
                      what="the buffer emptied")

    @defer.inlineCallbacks
    def test_writeToAResetPeerClosesCleanly(self):
        """The peer has gone (reset): the write fails inside Twisted's path,
        which reports the connection lost; nothing raises to the caller."""
        port, accepted = self.serve()
        client = yield self.connected(port)
        yield waitFor(lambda: accepted, what="accepted")
        server = accepted[0]
        client.transport.abortConnection()
        yield client.lost
        for _ in range(20):
            server.transport.write(b"x" * 65536)
            if server.lost.called:
                break
            yield deferLater(reactor, 0.01, lambda: None)
        yield server.lost

    def test_memoryReactorRecordsTheCalls(self):
        """A reactor without file descriptors (a test's) gets the calls as
        they are."""
        memory = MemoryReactor()
        tcp.listenTCP(memory, 1234, Factory(), 5, "127.0.0.1")
        tcp.connectTCP(memory, "127.0.0.1", 1234, ClientFactory(), 3)
        self.assertEqual([p[0] for p in memory.tcpServers], [1234])
        self.assertEqual([c[:2] for c in memory.tcpClients], [("127.0.0.1", 1234)])


class _CountingSocket:
    """A socket that counts its sends (Twisted's transport uses it as its own)."""

    def __init__(self, sock):
        self._sock = sock
        self.sends = []

    def send(self, data):
        self.sends.append(bytes(data))
        return self._sock.send(data)

    def __getattr__(self, name):
        return getattr(self._sock, name)


class _Echo3(Protocol):
    """Answers each read with three writes: to itself, and to ``others``."""

    others = ()

    def dataReceived(self, data):
        for transport in (self.transport, *self.others):
            for part in (b"a", b"b", b"c"):
                transport.write(part)


class HeldWritesTests(unittest.TestCase):
    """Writes made while a read is handled leave together at its end."""

    timeout = 20

    @defer.inlineCallbacks
    def test_oneSendPerTransportPerRead(self):
        accepted = []
        factory = Factory()
        factory.buildProtocol = lambda addr: accepted.append(_Echo3()) or accepted[-1]
        port = tcp.listenTCP(reactor, 0, factory, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        clients = []
        for _ in range(3):
            client = _Collect()
            yield connectProtocol(
                TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port), client)
            self.addCleanup(lambda c=client: c.transport.loseConnection() or c.lost)
            clients.append(client)
        yield waitFor(lambda: len(accepted) == 3, what="accepted")
        counting = []
        for protocol in accepted:
            protocol.transport.socket = _CountingSocket(protocol.transport.socket)
            counting.append(protocol.transport.socket)
        # The first connection's read writes to all three.
        accepted[0].others = [p.transport for p in accepted[1:]]
        clients[0].transport.write(b"go")
        yield waitFor(lambda: all(bytes(c.data) == b"abc" for c in clients),
                      what="abc at every client")
        self.assertEqual([s.sends for s in counting], [[b"abc"]] * 3)
        # Outside a read (here: a timer), a write leaves at once.
        accepted[1].transport.write(b"d")
        self.assertEqual(counting[1].sends, [b"abc", b"d"])

    def test_notBytesRefused(self):
        """As Twisted's write: str is refused at once, held or not."""
        transport = tcp._Server.__new__(tcp._Server)
        transport._held = []
        self.assertRaises(TypeError, transport.write, "text")
