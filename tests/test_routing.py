"""Routing under load, end to end: an engine built from media.xml, real loopback
servers and many clients at once (issue: routing that stays right under
concurrency and fan-out).

Each test drives the daemon as users do: concurrent requests through one
channel, a hub of listeners with a subscriber that never reads, replies that
must find their own caller, requests that expire before their server comes
back.
"""

from __future__ import annotations

import random
import socket

from twisted.internet import defer, reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Factory
from twisted.internet.task import deferLater
from twisted.protocols.basic import LineOnlyReceiver
from twisted.trial import unittest
from twisted.web import resource, server

from aiengine.config import parse
from aiengine.engine import Engine
from tests.support import ReservedPort
from tests.test_console import xmlcall
from tests.test_hardening_listeners import waitFor
from tests.test_listeners import LineClient
from tests.test_media import ConsoleClientMixin


def settle(seconds=0.02):
    return deferLater(reactor, seconds, lambda: None)


class InOrderEcho(LineOnlyReceiver):
    """Answers every line with ``re: <line>``, in order, each after a short
    random delay (later answers wait for earlier ones), so that requests
    overlap."""

    delimiter = b"\n"

    def connectionMade(self):
        self._last = defer.succeed(None)

    def lineReceived(self, line):
        self.factory.received.append(line)
        delay = random.uniform(0, 0.01)
        answered = deferLater(reactor, delay, lambda: None)
        previous, self._last = self._last, defer.Deferred()
        mine = self._last

        def answer(_):
            if self.transport is not None and self.connected:
                self.sendLine(b"re: " + line)
            mine.callback(None)

        defer.gatherResults([previous, answered]).addCallback(answer)


class Pages(resource.Resource):
    """Every path answers ``page <path>`` after a short random delay."""

    isLeaf = True

    def __init__(self):
        super().__init__()
        self.requested = []

    def render_GET(self, request):
        self.requested.append(request.uri)

        def finish():
            if not request.finished and not request._disconnected:
                request.write(b"page " + request.uri)
                request.finish()

        reactor.callLater(random.uniform(0, 0.01), finish)
        return server.NOT_DONE_YET


CONSOLE = """
    <listener name="debug">
      <property name="port" value="0"/>
      <property name="protocol" value="text-messages"/>
      <property name="protocol.delimiter" value="\\1"/>
      <property name="msgtype" value="xmlcall"/>
    </listener>"""


def channel(name, port, protocol="text-messages", topicIn=None, topicOut=None,
            **properties):
    properties.setdefault("reconnectionTimeout", "0.1")
    lines = [f'<channel name="{name}">',
             f'<property name="protocol" value="{protocol}"/>',
             '<property name="host" value="127.0.0.1"/>',
             f'<property name="port" value="{port}"/>']
    if topicIn:
        lines += ['<property name="redirect-in" value="true"/>',
                  f'<property name="topic-in" value="{topicIn}"/>']
    if topicOut:
        lines += ['<property name="redirect-out" value="true"/>',
                  f'<property name="topic-out" value="{topicOut}"/>']
    lines += [f'<property name="{k}" value="{v}"/>' for k, v in properties.items()]
    return "\n".join(lines + ["</channel>"])


def listener(name, protocol="text-messages", delimiter="\\n", **properties):
    lines = [f'<listener name="{name}">', '<property name="port" value="0"/>',
             f'<property name="protocol" value="{protocol}"/>',
             f'<property name="protocol.delimiter" value="{delimiter}"/>']
    lines += [f'<property name="{k}" value="{v}"/>' for k, v in properties.items()]
    return "\n".join(lines + ["</listener>"])


