"""Tests for the XML-call console: registry, protocol and built-in classes."""

from __future__ import annotations

import base64
from types import SimpleNamespace

from lxml import etree
from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults, inlineCallbacks
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol
from twisted.internet.task import Clock, deferLater
from twisted.internet.testing import StringTransport
from twisted.trial import unittest

import aiengine
from aiengine.broker import Broker
from aiengine.console.builtins import Topics, registerBuiltins
from aiengine.console.interfaces import CallError, ConsoleClass, Param, method
from aiengine.console.protocol import ConsoleFactory
from aiengine.console.registry import CallRegistry
from aiengine.console.results import TERMINATOR
from aiengine.protocols.xmlsplit import Document, XmlSplitter
from tests.support import waitFor

WAIT = 5  # seconds before a test waiting for replies gives up


def xmlcall(cls, meth, requestId=None, name=None, **params) -> bytes:
    """An <xmlcall> document; keyword parameters become properties."""
    root = etree.Element("xmlcall")
    if name is not None:
        root.set("name", name)
    root.set("class", cls)
    root.set("method", meth)
    if requestId is not None:
        root.set("requestId", requestId)
    if params:
        parameters = etree.SubElement(root, "parameters")
        for key, value in params.items():
            etree.SubElement(parameters, "property", name=key.replace("_", "-"),
                             value=value)
    return etree.tostring(root)


class Slow(ConsoleClass):
    """Test methods that complete when the test says so, fail, or misbehave."""

    name = "Slow"
    description = "Methods for console tests."

    def __init__(self):
        self.waiting = {}

    @method("Answer <done tag=..> when the test releases it.", Param("tag", "Label."))
    def wait(self, call):
        tag = call.params["tag"]
        d = self.waiting[tag] = Deferred()
        return d.addCallback(lambda _: etree.Element("done", tag=tag))

    @method("Fail a little later.")
    def failLater(self, call):
        return deferLater(reactor, 0.01, self._raise)

    @staticmethod
    def _raise():
        raise CallError("failed later")

    @method("Raise an unexpected exception.")
    def boom(self, call):
        raise RuntimeError("boom")

    @method("Return something that is not XML.")
    def bad(self, call):
        return 42

    @method("Echo the parameter back.", Param("text", "Anything."),
            Param("extra", "Optional.", required=False))
    def echo(self, call):
        element = etree.Element("echo")
        element.text = call.params["text"]
        if call.params["extra"] is not None:
            element.set("extra", call.params["extra"])
        return [element, etree.Element("session", name=call.connection.session)]


class Collector(Protocol):
    """Test client: collects the documents the console sends."""

    def __init__(self):
        self.raw = b""
        self.docs = []
        self._splitter = XmlSplitter(separators=b"\x01", maxSize=10 ** 8)
        self._waiters = []
        self.lost = Deferred()

    def dataReceived(self, data):
        self.raw += data
        self.docs += [item.root for item in self._splitter.feed(data)
                      if isinstance(item, Document)]
        self._check()

    def connectionLost(self, reason):
        waiters, self._waiters = self._waiters, []
        for _, d in waiters:
            d.errback(reason)
        self.lost.callback(None)

    def waitDocs(self, n):
        """A Deferred firing with the first ``n`` documents."""
        d = Deferred()
        self._waiters.append((n, d))
        self._check()
        return d.addTimeout(WAIT, reactor)

    def _check(self):
        ready = [(n, d) for n, d in self._waiters if len(self.docs) >= n]
        for item in ready:
            self._waiters.remove(item)
            item[1].callback(self.docs[:item[0]])

    def results(self):
        """Only the <xmlcallresult> documents received."""
        return [doc for doc in self.docs if doc.tag == "xmlcallresult"]


def byId(docs):
    return {doc.get("requestId"): doc for doc in docs}


def exceptionText(doc):
    return doc.findtext("exception")


