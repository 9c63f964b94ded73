"""Hardening of the XML-call console: attacks over real loopback sockets,
authentication, and memory bounds against peers that do not read."""

from __future__ import annotations

import os
import tempfile
import time

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.task import Clock, deferLater
from twisted.internet.testing import StringTransport
from twisted.logger import formatEvent, globalLogPublisher

from aiengine import auth
from aiengine.broker import DEFAULT_QUEUE_LIMIT
from aiengine.console.protocol import ConsoleFactory
from tests.test_console import Collector, ConsoleTestCase, xmlcall

#: What any attack may take, answer included (measured: milliseconds).
ATTACK_BUDGET = 2.0
SECRET = b"correct horse battery staple 42"


class LogCapture:
    """Every log event emitted while a test runs, formatted and raw."""

    def __init__(self, test):
        self.events = []
        globalLogPublisher.addObserver(self.events.append)
        test.addCleanup(globalLogPublisher.removeObserver, self.events.append)

    def text(self) -> str:
        """All events: their formatted text and every field, as text."""
        parts = []
        for event in self.events:
            parts.append(formatEvent(event))
            parts.extend(f"{key}={value!r}" for key, value in event.items())
        return "\n".join(parts)


class ConsoleCase(ConsoleTestCase):
    """The console test harness; clients are aborted, not closed, at the end."""

    def _disconnect(self, client):
        if not client.lost.called:
            client.transport.abortConnection()
        return client.lost

    @inlineCallbacks
    def assertServes(self, client=None):
        """A ping answers OK, on ``client`` or on a new connection."""
        if client is None:
            client = yield self.connect()
            if self.secret is not None:
                [ok] = yield self.call(client, xmlcall("Engine", "login", "in",
                                                       secret=SECRET.decode()))
                self.assertEqual(ok.get("status"), "OK")
        [pong] = yield self.call(client, xmlcall("Engine", "ping", "alive"))
        self.assertEqual((pong.get("requestId"), pong.get("status")), ("alive", "OK"))
        self.assertIsNotNone(pong.find("pong"))


