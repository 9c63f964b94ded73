"""Hostile clients and lying servers, round two: each test reproduces one way
to wedge or bloat the daemon, through an engine built from media.xml where
sockets are the point."""

from __future__ import annotations

from twisted.internet import defer, reactor
from twisted.internet.protocol import Factory, Protocol

from tests.test_console import xmlcall
from tests.test_hardening_listeners import waitFor
from tests.test_routing import RoutingTestCase, channel


class HalfCloseTests(RoutingTestCase):
    """A script writes its requests and shuts down its sending side: every
    call already received is answered before the connection closes."""

    @defer.inlineCallbacks
    def test_answersBeforeClose(self):
        yield self.startEngine()

        def later(request):
            reactor.callLater(0.2, self.engine.broker.publish, "answers", b"late",
                              attributes={"in-reply-to": request.id})

        self.engine.broker.subscribe("questions", later)
        client = yield self.console()
        client.transport.write(b"".join(
            xmlcall("Engine", "ping", requestId=f"p{i}") + b"\x01" for i in range(60)))
        client.transport.write(xmlcall("Topics", "request", requestId="slow",
                                       topic_out="questions", topic_in="answers",
                                       message="?") + b"\x01")
        client.transport.loseWriteConnection()
        yield client.lost
        answers = {doc.get("requestId"): doc for doc in client.results()}
        self.assertEqual(len(answers), 61)
        self.assertTrue(all(doc.get("status") == "OK" for doc in answers.values()))
        self.assertEqual(answers["slow"].findtext("message"), "late")

    @defer.inlineCallbacks
    def test_listenerConnectionFlushedOnHalfClose(self):
        """A listener connection whose peer half-closes is closed in order: what
        was written to it still reaches the peer."""
        from tests.test_routing import listener
        yield self.startEngine(listeners=listener("lines", **{"topic-in": "in",
                                                              "topic-out": "in"}))
        client = yield self.lineClient("lines")
        client.sendLine(b"echo me")
        client.transport.loseWriteConnection()
        yield client.closed
        self.assertEqual(client.lines, [b"echo me"])


class CallLimitTests(RoutingTestCase):
    """At most 100 calls run per connection, and the peer's close is always
    seen (at the limit the console used to stop reading)."""

    @defer.inlineCallbacks
    def startWithSlowCalls(self):
        from tests.test_console import Slow
        yield self.startEngine()
        self.slow = Slow()
        self.engine.registry.register(self.slow)
        client = yield self.console()
        # Count what the console reads, to know when it has read everything.
        yield waitFor(lambda: self.consoleFactory().openProtocols, what="the connection")
        [console] = self.consoleFactory().openProtocols
        self.bytesRead = 0
        read = console.dataReceived

        def counting(data):
            self.bytesRead += len(data)
            return read(data)

        console.dataReceived = counting
        self.sent = b"".join(xmlcall("Slow", "wait", requestId=str(i), tag=str(i)) + b"\x01"
                             for i in range(1000))
        client.transport.write(self.sent)
        yield waitFor(lambda: len(self.slow.waiting) == 100, what="100 calls running")
        return client

    def consoleFactory(self):
        return self.engine.listeners["debug"].factory

    @defer.inlineCallbacks
    def test_thousandCallsInOnePacket(self):
        """1,000 waiting calls in one packet: 100 run, the others wait their turn."""
        client = yield self.startWithSlowCalls()
        # Until all 1,000 have been read more could start: count the running
        # ones once the console has read everything.
        yield waitFor(lambda: self.bytesRead == len(self.sent), what="all 1,000 calls read")
        self.assertEqual(len(self.slow.waiting), 100)
        for tag in list(self.slow.waiting)[:10]:
            self.slow.waiting[tag].callback(None)
        yield client.waitDocs(10)
        self.assertEqual(len(self.slow.waiting), 110)
        self.assertEqual(sum(not d.called for d in self.slow.waiting.values()), 100)

    @defer.inlineCallbacks
    def test_resetAtTheLimitSeen(self):
        client = yield self.startWithSlowCalls()
        client.transport.abortConnection()
        yield waitFor(lambda: self.consoleFactory().openConnections == 0,
                      what="the connection closed")
        self.assertTrue(all(d.called for d in self.slow.waiting.values()))

    @defer.inlineCallbacks
    def test_closeAtTheLimitSeen(self):
        client = yield self.startWithSlowCalls()
        self.consoleFactory().halfCloseTimeout = 0.2
        client.transport.loseConnection()
        yield waitFor(lambda: self.consoleFactory().openConnections == 0,
                      what="the connection closed")
        self.assertTrue(all(d.called for d in self.slow.waiting.values()))