class ConsoleTestCase(unittest.TestCase):
    """A console with the built-ins and :class:`Slow`, listening on loopback."""

    maxSize = 1000000

    #: subclasses may ask for a shared secret, message logging or another client
    secret = None
    showMessages = False
    clientClass = Collector

    def setUp(self):
        self.broker = Broker()
        self.engine = SimpleNamespace(broker=self.broker)
        self.registry = CallRegistry()
        registerBuiltins(self.registry)
        self.slow = Slow()
        self.registry.register(self.slow)
        self.factory = ConsoleFactory(self.registry, self.engine, name="test",
                                      maxSize=self.maxSize, secret=self.secret,
                                      showMessages=self.showMessages)
        self.port = reactor.listenTCP(0, self.factory, interface="127.0.0.1")
        self.addCleanup(self.port.stopListening)
        self.addCleanup(self._serverClosed)

    @inlineCallbacks
    def _serverClosed(self):
        for _ in range(300):
            if self.factory.openConnections == 0:
                return
            yield deferLater(reactor, 0.01, lambda: None)
        self.fail("console connections still open")

    @inlineCallbacks
    def connect(self):
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", self.port.getHost().port)
        client = yield connectProtocol(endpoint, self.clientClass())
        self.addCleanup(self._disconnect, client)
        return client

    def _disconnect(self, client):
        if not client.lost.called:
            client.transport.loseConnection()
        return client.lost

    @inlineCallbacks
    def call(self, client, data, n=1):
        """Send ``data`` and return the next ``n`` documents."""
        already = len(client.docs)
        client.transport.write(data)
        docs = yield client.waitDocs(already + n)
        return docs[already:]


class RegistryTests(unittest.TestCase):
    """CallRegistry: registration checks and lookup messages."""

    def setUp(self):
        self.registry = CallRegistry()
        registerBuiltins(self.registry)

    def test_registerRejectsNonProvider(self):
        self.assertRaises(TypeError, self.registry.register, object())

    def test_registerRejectsDuplicate(self):
        self.assertRaises(ValueError, self.registry.register, Topics())

    def test_classesSorted(self):
        self.registry.register(Slow())
        self.assertEqual([c.name for c in self.registry.classes()],
                         ["Engine", "Slow", "Topics"])

    def test_lookup(self):
        found = self.registry.lookup("Engine", "ping")
        self.assertEqual(found.name, "ping")

    def test_lookupFollowsRegistration(self):
        """What lookup remembers goes with the class that provided it."""
        first = Slow()
        self.registry.register(first)
        self.assertEqual(self.registry.lookup("Slow", "boom").function, first.boom)
        self.registry.unregister("Slow")
        self.assertRaises(CallError, self.registry.lookup, "Slow", "boom")
        second = Slow()
        self.registry.register(second)
        self.assertEqual(self.registry.lookup("Slow", "boom").function, second.boom)

    def test_unknownClass(self):
        e = self.assertRaises(CallError, self.registry.lookup, "Nope", "ping")
        self.assertEqual(str(e), "Unknown class 'Nope'; known classes: Engine, Topics")

    def test_unknownClassSuggestion(self):
        e = self.assertRaises(CallError, self.registry.lookup, "engine", "ping")
        self.assertIn("did you mean 'Engine'?", str(e))

    def test_unknownMethodSuggestion(self):
        e = self.assertRaises(CallError, self.registry.lookup, "Engine", "pnig")
        self.assertEqual(str(e), "Class 'Engine' has no method 'pnig'; did you mean 'ping'?")

    def test_unknownMethodListsMethods(self):
        e = self.assertRaises(CallError, self.registry.lookup, "Engine", "zzzzzz")
        self.assertEqual(str(e), "Class 'Engine' has no method 'zzzzzz'; its methods "
                                 "are: help, listeners, login, ping, reload, version")


