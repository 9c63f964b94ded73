"""Tests for TLS channels (``tls``, ``tls.ca``, ``tls.hostname``, ``tls.verify``).

Real TLS servers on 127.0.0.1 port 0 with a throw-away CA from
:mod:`tests.certs`; a ``MemoryReactorClock`` where the order of events is
the point.
"""

import os

from twisted.internet import defer, error, reactor, ssl
from twisted.internet.address import IPv4Address
from twisted.internet.testing import MemoryReactorClock
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.failure import Failure
from twisted.trial import unittest

from aiengine.broker import Broker
from aiengine.channels import CONNECTED, CONNECTING, STOPPED, WAITING, Channel
from aiengine.config import ConfigError
from aiengine.testing import FakeTransport
from tests.certs import makeCertificates
from tests.test_channels import (
    LogCapture, LoopbackMixin, ServerFactory, makeConfig, stopInMemory,
)


class TLSLoopbackTests(LoopbackMixin, unittest.TestCase):
    """TLS channels against TLS servers on loopback."""

    timeout = 10

    def setUp(self):
        self.certs = makeCertificates(self.mktemp())
        with open(self.certs["certificate"]) as c, open(self.certs["key"]) as k:
            self.serverTLS = ssl.PrivateCertificate.loadPEM(c.read() + k.read()).options()

    def listenTLS(self, factory, reserved=None):
        """Serve ``factory`` with TLS on a new port, or on ``reserved`` (see
        :meth:`~tests.test_channels.LoopbackMixin.reservePort`)."""
        if reserved is None:
            listening = reactor.listenSSL(0, factory, self.serverTLS,
                                          interface="127.0.0.1")
        else:
            # What listenSSL listens with: TLS wrapped around the factory.
            tlsFactory = TLSMemoryBIOFactory(self.serverTLS, False, factory)
            tlsFactory.noisy = False
            listening = reserved.listen(tlsFactory)

        def cleanup():
            for conn in list(factory.open):
                conn.transport.abortConnection()
            waits = [c.lost for c in factory.open]
            return defer.gatherResults(waits + [defer.maybeDeferred(listening.stopListening)])

        self.addCleanup(cleanup)
        return listening

    def tlsConfig(self, port, **kw):
        kw.setdefault("tls_ca", self.certs["ca"])
        kw.setdefault("reconnection_timeout", 0.1)
        kw.setdefault("flush_timeout", 0.2)  # for what failing tests leave queued
        return makeConfig(port, tls=True, **kw)

    @defer.inlineCallbacks
    def roundTrip(self, ch, broker, body=b"hello"):
        reply = yield broker.request("tls.out", "tls.in", body, timeout=1.5)
        self.assertEqual(reply.body, body)

    def topics(self):
        return dict(redirect_in=True, redirect_out=True, topic_in="tls.in",
                    topic_out="tls.out")

    @defer.inlineCallbacks
    def test_verifiedRoundTrip(self):
        server = ServerFactory(echo=True)
        port = self.listenTLS(server).getHost().port
        for name, hostname in (("byaddress", None), ("byname", "localhost")):
            broker = Broker(reactor)
            ch = self.channel(self.tlsConfig(port, name=name, tls_hostname=hostname,
                                             **self.topics()), broker)
            ch.start()
            yield self.waitFor(lambda: ch.state == CONNECTED, what=f"{name} connected")
            yield self.roundTrip(ch, broker, name.encode())
            status = ch.status()
            self.assertEqual((status["tls"], status["connects"], status["failures"]),
                             (True, 1, 0))
            self.assertIsNone(status["lastError"])
        self.assertEqual(server.lines, [b"byaddress", b"byname"])

    @defer.inlineCallbacks
    def test_wrongHostnameFailsAndKeepsRetrying(self):
        logs = LogCapture(self)
        server = ServerFactory(echo=True)
        port = self.listenTLS(server).getHost().port
        ch = self.channel(self.tlsConfig(port, tls_hostname="wrong.example"))
        ch.start()
        ch.send(b"secret")
        yield self.waitFor(lambda: ch.failures >= 3, what="three failed attempts")
        status = ch.status()
        self.assertIn("not valid for 'wrong.example'", status["lastError"])
        self.assertIn(status["state"], (WAITING, CONNECTING))
        # The handshake never finished: nothing was sent, nothing counts as connected.
        self.assertEqual((status["connects"], status["queued"], server.lines), (0, 1, []))
        self.assertEqual((status["resets"], status["drops"]), (0, 0))
        self.assertGreaterEqual(len(server.connections), 3)
        warnings = logs.warnings()
        self.assertEqual(len(warnings), 1, [e["log_format"] for e in warnings])
        self.assertIn("wrong.example", warnings[0]["why"])

    @defer.inlineCallbacks
    def test_unknownCAFails(self):
        stranger = makeCertificates(self.mktemp())
        server = ServerFactory(echo=True)
        port = self.listenTLS(server).getHost().port
        ch = self.channel(self.tlsConfig(port, tls_ca=stranger["ca"]))
        ch.start()
        ch.send(b"secret")
        yield self.waitFor(lambda: ch.failures >= 2, what="failed attempts")
        self.assertIn("certificate verify failed", ch.lastError)
        self.assertEqual((ch.connects, server.lines), (0, []))

    @defer.inlineCallbacks
    def test_systemTrustStoreRejectsPrivateCA(self):
        server = ServerFactory(echo=True)
        port = self.listenTLS(server).getHost().port
        ch = self.channel(self.tlsConfig(port, tls_ca=None))
        ch.start()
        yield self.waitFor(lambda: ch.failures >= 1, what="a failed attempt")
        self.assertIn("TLS handshake failed", ch.lastError)
        self.assertEqual(ch.connects, 0)

    @defer.inlineCallbacks
    def test_verifyFalseConnectsAndWarns(self):
        logs = LogCapture(self)
        server = ServerFactory(echo=True)
        port = self.listenTLS(server).getHost().port
        broker = Broker(reactor)
        # Neither the CA nor the name would verify: verify=false skips both.
        ch = self.channel(self.tlsConfig(port, tls_ca=None, tls_hostname="wrong.example",
                                         tls_verify=False, **self.topics()), broker)
        ch.start()
        yield self.waitFor(lambda: ch.state == CONNECTED, what="connected")
        yield self.roundTrip(ch, broker)
        warnings = logs.warnings()
        self.assertEqual(len(warnings), 1)
        self.assertIn("tls.verify is false", warnings[0]["log_format"])

    @defer.inlineCallbacks
    def test_silentServerHandshakeTimesOutThenRecovers(self):
        # A plain TCP server that accepts and never answers the ClientHello.
        # Held across the restart: nobody else can take the port meanwhile.
        reserved = self.reservePort(restartable=True)
        silent = ServerFactory(echo=False)
        listening = self.listen(silent, reserved)
        broker = Broker(reactor)
        ch = self.channel(self.tlsConfig(reserved.port, connect_timeout=0.2,
                                         **self.topics()), broker)
        ch.start()
        yield self.waitFor(lambda: ch.failures >= 2, what="handshake timeouts")
        self.assertIn("TLS handshake did not complete within 0.2 s", ch.lastError)
        self.assertEqual(ch.connects, 0)

        # The server comes back speaking TLS on the same port.
        yield listening.stopListening()
        for conn in list(silent.open):
            conn.transport.loseConnection()
        self.listenTLS(ServerFactory(echo=True), reserved)
        yield self.waitFor(lambda: ch.state == CONNECTED, timeout=3, what="connected")
        yield self.roundTrip(ch, broker)
        self.assertEqual(ch.status()["failedInRow"], 0)


