"""The engine in-process: channels, the media API and testRequestPage through the console."""

from __future__ import annotations

import os

from twisted.internet import defer, reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Factory
from twisted.internet.task import deferLater
from twisted.internet.testing import MemoryReactorClock
from twisted.protocols.basic import LineOnlyReceiver
from twisted.trial import unittest
from twisted.web import resource, server

from aiengine.config import ConfigError, ServiceConfig, parse
from aiengine.engine import Engine
from aiengine.media import Media, UnknownChannel
from tests.test_console import Collector, xmlcall

SEED_CALL = b"""<xmlcall name="TestDirectChannels-Google" class="TestDirectChannels" method="testRequestPage" requestId="REQ-1">
    <parameters>
        <property name="page" value="%s" />
    </parameters>
</xmlcall>
"""

CONFIG = """<service>
  <listeners>
    <listener name="debug">
      <property name="port" value="0"/>
      <property name="protocol" value="text-messages"/>
      <property name="protocol.delimiter" value="\\1"/>
      <property name="msgtype" value="xmlcall"/>
    </listener>
  </listeners>
  <directchannels>
    <channel name="google" run="true">
      <property name="protocol" value="http"/>
      <property name="msgtype" value="text"/>
      <property name="permanent" value="true"/>
      <property name="host" value="127.0.0.1"/>
      <property name="port" value="{web}"/>
      <property name="redirect-in" value="true"/>
      <property name="redirect-out" value="true"/>
      <property name="topic-in" value="http.response"/>
      <property name="topic-out" value="http.request"/>
      <property name="reconnectionTimeout" value="0.2"/>
    </channel>
    <channel name="lines">
      <property name="protocol" value="text-messages"/>
      <property name="host" value="127.0.0.1"/>
      <property name="port" value="{lines}"/>
      <property name="redirect-in" value="true"/>
      <property name="redirect-out" value="true"/>
      <property name="topic-in" value="lines.resp"/>
      <property name="topic-out" value="lines.req"/>
      <property name="reconnectionTimeout" value="0.2"/>
    </channel>
    <channel name="plain">
      <property name="protocol" value="text-messages"/>
      <property name="host" value="127.0.0.1"/>
      <property name="port" value="{lines}"/>
      <property name="reconnectionTimeout" value="0.2"/>
    </channel>
  </directchannels>
</service>
"""


class Pages(resource.Resource):
    """Every path answers with a body naming it; /chunked/ ones are sent chunked."""

    isLeaf = True

    def render_GET(self, request):
        body = b"page " + request.uri
        if request.path.startswith(b"/chunked/"):
            for i in range(0, len(body), 3):
                request.write(body[i:i + 3])
            request.finish()
            return server.NOT_DONE_YET
        return body


class Upper(LineOnlyReceiver):
    delimiter = b"\n"

    def lineReceived(self, line):
        self.sendLine(line.upper())


def settle(seconds=0.02):
    return deferLater(reactor, seconds, lambda: None)


class ConsoleClientMixin:
    """Console clients of an engine's ``debug`` listener (``self.engine``'s
    unless told), cleaned up."""

    @defer.inlineCallbacks
    def console(self, engine=None):
        port = (engine or self.engine).listeners["debug"].address[1]
        client = yield connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port),
                                       Collector())
        self.addCleanup(lambda: client.transport.loseConnection() or client.lost)
        return client

    @defer.inlineCallbacks
    def call(self, client, data, requestIds):
        """Write ``data``; the answers to ``requestIds``, in that order."""
        client.transport.write(data)
        while True:
            results = {r.get("requestId"): r for r in client.results()}
            if all(i in results for i in requestIds):
                return [results[i] for i in requestIds]
            yield client.waitDocs(len(client.docs) + 1)


