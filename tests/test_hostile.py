"""Hostile clients and lying servers, round two: each test reproduces one way
to wedge or bloat the daemon, through an engine built from media.xml where
sockets are the point."""

from __future__ import annotations

from twisted.internet import defer, reactor

from tests.test_console import xmlcall
from tests.test_routing import RoutingTestCase


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