class AttackTests(ConsoleCase):
    """Each attack gets a clear Exception (or a close) quickly; the console
    then still serves the same connection when it stays open, and a new one.

    Measured on the development machine (2 cores, loopback), attack sent to
    answer: XXE, billion laughs, invalid UTF-8, NUL under 1 ms; 100,000
    nested elements 4 ms; 5 MB of garbage without a line end 10 ms to the
    close; a 5 MB document without an end 0.2 s to the close (the first
    megabyte, 200,000 elements, is parsed before the limit cuts it off).
    """

    def setUp(self):
        super().setUp()
        self.times = {}

    @inlineCallbacks
    def attack(self, data, answers=1):
        """Send ``data`` on a new connection; return the client, the first
        ``answers`` replies and the seconds they took."""
        client = yield self.connect()
        start = time.perf_counter()
        docs = yield self.call(client, data, answers)
        elapsed = time.perf_counter() - start
        self.assertLess(elapsed, ATTACK_BUDGET)
        for doc in docs:
            self.assertEqual(doc.get("status"), "Exception")
        return client, docs, elapsed

    @inlineCallbacks
    def test_xxeFileEntity(self):
        """An external entity naming a file: refused; the file's content is
        in no answer, on one line or spread over several."""
        marker = "TOP-SECRET-FILE-CONTENT-7f3a"
        fd, path = tempfile.mkstemp()
        self.addCleanup(os.remove, path)
        with os.fdopen(fd, "w") as f:
            f.write(marker)
        publish = (b'<xmlcall class="Topics" method="publish" requestId="xxe">'
                   b'<parameters><property name="topic" value="t"/>'
                   b'<property name="message">&x;</property></parameters></xmlcall>')
        oneLine = (f'<!DOCTYPE xmlcall [<!ENTITY x SYSTEM "file://{path}">]>'.encode()
                   + publish + b"\n")
        client, [doc], _ = yield self.attack(oneLine)
        self.assertEqual(doc.findtext("exception"), "malformed XML: DOCTYPE is not allowed")
        yield self.assertServes(client)
        # Spread over lines, each line gets its own Exception.
        spread = (f'<!DOCTYPE xmlcall [\n<!ENTITY x SYSTEM "file://{path}">\n'
                  f'<!ENTITY % p SYSTEM "file://{path}"> %p;\n]>\n').encode() + publish + b"\n"
        client, docs, _ = yield self.attack(spread, 5)
        self.assertIn("DOCTYPE is not allowed", docs[0].findtext("exception"))
        self.assertIn("Entity 'x' not defined", docs[-1].findtext("exception"))
        yield self.assertServes(client)
        self.assertNotIn(marker.encode(), client.raw)
        self.assertEqual(self.broker.topic("t").published, 0)
        yield self.assertServes()

    @inlineCallbacks
    def test_billionLaughs(self):
        decls = "".join(f'<!ENTITY e{i} "{("&e%d;" % (i - 1)) * 10}">' for i in range(1, 12))
        data = (f'<!DOCTYPE xmlcall [<!ENTITY e0 "lol">{decls}]>'
                f'<xmlcall class="Engine" method="ping" requestId="b">&e11;</xmlcall>\n')
        client, [doc], _ = yield self.attack(data.encode())
        self.assertIn("DOCTYPE is not allowed", doc.findtext("exception"))
        yield self.assertServes(client)
        yield self.assertServes()

    @inlineCallbacks
    def test_deepNesting(self):
        """100,000 nested elements: libxml2's depth limit, at once."""
        data = (b'<xmlcall class="Engine" method="ping" requestId="deep"><parameters>'
                + b"<a>" * 100000 + b"</a>" * 100000 + b"</parameters></xmlcall>\n")
        client, [doc], _ = yield self.attack(data)
        self.assertEqual(doc.get("requestId"), "deep")
        self.assertIn("depth", doc.findtext("exception"))
        yield self.assertServes(client)
        yield self.assertServes()

    @inlineCallbacks
    def test_invalidUtf8(self):
        client, [doc], _ = yield self.attack(
            b'<xmlcall class="Engine" method="ping" requestId="u">\xc3\x28\xff</xmlcall>\n')
        self.assertEqual(doc.get("requestId"), "u")
        self.assertIn("malformed XML", doc.findtext("exception"))
        yield self.assertServes(client)
        yield self.assertServes()

    @inlineCallbacks
    def test_nul(self):
        client, docs, _ = yield self.attack(
            b'<xmlcall class="Engine" method="ping" requestId="n">\x00</xmlcall>\n'
            b"<\x00x\x00/\x00>\x00\n", 2)
        self.assertEqual(docs[0].get("requestId"), "n")
        self.assertIn("NUL", docs[1].findtext("exception"))
        yield self.assertServes(client)
        yield self.assertServes()

    @inlineCallbacks
    def test_controlCharacterInRequestId(self):
        """A malformed request's requestId is recovered from its raw bytes;
        what XML cannot carry in it is escaped, so the answer stays XML."""
        client, [doc], _ = yield self.attack(
            b'<xmlcall class="Engine" method="ping" requestId="a\x02b"/>\n')
        self.assertEqual(doc.get("requestId"), "a\\x02b")
        self.assertIn("malformed XML", doc.findtext("exception"))
        yield self.assertServes(client)

    @inlineCallbacks
    def test_utf7HidesDoctype(self):
        """An encoding that could hide a DOCTYPE from the check is refused."""
        data = (b'<?xml version="1.0" encoding="UTF-7"?>'
                + '<!DOCTYPE a [<!ENTITY e "x">]><xmlcall/>'.encode("utf-7") + b"\n")
        client, [doc], _ = yield self.attack(data)
        self.assertIn("encoding 'UTF-7' is not allowed", doc.findtext("exception"))
        yield self.assertServes(client)

    @inlineCallbacks
    def test_publishedXmlFollowsTheRules(self):
        """An XML message published from the console is checked with the
        same rules: no DOCTYPE, no undefined entity."""
        published = []
        self.broker.subscribe("t", published.append)
        client = yield self.connect()
        docs = yield self.call(client, b"".join(
            xmlcall("Topics", "publish", str(n), topic="t", message=message, type="xml")
            for n, message in enumerate(['<!DOCTYPE a [<!ENTITY e "v">]><a>&e;</a>',
                                         "<a>&nbsp;</a>", "<a/>"])), 3)
        self.assertIn("DOCTYPE is not allowed", docs[0].findtext("exception"))
        self.assertIn("nbsp", docs[1].findtext("exception"))
        self.assertEqual(docs[2].get("status"), "OK")
        self.assertEqual([m.body for m in published], [b"<a/>"])

    @inlineCallbacks
    def fiveMegabytes(self, data, answers):
        client = yield self.connect()
        start = time.perf_counter()
        client.transport.write(data)
        yield client.lost
        elapsed = time.perf_counter() - start
        self.assertLess(elapsed, ATTACK_BUDGET)
        self.assertEqual([d.get("status") for d in client.docs], ["Exception"] * answers)
        self.assertIn("closing the connection", client.docs[-1].findtext("exception"))
        yield self.assertServes()
        return client

    def test_fiveMegabyteDocumentWithoutEnd(self):
        """Cut off at max-packet-size: an Exception, then the close."""
        return self.fiveMegabytes(
            b'<xmlcall class="Engine" method="ping"><parameters>' + b"<b/>x" * 1000000, 1)

    def test_fiveMegabytesOfGarbage(self):
        """Garbage without a line end: malformed, then cut off."""
        return self.fiveMegabytes(b"garbage " * 655360, 2)

    @inlineCallbacks
    def test_malformedFlood(self):
        """A flood of malformed lines is answered up to maxMalformed, then
        the connection is closed; the rest is not even parsed."""
        self.factory.maxMalformed = 20
        client = yield self.connect()
        client.transport.write(b"<a></b>\n" * 100000)
        yield client.lost
        self.assertEqual(len(client.docs), 21)
        self.assertIn("20 malformed requests in a row", client.docs[-1].findtext("exception"))
        self.assertEqual(self.factory.malformed, 20)
        yield self.assertServes()