class EngineTests(ConsoleClientMixin, unittest.TestCase):
    @defer.inlineCallbacks
    def setUp(self):
        site = server.Site(Pages())
        site.noisy = False
        self.web = reactor.listenTCP(0, site, interface="127.0.0.1")
        self.addCleanup(self.web.stopListening)
        self.lines = reactor.listenTCP(0, Factory.forProtocol(Upper), interface="127.0.0.1")
        self.addCleanup(self.lines.stopListening)
        self.webPort = self.web.getHost().port
        config = parse(CONFIG.format(web=self.webPort,
                                     lines=self.lines.getHost().port).encode())
        self.engine = Engine(config, reactor)
        self.engine.startService()
        self.addCleanup(self.engine.stopService)
        while any(c.state != "connected" for c in self.engine.channels.values()):
            yield settle()

    @defer.inlineCallbacks
    def test_seedRequestPage(self):
        """The seed page's exact call, with a local server in place of Google."""
        client = yield self.console()
        page = f"http://127.0.0.1:{self.webPort}/code".encode()
        [answer] = yield self.call(client, SEED_CALL % page, ["REQ-1"])
        self.assertEqual(answer.get("status"), "OK", answer.findtext("exception"))
        self.assertEqual(answer.get("name"), "TestDirectChannels-Google")
        self.assertEqual(answer.findtext("page"), page.decode())
        # An absolute address goes out in absolute form, as the server shows.
        self.assertEqual(answer.findtext("body"), "page " + page.decode())

    @defer.inlineCallbacks
    def test_twentyConcurrentPages(self):
        """Twenty calls in flight at once on four connections each get their own page."""
        clients = []
        for _ in range(4):
            clients.append((yield self.console()))
        calls = []
        for n in range(20):
            kind = "chunked" if n % 2 else "plain"
            page = f"/{kind}/{n}"
            calls.append(self.call(clients[n % 4], xmlcall(
                "TestDirectChannels", "testRequestPage", requestId=f"P{n}", page=page),
                [f"P{n}"]))
        answers = yield defer.gatherResults(calls)
        for n, [answer] in enumerate(answers):
            kind = "chunked" if n % 2 else "plain"
            self.assertEqual(answer.get("status"), "OK", answer.findtext("exception"))
            self.assertEqual(answer.findtext("body"), f"page /{kind}/{n}")

    @defer.inlineCallbacks
    def test_requestPageNoResponse(self):
        self.engine.registry.get("TestDirectChannels").timeout = 0.3
        yield self.engine.channels["google"].disconnect()
        client = yield self.console()
        [answer] = yield self.call(client, xmlcall(
            "TestDirectChannels", "testRequestPage", requestId="X", page="/nothing"), ["X"])
        self.assertEqual(answer.get("status"), "Exception")
        self.assertEqual(answer.findtext("exception"),
                         "No response from google page=/nothing")

    @defer.inlineCallbacks
    def test_topicsRequestThroughLineChannel(self):
        client = yield self.console()
        [answer] = yield self.call(client, xmlcall(
            "Topics", "request", requestId="T", **{"topic-out": "lines.req",
                                                   "topic-in": "lines.resp",
                                                   "message": "hello", "timeout": "5"}),
            ["T"])
        self.assertEqual(answer.get("status"), "OK", answer.findtext("exception"))
        self.assertEqual(answer.findtext("message"), "HELLO")

    @defer.inlineCallbacks
    def test_receiveTimeoutIsRoutine(self):
        """A receive that times out answers its plain message and logs no
        traceback; so does a refused receiveFixed size."""
        from twisted.logger import globalLogPublisher
        events = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        client = yield self.console()
        timedOut, tooLarge = yield self.call(client, b"".join([
            xmlcall("Media", "receive", requestId="R", channel="plain", timeout="0.1"),
            xmlcall("Media", "receiveFixed", requestId="F", channel="plain",
                    size=str(10 ** 9))]), ["R", "F"])
        self.assertEqual(timedOut.findtext("exception"),
                         "no message from channel plain within 0.1 s")
        self.assertIn("size must be at most", tooLarge.findtext("exception"))
        self.assertEqual([e for e in events if "log_failure" in e], [])

    @defer.inlineCallbacks
    def test_mediaConsole(self):
        client = yield self.console()
        listing, status, unknown = yield self.call(client, b"".join([
            xmlcall("Media", "listChannels", requestId="L"),
            xmlcall("Media", "status", requestId="S", channel="lines"),
            xmlcall("Media", "status", requestId="U", channel="nope"),
        ]), ["L", "S", "U"])
        self.assertEqual([c.get("name") for c in listing.findall("channel")],
                         ["google", "lines", "plain"])
        self.assertEqual({c.get("state") for c in listing.findall("channel")},
                         {"connected"})
        self.assertEqual(status.find("channel").get("port"),
                         str(self.lines.getHost().port))
        self.assertEqual(unknown.get("status"), "Exception")
        self.assertEqual(unknown.findtext("exception"), "Unable to find channel by name=nope; "
                         "known channels: google, lines, plain")

        sent, received = yield self.call(client, b"".join([
            xmlcall("Media", "send", requestId="1", channel="plain", message="abc"),
            xmlcall("Media", "receive", requestId="2", channel="plain", timeout="5"),
        ]), ["1", "2"])
        self.assertEqual(sent.get("status"), "OK")
        self.assertEqual(received.findtext("message"), "ABC")

        down, state = yield self.call(client, b"".join([
            xmlcall("Media", "disconnect", requestId="D", channel="plain"),
            xmlcall("Media", "status", requestId="S2", channel="plain"),
        ]), ["D", "S2"])
        self.assertEqual(state.find("channel").get("state"), "stopped")
        [up] = yield self.call(client, xmlcall("Media", "connect", requestId="C",
                                               channel="plain"), ["C"])
        self.assertEqual(up.get("status"), "OK")
        self.assertEqual(self.engine.channels["plain"].state, "connected")

    @defer.inlineCallbacks
    def test_listenersAndCounters(self):
        client = yield self.console()
        [answer] = yield self.call(client, xmlcall("Engine", "listeners", requestId="E"),
                                   ["E"])
        self.assertEqual(answer.get("status"), "OK", answer.findtext("exception"))
        [listener] = answer.findall("listener")
        self.assertEqual((listener.get("name"), listener.get("state")),
                         ("debug", "listening"))
        self.assertEqual(listener.get("port"),
                         str(self.engine.listeners["debug"].address[1]))
        self.assertEqual(listener.get("accepted"), "1")
        self.assertEqual(listener.get("requests"), "1")

    @defer.inlineCallbacks
    def test_receiveFixed(self):
        media = self.engine.media
        yield media.send("plain", "abcdef")
        data = yield media.receiveFixed("plain", 4, timeout=5)
        self.assertEqual(data, b"ABCD")
        data = yield media.receiveFixed("plain", 2, timeout=5)
        self.assertEqual(data, b"EF")


