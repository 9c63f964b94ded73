"""Reload (issue 13): media.xml re-read while running, with real loopback
servers counting what each channel does to them, and real clients on the
listeners."""

from __future__ import annotations

import os

from twisted.internet import defer, error, reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Factory, Protocol
from twisted.trial import unittest

from aiengine.config import ConfigError, load
from aiengine.engine import Engine, ReloadError, ReloadResult
from tests.support import waitFor
from tests.test_console import Collector, xmlcall
from tests.test_listeners import LineClient


class _Counted(Protocol):
    def connectionMade(self):
        self.factory.accepted += 1
        self.factory.open.append(self)

    def dataReceived(self, data):
        self.factory.received += data

    def connectionLost(self, reason):
        self.factory.closed += 1
        self.factory.open.remove(self)


class CountingServer(Factory):
    """Counts the connections it accepts and sees closed, and keeps what arrives."""

    protocol = _Counted

    def __init__(self):
        self.accepted = 0
        self.closed = 0
        self.open = []
        self.received = b""


def channel(name, port, **properties):
    properties.setdefault("reconnectionTimeout", "0.2")
    props = {"host": "127.0.0.1", "port": port, "protocol": "text-messages",
             "protocol.delimiter": r"\n"}
    props.update(properties)
    return (f'<channel name="{name}">'
            + "".join(f'<property name="{k}" value="{v}"/>' for k, v in props.items())
            + "</channel>")


def listener(name, **properties):
    props = {"port": 0, "protocol": "text-messages", "protocol.delimiter": r"\n",
             **properties}
    return (f'<listener name="{name}">'
            + "".join(f'<property name="{k}" value="{v}"/>' for k, v in props.items())
            + "</listener>")


def mediaXml(listeners=(), channels=()):
    console = listener("console", msgtype="xmlcall", **{"protocol.delimiter": r"\1"})
    return ("<service><listeners>" + console + "".join(listeners)
            + "</listeners><directchannels>" + "".join(channels)
            + "</directchannels></service>")


class ReloadCase(unittest.TestCase):
    """Four counting servers, a media.xml on disk, and the engine it runs."""

    timeout = 30

    def setUp(self):
        self.servers = {}
        for name in "abcd":
            server = CountingServer()
            port = reactor.listenTCP(0, server, interface="127.0.0.1")
            self.addCleanup(port.stopListening)
            server.port = port.getHost().port
            self.servers[name] = server
        self.path = self.mktemp()

    def write(self, text):
        with open(self.path, "w") as f:
            f.write(text)

    @defer.inlineCallbacks
    def start(self, text):
        self.write(text)
        self.engine = Engine(load(self.path), reactor)
        self.engine.startService()
        self.addCleanup(self.engine.stopService)
        yield self.engine.started

    def connectedTo(self, *names):
        return waitFor(lambda: all(self.engine.channels[n].state == "connected"
                                   for n in names), what=f"{names} connected")

    @defer.inlineCallbacks
    def client(self, listenerName):
        port = self.engine.listeners[listenerName].address[1]
        client = yield connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port),
                                       LineClient())
        self.addCleanup(lambda: client.transport.loseConnection() or client.closed)
        return client


