"""Hostile clients and lying servers, round two: each test reproduces one way
to wedge or bloat the daemon, through an engine built from media.xml where
sockets are the point."""

from __future__ import annotations

from twisted.internet import defer, reactor

from tests.test_console import xmlcall
from tests.test_hardening_listeners import waitFor
from tests.test_routing import RoutingTestCase, settle


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
        client.transport.write(b"".join(xmlcall("Slow", "wait", requestId=str(i),
                                                tag=str(i)) + b"\x01"
                                        for i in range(1000)))
        yield waitFor(lambda: len(self.slow.waiting) == 100, what="100 calls running")
        return client

    def consoleFactory(self):
        return self.engine.listeners["debug"].factory

    @defer.inlineCallbacks
    def test_thousandCallsInOnePacket(self):
        """1,000 waiting calls in one packet: 100 run, the others wait their turn."""
        client = yield self.startWithSlowCalls()
        yield settle(0.1)
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