class AuthTests(ConsoleCase):
    """``Engine.login`` with a shared secret."""

    secret = SECRET
    # Requests and answers are logged: the secret must still never be.
    showMessages = True

    @inlineCallbacks
    def test_callsBeforeLoginRefused(self):
        client = yield self.connect()
        docs = yield self.call(client, xmlcall("Engine", "ping", "1")
                               + xmlcall("Engine", "help", "2")
                               + xmlcall("Nope", "x", "3")
                               + xmlcall("Topics", "publish", "4", topic="t", message="m"), 4)
        for doc in docs:
            self.assertEqual(doc.findtext("exception"),
                             "not authenticated: call Engine.login(secret) first")
        self.assertEqual(self.broker.topic("t").published, 0)
        self.assertFalse(client.lost.called)

    @inlineCallbacks
    def test_rightSecret(self):
        client = yield self.connect()
        [ok] = yield self.call(client, xmlcall("Engine", "login", "in",
                                               secret=SECRET.decode()))
        self.assertEqual(ok.get("status"), "OK")
        self.assertEqual(ok.find("authenticated").get("required"), "true")
        yield self.assertServes(client)
        self.assertEqual((self.factory.logins, self.factory.authFailures), (1, 0))

    @inlineCallbacks
    def test_secretAsContentWithWhitespace(self):
        """Typed at telnet as element content, around which spaces and line
        ends do not count (as in the secret file)."""
        client = yield self.connect()
        [ok] = yield self.call(
            client, b'<xmlcall class="Engine" method="login"><parameters>\r\n'
                    b'<property name="secret">\r\n  ' + SECRET + b'\r\n</property>\r\n'
                    b'</parameters></xmlcall>\r\n')
        self.assertEqual(ok.get("status"), "OK")
        yield self.assertServes(client)

    @inlineCallbacks
    def test_wrongSecretCloses(self):
        # Real sockets, the throttle's time on a Clock: on any machine.
        clock = self.factory.throttle.clock = Clock()
        client = yield self.connect()
        client.transport.write(xmlcall("Engine", "login", "in", secret="guess")
                               + xmlcall("Engine", "ping", "after"))
        yield client.lost
        [doc] = client.docs
        self.assertEqual((doc.get("requestId"), doc.findtext("exception")),
                         ("in", "authentication failed"))
        self.assertEqual(self.factory.authFailures, 1)
        clock.advance(0.5)  # the wait after one failure
        yield self.assertServes()

    @inlineCallbacks
    def test_guessingSlowedDown(self):
        """After a failed login, the next try from that address within the
        wait is refused without being checked (even the right secret); the
        wait doubles with each failure."""
        # Real sockets, the throttle's time on a Clock: "within the wait" and
        # "after it" hold on any machine.
        clock = self.factory.throttle.clock = Clock()
        self.factory.throttle.first = 0.2
        for expected in ("authentication failed",
                         "too many failed logins from this address: try again in"):
            client = yield self.connect()
            client.transport.write(xmlcall("Engine", "login", "in", secret="guess"))
            yield client.lost
            self.assertTrue(client.docs[0].findtext("exception").startswith(expected))
        client = yield self.connect()
        client.transport.write(xmlcall("Engine", "login", "in", secret=SECRET.decode()))
        yield client.lost
        self.assertIn("try again in", client.docs[0].findtext("exception"))
        self.assertEqual((self.factory.authFailures, self.factory.loginsThrottled), (1, 2))
        clock.advance(0.25)
        client = yield self.connect()
        client.transport.write(xmlcall("Engine", "login", "in", secret="guess 2"))
        yield client.lost
        self.assertEqual(self.factory.authFailures, 2)
        # Two failures in a row: 0.4 s now.
        clock.advance(0.25)
        client = yield self.connect()
        client.transport.write(xmlcall("Engine", "login", "in", secret=SECRET.decode()))
        yield client.lost
        self.assertEqual(self.factory.loginsThrottled, 3)
        clock.advance(0.2)
        yield self.assertServes()

    @inlineCallbacks
    def test_prefixOfSecretFails(self):
        client = yield self.connect()
        client.transport.write(xmlcall("Engine", "login", secret=SECRET[:-1].decode()))
        yield client.lost
        self.assertEqual(client.docs[0].findtext("exception"), "authentication failed")

    def test_constantTimeComparison(self):
        """The comparison is hmac.compare_digest's, on fixed-size digests."""
        seen = []
        real = auth.hmac.compare_digest

        def spy(a, b):
            seen.append((type(a), len(a), len(b)))
            return real(a, b)

        self.patch(auth.hmac, "compare_digest", spy)
        protocol = self.factory.buildProtocol(None)
        protocol.makeConnection(StringTransport())
        self.assertFalse(protocol.login("x"))
        self.assertEqual(seen, [(bytes, 32, 32)])
        protocol.connectionLost(None)

    @inlineCallbacks
    def test_secretNeverLogged(self):
        """Right, wrong and mistyped logins: the secret is in no log event,
        debug included."""
        logs = LogCapture(self)
        client = yield self.connect()
        # A secret typed alone, and a malformed login, before logging in.
        yield self.call(client, SECRET + b"\n", 1)
        yield self.call(client, b'<xmlcall class="Engine" method="login"><parameters>'
                                b'<property name="secret" value="' + SECRET + b'"/>'
                                b'</parameters></xmlcall oops>\n')
        yield self.call(client, xmlcall("Engine", "login", "in", secret=SECRET.decode()))
        yield self.assertServes(client)
        wrong = yield self.connect()
        wrong.transport.write(xmlcall("Engine", "login", secret=SECRET.decode()[::-1]))
        yield wrong.lost
        text = logs.text()
        self.assertIn("authentication failed", text)
        self.assertIn("Engine.login", text)  # the request was logged, redacted
        for needle in (SECRET.decode(), SECRET.decode()[::-1], SECRET.decode()[:12]):
            self.assertNotIn(needle, text)

    @inlineCallbacks
    def test_noForgedLogLines(self):
        """Control characters a client puts in a request id, a class name or a
        topic (before login too) are escaped in every log line."""
        logs = LogCapture(self)
        client = yield self.connect()
        forged = 'x&#13;&#10;2026-12-04T00:00:00+0000 [SocketServer::test#info] forged'
        yield self.call(client, f'<xmlcall class="Engine" method="ping" '
                                f'requestId="{forged}"/>'.encode(), 1)
        yield self.call(client, f'<xmlcall class="{forged}" method="m"/>'.encode(), 1)
        lines = [formatEvent(e) for e in logs.events]
        self.assertTrue(any("\\x0d\\x0a" in line for line in lines), lines)
        for line in lines:
            self.assertNotIn("\n", line)
            self.assertNotIn("\r", line)

    def test_emptySecretRejected(self):
        self.assertRaises(ValueError, ConsoleFactory, self.registry, None, secret=b" \n")