class ReloadTests(ReloadCase):
    @defer.inlineCallbacks
    def test_keptChangedRemovedAdded(self):
        s = self.servers
        yield self.start(mediaXml(
            listeners=[listener("same", **{"topic-in": "t"}),
                       listener("edited", direction="out", **{"topic-out": "t"}),
                       listener("gone", **{"topic-in": "t"})],
            channels=[channel("a", s["a"].port), channel("b", s["b"].port),
                      channel("c", s["c"].port)]))
        yield self.connectedTo("a", "b", "c")
        yield waitFor(lambda: all(s[n].accepted == 1 for n in "abc"), what="accepts")
        publisher = yield self.client("same")
        subscriber = yield self.client("edited")
        yield waitFor(lambda: len(self.engine.listeners["edited"].factory.connections),
                      what="subscriber")
        goneAddress = self.engine.listeners["gone"].address

        self.write(mediaXml(
            listeners=[listener("same", **{"topic-in": "t"}),
                       listener("edited", direction="out", **{"topic-out": "t"},
                                **{"idle-timeout": "600"}),
                       listener("new", **{"topic-in": "t"})],
            channels=[channel("a", s["a"].port),
                      channel("b", s["b"].port, reconnectionTimeout="0.5"),
                      channel("d", s["d"].port)]))
        result = yield self.engine.reload()

        self.assertEqual(sorted(result.kept), [("channel", "a"), ("listener", "console"),
                                               ("listener", "same")])
        self.assertEqual(sorted(result.changed), [("channel", "b"), ("listener", "edited")])
        self.assertEqual(sorted(result.removed), [("channel", "c"), ("listener", "gone")])
        self.assertEqual(sorted(result.added), [("channel", "d"), ("listener", "new")])
        self.assertEqual(result.failed, [])
        yield self.connectedTo("a", "b", "d")
        yield waitFor(lambda: (s["b"].accepted, s["b"].closed, s["c"].closed,
                               s["d"].accepted) == (2, 1, 1, 1), what="b, c and d")
        # Kept: its server saw no close and no new connection.
        self.assertEqual((s["a"].accepted, s["a"].closed), (1, 0))
        self.assertNotIn("c", self.engine.channels)
        self.assertEqual(self.engine.channels["b"].config.reconnection_timeout, 0.5)
        # The changed listener closed its connections; the kept one did not.
        yield subscriber.closed
        self.assertTrue(publisher.transport.connected)
        # The removed listener's port is closed; the new one listens.
        self.assertNotIn("gone", self.engine.listeners)
        refused = connectProtocol(TCP4ClientEndpoint(reactor, *goneAddress), Protocol())
        yield self.assertFailure(refused, error.ConnectionRefusedError)
        newcomer = yield self.client("new")
        # The kept publisher's lines reach the restarted listener's new clients.
        again = yield self.client("edited")
        yield waitFor(lambda: len(self.engine.listeners["edited"].factory.connections),
                      what="new subscriber")
        publisher.sendLine(b"still here")
        newcomer.sendLine(b"me too")
        lines = yield again.waitLines(2)
        self.assertEqual(sorted(lines), [b"me too", b"still here"])

    @defer.inlineCallbacks
    def test_invalidFileChangesNothing(self):
        s = self.servers
        yield self.start(mediaXml(channels=[channel("a", s["a"].port)]))
        yield self.connectedTo("a")
        self.write(mediaXml(channels=[channel("a", s["a"].port),
                                      channel("b", "not-a-port")]))
        refused = yield self.assertFailure(self.engine.reload(), ConfigError)
        self.assertIn(self.path, str(refused))
        self.assertIsNotNone(refused.line)
        self.assertIn("port", str(refused))
        # Broken XML too.
        self.write("<service><directchannels>")
        yield self.assertFailure(self.engine.reload(), ConfigError)
        self.assertEqual(list(self.engine.channels), ["a"])
        self.assertEqual((s["a"].accepted, s["a"].closed, s["b"].accepted), (1, 0, 0))
        # A good file afterwards applies.
        self.write(mediaXml(channels=[channel("a", s["a"].port), channel("b", s["b"].port)]))
        result = yield self.engine.reload()
        self.assertEqual(result.added, [("channel", "b")])

    @defer.inlineCallbacks
    def test_secretFileContentsCount(self):
        """A listener whose secret file now says something else is restarted,
        though media.xml did not change."""
        secret = os.path.abspath(self.mktemp())
        with open(secret, "w") as f:
            f.write("first")
        text = mediaXml(listeners=[listener("locked", auth="true",
                                            **{"auth.secret-file": secret,
                                               "topic-in": "t"})])
        yield self.start(text)
        result = yield self.engine.reload()
        self.assertEqual(result.changed, [])
        with open(secret, "w") as f:
            f.write("second")
        result = yield self.engine.reload()
        self.assertEqual(result.changed, [("listener", "locked")])
        self.assertEqual(self.engine.listeners["locked"].factory.secret, b"second")
        # An unreadable secret file is refused like a broken media.xml.
        with open(secret, "w") as f:
            f.write("")
        yield self.assertFailure(self.engine.reload(), ConfigError)
        self.assertEqual(self.engine.listeners["locked"].factory.secret, b"second")

    @defer.inlineCallbacks
    def test_changedChannelFlushesItsQueueFirst(self):
        """What was published for a channel just before it is changed reaches
        its server, before the old connection closes."""
        s = self.servers
        yield self.start(mediaXml(channels=[channel(
            "b", s["b"].port, **{"redirect-out": "true", "topic-out": "to-b"})]))
        yield self.connectedTo("b")
        for i in range(200):
            self.engine.broker.publish("to-b", b"line %d" % i)
        self.write(mediaXml(channels=[channel(
            "b", s["b"].port, reconnectionTimeout="1",
            **{"redirect-out": "true", "topic-out": "to-b"})]))
        result = yield self.engine.reload()
        self.assertEqual(result.changed, [("channel", "b")])
        yield waitFor(lambda: s["b"].closed == 1, what="the old connection closed")
        self.assertEqual(s["b"].received.split(b"\n")[:-1],
                         [b"line %d" % i for i in range(200)])

    @defer.inlineCallbacks
    def test_oneReloadAtATime(self):
        s = self.servers
        yield self.start(mediaXml(channels=[channel("a", s["a"].port)]))
        # Connected, so that stopping it takes a while (its close).
        yield self.connectedTo("a")
        self.write(mediaXml(channels=[channel("a", s["a"].port, reconnectionTimeout="2")]))
        first = self.engine.reload()
        yield self.assertFailure(self.engine.reload(), ReloadError)
        result = yield first
        self.assertIsInstance(result, ReloadResult)
        self.assertEqual(result.changed, [("channel", "a")])

    @defer.inlineCallbacks
    def test_portTakenReportedAsFailed(self):
        """A changed listener whose new port is taken is reported, and the
        next reload tries again."""
        blocker = reactor.listenTCP(0, Factory.forProtocol(Protocol), interface="127.0.0.1")
        self.addCleanup(blocker.stopListening)
        taken = blocker.getHost().port
        yield self.start(mediaXml(listeners=[listener("l", **{"topic-in": "t"})]))
        self.write(mediaXml(listeners=[listener("l", port=taken, **{"topic-in": "t"})]))
        result = yield self.engine.reload()
        self.assertEqual([f[:2] for f in result.failed], [("listener", "l")])
        self.assertNotIn("l", self.engine.listeners)
        yield blocker.stopListening()
        result = yield self.engine.reload()
        self.assertEqual(result.added, [("listener", "l")])
        self.assertEqual(self.engine.listeners["l"].address[1], taken)