class TLSMemoryTests(unittest.TestCase):
    """What a TLS channel asks of the reactor, and when its framer starts."""

    def setUp(self):
        self.certs = makeCertificates(self.mktemp())
        self.reactor = MemoryReactorClock()

    def make(self, **kw):
        ch = Channel(makeConfig(tls=True, **kw), Broker(self.reactor), self.reactor)
        self.addCleanup(stopInMemory, ch)
        return ch

    def test_connectsWithSSLAndWaitsForHandshake(self):
        ch = self.make(tls_ca=self.certs["ca"], connect_timeout=7.0)
        ch.start()
        self.assertEqual(self.reactor.tcpClients, [])
        host, port, factory, creator, timeout, bind = self.reactor.sslClients[0]
        self.assertEqual((host, port, timeout), ("127.0.0.1", 4000, 7.0))
        # The client connection creator verifies 127.0.0.1 (the host by default).
        self.assertEqual(creator._hostnameASCII, "127.0.0.1")
        ch.send(b"queued")
        protocol = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 4000))
        transport = FakeTransport()
        protocol.makeConnection(transport)
        # TCP is up, TLS is not: nothing is written, the channel is not connected.
        self.assertEqual((ch.state, transport.value(), ch.queued), (CONNECTING, b"", 1))
        protocol.handshakeCompleted()
        self.assertEqual((ch.state, transport.value(), ch.queued),
                         (CONNECTED, b"queued\n", 0))
        # The handshake timer is gone with the handshake.
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_tlsHostnameOverridesHost(self):
        ch = self.make(host="localhost", tls_ca=self.certs["ca"], tls_hostname="example.org")
        ch.start()
        creator = self.reactor.sslClients[0][3]
        self.assertEqual(creator._hostnameASCII, "example.org")
        # The name is resolved first (the memory reactor's resolver knows
        # localhost); the certificate is still checked for tls.hostname.
        self.assertEqual(self.reactor.sslClients[0][0], "127.0.0.1")

    def test_handshakeTimeoutIsAFailedAttempt(self):
        ch = self.make(tls_ca=self.certs["ca"], connect_timeout=3.0,
                       reconnection_timeout=10.0)
        ch.start()
        factory = self.reactor.sslClients[0][2]
        protocol = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 4000))
        transport = FakeTransport()
        protocol.makeConnection(transport)
        self.reactor.advance(3.1)
        self.assertTrue(transport.aborted)
        protocol.connectionLost(
            Failure(error.ConnectionAborted()))
        factory.clientConnectionLost(None,
                                     Failure(error.ConnectionAborted()))
        status = ch.status()
        self.assertEqual((status["state"], status["failures"], status["connects"]),
                         (WAITING, 1, 0))
        self.assertIn("TLS handshake did not complete within 3 s", status["lastError"])
        delay = self.reactor.getDelayedCalls()[0].getTime() - self.reactor.seconds()
        self.assertTrue(9.0 <= delay <= 11.0, delay)

    def test_verifyFalseUsesUnverifiedOptions(self):
        ch = self.make(tls_verify=False)
        ch.start()
        creator = self.reactor.sslClients[0][3]
        self.assertIsInstance(creator, ssl.CertificateOptions)
        self.assertFalse(creator.verify)

    def test_caFileWithoutCertificateIsAConfigError(self):
        path = self.mktemp()
        with open(path, "w") as f:
            f.write("not a certificate\n")
        e = self.assertRaises(ConfigError, self.make, tls_ca=path)
        self.assertIn("no PEM certificate", str(e))
        self.assertEqual(e.prop, "tls.ca")

    def test_caFileUnreadableIsAConfigError(self):
        e = self.assertRaises(ConfigError, self.make,
                              tls_ca=os.path.join(self.mktemp(), "missing.pem"))
        self.assertIn("cannot read", str(e))

    def test_stoppedDuringHandshake(self):
        ch = self.make(tls_ca=self.certs["ca"])
        ch.start()
        factory = self.reactor.sslClients[0][2]
        protocol = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 4000))
        transport = FakeTransport()
        protocol.makeConnection(transport)
        d = stopInMemory(ch)
        self.successResultOf(d)
        self.assertEqual((ch.state, ch.connects, ch.failures), (STOPPED, 0, 0))
        self.assertEqual(self.reactor.getDelayedCalls(), [])
