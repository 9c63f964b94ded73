"""Channels reach a host by every address it has, IPv6 included (issue 16).

Names are answered by a fake resolver installed on the reactor (never real
DNS); the servers are real, on ::1 and 127.0.0.0/8.
"""

from __future__ import annotations

from twisted.internet import defer, error, reactor
from twisted.internet.testing import MemoryReactorClock
from twisted.trial import unittest

from aiengine.broker import Broker
from aiengine.channels import CONNECTED, WAITING, Channel
from aiengine.channels.dialer import ATTEMPT_DELAY
from aiengine.config import parse
from aiengine.testing import lastAttempt, stopChannel
from tests.support import fakeDNS
from tests.test_channel_faults import FaultServer
from tests.test_channels import LogCapture, LoopbackMixin, makeConfig


class DialerLoopbackTests(LoopbackMixin, unittest.TestCase):
    timeout = 10

    def serve(self, interface):
        """A line echo server on ``interface``, any free port; its factory and port."""
        server = FaultServer()
        listening = reactor.listenTCP(0, server, interface=interface)

        def cleanup():
            for conn in list(server.open):
                conn.transport.loseConnection()
            return defer.gatherResults([c.lost for c in server.open]
                                       + [defer.maybeDeferred(listening.stopListening)])

        self.addCleanup(cleanup)
        return server, listening.getHost().port

    def config(self, port, host="service.test", **kw):
        kw.setdefault("reconnection_timeout", 5.0)
        return makeConfig(port, host=host, redirect_in=True, redirect_out=True,
                          topic_in="in", topic_out="out", **kw)

    @defer.inlineCallbacks
    def echoes(self, broker):
        reply = yield broker.request("out", "in", b"ping", timeout=2)
        self.assertEqual(reply.body, b"ping")

    @defer.inlineCallbacks
    def test_nameWithOnlyAnIPv6Address(self):
        server, port = self.serve("::1")
        dns = fakeDNS(self, lambda name: "::1")
        broker = Broker(reactor)
        ch = self.channel(self.config(port), broker)
        ch.start()
        yield self.waitFor(lambda: ch.state == CONNECTED, what="connected over IPv6")
        yield self.echoes(broker)
        self.assertEqual(dns.lookups, ["service.test"])
        status = ch.status()
        self.assertEqual((status["address"], status["addresses"], status["failures"]),
                         ("::1", "::1", 0))

    @defer.inlineCallbacks
    def test_refusingAddressThenAListeningOne(self):
        """The first address refuses, the second listens: connected on the
        channel's first attempt, with no failure counted or logged."""
        logs = LogCapture(self)
        server, port = self.serve("127.0.0.2")
        fakeDNS(self, lambda name: ["127.0.0.1", "127.0.0.2"])
        broker = Broker(reactor)
        ch = self.channel(self.config(port), broker)
        ch.start()
        yield self.waitFor(lambda: ch.state == CONNECTED, what="connected")
        yield self.echoes(broker)
        status = ch.status()
        self.assertEqual((status["connects"], status["failures"], status["address"],
                          status["addresses"]), (1, 0, "127.0.0.2", "127.0.0.1 127.0.0.2"))
        self.assertEqual(logs.warnings(), [])

    @defer.inlineCallbacks
    def test_dualStackTriesIPv6First(self):
        """A name with both families: IPv6 first (RFC 8305); when it refuses,
        IPv4 at once."""
        server, port = self.serve("127.0.0.1")
        fakeDNS(self, lambda name: ["127.0.0.1", "::1"])
        ch = self.channel(self.config(port))
        ch.start()
        yield self.waitFor(lambda: ch.state == CONNECTED, what="connected")
        self.assertEqual(ch.status()["addresses"], "::1 127.0.0.1")
        self.assertEqual((ch.status()["address"], ch.failures), ("127.0.0.1", 0))

    @defer.inlineCallbacks
    def test_everyAddressFailsIsOneFailedAttempt(self):
        """All refuse: one failed attempt, whose reason names each address;
        then the channel waits, as for any failed attempt."""
        logs = LogCapture(self)
        server, port = self.serve("127.0.0.3")
        fakeDNS(self, lambda name: ["::1", "127.0.0.1"])
        ch = self.channel(self.config(port))
        ch.start()
        yield self.waitFor(lambda: ch.failures == 1, what="a failed attempt")
        self.assertEqual(ch.state, WAITING)
        self.assertIn("[::1] Connection was refused", ch.lastError)
        self.assertIn("127.0.0.1 Connection was refused", ch.lastError)
        self.assertEqual(len(logs.warnings()), 1)
        self.assertEqual(server.connections, [])

    @defer.inlineCallbacks
    def test_ipVersionChoosesTheFamily(self):
        """ip-version 4 with a name that has only an IPv6 address: a failed
        attempt saying so; ip-version 6 uses it."""
        server, port = self.serve("::1")
        fakeDNS(self, lambda name: "::1")
        four = self.channel(self.config(port, ip_version="4", name="four"))
        four.start()
        yield self.waitFor(lambda: four.failures == 1, what="no IPv4 address")
        self.assertIn("DNS lookup failed", four.lastError)
        self.assertIn("no IPv4 address", four.lastError)
        six = self.channel(self.config(port, ip_version="6", name="six"))
        six.start()
        yield self.waitFor(lambda: six.state == CONNECTED, what="connected over IPv6")

    @defer.inlineCallbacks
    def test_ipLiteralNotResolved(self):
        server, port = self.serve("::1")
        dns = fakeDNS(self, lambda name: None)
        ch = self.channel(self.config(port, host="::1"))
        ch.start()
        yield self.waitFor(lambda: ch.state == CONNECTED, what="connected")
        self.assertEqual(dns.lookups, [])

    def test_ipVersionProperty(self):
        text = ('<service><directchannels><channel name="c">'
                '<property name="host" value="example.test"/>'
                '<property name="port" value="80"/>'
                '<property name="protocol" value="http"/>'
                '<property name="ip-version" value="%s"/>'
                '</channel></directchannels></service>')
        self.assertEqual(parse((text % "6").encode()).channels[0].ip_version, "6")
        with self.assertRaises(Exception) as caught:
            parse((text % "5").encode())
        self.assertIn("ip-version", str(caught.exception))


