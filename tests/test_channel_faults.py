"""Faults a channel must survive: each counted, logged once per change, recovered from.

A server that refuses, accepts and closes, accepts and never reads, answers
garbage or resets mid-message; DNS that fails; a subscriber that raises.
Real loopback servers on 127.0.0.1 (port 0, or a port the test holds until
its server starts) where sockets are the point, a fake resolver on the
reactor for DNS (no real lookup), a ``MemoryReactorClock`` for the long runs
(100 refused attempts, reminders).
"""

import random

from twisted.internet import defer, error, reactor, task
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import LogLevel
from twisted.protocols.basic import LineReceiver
from twisted.trial import unittest

from aiengine import channels
from aiengine.broker import Broker
from aiengine.channels import (
    CHANGED, CONNECTED, CONNECTING, FIRST, REMINDER, WAITING, Channel, failureNotice,
)
from aiengine.config import ChannelConfig, ProtocolConfig, ProtocolSettings
from aiengine.testing import lastAttempt
from tests.support import fakeDNS
from tests.test_channels import LogCapture, LoopbackMixin, makeConfig, stopInMemory


class FaultConnection(LineReceiver):
    """A server connection whose behaviour is its factory's ``mode``.

    ``healthy`` echoes lines; ``close`` hangs up at once; ``silent`` neither
    reads nor answers; ``reset`` sends half a line, then resets the
    connection (RST).
    """

    delimiter = b"\n"
    MAX_LENGTH = 10 ** 8

    def connectionMade(self):
        self.lost = defer.Deferred()
        self.factory.connections.append(self)
        self.factory.open.append(self)
        self._later = None
        mode = self.factory.mode
        if mode == "close":
            self.transport.loseConnection()
        elif mode == "silent":
            self.transport.pauseProducing()
        elif mode == "reset":
            self.transport.write(b"half a li")
            # Late enough for the half line to be read first.
            self._later = reactor.callLater(0.05, self.transport.abortConnection)

    def lineReceived(self, line):
        self.factory.lines.append(line)
        if self.factory.mode == "healthy":
            self.sendLine(line)

    def connectionLost(self, reason):
        if self._later is not None and self._later.active():
            self._later.cancel()
        self.factory.open.remove(self)
        self.lost.callback(None)


class FaultServer(Factory):
    protocol = FaultConnection

    def __init__(self, mode="healthy"):
        self.mode = mode
        self.connections = []
        self.open = []
        self.lines = []


class FaultHTTP(Protocol):
    """A web server that answers garbage (``garbage``) or a page (``healthy``)."""

    def connectionMade(self):
        self.lost = defer.Deferred()
        self.factory.connections.append(self)
        self.factory.open.append(self)
        self.buffer = b""
        if self.factory.mode == "garbage":
            self.transport.write(b"\x00\xffTHIS IS NOT HTTP\r\n\r\n")

    def dataReceived(self, data):
        self.buffer += data
        while b"\r\n\r\n" in self.buffer:
            request, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
            if self.factory.mode == "garbage":
                self.transport.write(b"NONSENSE 999\r\n\r\n")
            else:
                path = request.split(b" ")[1]
                body = b"page " + path
                self.transport.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s"
                                     % (len(body), body))

    def connectionLost(self, reason):
        self.factory.open.remove(self)
        self.lost.callback(None)


class FaultHTTPServer(FaultServer):
    protocol = FaultHTTP