class ConsoleReloadTests(ReloadCase):
    """``Engine.reload`` at the console: what changed, or why nothing did."""

    @defer.inlineCallbacks
    def call(self, data, n):
        port = self.engine.listeners["console"].address[1]
        client = yield connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port),
                                       Collector())
        self.addCleanup(lambda: client.transport.loseConnection() or client.lost)
        client.transport.write(data)
        docs = yield client.waitDocs(n)
        return docs

    @defer.inlineCallbacks
    def test_answerListsWhatChanged(self):
        s = self.servers
        yield self.start(mediaXml(channels=[channel("a", s["a"].port),
                                            channel("b", s["b"].port)]))
        self.write(mediaXml(channels=[channel("a", s["a"].port),
                                      channel("c", s["c"].port)]))
        [answer] = yield self.call(xmlcall("Engine", "reload", requestId="r") + b"\x01", 1)
        self.assertEqual(answer.get("status"), "OK")
        [reload] = answer.findall("reload")
        self.assertEqual(sorted((e.tag, e.get("kind"), e.get("name")) for e in reload),
                         [("added", "channel", "c"), ("kept", "channel", "a"),
                          ("kept", "listener", "console"), ("removed", "channel", "b")])
        yield self.connectedTo("c")

    @defer.inlineCallbacks
    def test_brokenFileAnswersException(self):
        s = self.servers
        yield self.start(mediaXml(channels=[channel("a", s["a"].port)]))
        self.write(mediaXml(channels=[channel("a", "none")]))
        [answer] = yield self.call(xmlcall("Engine", "reload", requestId="r") + b"\x01", 1)
        self.assertEqual(answer.get("status"), "Exception")
        text = answer.findtext("exception")
        self.assertIn("nothing changed", text)
        self.assertIn(f"{self.path}:1", text)
        self.assertEqual(list(self.engine.channels), ["a"])