class DialerClockTests(unittest.TestCase):
    """The timing of attempts, on a clock."""

    def setUp(self):
        self.reactor = MemoryReactorClock()
        self.answers = {}
        self.reactor.installNameResolver(_Immediate(self.answers))

    def channel(self, **kw):
        ch = Channel(makeConfig(host="svc.test", reconnection_timeout=10.0, **kw),
                     Broker(self.reactor), self.reactor)
        self.addCleanup(stopChannel, ch)
        return ch

    def test_staggeredAttemptsFirstToConnectWins(self):
        """No answer from the first address: the second is tried after
        ATTEMPT_DELAY, and when it connects the first is abandoned."""
        self.answers["svc.test"] = ["127.0.0.1", "127.0.0.2", "127.0.0.3"]
        ch = self.channel()
        ch.start()
        self.assertEqual([c[0] for c in self.reactor.tcpClients], ["127.0.0.1"])
        self.reactor.advance(ATTEMPT_DELAY)
        self.assertEqual([c[0] for c in self.reactor.tcpClients],
                         ["127.0.0.1", "127.0.0.2"])
        lastAttempt(self.reactor, channel=ch).accept()
        self.assertEqual(ch.state, CONNECTED)
        # The first attempt was stopped, and no third one starts.
        self.assertEqual([c.stoppedConnecting for c in self.reactor.connectors],
                         [True, False])
        self.reactor.advance(ATTEMPT_DELAY * 4)
        self.assertEqual(len(self.reactor.tcpClients), 2)
        self.assertEqual(ch.failures, 0)

    def test_aRefusalStartsTheNextAtOnce(self):
        self.answers["svc.test"] = ["127.0.0.1", "127.0.0.2"]
        ch = self.channel()
        ch.start()
        lastAttempt(self.reactor, channel=ch).refuse()
        self.assertEqual([c[0] for c in self.reactor.tcpClients],
                         ["127.0.0.1", "127.0.0.2"])
        self.assertEqual(ch.failures, 0)
        lastAttempt(self.reactor, channel=ch).refuse(error.ConnectionRefusedError())
        self.assertEqual((ch.failures, ch.state), (1, WAITING))
        self.assertIn("Every address failed", ch.lastError)

    def test_stopWhileTryingCancelsEverything(self):
        self.answers["svc.test"] = ["127.0.0.1", "127.0.0.2"]
        ch = self.channel()
        ch.start()
        self.reactor.advance(ATTEMPT_DELAY)
        connectors = list(self.reactor.connectors)
        self.successResultOf(ch.stop())
        self.assertEqual([c.stoppedConnecting for c in connectors], [True, True])
        self.assertEqual([c for c in self.reactor.getDelayedCalls() if c.active()], [])
        self.assertEqual(ch.failures, 0)

    def test_stopDuringResolution(self):
        """Stopped while the name is being resolved by a resolver that cannot
        cancel (as Twisted's own): the stop completes, and the late answer
        starts no attempt."""
        later = _Later()
        self.reactor.installNameResolver(later)
        ch = self.channel()
        ch.start()
        self.successResultOf(ch.stop())
        later.answer("127.0.0.1")
        self.assertEqual(self.reactor.tcpClients, [])
        self.assertEqual(ch.failures, 0)

    def test_aLateWinnerIsClosed(self):
        """Two addresses connect at once: the second connection is refused
        a protocol, so it is closed, and the channel keeps the first."""
        self.answers["svc.test"] = ["127.0.0.1", "127.0.0.2"]
        ch = self.channel()
        ch.start()
        self.reactor.advance(ATTEMPT_DELAY)
        factories = [c[2] for c in self.reactor.tcpClients]
        lastAttempt(self.reactor, channel=ch).accept()  # the second
        self.assertIsNone(factories[0].buildProtocol(None))
        self.assertEqual((ch.state, ch.connects), (CONNECTED, 1))


class _Later:
    """A name resolver that answers when the test says, and whose resolutions
    cannot be cancelled (Twisted's own raise NotImplementedError)."""

    def resolveHostName(self, receiver, name, portNumber=0, addressTypes=None,
                        transportSemantics="TCP"):
        self.receiver, self.port = receiver, portNumber
        receiver.resolutionBegan(self)
        return self

    def cancel(self):
        raise NotImplementedError()

    def answer(self, host):
        from twisted.internet.address import IPv4Address
        self.receiver.addressResolved(IPv4Address("TCP", host, self.port))
        self.receiver.resolutionComplete()


class _Immediate:
    """A name resolver answering at once from a dict (name -> addresses)."""

    def __init__(self, answers):
        self.answers = answers

    def resolveHostName(self, receiver, name, portNumber=0, addressTypes=None,
                        transportSemantics="TCP"):
        from twisted.internet.address import IPv4Address, IPv6Address
        receiver.resolutionBegan(None)
        for host in self.answers.get(name, ()):
            kind = IPv6Address if ":" in host else IPv4Address
            receiver.addressResolved(kind("TCP", host, portNumber))
        receiver.resolutionComplete()