class FaultLoopbackTests(LoopbackMixin, unittest.TestCase):
    """Each fault against a real socket, then the server gets well."""

    timeout = 10

    def config(self, port, host="127.0.0.1", **kw):
        kw.setdefault("reconnection_timeout", 0.05)
        kw.setdefault("flush_timeout", 0.2)
        return makeConfig(port, host=host, redirect_in=True, redirect_out=True,
                          topic_in="in", topic_out="out", **kw)

    @defer.inlineCallbacks
    def echoes(self, broker, body=b"ping"):
        """The channel delivers both ways: an echo comes back through the topics."""
        reply = yield broker.request("out", "in", body, timeout=1.5)
        self.assertEqual(reply.body, body)

    def assertRecoveryLogged(self, logs, failed):
        recovered = [e for e in logs.events if "again after" in e["log_format"]]
        self.assertEqual(len(recovered), 1)
        self.assertGreaterEqual(recovered[0]["n"], failed)

    @defer.inlineCallbacks
    def test_refusingServer(self):
        logs = LogCapture(self)
        reserved = self.reservePort()
        broker = Broker(reactor)
        ch = self.channel(self.config(reserved.port), broker)
        ch.start()
        yield self.waitFor(lambda: ch.failures >= 5, what="five refused attempts")
        self.assertEqual(len(logs.warnings()), 1)
        self.assertIn("refused", ch.lastError)
        self.assertEqual(ch.status()["failedInRow"], ch.failures)

        self.listen(FaultServer(), reserved)
        yield self.waitFor(lambda: ch.state == CONNECTED, what="connected")
        failed = ch.failures
        yield self.echoes(broker)
        self.assertEqual((ch.status()["failedInRow"], ch.connects), (0, 1))
        self.assertRecoveryLogged(logs, failed)
        self.assertEqual(len(logs.warnings()), 1)

    @defer.inlineCallbacks
    def test_serverAcceptsAndCloses(self):
        logs = LogCapture(self)
        server = FaultServer("close")
        port = self.listen(server).getHost().port
        broker = Broker(reactor)
        ch = self.channel(self.config(port), broker)
        ch.start()
        yield self.waitFor(lambda: ch.failures >= 4, what="four short-lived connections")
        status = ch.status()
        self.assertGreaterEqual(len(server.connections), 4)
        self.assertEqual(status["failedInRow"], status["failures"])
        self.assertEqual(status["drops"], 0)
        self.assertIn("closed by the server right after", status["lastError"])
        self.assertEqual(len(logs.warnings()), 1)

        server.mode = "healthy"
        yield self.echoes(broker)
        self.assertEqual(ch.status()["failedInRow"], 0)
        self.assertRecoveryLogged(logs, 4)
        self.assertEqual(len(logs.warnings()), 1)

    @defer.inlineCallbacks
    def test_serverNeverReadsNorAnswers(self):
        logs = LogCapture(self)
        server = FaultServer("silent")
        port = self.listen(server).getHost().port
        broker = Broker(reactor)
        ch = self.channel(self.config(port, queue_size=4), broker)
        ch.start()
        yield self.waitFor(lambda: ch.state == CONNECTED, what="connected")
        yield self.assertFailure(ch.receive(timeout=0.05), defer.TimeoutError)
        self.assertEqual(ch.status()["receiveTimeouts"], 1)

        # Write until the server's refusal to read backs up into the queue.
        payload = b"x" * 100000
        sent = 0
        while not ch.dropped and sent < 1000:
            ch.send(b"%d " % sent + payload)
            sent += 1
            yield task.deferLater(reactor, 0, lambda: None)
        self.assertGreater(ch.dropped, 0, "the server's buffers never filled")
        status = ch.status()
        self.assertEqual((status["state"], status["queued"]), (CONNECTED, 4))
        transport = ch._protocol.transport
        buffered = len(transport.dataBuffer) + transport._tempDataLen
        # Bounded: the transport holds about one message, not everything sent.
        self.assertLess(buffered, 3 * len(payload))
        self.assertEqual(len([e for e in logs.warnings() if "not reading" in e["why"]]), 1)

        # The server reads again: everything kept arrives, in order.
        server.connections[0].transport.resumeProducing()
        expected = sent - ch.dropped
        yield self.waitFor(lambda: len(server.lines) == expected, timeout=5,
                           what="the backlog")
        numbers = [int(line.split(b" ", 1)[0]) for line in server.lines]
        # The loop stopped at the first drop: the newest message, refused by
        # the full queue; everything before it arrives, in order.
        self.assertEqual(ch.dropped, 1)
        self.assertEqual(numbers, list(range(sent - 1)))
        self.assertEqual((ch.queued, ch.connects, ch.failures), (0, 1, 0))

    @defer.inlineCallbacks
    def test_serverResetsMidMessage(self):
        logs = LogCapture(self)
        server = FaultServer("reset")
        port = self.listen(server).getHost().port
        broker = Broker(reactor)
        published = []
        broker.subscribe("in", lambda m: published.append(m.body))
        ch = self.channel(self.config(port), broker)
        ch.start()
        yield self.waitFor(lambda: ch.resets >= 3, what="three resets")
        status = ch.status()
        self.assertEqual(published, [])
        self.assertGreater(status["bytesIn"], 0)
        self.assertEqual(status["messagesIn"], 0)
        self.assertGreaterEqual(status["failures"], 3)
        self.assertIn("lost before a whole message arrived", status["lastError"])
        self.assertEqual(len(logs.warnings()), 1)

        server.mode = "healthy"
        yield self.echoes(broker, b"whole")
        # The half line of the dead connections never joins later data.
        self.assertEqual(published, [b"whole"])
        self.assertRecoveryLogged(logs, 3)

    @defer.inlineCallbacks
    def test_httpServerAnswersGarbage(self):
        logs = LogCapture(self, "web")
        server = FaultHTTPServer("garbage")
        port = self.listen(server).getHost().port
        settings = ProtocolSettings(name="http")
        config = ChannelConfig(name="web", host="127.0.0.1", port=port,
                               protocol=ProtocolConfig("http", settings, settings),
                               redirect_in=True, redirect_out=True, topic_in="resp",
                               topic_out="req", reconnection_timeout=0.05,
                               flush_timeout=0.2)
        broker = Broker(reactor)
        ch = self.channel(config, broker)
        ch.start()
        yield self.waitFor(lambda: ch.failures >= 3, what="three garbage answers")
        status = ch.status()
        self.assertGreaterEqual(status["errors"], 3)
        self.assertIn("no request in flight", status["lastError"])
        self.assertEqual(status["messagesIn"], 0)
        # The framer's first complaint and the channel's; the rest are counted only.
        self.assertEqual(len(logs.warnings()), 2, [e["log_format"] for e in logs.warnings()])

        server.mode = "healthy"
        yield self.waitFor(lambda: ch.state == CONNECTED and ch._protocol.messagesIn == 0
                           and ch._protocol.protocolFailure is None,
                           what="a clean connection")
        reply = yield broker.request("req", "resp", "/ok", timeout=1.5)
        self.assertEqual((reply.body, reply.attributes["status"]), (b"page /ok", 200))
        self.assertEqual(ch.status()["failedInRow"], 0)
        self.assertRecoveryLogged(logs, 3)

    @defer.inlineCallbacks
    def test_dnsFailsForInvalidName(self):
        logs = LogCapture(self)
        # The reactor's resolver knows no name (RFC 2606: .invalid never
        # resolves anyway); the channel connects by name as configured.
        dns = fakeDNS(self, lambda name: None)
        ch = self.channel(self.config(4000, host="aiengine-test.invalid",
                                      connect_timeout=1.0))
        ch.start()
        yield self.waitFor(lambda: ch.failures >= 3, timeout=3, what="failed lookups")
        self.assertEqual(set(dns.lookups), {"aiengine-test.invalid"})
        self.assertGreaterEqual(len(dns.lookups), 3)
        self.assertIn("aiengine-test.invalid", ch.lastError)
        self.assertIn("DNS lookup failed", ch.lastError)
        self.assertIn(ch.state, (WAITING, CONNECTING))
        self.assertEqual(len(logs.warnings()), 1)

    @defer.inlineCallbacks
    def test_dnsRecovers(self):
        logs = LogCapture(self)
        port = self.listen(FaultServer()).getHost().port
        lookups = []

        def answer(name):
            lookups.append(name)
            return None if len(lookups) <= 3 else "127.0.0.1"

        fakeDNS(self, answer)
        broker = Broker(reactor)
        ch = self.channel(self.config(port, host="service.example"), broker)
        ch.start()
        yield self.waitFor(lambda: ch.state == CONNECTED, what="connected")
        self.assertEqual(lookups, ["service.example"] * 4)
        self.assertEqual(ch.failures, 3)
        yield self.echoes(broker)
        self.assertEqual(len(logs.warnings()), 1)
        self.assertRecoveryLogged(logs, 3)

    @defer.inlineCallbacks
    def test_raisingSubscriberIsIsolated(self):
        server = FaultServer()
        port = self.listen(server).getHost().port
        broker = Broker(reactor)
        raising = [True]
        seen = []

        def fragile(message):
            seen.append(message.body)
            if raising[0]:
                raise ZeroDivisionError("subscriber bug")

        broker.subscribe("in", fragile)
        ch = self.channel(self.config(port), broker)
        ch.start()
        yield self.waitFor(lambda: ch.state == CONNECTED, what="connected")
        for body in (b"one", b"two"):
            yield self.echoes(broker, body)
        self.assertEqual(seen, [b"one", b"two"])
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 2)
        status = ch.status()
        self.assertEqual((status["state"], status["connects"], status["messagesIn"],
                          status["errors"], status["failures"]), (CONNECTED, 1, 2, 0, 0))
        raising[0] = False
        yield self.echoes(broker, b"three")
        self.assertEqual(seen[-1], b"three")