class FramingTests(ConsoleTestCase):
    """Requests cut by document end or 0x01; replies end with TERMINATOR."""

    @inlineCallbacks
    def test_exactReplyBytes(self):
        client = yield self.connect()
        yield self.call(client, xmlcall("Engine", "ping", "1"))
        self.assertEqual(client.raw, b'<xmlcallresult requestId="1" status="OK">\n'
                                     b'  <pong/>\n</xmlcallresult>' + TERMINATOR)
        self.assertEqual(TERMINATOR, b"\n\x01")

    def test_answersOfOnePacketInOneWrite(self):
        """Pipelined requests read together are answered in one write, in order;
        an answer that comes later is written on its own."""
        writes = []
        transport = StringTransport()
        transport.write = writes.append
        protocol = self.factory.buildProtocol(None)
        protocol.makeConnection(transport)
        self.addCleanup(protocol.connectionLost, None)
        protocol.dataReceived(b"".join(xmlcall("Engine", "ping", str(n)) + b"\x01"
                                       for n in range(5)))
        self.assertEqual(len(writes), 1)
        splitter = XmlSplitter()
        ids = [item.root.get("requestId") for item in splitter.feed(writes[0])]
        self.assertEqual(ids, ["0", "1", "2", "3", "4"])
        protocol.dataReceived(xmlcall("Slow", "wait", "late", tag="t"))
        self.assertEqual(len(writes), 1)
        self.slow.waiting["t"].callback(None)
        self.assertEqual(len(writes), 2)
        self.assertIn(b'requestId="late"', writes[1])

    @inlineCallbacks
    def test_telnetStyleSplitPackets(self):
        client = yield self.connect()
        data = (b'<xmlcall class="Engine"\r\n   method="ping" requestId="T-1"\r\n'
                b'   name="telnet"></xmlcall>\r\n')
        for i in range(0, len(data), 7):
            client.transport.write(data[i:i + 7])
            yield deferLater(reactor, 0.002, lambda: None)
        [doc] = yield client.waitDocs(1)
        self.assertEqual((doc.get("requestId"), doc.get("name"), doc.get("status")),
                         ("T-1", "telnet", "OK"))
        self.assertEqual(doc[0].tag, "pong")

    @inlineCallbacks
    def test_pipelined(self):
        client = yield self.connect()
        data = b"".join(xmlcall("Slow", "echo", f"R-{i}", text=str(i)) + b"\x01"
                        for i in range(50))
        docs = yield self.call(client, data, 50)
        self.assertEqual([d.get("requestId") for d in docs], [f"R-{i}" for i in range(50)])
        self.assertEqual([d.findtext("echo") for d in docs], [str(i) for i in range(50)])
        self.assertEqual(self.factory.requests, 50)

    def test_byteAtATime(self):
        """Framing does not depend on packet boundaries (no socket needed)."""
        protocol = self.factory.buildProtocol(None)
        transport = StringTransport()
        protocol.makeConnection(transport)
        data = xmlcall("Engine", "ping", "a") + b"\n" + xmlcall("Engine", "version", "b")
        for i in range(len(data)):
            protocol.dataReceived(data[i:i + 1])
        docs = [item.root for item in XmlSplitter().feed(transport.value())]
        self.assertEqual([d.get("requestId") for d in docs], ["a", "b"])
        self.assertEqual(docs[1].findtext("version"), aiengine.__version__)
        protocol.connectionLost(None)