class RoutingTestCase(ConsoleClientMixin, unittest.TestCase):
    """An engine from media.xml text, its console, and clean-up."""

    timeout = 60

    def listen(self, factory):
        port = reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        return port.getHost().port

    @defer.inlineCallbacks
    def startEngine(self, listeners="", channels="", connected=()):
        text = (f"<service><listeners>{CONSOLE}{listeners}</listeners>"
                f"<directchannels>{channels}</directchannels></service>")
        self.engine = Engine(parse(text.encode()), reactor)
        self.engine.startService()
        self.addCleanup(self.engine.stopService)
        for name in connected:
            yield waitFor(lambda: self.engine.channels[name].state == "connected",
                          what=f"channel {name} connected")

    def port(self, name):
        return self.engine.listeners[name].address[1]

    @defer.inlineCallbacks
    def lineClient(self, listenerName):
        client = yield connectProtocol(
            TCP4ClientEndpoint(reactor, "127.0.0.1", self.port(listenerName)),
            LineClient())
        self.addCleanup(lambda: client.transport.loseConnection() or client.closed)
        return client

    @defer.inlineCallbacks
    def concurrentRequests(self, clients, perClient, make):
        """``perClient`` calls written at once on each console client
        (``make(tag)`` builds the call for request id ``tag``); their answers
        by request id."""
        calls = []
        for c, client in enumerate(clients):
            tags = [f"{c}-{i}" for i in range(perClient)]
            calls.append(self.call(client, b"".join(make(tag) for tag in tags), tags))
        answers = {}
        for tags, results in zip(([f"{c}-{i}" for i in range(perClient)]
                                  for c in range(len(clients))),
                                 (yield defer.gatherResults(calls))):
            answers.update(zip(tags, results))
        return answers