class PausedTopicTests(RoutingTestCase):
    """While topic-in is paused, clients that send a line and close still
    free their connection slot (they used to hold all of max-connections)."""

    @defer.inlineCallbacks
    def test_closesSeenWhilePaused(self):
        from tests.test_routing import listener
        yield self.startEngine(listeners=listener(
            "lines", direction="in", **{"topic-in": "work", "max-connections": "20"}))
        gate = defer.Deferred()
        received = []

        def busy(message):
            received.append(message.body)
            return gate

        self.engine.broker.subscribe("work", busy)
        first = yield self.lineClient("lines")
        first.sendLine(b"makes the topic busy")
        yield waitFor(lambda: received, what="the first message")
        guard = self.engine.listeners["lines"].guard
        for i in range(50):
            client = yield self.lineClient("lines")
            client.sendLine(b"line %d" % i)
            client.transport.loseConnection()
            yield client.closed
            yield waitFor(lambda: len(guard.protocols) <= 1, what=f"client {i} gone")
        self.assertEqual(guard.refused, 0)
        gate.callback(None)
        yield waitFor(lambda: len(received) == 51, what="every line published")
        self.assertEqual(received[1:], [b"line %d" % i for i in range(50)])


class TopicReclaimTests(RoutingTestCase):
    """Distinct topic names from a client are forgotten once idle (20,000 of
    them used to stay forever, ~1.1 KB each plus the name)."""

    @defer.inlineCallbacks
    def test_distinctTopicsForgotten(self):
        yield self.startEngine()
        client = yield self.console()
        calls = []
        for i in range(2000):
            calls.append(xmlcall("Topics", "publish", requestId=f"p{i}",
                                 topic=f"junk.{i}", message="x"))
        for i in range(300):
            calls.append(xmlcall("Topics", "subscribe", requestId=f"s{i}",
                                 topic=f"sub.{i}"))
            calls.append(xmlcall("Topics", "unsubscribe", requestId=f"u{i}",
                                 topic=f"sub.{i}"))
        yield self.call(client, b"\x01".join(calls), ["u299"])
        [listing] = yield self.call(client, xmlcall("Topics", "list", requestId="l"), ["l"])
        self.assertEqual(listing.findall("topic"), [])
        self.assertEqual(listing.find("reclaimed").get("topics"), "2300")
        self.assertEqual(listing.find("reclaimed").get("unrouted"), "2000")
        [long] = yield self.call(client, xmlcall("Topics", "publish", requestId="long",
                                                 topic="y" * 50000, message="x"), ["long"])
        self.assertIn("a topic name has at most 256 characters", long.findtext("exception"))


class LyingHttpServer(Protocol):
    """An HTTP server that misbehaves as ``factory.mode`` says, once it has
    read a request: ``mute`` never answers, ``trickle`` sends a body a byte
    at a time, ``informational`` floods 100 Continue, ``chunks`` sends a body
    in 1-byte chunks."""

    def connectionMade(self):
        self.factory.connections.append(self)
        self.timer = None
        self.buffer = b""

    def dataReceived(self, data):
        self.factory.received += data.count(b"GET ")
        self.factory.bytes += len(data)
        self.buffer += data
        if b"\r\n\r\n" not in self.buffer or self.factory.mode == "mute":
            return
        self.buffer = b""
        mode = self.factory.mode
        if mode == "trickle":
            self.transport.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n")
            self.trickle()
        elif mode == "informational":
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n" * 2000)
        elif mode == "chunks":
            self.transport.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                                 + b"1\r\nx\r\n" * 20000 + b"0\r\n\r\n")

    def trickle(self):
        self.transport.write(b"x")
        self.timer = reactor.callLater(0.05, self.trickle)

    def connectionLost(self, reason):
        if self.timer is not None and self.timer.active():
            self.timer.cancel()