class ErrorTests(ConsoleTestCase):
    """Every bad request gets one Exception answer; the connection lives on."""

    @inlineCallbacks
    def test_ourOwnBugStillAnswers(self):
        """An error while building an answer is logged and still answered."""
        from aiengine.console import protocol as consoleProtocol

        def broken(value):
            raise RuntimeError("bug")

        self.patch(consoleProtocol, "_resultChildren", broken)
        client = yield self.connect()
        # Engine.help answers a list, which goes through _resultChildren.
        [answer] = yield self.call(client, xmlcall("Engine", "help", "x"))
        self.assertEqual((answer.get("requestId"), answer.get("status")), ("x", "Exception"))
        self.assertEqual(exceptionText(answer), "internal error serving the request")
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    @inlineCallbacks
    def test_malformedThenGood(self):
        client = yield self.connect()
        bad, good = yield self.call(
            client, b"<xmlcall class='Engine' method='ping' requestId='bad' name='n'>"
                    b"<oops></xmlcall>\n" + xmlcall("Engine", "ping", "good"), 2)
        self.assertEqual(bad.get("status"), "Exception")
        self.assertTrue(exceptionText(bad).startswith("malformed XML: "), exceptionText(bad))
        self.assertEqual((bad.get("requestId"), bad.get("name")), ("bad", "n"))
        self.assertEqual((good.get("requestId"), good.get("status")), ("good", "OK"))
        self.assertEqual(self.factory.errors, 1)

    @inlineCallbacks
    def test_notXmlAtAll(self):
        client = yield self.connect()
        bad, good = yield self.call(client, b"hello there\r\n" + xmlcall("Engine", "ping", "g"),
                                    2)
        self.assertIsNone(bad.get("requestId"))
        self.assertIn("malformed XML", exceptionText(bad))
        self.assertEqual(good.get("status"), "OK")

    @inlineCallbacks
    def test_wrongRoot(self):
        client = yield self.connect()
        [doc] = yield self.call(client, b'<call requestId="x"/>')
        self.assertEqual((doc.get("requestId"), doc.get("status")), ("x", "Exception"))
        self.assertEqual(exceptionText(doc), "expected an <xmlcall> document, got <call>")

    @inlineCallbacks
    def test_missingClassAndMethod(self):
        client = yield self.connect()
        a, b = yield self.call(client, b'<xmlcall method="ping"/><xmlcall class="Engine"/>', 2)
        self.assertEqual(exceptionText(a), "<xmlcall> has no 'class' attribute")
        self.assertEqual(exceptionText(b), "<xmlcall> has no 'method' attribute")

    @inlineCallbacks
    def test_unknownClass(self):
        client = yield self.connect()
        [doc] = yield self.call(client, xmlcall("Nope", "x", "1", name="who"))
        self.assertEqual((doc.get("requestId"), doc.get("name"), doc.get("status")),
                         ("1", "who", "Exception"))
        self.assertEqual(exceptionText(doc),
                         "Unknown class 'Nope'; known classes: Engine, Slow, Topics")

    @inlineCallbacks
    def test_unknownMethodSuggests(self):
        client = yield self.connect()
        [doc] = yield self.call(client, xmlcall("Engine", "pnig", "1"))
        self.assertEqual(exceptionText(doc),
                         "Class 'Engine' has no method 'pnig'; did you mean 'ping'?")

    @inlineCallbacks
    def test_missingParameter(self):
        client = yield self.connect()
        [doc] = yield self.call(client, xmlcall("Topics", "publish", "1", topic="t"))
        self.assertEqual(exceptionText(doc),
                         "Missing required parameter 'message' for Topics.publish")
        self.assertEqual(self.broker.topics(), [])

    @inlineCallbacks
    def test_unknownParameters(self):
        client = yield self.connect()
        [doc] = yield self.call(client, xmlcall("Slow", "echo", "1", text="a", colour="x",
                                                size="y"))
        self.assertEqual(exceptionText(doc), "Unknown parameters 'colour', 'size' for "
                                             "Slow.echo; it takes: text, extra")

    @inlineCallbacks
    def test_repeatedParameter(self):
        client = yield self.connect()
        [doc] = yield self.call(
            client, b'<xmlcall class="Slow" method="echo"><parameters>'
                    b'<property name="text" value="a"/><property name="text" value="b"/>'
                    b'</parameters></xmlcall>')
        self.assertEqual(exceptionText(doc), "parameter 'text' given twice")

    @inlineCallbacks
    def test_methodRaises(self):
        client = yield self.connect()
        [doc] = yield self.call(client, xmlcall("Slow", "boom", "1"))
        self.assertEqual(exceptionText(doc), "RuntimeError: boom")
        self.flushLoggedErrors(RuntimeError)
        [doc] = yield self.call(client, xmlcall("Engine", "ping", "2"))
        self.assertEqual(doc.get("status"), "OK")

    @inlineCallbacks
    def test_deferredFails(self):
        client = yield self.connect()
        [doc] = yield self.call(client, xmlcall("Slow", "failLater", "1"))
        self.assertEqual((doc.get("status"), exceptionText(doc)),
                         ("Exception", "failed later"))

    @inlineCallbacks
    def test_badReturnValue(self):
        client = yield self.connect()
        [doc] = yield self.call(client, xmlcall("Slow", "bad", "1"))
        self.assertEqual(doc.get("status"), "Exception")
        self.assertIn("returned int", exceptionText(doc))


class TooLargeTests(ConsoleTestCase):
    """A document past maxSize is answered, then the connection closes."""

    maxSize = 1000

    @inlineCallbacks
    def test_tooLargeCloses(self):
        client = yield self.connect()
        client.transport.write(b'<xmlcall class="Engine" method="ping"><parameters>'
                               + b"x" * 3000)
        yield client.lost
        [doc] = client.docs
        self.assertEqual(doc.get("status"), "Exception")
        self.assertIn("too large", exceptionText(doc))
        self.assertEqual(self.factory.errors, 1)