class Bounds:
    """A random source for reconnectDelay that always gives the middle."""

    def uniform(self, a, b):
        return (a + b) / 2


class FaultMemoryTests(unittest.TestCase):
    """Long fault runs on a clock: how much gets logged."""

    def setUp(self):
        self.reactor = MemoryReactorClock()
        self.broker = Broker(self.reactor)

    def make(self, **kw):
        ch = Channel(makeConfig(**kw), self.broker, self.reactor, random=Bounds())
        self.addCleanup(stopInMemory, ch)
        return ch

    def refuse(self, ch, exception=None):
        lastAttempt(self.reactor, channel=ch).refuse(exception)

    def delay(self, ch):
        """Seconds until the channel's next attempt."""
        return ch._retryCall.getTime() - self.reactor.seconds()

    def accept(self, ch):
        return lastAttempt(self.reactor, channel=ch).accept()

    def runAttempts(self, ch, n, exception=None):
        for _ in range(n):
            self.assertEqual(ch.state, CONNECTING)
            self.refuse(ch, exception)
            self.reactor.advance(self.delay(ch))

    def test_hundredRefusedAttemptsLogFourLines(self):
        logs = LogCapture(self)
        ch = self.make(reconnection_timeout=10.0)
        ch.start()
        self.runAttempts(ch, 100)
        status = ch.status()
        self.assertEqual((status["failures"], status["failedInRow"]), (100, 100))
        warnings = logs.warnings()
        # 100 attempts 10 s apart: the first, then a reminder every 300 s.
        self.assertEqual(len(warnings), 4)
        self.assertEqual([e.get("n") for e in warnings[1:]], [31, 61, 91])
        self.assertIn("still failing", warnings[1]["log_format"])
        # All in all: the four warnings; nothing per attempt.
        self.assertEqual(len(logs.events), 4)

        self.accept(ch)
        self.assertEqual(len(logs.events), 4)  # not a recovery yet
        self.reactor.advance(channels.BRIEF_CONNECTION)
        self.assertEqual(ch.status()["failedInRow"], 0)
        self.assertEqual(len(logs.events), 5)
        self.assertEqual((logs.events[-1]["log_level"], logs.events[-1]["n"]),
                         (LogLevel.info, 100))

    def test_changeOfReasonIsLogged(self):
        logs = LogCapture(self)
        ch = self.make(reconnection_timeout=10.0)
        ch.start()
        self.runAttempts(ch, 3)
        self.runAttempts(ch, 3, error.DNSLookupError("gone"))
        self.runAttempts(ch, 3)
        warnings = logs.warnings()
        self.assertEqual(len(warnings), 3)
        self.assertIn("refused", warnings[0]["why"])
        self.assertIn("gone", warnings[1]["why"])
        self.assertIn("refused", warnings[2]["why"])
        self.assertIn("gone", warnings[2]["previous"])

    def test_acceptAndCloseIsAFailedAttemptUntilProven(self):
        logs = LogCapture(self)
        ch = self.make(reconnection_timeout=10.0)
        ch.start()
        for attempt in range(20):
            self.accept(ch).close()
            self.assertEqual(ch.state, WAITING)
            delay = self.delay(ch)
            self.assertEqual(delay, 10.0)
            self.reactor.advance(delay)
        status = ch.status()
        self.assertEqual((status["connects"], status["failures"], status["drops"]),
                         (20, 20, 0))
        # "connected" the first time, then one warning.
        self.assertEqual(len(logs.events), 2)
        self.assertEqual(len(logs.warnings()), 1)
        # A message proves the next connection at once.
        self.accept(ch).send(b"hello\n")
        self.assertEqual(ch.status()["failedInRow"], 0)
        self.assertIn("again after", logs.events[-1]["log_format"])
        self.assertEqual(logs.events[-1]["n"], 20)
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_protocolErrorBeforeProofIsAFailedAttempt(self):
        ch = self.make(maxPacket=5, reconnection_timeout=10.0)
        ch.start()
        server = self.accept(ch)
        transport = server.transport
        server.send(b"far too long\n")
        self.assertTrue(transport.disconnecting)
        server.close()
        status = ch.status()
        self.assertEqual((status["state"], status["failures"], status["drops"],
                          status["errors"]), (WAITING, 1, 0, 1))
        self.assertIn("protocol error from 127.0.0.1:4000: message longer",
                      status["lastError"])
        self.assertEqual(self.delay(ch), 10.0)

    def test_protocolErrorAfterProofIsADrop(self):
        ch = self.make(maxPacket=5, reconnection_timeout=10.0)
        ch.start()
        server = self.accept(ch)
        transport = server.transport
        self.reactor.advance(channels.BRIEF_CONNECTION + 1)
        server.send(b"far too long\n")
        self.assertTrue(transport.disconnecting)
        server.close()
        status = ch.status()
        self.assertEqual((status["state"], status["failures"], status["drops"],
                          status["errors"]), (WAITING, 0, 1, 1))
        self.assertIn("closed after a protocol error", status["lastError"])
        self.assertEqual(self.delay(ch), 0.5)  # a drop: retried soon


class FailureNoticeTests(unittest.TestCase):
    """failureNotice is a pure function of the streak, the reason and the time."""

    def test_first(self):
        self.assertEqual(failureNotice(1, True, 0), FIRST)
        self.assertEqual(failureNotice(1, False, 0), FIRST)

    def test_changed(self):
        self.assertEqual(failureNotice(7, True, 1), CHANGED)

    def test_reminder(self):
        self.assertIsNone(failureNotice(7, False, channels.REMIND_INTERVAL - 1))
        self.assertEqual(failureNotice(7, False, channels.REMIND_INTERVAL), REMINDER)
        self.assertEqual(failureNotice(7, False, 60, interval=60), REMINDER)

    def test_boundedLines(self):
        # 10,000 attempts a second apart: one line, then one per interval.
        lines, last = 0, 0.0
        rng = random.Random(3)
        for n in range(1, 10001):
            now = n + rng.uniform(-0.1, 0.1)
            if failureNotice(n, False, now - last) is not None:
                lines += 1
                last = now
        self.assertEqual(lines, 1 + 10000 // int(channels.REMIND_INTERVAL))