class HttpLimitTests(RoutingTestCase):
    """HTTP channels bound what they have in flight and how long a response
    may take; floods of events are protocol errors."""

    @defer.inlineCallbacks
    def startLiar(self, mode, **properties):
        server = Factory.forProtocol(LyingHttpServer)
        server.mode, server.connections, server.received, server.bytes = mode, [], 0, 0
        self.addCleanup(lambda: [c.transport.abortConnection()
                                 for c in server.connections if c.transport.connected])
        port = self.listen(server)
        options = {"response-timeout": "0.3", "reconnectionTimeout": "60"}
        options.update(properties)
        yield self.startEngine(channels=channel("web", port, protocol="http",
                                                topicIn="resp", topicOut="req", **options),
                               connected=["web"])
        self.responses = []
        self.engine.broker.subscribe("resp", self.responses.append)
        self.channel = self.engine.channels["web"]
        return server

    @defer.inlineCallbacks
    def test_muteServerTimesOutAndBoundsInFlight(self):
        """A server that reads and never answers: at most max-in-flight requests
        are written; after response-timeout they are answered with status 0 and
        the connection is started over."""
        server = yield self.startLiar("mute", **{"max-in-flight": "3"})
        for i in range(10):
            self.engine.broker.publish("req", f"/page/{i}")
        self.assertEqual(self.channel.status()["inFlight"], 3)
        # Everything the channel wrote has arrived (bytes in = bytes out), so
        # no fourth request is on its way.
        yield waitFor(lambda: server.bytes == self.channel.bytesOut > 0,
                      what="what the channel wrote")
        self.assertEqual((server.received, self.channel.status()["inFlight"]), (3, 3))
        yield waitFor(lambda: len(self.responses) == 3, what="3 status-0 answers")
        self.assertEqual([m.attributes["status"] for m in self.responses], [0, 0, 0])
        self.assertIn("no complete reply within 0.3 s; 3 request(s) unanswered",
                      self.responses[0].attributes["error"])
        status = self.channel.status()
        self.assertEqual(status["responseTimeouts"], 1)
        self.assertIn("no complete reply within 0.3 s", status["lastError"])

    @defer.inlineCallbacks
    def test_tricklingResponseTimesOut(self):
        yield self.startLiar("trickle")
        self.engine.broker.publish("req", "/slow")
        yield waitFor(lambda: self.responses, what="an answer")
        self.assertEqual(self.responses[0].attributes["status"], 0)
        self.assertEqual(self.channel.status()["responseTimeouts"], 1)

    @defer.inlineCallbacks
    def test_informationalFlood(self):
        yield self.startLiar("informational")
        self.engine.broker.publish("req", "/x")
        yield waitFor(lambda: self.responses, what="an answer")
        self.assertEqual(self.responses[0].attributes["error"],
                         "more than 10 informational responses before a response")
        self.assertEqual(self.channel.status()["errors"], 2)  # the flood, 1 unanswered

    @defer.inlineCallbacks
    def test_tinyChunks(self):
        yield self.startLiar("chunks")
        self.engine.broker.publish("req", "/x")
        yield waitFor(lambda: self.responses, what="an answer")
        self.assertEqual(self.responses[0].attributes["error"],
                         "response body in more than 10000 pieces")

    @defer.inlineCallbacks
    def test_hugeAddressRefused(self):
        """A 100 KB page address is refused, not kept (1,000 of them took
        +233 MB)."""
        server = yield self.startLiar("mute")
        self.engine.broker.publish("req", "/" + "a" * 100000)
        status = self.channel.status()
        self.assertEqual((status["inFlight"], status["queued"], status["bytesOut"]),
                         (0, 0, 0))
        self.assertIn("address longer than 8192 bytes", status["lastError"])
        # A request after it is the first, and only, to reach the server.
        self.engine.broker.publish("req", "/next")
        yield waitFor(lambda: server.received == 1, what="the next request")
        yield waitFor(lambda: server.bytes == self.channel.bytesOut,
                      what="what the channel wrote")
        [connection] = server.connections
        self.assertTrue(connection.buffer.startswith(b"GET /next "), connection.buffer[:50])
        self.assertEqual(server.received, 1)