class MediaApiTests(unittest.TestCase):
    def test_statusCarriesAnyError(self):
        """A peer's words with control characters still make a valid element."""
        from aiengine.media import _channelElement
        element = _channelElement({"name": "c", "lastError": "bad\x00byte", "tls": False})
        self.assertEqual(element.get("lastError"), "bad\\x00byte")
        self.assertEqual(element.get("tls"), "false")

    def test_timeoutParameter(self):
        from aiengine.console.interfaces import CallError
        from aiengine.media import _timeout
        self.assertIsNone(_timeout(None))
        self.assertEqual(_timeout("0"), 0.0)
        self.assertEqual(_timeout("2.5"), 2.5)
        for bad in ("nan", "inf", "-1", "soon"):
            self.assertRaises(CallError, _timeout, bad)

    def test_unknownChannel(self):
        media = Media({})
        for call in (media.status("x"), media.send("x", "m"), media.receive("x"),
                     media.receiveFixed("x", 1), media.connect("x"),
                     media.disconnect("x")):
            failure = self.failureResultOf(call, UnknownChannel)
            self.assertEqual(str(failure.value),
                             "Unable to find channel by name=x; there are no channels")

    def test_listChannelsEmpty(self):
        self.assertEqual(self.successResultOf(Media({}).listChannels()), [])