class ParameterTests(ConsoleTestCase):
    """Parameter values: attribute, text content, inline XML, defaults."""

    @inlineCallbacks
    def test_valueAsContent(self):
        client = yield self.connect()
        [doc] = yield self.call(
            client, b'<xmlcall class="Slow" method="echo" requestId="c"><parameters>'
                    b'<property name="text">some &amp; text</property>'
                    b'<!-- comments are ignored -->'
                    b'</parameters></xmlcall>')
        self.assertEqual(doc.findtext("echo"), "some & text")
        self.assertIsNone(doc.find("echo").get("extra"))

    @inlineCallbacks
    def test_inlineXml(self):
        client = yield self.connect()
        seen = []
        self.broker.subscribe("x", seen.append)
        [doc] = yield self.call(
            client, b'<xmlcall class="Topics" method="publish"><parameters>'
                    b'<property name="topic" value="x"/><property name="type" value="xml"/>'
                    b'<property name="message"><a b="1">t</a></property>'
                    b'</parameters></xmlcall>')
        self.assertEqual(doc.get("status"), "OK")
        self.assertEqual((seen[0].body, seen[0].msgtype), (b'<a b="1">t</a>', "xml"))

    @inlineCallbacks
    def test_optionalGiven(self):
        client = yield self.connect()
        [doc] = yield self.call(client, xmlcall("Slow", "echo", "1", text="a", extra="e"))
        self.assertEqual(doc.find("echo").get("extra"), "e")


class ConcurrencyTests(ConsoleTestCase):
    """Slow calls block neither other connections nor later calls."""

    @inlineCallbacks
    def test_outOfOrder(self):
        one = yield self.connect()
        two = yield self.connect()
        one.transport.write(xmlcall("Slow", "wait", "slow", tag="A"))
        [fast] = yield self.call(one, xmlcall("Engine", "ping", "fast"))
        self.assertEqual(fast.get("requestId"), "fast")
        [other] = yield self.call(two, xmlcall("Engine", "ping", "other"))
        self.assertEqual(other.get("status"), "OK")
        self.slow.waiting["A"].callback(None)
        [slow] = yield self._second(one)
        self.assertEqual((slow.get("requestId"), slow[0].get("tag")), ("slow", "A"))

    @inlineCallbacks
    def _second(self, client):
        docs = yield client.waitDocs(2)
        return docs[1:]

    @inlineCallbacks
    def waitingCall(self, tag):
        client = yield self.connect()
        client.transport.write(xmlcall("Slow", "wait", "1", tag=tag))
        yield waitFor(lambda: tag in self.slow.waiting, what=f"call {tag} running")
        return client

    @inlineCallbacks
    def test_pendingCancelledOnDisconnect(self):
        """A peer that is gone (reset) has its running calls cancelled at once."""
        client = yield self.waitingCall("B")
        client.transport.abortConnection()
        yield client.lost
        yield self._serverClosed()
        d = self.slow.waiting["B"]
        self.assertTrue(d.called)
        self.assertEqual(self.factory.undelivered, 0)

    @inlineCallbacks
    def test_pendingAfterCloseCancelledAfterHalfCloseTimeout(self):
        """A peer that closed (it may have half-closed, to read its answers)
        keeps its running calls for halfCloseTimeout, then they are cancelled."""
        self.factory.halfCloseTimeout = 0.2
        # Real sockets, the console's time on a Clock: exactly 0.2 s, on any machine.
        clock = self.factory.clock = Clock()
        client = yield self.waitingCall("C")
        client.transport.loseWriteConnection()
        yield waitFor(clock.getDelayedCalls, what="the half-close seen")
        clock.advance(0.199)
        self.assertFalse(self.slow.waiting["C"].called)
        self.assertFalse(client.lost.called)
        clock.advance(0.001)
        self.assertTrue(self.slow.waiting["C"].called)
        yield client.lost
        self.assertTrue(self.slow.waiting["C"].called)
        [answer] = client.results()
        self.assertEqual(answer.findtext("exception"),
                         "cancelled: the connection was closed by the peer 0.2 s earlier")

    def test_maxPendingHoldsFurtherRequests(self):
        """With maxPending calls running, further requests wait (also those of
        the same packet), and reading goes on, so a close is always seen."""
        self.factory.maxPending = 2
        protocol = self.factory.buildProtocol(None)
        transport = StringTransport()
        protocol.makeConnection(transport)
        protocol.dataReceived(b"".join(xmlcall("Slow", "wait", str(i), tag=f"p{i}")
                                       for i in range(1, 4)))
        self.assertEqual(sorted(self.slow.waiting), ["p1", "p2"])
        protocol.dataReceived(xmlcall("Slow", "wait", "4", tag="p4"))
        self.assertEqual(sorted(self.slow.waiting), ["p1", "p2"])
        self.assertEqual(transport.producerState, "producing")
        self.slow.waiting["p1"].callback(None)
        self.assertIn(b'requestId="1"', transport.value())
        self.assertEqual(sorted(self.slow.waiting), ["p1", "p2", "p3"])
        self.slow.waiting["p2"].callback(None)
        self.assertEqual(sorted(self.slow.waiting), ["p1", "p2", "p3", "p4"])
        protocol.connectionLost(None)

    def test_heldRequestsBounded(self):
        """What waits for a free slot is bounded by the request size limit."""
        self.factory.maxPending = 1
        self.factory.maxSize = 1000
        protocol = self.factory.buildProtocol(None)
        transport = StringTransport()
        protocol.makeConnection(transport)
        protocol.dataReceived(xmlcall("Slow", "wait", "1", tag="p1"))
        for i in range(20):
            protocol.dataReceived(xmlcall("Engine", "ping", f"x{i}"))
        self.assertTrue(transport.disconnecting)
        self.assertIn(b"more than 1000 bytes of requests waiting while 1 calls run",
                      transport.value())
        protocol.connectionLost(None)

    def test_eventBackpressure(self):
        protocol = self.factory.buildProtocol(None)
        transport = StringTransport()
        protocol.makeConnection(transport)
        message = self.broker.publish("t", "x")
        self.assertIsNone(protocol.sendEvent(message))
        protocol.pauseProducing()  # what the transport does when its buffer fills
        self.assertEqual(transport.producerState, "paused")
        waiter = protocol.sendEvent(message)
        self.assertFalse(waiter.called)
        protocol.resumeProducing()
        self.assertTrue(waiter.called)
        self.assertEqual(transport.producerState, "producing")
        protocol.connectionLost(None)


