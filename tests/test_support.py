"""The test helpers of :mod:`tests.support` do what the tests rely on."""

import errno
import socket

from twisted.internet import defer, error, reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Factory, Protocol
from twisted.trial import unittest

from tests.support import ReservedPort, fakeDNS, pendingCalls, waitFor


class Accepted(Protocol):
    def connectionMade(self):
        self.factory.accepted.append(self)


def acceptingFactory():
    factory = Factory.forProtocol(Accepted)
    factory.accepted = []
    return factory


class ReservedPortTests(unittest.TestCase):
    """A reserved port refuses connections and cannot be taken until it listens."""

    def reserve(self, restartable=False):
        reserved = ReservedPort(restartable)
        self.addCleanup(reserved.close)
        return reserved

    def assertRefused(self, port):
        probe = socket.socket()
        self.addCleanup(probe.close)
        e = self.assertRaises(OSError, probe.connect, ("127.0.0.1", port))
        self.assertEqual(e.errno, errno.ECONNREFUSED)

    def assertCannotBind(self, port):
        """No other socket takes the port, whatever its options; nor listenTCP
        (which sets SO_REUSEADDR)."""
        for reuseAddress in (False, True):
            for interface in ("127.0.0.1", "0.0.0.0"):
                other = socket.socket()
                self.addCleanup(other.close)
                if reuseAddress:
                    other.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                e = self.assertRaises(OSError, other.bind, (interface, port))
                self.assertEqual(e.errno, errno.EADDRINUSE, (reuseAddress, interface))
        self.assertRaises(error.CannotListenError, reactor.listenTCP, port, Factory(),
                          interface="127.0.0.1")

    @defer.inlineCallbacks
    def assertServes(self, port, factory):
        before = len(factory.accepted)
        client = yield connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port),
                                       Protocol())
        yield waitFor(lambda: len(factory.accepted) == before + 1, what="accepted")
        client.transport.loseConnection()
        factory.accepted[-1].transport.loseConnection()

    @defer.inlineCallbacks
    def test_refusedAndHeldUntilItListens(self):
        reserved = self.reserve()
        self.assertRefused(reserved.port)
        self.assertCannotBind(reserved.port)
        factory = acceptingFactory()
        server = reserved.listen(factory)
        self.assertEqual(server.getHost().port, reserved.port)
        yield self.assertServes(reserved.port, factory)
        self.assertCannotBind(reserved.port)
        self.assertRaises(RuntimeError, reserved.listen, factory)

    @defer.inlineCallbacks
    def test_restartableRefusedBetweenServers(self):
        reserved = self.reserve(restartable=True)
        self.assertRefused(reserved.port)
        self.assertCannotBind(reserved.port)
        for _ in range(2):
            factory = acceptingFactory()
            server = reserved.listen(factory)
            yield self.assertServes(reserved.port, factory)
            yield server.stopListening()
            # Down again: refused, and still ours.
            self.assertRefused(reserved.port)
            self.assertCannotBind(reserved.port)

    @defer.inlineCallbacks
    def test_closeStopsServersAndReleases(self):
        reserved = ReservedPort()
        server = reserved.listen(acceptingFactory())
        yield reserved.close()
        self.assertFalse(server.connected)
        again = socket.socket()
        self.addCleanup(again.close)
        again.bind(("127.0.0.1", reserved.port))


class FakeDNSTests(unittest.TestCase):
    """fakeDNS answers the reactor's lookups, and is removed after the test."""

    @defer.inlineCallbacks
    def test_answersThroughTheReactor(self):
        before = reactor.nameResolver
        fake = fakeDNS(self, {"up.example": "127.0.0.7"}.get)
        self.assertIs(reactor.nameResolver, fake)
        address = yield reactor.resolve("up.example")
        self.assertEqual(address, "127.0.0.7")
        yield self.assertFailure(reactor.resolve("down.example"), error.DNSLookupError)
        self.assertEqual(fake.lookups, ["up.example", "down.example"])
        self.doCleanups()
        self.assertIs(reactor.nameResolver, before)


class PendingCallsTests(unittest.TestCase):
    def test_onlyThoseOfThePackage(self):
        from aiengine.broker import Broker
        broker = Broker(reactor)
        broker.subscribe("q", lambda message: None)
        self.assertEqual(pendingCalls(), [])
        d = broker.request("q", "a", b"?", timeout=30)
        self.assertEqual(len(pendingCalls()), 1)
        other = reactor.callLater(30, lambda: None)
        self.addCleanup(other.cancel)
        self.assertEqual(len(pendingCalls()), 1)
        d.cancel()
        self.assertEqual(pendingCalls(), [])
        return self.assertFailure(d, defer.CancelledError)