class DefaultConsoleTests(unittest.TestCase):
    def test_consoleWhenNoneDeclared(self):
        """Without an xmlcall listener, twistd's engine (defaultConsole) still
        listens on 127.0.0.1:20001; an engine built in code only when asked."""
        engine = Engine(parse(b"<service/>"), reactor, defaultConsole=True)
        console = engine.listeners["console"]
        self.assertEqual((console.interface, console.port), ("127.0.0.1", 20001))
        self.assertEqual(list(engine.listeners), ["console"])
        self.assertEqual(list(Engine(parse(b"<service/>"), reactor).listeners), [])

    def test_consoleSwitchedOff(self):
        """An xmlcall listener with run="false" means no console at all."""
        config = CONFIG.format(web=1, lines=2).replace(
            '<listener name="debug">', '<listener name="debug" run="false">')
        engine = Engine(parse(config.encode()), reactor, defaultConsole=True)
        self.assertEqual(list(engine.listeners), [])

    def test_builtInCodeCheckedLikeMediaXml(self):
        """A configuration built in code meets media.xml's rules."""
        from aiengine.config import ListenerConfig, ProtocolConfig, ProtocolSettings
        text = ProtocolSettings("text-messages", delimiter=b"\n")
        protocol = ProtocolConfig("text-messages", text, text)
        for listener, message in [
                (ListenerConfig(name="l", port=1, protocol=protocol),
                 "listener 'l': direction duplex needs topic-in, topic-out or both"),
                (ListenerConfig(name="l", port=1, protocol=protocol, direction="in",
                                topic_in="t" * 300),
                 "listener 'l': property 'topic-in': a topic name has at most 256 "
                 "characters, not 300"),
                (ListenerConfig(name="l", port=1, protocol=protocol, topic_in="t",
                                auth=True),
                 "listener 'l': property 'auth.secret-file': missing required property "
                 "(auth is true)")]:
            error = self.assertRaises(ConfigError, Engine,
                                      ServiceConfig(path="code", listeners=(listener,)),
                                      reactor)
            self.assertEqual(str(error), message)
        twice = ListenerConfig(name="l", port=1, protocol=protocol, topic_in="t")
        error = self.assertRaises(ConfigError, Engine,
                                  ServiceConfig(path="code", listeners=(twice, twice)),
                                  reactor)
        self.assertEqual(str(error), "listener 'l': name already used by listener 'l'")

    @defer.inlineCallbacks
    def test_channelsStartInSlices(self):
        """Channels start a slice at a time after the listeners, and a stop
        that comes first stops what has started and the rest never starts."""
        config = parse(CONFIG.format(web=1, lines=2).encode())
        # On a MemoryReactorClock the slices run only when the test turns the
        # clock: "never starts" is then certain, not a matter of waiting long.
        clock = MemoryReactorClock()
        engine = Engine(config, clock)
        engine.startService()
        self.assertEqual({c.state for c in engine.channels.values()}, {"stopped"})
        yield engine.stopService()
        for _ in range(10):
            clock.advance(0)
        self.assertEqual({c.state for c in engine.channels.values()}, {"stopped"})
        self.assertEqual(clock.tcpClients, [])
        self.assertEqual(clock.getDelayedCalls(), [])
        self.assertIsNone(engine._starting)

    def test_badCertificateNamesFileAndLine(self):
        """A tls.ca file without a certificate is refused with media.xml's
        path and the channel's line."""
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        with open(os.path.join(directory, "ca.pem"), "w") as f:
            f.write("not a certificate\n")
        text = ("<service><directchannels>\n<channel name=\"c\">"
                "<property name=\"host\" value=\"127.0.0.1\"/>"
                "<property name=\"port\" value=\"1\"/>"
                "<property name=\"protocol\" value=\"text-messages\"/>"
                "<property name=\"tls\" value=\"true\"/>"
                "<property name=\"tls.ca\" value=\"ca.pem\"/>"
                "</channel></directchannels></service>")
        path = os.path.join(directory, "media.xml")
        error = self.assertRaises(ConfigError, Engine, parse(text.encode(), path), reactor)
        self.assertTrue(str(error).startswith(f"{path}:2: "), str(error))
        self.assertIn("tls.ca", str(error))

    def test_declaredConsoleReplacesDefault(self):
        engine = Engine(parse(CONFIG.format(web=1, lines=2).encode()), reactor)
        self.assertEqual(list(engine.listeners), ["debug"])
        self.assertEqual(sorted(engine.channels), ["google", "lines", "plain"])