class SessionTests(ConsoleTestCase):
    """Connections are named <factory name>.<n> and counted."""

    @inlineCallbacks
    def test_sessionsAndCounters(self):
        one = yield self.connect()
        two = yield self.connect()
        [a] = yield self.call(one, xmlcall("Slow", "echo", "1", text="x"))
        [b] = yield self.call(two, xmlcall("Slow", "echo", "2", text="x"))
        self.assertEqual({a.find("session").get("name"), b.find("session").get("name")},
                         {"test.1", "test.2"})
        self.assertEqual((self.factory.connections, self.factory.openConnections,
                          self.factory.requests, self.factory.errors), (2, 2, 2, 0))


class EngineTests(ConsoleTestCase):
    """Engine.ping, version and help."""

    @inlineCallbacks
    def test_version(self):
        client = yield self.connect()
        [doc] = yield self.call(client, xmlcall("Engine", "version"))
        self.assertEqual(doc.findtext("version"), aiengine.__version__)

    @inlineCallbacks
    def test_helpListsEverything(self):
        client = yield self.connect()
        [doc] = yield self.call(client, xmlcall("Engine", "help", "h"))
        listed = {}
        for cls in doc.findall("class"):
            self.assertTrue(cls.get("description"))
            for meth in cls.findall("method"):
                self.assertTrue(meth.get("description"))
                listed[(cls.get("name"), meth.get("name"))] = [
                    (p.get("name"), p.get("required")) for p in meth.findall("param")]
        expected = {}
        for cls in self.registry.classes():
            for mname, meth in cls.methods().items():
                expected[(cls.name, mname)] = [
                    (p.name, "true" if p.required and p.default is None else "false")
                    for p in meth.params]
        self.assertEqual(listed, expected)
        self.assertIn(("Topics", "subscribe"), listed)

    @inlineCallbacks
    def test_helpOneClass(self):
        client = yield self.connect()
        [doc] = yield self.call(client, xmlcall("Engine", "help", **{"class": "Topics"}))
        self.assertEqual([c.get("name") for c in doc.findall("class")], ["Topics"])