class RequestReplyTests(RoutingTestCase):
    """Concurrent requests through one channel each get their own reply."""

    @defer.inlineCallbacks
    def requestsThroughEcho(self, **properties):
        echo = Factory.forProtocol(InOrderEcho)
        echo.received = []
        port = self.listen(echo)
        yield self.startEngine(channels=channel("echo", port, topicIn="echo.in",
                                                topicOut="echo.out", **properties),
                               connected=["echo"])
        clients = []
        for _ in range(5):
            clients.append((yield self.console()))
        answers = yield self.concurrentRequests(clients, 12, lambda tag: xmlcall(
            "Topics", "request", requestId=tag, topic_out="echo.out",
            topic_in="echo.in", message=f"q {tag}", timeout="10"))
        self.assertEqual(len(echo.received), 60)
        crossed = [tag for tag, answer in answers.items()
                   if answer.findtext("message") != f"re: q {tag}"]
        self.assertEqual(crossed, [], [(t, answers[t].findtext("message"),
                                        answers[t].findtext("exception"))
                                       for t in crossed[:5]])
        return answers

    @defer.inlineCallbacks
    def test_orderedChannel(self):
        """60 requests at once on 5 connections through a replies=ordered
        channel: each answer is its own request's reply, named in in-reply-to."""
        answers = yield self.requestsThroughEcho(replies="ordered")
        for tag, answer in answers.items():
            self.assertRegex(answer.find("message").get("in-reply-to"), r"^echo\.out-\d+$")
        topic = self.engine.broker.topic("echo.in")
        self.assertEqual((topic.replies, topic.waiting, topic.unrouted), (60, 0, 0))
        self.assertEqual(self.engine.channels["echo"].status()["inFlight"], 0)

    @defer.inlineCallbacks
    def test_unpairedChannelFirstComeFirstServed(self):
        """Without replies=ordered, replies naming no request go to the
        waiting requests one each, oldest first: with one in-order server
        that is still each request's own reply."""
        yield self.requestsThroughEcho()
        topic = self.engine.broker.topic("echo.in")
        self.assertEqual((topic.replies, topic.waiting), (60, 0))

    @defer.inlineCallbacks
    def test_orderedMaxInFlight(self):
        """At most max-in-flight messages are written unanswered; the rest wait
        in the queue and go out as replies come."""
        echo = Factory.forProtocol(InOrderEcho)
        echo.received = []
        port = self.listen(echo)
        yield self.startEngine(channels=channel(
            "echo", port, topicIn="echo.in", topicOut="echo.out", replies="ordered",
            **{"max-in-flight": "3"}), connected=["echo"])
        ch = self.engine.channels["echo"]
        seen = []
        original = ch._framer.sendMessage

        def watch(message, attributes=None):
            seen.append(ch.status()["inFlight"])
            return original(message, attributes)

        ch._framer.sendMessage = watch
        waits = [self.engine.media.request("echo", f"m{i}", timeout=10) for i in range(20)]
        replies = yield defer.gatherResults(waits)
        self.assertEqual([r.body for r in replies], [b"re: m%d" % i for i in range(20)])
        self.assertEqual(len(seen), 20)
        self.assertLessEqual(max(seen), 2)  # in flight before each write

    @defer.inlineCallbacks
    def test_httpChannelConcurrentPages(self):
        """60 testRequestPage calls at once on 5 connections through the
        google channel: each gets its own page."""
        pages = Pages()
        site = server.Site(pages)
        site.noisy = False
        port = self.listen(site)
        yield self.startEngine(channels=channel("google", port, protocol="http",
                                                topicIn="http.response",
                                                topicOut="http.request"),
                               connected=["google"])
        clients = []
        for _ in range(5):
            clients.append((yield self.console()))
        answers = yield self.concurrentRequests(clients, 12, lambda tag: xmlcall(
            "TestDirectChannels", "testRequestPage", requestId=tag, page=f"/p/{tag}"))
        for tag, answer in answers.items():
            self.assertEqual(answer.get("status"), "OK", answer.findtext("exception"))
            self.assertEqual(answer.findtext("body"), f"page /p/{tag}")
        self.assertEqual(len(pages.requested), 60)

    @defer.inlineCallbacks
    def test_mediaRequestConcurrent(self):
        """Media.request through an ordered channel from many callers at once."""
        echo = Factory.forProtocol(InOrderEcho)
        echo.received = []
        port = self.listen(echo)
        yield self.startEngine(channels=channel("echo", port, replies="ordered"),
                               connected=["echo"])
        clients = []
        for _ in range(4):
            clients.append((yield self.console()))
        answers = yield self.concurrentRequests(clients, 15, lambda tag: xmlcall(
            "Media", "request", requestId=tag, channel="echo", message=f"q {tag}"))
        for tag, answer in answers.items():
            self.assertEqual(answer.findtext("message"), f"re: q {tag}",
                             answer.findtext("exception"))
        # Nothing left in the inbox: each reply went to its request only.
        self.assertEqual(self.engine.channels["echo"].status()["inbox"], 0)

    @defer.inlineCallbacks
    def test_mediaRequestNeedsPairing(self):
        echo = Factory.forProtocol(InOrderEcho)
        echo.received = []
        port = self.listen(echo)
        yield self.startEngine(channels=channel("echo", port), connected=["echo"])
        client = yield self.console()
        [answer] = yield self.call(client, xmlcall("Media", "request", requestId="R",
                                                   channel="echo", message="x"), ["R"])
        self.assertEqual(answer.findtext("exception"),
                         "channel echo does not pair replies with requests (it needs "
                         "protocol http or replies=ordered)")

    @defer.inlineCallbacks
    def test_gatewayRepliesToTheAskingConnection(self):
        """Listener connections ask for pages through an http channel: each
        gets its own page, and nobody else's."""
        pages = Pages()
        site = server.Site(pages)
        site.noisy = False
        port = self.listen(site)
        yield self.startEngine(
            listeners=listener("gate", **{"topic-in": "http.request",
                                          "topic-out": "http.response"}),
            channels=channel("google", port, protocol="http", topicIn="http.response",
                             topicOut="http.request"),
            connected=["google"])
        clients = []
        for _ in range(20):
            clients.append((yield self.lineClient("gate")))
        for n, client in enumerate(clients):
            for i in range(3):
                client.sendLine(b"/c%d/%d" % (n, i))
        for n, client in enumerate(clients):
            lines = yield client.waitLines(3)
            self.assertEqual(sorted(lines), [b"page /c%d/%d" % (n, i) for i in range(3)])
        # Nothing more is on its way to any client: each request was written
        # once and answered once, nothing waits, and the listener wrote each
        # answer to one connection only (it counts every line it writes).
        status = self.engine.channels["google"].status()
        self.assertEqual((status["messagesOut"], status["messagesIn"], status["inFlight"],
                          status["queued"]), (60, 60, 0, 0))
        self.assertEqual(self.engine.listeners["gate"].factory.messagesOut, 60)
        self.assertEqual([len(c.lines) for c in clients], [3] * 20)