class NoAuthTests(ConsoleCase):
    """Without a secret nothing needs a login, and a login is harmless."""

    @inlineCallbacks
    def test_loginWithoutSecret(self):
        client = yield self.connect()
        [ok] = yield self.call(client, xmlcall("Engine", "login", "in", secret="anything"))
        self.assertEqual(ok.find("authenticated").get("required"), "false")
        yield self.assertServes(client)


class Stalled(Collector):
    """Stops reading as soon as its subscription is confirmed."""

    def dataReceived(self, data):
        super().dataReceived(data)
        if any(doc.find("subscribed") is not None for doc in self.docs):
            self.transport.pauseProducing()


class SlowReaderTests(ConsoleCase):
    """A subscriber whose peer never reads cannot make the console buffer
    without bound."""

    @inlineCallbacks
    def test_subscriberThatNeverReads(self):
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", self.port.getHost().port)
        client = yield connectProtocol(endpoint, Stalled())
        self.addCleanup(self._disconnect, client)
        [ok] = yield self.call(client, xmlcall("Topics", "subscribe", "s", topic="news"))
        self.assertEqual(ok.get("status"), "OK")
        [server] = self.factory.openProtocols
        [subscription] = self.broker.topic("news").subscriptions
        body = b"x" * 200
        total = 100000
        for batch in range(10):
            for _ in range(total // 10):
                self.broker.publish("news", body)
            # Let the reactor write what the sockets take.
            yield deferLater(reactor, 0.01, lambda: None)
        written = self.factory.events
        queued = len(subscription.queue)
        buffered = len(b"".join(server.transport._tempDataBuffer)) + len(
            server.transport.dataBuffer)
        self.assertLessEqual(queued, DEFAULT_QUEUE_LIMIT)
        self.assertEqual(written + queued + subscription.dropped, total)
        self.assertGreater(subscription.dropped, 0)
        self.assertEqual(self.broker.topic("news").dropped, subscription.dropped)
        # What waits in the console's write buffer: about one buffer's worth.
        self.assertLess(buffered, 2 * server.transport.bufferSize)
        # The kernel's socket buffers took the rest of what was written.
        self.assertLess(written * len(body), 64 * 1024 * 1024)