class TopicsTests(ConsoleTestCase):
    """The Topics console class against a real broker."""

    @inlineCallbacks
    def test_publish(self):
        seen = []
        self.broker.subscribe("news", seen.append, session="someone")
        client = yield self.connect()
        [doc] = yield self.call(client, xmlcall("Topics", "publish", "p", topic="news",
                                                message="hello"))
        self.assertEqual(doc.findtext("messageId"), "news-1")
        [message] = seen
        self.assertEqual((message.body, message.session, message.source, message.msgtype),
                         (b"hello", None, "test.1", "text"))

    @inlineCallbacks
    def test_publishBadXml(self):
        client = yield self.connect()
        [doc] = yield self.call(client, xmlcall("Topics", "publish", topic="n",
                                                message="<a>", type="xml"))
        self.assertIn("not well-formed XML", exceptionText(doc))
        self.assertEqual(self.broker.topic("n").published, 0)

    @inlineCallbacks
    def test_subscribeStreamsEvents(self):
        client = yield self.connect()
        [ok] = yield self.call(client, xmlcall("Topics", "subscribe", "s", topic="news"))
        self.assertEqual(ok.get("status"), "OK")
        self.broker.publish("news", "first", session="elsewhere", source="src")
        self.broker.publish("news", b"nul\x00byte")
        self.broker.publish("news", b"\xff\xfe not utf-8")
        events = yield client.waitDocs(4)
        text, nul, bad = events[1:]
        self.assertEqual((text.tag, text.get("topic"), text.get("id"), text.text,
                          text.get("source"), text.get("encoding")),
                         ("xmlevent", "news", "news-1", "first", "src", None))
        self.assertEqual(nul.get("encoding"), "base64")
        self.assertEqual(base64.b64decode(nul.text), b"nul\x00byte")
        self.assertEqual(bad.get("encoding"), "base64")
        self.assertEqual(base64.b64decode(bad.text), b"\xff\xfe not utf-8")

    @inlineCallbacks
    def test_subscribeTwice(self):
        client = yield self.connect()
        yield self.call(client, xmlcall("Topics", "subscribe", topic="news"))
        [doc] = yield self.call(client, xmlcall("Topics", "subscribe", topic="news"))
        self.assertEqual(exceptionText(doc), "already subscribed to news")
        self.assertEqual(len(self.broker.topic("news").subscriptions), 1)

    @inlineCallbacks
    def test_unsubscribe(self):
        client = yield self.connect()
        yield self.call(client, xmlcall("Topics", "subscribe", topic="news"))
        [doc] = yield self.call(client, xmlcall("Topics", "unsubscribe", topic="news"))
        self.assertEqual(doc.get("status"), "OK")
        self.broker.publish("news", "unseen")
        [pong] = yield self.call(client, xmlcall("Engine", "ping", "after"))
        self.assertEqual(pong.get("requestId"), "after")
        self.assertEqual([d for d in client.docs if d.tag == "xmlevent"], [])
        [doc] = yield self.call(client, xmlcall("Topics", "unsubscribe", topic="news"))
        self.assertEqual(exceptionText(doc), "not subscribed to news")

    @inlineCallbacks
    def test_subscriptionEndsWithConnection(self):
        client = yield self.connect()
        yield self.call(client, xmlcall("Topics", "subscribe", topic="news"))
        self.assertEqual(len(self.broker.topic("news").subscriptions), 1)
        client.transport.loseConnection()
        yield client.lost
        yield self._serverClosed()
        self.assertEqual(self.broker.topic("news").subscriptions, ())

    @inlineCallbacks
    def test_list(self):
        """Every topic's counters, and each subscriber's: what was published,
        delivered, reached nobody, dropped or is still queued."""
        self.broker.topic("b", pin=True)
        self.broker.publish("b", "1")
        self.broker.publish("b", "2")
        self.broker.publish("gone", "reclaimed once idle")
        self.broker.subscribe("a", lambda m: None, name="quick")
        gate = Deferred()
        self.broker.subscribe("a", lambda m: gate, name="stuck")
        self.broker.publish("a", "x")
        self.broker.publish("a", "y")
        client = yield self.connect()
        [doc] = yield self.call(client, xmlcall("Topics", "list"))
        zero = dict(dropped="0", expired="0", replies="0", waiting="0")
        self.assertEqual([dict(t.attrib) for t in doc.findall("topic")], [
            dict(name="a", subscribers="2", published="2", delivered="3", unrouted="0",
                 **zero),
            dict(name="b", subscribers="0", published="2", delivered="0", unrouted="2",
                 **zero)])
        self.assertEqual([dict(s.attrib) for s in doc.find("topic").findall("subscriber")], [
            dict(name="quick", delivered="2", queued="0", dropped="0", expired="0",
                 failed="0"),
            dict(name="stuck", delivered="1", queued="1", dropped="0", expired="0",
                 failed="0")])
        self.assertEqual(dict(doc.find("reclaimed").attrib), dict(
            topics="1", published="1", delivered="0", unrouted="1", dropped="0",
            expired="0"))
        self.assertIsNone(doc.find("more"))
        [doc] = yield self.call(client, xmlcall("Topics", "list", prefix="a", limit="1"))
        self.assertEqual([t.get("name") for t in doc.findall("topic")], ["a"])
        [doc] = yield self.call(client, xmlcall("Topics", "list", limit="1"))
        self.assertEqual([t.get("name") for t in doc.findall("topic")], ["a"])
        self.assertEqual(doc.find("more").get("topics"), "1")
        [doc] = yield self.call(client, xmlcall("Topics", "list", limit="0"))
        self.assertEqual(exceptionText(doc),
                         "parameter 'limit' must be a positive whole number, got '0'")
        [doc] = yield self.call(client, xmlcall("Topics", "publish", topic="x" * 257,
                                                message="m"))
        self.assertEqual(exceptionText(doc), "parameter 'topic': a topic name has at most "
                         "256 characters, not 257")
        gate.callback(None)

    @inlineCallbacks
    def test_request(self):
        def responder(message):
            self.broker.publish("answers", b"re: " + message.body, source="responder")
        self.broker.subscribe("questions", responder)
        client = yield self.connect()
        [doc] = yield self.call(client, xmlcall("Topics", "request", "r",
                                                topic_out="questions", topic_in="answers",
                                                message="why"))
        self.assertEqual(doc.get("status"), "OK")
        reply = doc.find("message")
        self.assertEqual((reply.get("id"), reply.get("topic"), reply.text),
                         ("answers-1", "answers", "re: why"))

    @inlineCallbacks
    def test_requestTimeout(self):
        requests = []
        self.broker.subscribe("q", requests.append)
        client = yield self.connect()
        [doc] = yield self.call(client, xmlcall("Topics", "request", "r", topic_out="q",
                                                topic_in="silence", message="hello?",
                                                timeout="0.05"))
        self.assertEqual(exceptionText(doc), "no reply on silence within 0.05 s")
        self.assertEqual(self.broker.topic("silence").waiting, 0)
        self.assertTrue(requests[0].withdrawn)

    @inlineCallbacks
    def test_requestNoSubscriber(self):
        """A request nothing can receive is answered at once, not after the timeout."""
        client = yield self.connect()
        [doc] = yield self.call(client, xmlcall("Topics", "request", "r", topic_out="void",
                                                topic_in="silence", message="hello?"))
        self.assertEqual(exceptionText(doc),
                         "nothing subscribes to void: the request reached no one")
        self.assertEqual(self.broker.topic("silence").waiting, 0)

    @inlineCallbacks
    def test_concurrentRequestsEachTheirOwnReply(self):
        """Many requests at once on many connections through one responder that
        answers in its own order: each caller gets the reply to its request."""
        pending = []
        self.broker.subscribe("questions", pending.append)
        clients = []
        for _ in range(5):
            clients.append((yield self.connect()))
        calls = []
        for c, client in enumerate(clients):
            for i in range(10):
                calls.append(self.call(client, xmlcall(
                    "Topics", "request", f"{c}-{i}", topic_out="questions",
                    topic_in="answers", message=f"q {c}-{i}")))
        yield waitFor(lambda: len(pending) == 50, what="50 requests published")
        for request in reversed(pending):
            self.broker.publish("answers", b"re: " + request.body,
                                attributes={"in-reply-to": request.id})
        answers = yield gatherResults(calls)
        for [doc] in answers:
            self.assertEqual(doc.get("status"), "OK")
            self.assertEqual(doc.find("message").text, "re: q " + doc.get("requestId"))

    @inlineCallbacks
    def test_requestBadTimeout(self):
        client = yield self.connect()
        [doc] = yield self.call(client, xmlcall("Topics", "request", topic_out="q",
                                                topic_in="a", message="m", timeout="-1"))
        self.assertIn("positive number of seconds", exceptionText(doc))