class HubTests(RoutingTestCase):
    """An ``in`` listener feeding an ``out`` listener through one topic."""

    @defer.inlineCallbacks
    def startHub(self, **outProperties):
        yield self.startEngine(listeners=listener(
            "hubin", direction="in", **{"topic-in": "hub"}) + listener(
            "hubout", direction="out", **{"topic-out": "hub"}, **outProperties))
        self.hubout = self.engine.listeners["hubout"].factory

    @defer.inlineCallbacks
    def test_hubWithAStuckSubscriber(self):
        """Two publishers, three subscribers that read and one that never does:
        the readers get every message in order, the stuck one is cut off as a
        slow consumer, and nothing is lost in silence."""
        yield self.startHub(**{"slow-consumer-timeout": "1"})
        self.hubout.maxQueuedMessages = 50
        readers = []
        for _ in range(3):
            readers.append((yield self.lineClient("hubout")))
        stuck = yield self.lineClient("hubout")
        stuck.transport.pauseProducing()
        stuck.transport.getHandle().setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        yield waitFor(lambda: len(self.hubout.connections) == 4, what="4 subscribers")
        stuckConnection = self.hubout.connections["hubout.4"]
        for connection in self.hubout.connections.values():
            connection.framer.transport.getHandle().setsockopt(
                socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        publishers = []
        for _ in range(2):
            publishers.append((yield self.lineClient("hubin")))
        count = 1000
        payload = b"x" * 200
        for i in range(count):
            for p, publisher in enumerate(publishers):
                publisher.sendLine(b"%d %06d " % (p, i) + payload)
        for reader in readers:
            lines = yield reader.waitLines(2 * count)
            for p in range(2):
                numbers = [int(line.split()[1]) for line in lines
                           if line.startswith(b"%d " % p)]
                self.assertEqual(numbers, list(range(count)))
        yield waitFor(lambda: self.hubout.slowConsumers == 1, what="the slow consumer cut off")
        stuck.transport.resumeProducing()  # a client that does not read sees no close
        yield stuck.closed
        stats = self.hubout.stats()
        self.assertEqual(stats["slowConsumers"], 1)
        self.assertEqual(stats["messagesOut"],
                         3 * 2 * count + stuckConnection.messagesOut)
        # What the stuck one had queued when it was cut off: counted.
        self.assertGreater(stuckConnection.dropped, 0)
        self.assertEqual(stats["dropped"], stuckConnection.dropped)
        self.assertLess(stuckConnection.messagesOut + stuckConnection.dropped, 2 * count)
        topic = self.engine.broker.topic("hub")
        self.assertEqual((topic.published, topic.unrouted, topic.dropped),
                         (2 * count, 0, 0))

    @defer.inlineCallbacks
    def test_hubManyPublishersOneSlowReader(self):
        """Ten publishers write at once, much more than the reader's queues
        hold, while the one subscriber reads nothing for a while: with
        overflow=pause the publishers wait, and every message arrives, in
        each publisher's order; nothing is dropped anywhere."""
        yield self.startHub()
        reader = yield self.lineClient("hubout")
        yield waitFor(lambda: len(self.hubout.connections) == 1, what="the subscriber")
        reader.transport.pauseProducing()
        publishers = []
        for _ in range(10):
            publishers.append((yield self.lineClient("hubin")))
        count = 3000
        for p, publisher in enumerate(publishers):
            publisher.transport.write(b"".join(
                b"%d %06d %s\n" % (p, i, b"z" * 88) for i in range(count)))
        yield settle(0.5)
        reader.transport.resumeProducing()
        lines = yield reader.waitLines(10 * count).addTimeout(20, reactor)
        for p in range(10):
            numbers = [int(line.split()[1]) for line in lines
                       if line.startswith(b"%d " % p)]
            self.assertEqual(numbers, list(range(count)))
        topic = self.engine.broker.topic("hub")
        self.assertEqual((topic.published, topic.unrouted, topic.dropped),
                         (10 * count, 0, 0))
        self.assertEqual(self.hubout.stats()["dropped"], 0)

    @defer.inlineCallbacks
    def test_hubDropPolicy(self):
        """overflow=drop: readers are never slowed; the stuck subscriber's
        losses are counted."""
        yield self.startHub(overflow="drop")
        self.hubout.maxQueuedMessages = 20
        reader = yield self.lineClient("hubout")
        stuck = yield self.lineClient("hubout")
        stuck.transport.pauseProducing()
        stuck.transport.getHandle().setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        yield waitFor(lambda: len(self.hubout.connections) == 2, what="2 subscribers")
        # Only the stuck one gets small buffers: with drop, a reader that falls
        # behind (here: by more than its buffers and 20 messages) loses too.
        self.hubout.connections["hubout.2"].framer.transport.getHandle().setsockopt(
            socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        publisher = yield self.lineClient("hubin")
        # In steps the reader keeps up with: a burst beyond its buffers would
        # make it drop too (that is what drop means).
        for step in range(0, 500, 50):
            for i in range(step, step + 50):
                publisher.sendLine(b"%06d " % i + b"y" * 500)
            yield reader.waitLines(step + 50)
        self.assertEqual([int(line[:6]) for line in reader.lines], list(range(500)))
        stats = self.hubout.stats()
        stuckConnection = self.hubout.connections["hubout.2"]
        self.assertGreater(stats["dropped"], 0)
        self.assertEqual(stats["dropped"], stuckConnection.dropped)
        self.assertEqual(stuckConnection.messagesOut + stuckConnection.queued
                         + stuckConnection.dropped, 500)
        self.assertEqual(stats["slowConsumers"], 0)
        stuck.transport.resumeProducing()

    @defer.inlineCallbacks
    def test_unroutedVisibleAtTheConsole(self):
        """Messages nobody receives are counted where a user looks."""
        yield self.startHub()
        publisher = yield self.lineClient("hubin")
        for i in range(3):
            publisher.sendLine(b"into the void %d" % i)
        yield waitFor(lambda: self.engine.broker.topic("hub").published == 3,
                      what="3 published")
        client = yield self.console()
        [topics, listeners] = yield self.call(client, xmlcall(
            "Topics", "list", requestId="T") + xmlcall(
            "Engine", "listeners", requestId="L"), ["T", "L"])
        [hub] = [t for t in topics.findall("topic") if t.get("name") == "hub"]
        self.assertEqual((hub.get("published"), hub.get("unrouted")), ("3", "0"))
        [out] = [e for e in listeners.findall("listener") if e.get("name") == "hubout"]
        self.assertEqual(out.get("unrouted"), "3")


class ExpiryTests(RoutingTestCase):
    """Requests whose callers gave up are not sent when the server comes back."""

    def reservedPort(self):
        """A port held for the test: connections to it are refused until
        :meth:`comeBack` makes it listen (no free-then-reuse race)."""
        reserved = ReservedPort()
        self.addCleanup(reserved.close)
        return reserved

    def comeBack(self, reserved, factory):
        reserved.listen(factory)

    @defer.inlineCallbacks
    def test_withdrawnAndExpiredNotSent(self):
        reserved = self.reservedPort()
        echo = Factory.forProtocol(InOrderEcho)
        echo.received = []
        yield self.startEngine(channels=channel("echo", reserved.port,
                                                topicIn="echo.in", topicOut="echo.out",
                                                replies="ordered"))
        client = yield self.console()
        answers = yield self.call(client, b"".join([
            xmlcall("Topics", "request", requestId="gives-up", topic_out="echo.out",
                    topic_in="echo.in", message="too late", timeout="0.2"),
            xmlcall("Media", "send", requestId="ttl", channel="echo", message="stale",
                    ttl="0.2"),
            xmlcall("Topics", "publish", requestId="pttl", topic="echo.out",
                    message="stale too", ttl="0.2"),
            xmlcall("Media", "send", requestId="keeps", channel="echo", message="fresh"),
        ]), ["gives-up", "ttl", "pttl", "keeps"])
        self.assertEqual(answers[0].findtext("exception"), "no reply on echo.in within 0.2 s")
        # Time itself must pass here: the ttl of 0.2 s runs out while the
        # server is down (a wait can only be longer than asked, never shorter).
        yield settle(0.3)
        self.comeBack(reserved, echo)
        ch = self.engine.channels["echo"]
        # Its answer back too: the echo server has nothing left to do.
        yield waitFor(lambda: ch.messagesIn == 1, what="the fresh message answered")
        status = ch.status()
        self.assertEqual((status["withdrawn"], status["expired"], status["queued"]),
                         (1, 2, 0))
        # The channel wrote that one message and has nothing left to write.
        self.assertEqual(status["messagesOut"], 1)
        self.assertEqual(echo.received, [b"fresh"])

    @defer.inlineCallbacks
    def test_requestPageNotSentAfterItsTimeout(self):
        """testRequestPage against a server that is down answers Exception, and
        its GET is not sent when the server comes back."""
        reserved = self.reservedPort()
        pages = Pages()
        site = server.Site(pages)
        site.noisy = False
        yield self.startEngine(channels=channel("google", reserved.port,
                                                protocol="http", topicIn="http.response",
                                                topicOut="http.request"))
        self.engine.registry.get("TestDirectChannels").timeout = 0.2
        client = yield self.console()
        [answer] = yield self.call(client, xmlcall(
            "TestDirectChannels", "testRequestPage", requestId="X", page="/old"), ["X"])
        self.assertEqual(answer.findtext("exception"), "No response from google page=/old")
        self.comeBack(reserved, site)
        yield waitFor(lambda: self.engine.channels["google"].state == "connected",
                      what="google connected")
        self.engine.registry.get("TestDirectChannels").timeout = 5
        [answer] = yield self.call(client, xmlcall(
            "TestDirectChannels", "testRequestPage", requestId="Y", page="/new"), ["Y"])
        self.assertEqual(answer.findtext("body"), "page /new")
        self.assertEqual(pages.requested, [b"/new"])
        self.assertEqual(self.engine.channels["google"].status()["withdrawn"], 1)

    @defer.inlineCallbacks
    def test_callerGoneWithdraws(self):
        """A console connection that closes while its request waits in the
        queue: the request is withdrawn, not sent when the server comes back."""
        reserved = self.reservedPort()
        echo = Factory.forProtocol(InOrderEcho)
        echo.received = []
        yield self.startEngine(channels=channel("echo", reserved.port,
                                                topicIn="echo.in", topicOut="echo.out"))
        client = yield self.console()
        client.transport.write(xmlcall("Topics", "request", requestId="gone",
                                       topic_out="echo.out", topic_in="echo.in",
                                       message="nobody waits", timeout="30"))
        yield waitFor(lambda: self.engine.broker.topic("echo.in").waiting == 1,
                      what="the request waiting")
        client.transport.abortConnection()
        yield client.lost
        yield waitFor(lambda: self.engine.broker.topic("echo.in").waiting == 0,
                      what="the request given up")
        self.engine.media.send("echo", "after")
        self.comeBack(reserved, echo)
        ch = self.engine.channels["echo"]
        # Its answer back too: the echo server has nothing left to do.
        yield waitFor(lambda: ch.messagesIn == 1, what="the later message answered")
        # The channel wrote that one message and has nothing left to write.
        status = ch.status()
        self.assertEqual((status["messagesOut"], status["queued"], status["withdrawn"]),
                         (1, 0, 1))
        self.assertEqual(echo.received, [b"after"])