class EventFanOutTests(RoutingTestCase):
    """One big message to many console subscribers that do not read: it is
    serialised once for all of them (300 x 900 KB took 2.6 s and +270 MB)."""

    @defer.inlineCallbacks
    def test_serialisedOnce(self):
        from aiengine.console import protocol
        yield self.startEngine()
        clients = []
        for i in range(20):
            client = yield self.console()
            client.transport.pauseProducing()  # never reads
            clients.append(client)
            client.transport.write(xmlcall("Topics", "subscribe", requestId="s",
                                           topic="big"))
        topic = self.engine.broker.topic("big")
        yield waitFor(lambda: len(topic.subscriptions) == 20, what="20 subscribers")
        frames = []
        original = protocol.frame
        self.patch(protocol, "frame", lambda element: (frames.append(element.tag),
                                                       original(element))[1])
        self.engine.broker.publish("big", b"x" * 900000)
        self.assertEqual(frames, ["xmlevent"])
        for client in clients:
            client.transport.resumeProducing()


class UnclosedConstructTests(RoutingTestCase):
    """One unclosed quote, comment or CDATA section used to silence a console
    connection: now the separator (0x01), or the next request's line at a
    terminal, ends the broken request with one Exception answer."""

    BROKEN = [b'<xmlcall class="Engine" method="ping" requestId="1/>',
              b"<xmlcall class='Engine' method='ping' requestId='1/>",
              b'<xmlcall class="Engine" method="ping" requestId="1"><!-- oops',
              b'<xmlcall class="Engine" method="ping" requestId="1"><![CDATA[oops']

    def good(self, n):
        return xmlcall("Engine", "ping", requestId=f"ok{n}")

    @defer.inlineCallbacks
    def test_01Framing(self):
        yield self.startEngine()
        for broken in self.BROKEN:
            client = yield self.console()
            client.transport.write(broken + b"\x01" + self.good(2) + b"\x01"
                                   + self.good(3) + b"\x01")
            docs = yield client.waitDocs(3)
            self.assertEqual([d.get("status") for d in docs], ["Exception", "OK", "OK"],
                             broken)
            self.assertEqual([d.get("requestId") for d in docs[1:]], ["ok2", "ok3"])

    @defer.inlineCallbacks
    def test_telnetLineEndsWhatIsUnclosed(self):
        """Typed at a terminal (no 0x01 sent), the line end ends the broken
        request; once a client frames with 0x01, line ends are data again."""
        yield self.startEngine()
        for broken in self.BROKEN:
            client = yield self.console()
            client.transport.write(broken + b"\r\n" + self.good(2) + b"\r\n")
            docs = yield client.waitDocs(2)
            self.assertEqual([d.get("status") for d in docs], ["Exception", "OK"], broken)
            self.assertIn("line end inside", docs[0].findtext("exception"))
        client = yield self.console()
        client.transport.write(b"\x01" + xmlcall("Topics", "publish", requestId="multi",
                                                  topic="t", message="x").replace(
            b'value="x"', b'value="two\nlines"') + b"\x01")
        [doc] = yield client.waitDocs(1)
        self.assertEqual(doc.get("status"), "OK")

    @defer.inlineCallbacks
    def test_xmlMessagesListener(self):
        """xml-messages listeners share the splitter: the same rule holds."""
        from tests.test_routing import listener
        yield self.startEngine(listeners=listener(
            "docs", protocol="xml-messages", delimiter="\\1", direction="in",
            **{"topic-in": "docs"}))
        received = []
        self.engine.broker.subscribe("docs", received.append)
        client = yield self.lineClient("docs")
        client.transport.write(b'<a x="1/>\x01<b/>\x01<c><!-- no end\x01<d/>\x01')
        yield waitFor(lambda: len(received) == 2, what="the two good documents")
        self.assertEqual([m.body for m in received], [b"<b/>", b"<d/>"])
        self.assertEqual(self.engine.listeners["docs"].factory.errors, 2)
