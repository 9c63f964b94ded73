"""Files and calls written for the original server: its property spellings
(docs/configuration.md, "The original's spellings") and its test classes
TestEngineThreads and TestDirectChannels, as its deploy files call them
(docs/migrating.md)."""

import threading

from twisted.logger import globalLogPublisher
from twisted.trial.unittest import TestCase

from aiengine.config import ChannelConfig, ProtocolConfig, parse
from aiengine.testing import FakeEngine
from tests.test_config import (CHANNEL, LISTENER, Helpers, channelDoc, document,
                               edit, element, lineOf, listenerDoc)

#: trunk/HLAv2 (SocketProtocol::create, the MediaProtocols wiki page) wrote
#: these without the protocol. prefix
UNPREFIXED = [("max-packet-size", "123"), ("max-read-size", "77"),
              ("wait-time-sec", "2.5")]

#: the early trunk/aiengine/etc/media.xml
EARLY = """<service>
	<listeners>
		<listener name="debug" type="tcp" direction="duplex" auth = "false">
			<property name="port" value="20001"/> 
			<property name="msgtype" value="xmlcall"/> 
			<property name="topic.in" value="debug.commands.in"/> 
			<property name="topic.out" value="debug.commands.out"/> 
		</listener>
	</listeners>
</service>
"""

#: EARLY as docs/migrating.md says to write it
EARLY_MIGRATED = """<service>
	<listeners>
		<listener name="debug">
			<property name="direction" value="duplex"/>
			<property name="auth" value="false"/>
			<property name="port" value="20001"/>
			<property name="msgtype" value="xmlcall"/>
			<property name="topic-in" value="debug.commands.in"/>
			<property name="topic-out" value="debug.commands.out"/>
		</listener>
	</listeners>
</service>
"""

ASYMMETRIC = edit(CHANNEL, protocol="asymmetric", protocol_inbound="xml-messages",
                  protocol_outbound="text-messages")


def withoutLines(config):
    """``config``'s listeners and channels, their line numbers left out."""
    return [item.__class__(**{**{f: getattr(item, f) for f in item.__dataclass_fields__},
                              "line": None})
            for item in config.listeners + config.channels]


class AliasTests(Helpers, TestCase):
    """Each other spelling reads as the property it stands for."""

    def assertSameConfig(self, old, new):
        """Documents ``old`` and ``new`` give the same configuration."""
        self.assertEqual(withoutLines(parse(old.encode())), withoutLines(parse(new.encode())))

    def test_unprefixedProtocolSettings(self):
        for kind, base, doc in (("channel", CHANNEL, channelDoc),
                                ("listener", LISTENER, listenerDoc)):
            for name, value in UNPREFIXED:
                self.assertSameConfig(doc(base + [(name, value)]),
                                      doc(base + [("protocol." + name, value)]))
            # all three at once, and the value really is read
            config = parse(doc(base + UNPREFIXED).encode())
            settings = (config.channels or config.listeners)[0].protocol.inbound
            self.assertEqual((settings.max_packet_size, settings.max_read_size,
                              settings.wait_time_sec), (123, 77, 2.5), kind)

    def test_unprefixedValuesChecked(self):
        text = channelDoc(CHANNEL + [("max-packet-size", "0")])
        self.assertPropertyError(text, "channel 'c'", "max-packet-size",
                                 "must be at least 1, got 0")

    def test_bothSpellingsRefused(self):
        for old, new, base, value in [
                ("max-packet-size", "protocol.max-packet-size", CHANNEL, "5"),
                ("max-read-size", "protocol.max-read-size", CHANNEL, "5"),
                ("wait-time-sec", "protocol.wait-time-sec", CHANNEL, "5"),
                ("reconnectionTimeoutSec", "reconnectionTimeout", CHANNEL, "3"),
                ("protocol.inbound", "protocol-inbound", ASYMMETRIC, "xml-messages"),
                ("protocol.outbound.delimiter", "protocol-outbound.delimiter",
                 ASYMMETRIC, ";"),
                ("protocol.inbound.showmessages", "protocol-inbound.showmessages",
                 ASYMMETRIC, "true")]:
            for first, second in ((old, new), (new, old)):
                text = channelDoc(edit(base, drop=(first, second))
                                  + [(first, value), (second, value)])
                line = lineOf(text, f'name="{first}"')
                self.assertPropertyError(
                    text, "channel 'c'", second, f"given together with '{first}' "
                    f"(line {line}), which is the same setting")

    def test_unprefixedWithAsymmetricRefused(self):
        """The original applied them to both directions; here each direction
        has its own: the message says what to write."""
        for name, value in UNPREFIXED:
            self.assertPropertyError(
                channelDoc(ASYMMETRIC + [(name, value)]), "channel 'c'", name,
                "with protocol asymmetric, settings go under protocol-inbound.* and "
                f"protocol-outbound.*: write protocol-inbound.{name}, "
                f"protocol-outbound.{name} or both")

    def test_hlav3AsymmetricSides(self):
        """trunk_HLAv3 named the sides protocol.inbound and protocol.outbound."""
        old = edit(CHANNEL, protocol="asymmetric", protocol__inbound="xml-messages",
                   protocol__outbound="text-messages",
                   protocol__inbound__showmessages="true",
                   protocol__inbound__max_packet_size="99",
                   protocol__outbound__delimiter="\\r\\n",
                   protocol__outbound__showpackets="true")
        new = [(name.replace("protocol.inbound", "protocol-inbound")
                .replace("protocol.outbound", "protocol-outbound"), value)
               for name, value in old]
        self.assertNotEqual(old, new)
        self.assertSameConfig(channelDoc(old), channelDoc(new))
        protocol = parse(channelDoc(old).encode()).channels[0].protocol
        self.assertEqual((protocol.inbound.name, protocol.inbound.show_messages,
                          protocol.inbound.max_packet_size, protocol.outbound.delimiter,
                          protocol.outbound.show_packets),
                         ("xml-messages", True, 99, b"\r\n", True))
        sides = [(n, v) for n, v in old if n.startswith("protocol.")]
        self.assertSameConfig(
            listenerDoc(edit(LISTENER, protocol="asymmetric") + sides),
            listenerDoc(edit(LISTENER, protocol="asymmetric")
                        + [(n, v) for n, v in new if n.startswith("protocol-")]))

    def test_hlav3SidesNamedInErrors(self):
        """An error about an alias names the spelling the file used."""
        self.assertPropertyError(
            channelDoc(CHANNEL + [("protocol.inbound", "xml-messages")]), "channel 'c'",
            "protocol.inbound", "only used with protocol asymmetric (protocol is "
            "text-messages)")
        text = channelDoc(edit(CHANNEL, protocol="asymmetric",
                               protocol__inbound="http",
                               protocol__outbound="text-messages"))
        self.assertPropertyError(
            text, "channel 'c'", "protocol.inbound",
            "http cannot be one direction of an asymmetric protocol")

    def test_hlav3RedirectTopics(self):
        """redirect-in-topic gave the topic and switched redirect-in on."""
        self.assertSameConfig(
            channelDoc(CHANNEL + [("redirect-in-topic", "web.page"),
                                  ("redirect-out-topic", "web.get")]),
            channelDoc(CHANNEL + [("redirect-in", "true"), ("topic-in", "web.page"),
                                  ("redirect-out", "true"), ("topic-out", "web.get")]))
        channel = parse(channelDoc(CHANNEL + [("redirect-out-topic", "t")]).encode()
                        ).channels[0]
        self.assertEqual((channel.redirect_in, channel.topic_in, channel.redirect_out,
                          channel.topic_out), (False, None, True, "t"))

    def test_hlav3RedirectTopicConflicts(self):
        for other in ("topic-in", "redirect-in"):
            value = "true" if other == "redirect-in" else "x"
            for first, second in ((other, "redirect-in-topic"),
                                  ("redirect-in-topic", other)):
                text = channelDoc(CHANNEL + [(first, value if first == other else "y"),
                                             (second, value if second == other else "y")])
                line = lineOf(text, f'name="{first}"')
                self.assertPropertyError(
                    text, "channel 'c'", second,
                    f"given together with '{first}' (line {line}); redirect-in-topic "
                    "sets both redirect-in and topic-in: give redirect-in-topic alone, "
                    "or redirect-in and topic-in")

    def test_hlav3RedirectTopicChecked(self):
        self.assertPropertyError(
            channelDoc(CHANNEL + [("redirect-out-topic", " ")]), "channel 'c'",
            "redirect-out-topic",
            "must not be empty (leave redirect-out-topic out for no redirection)")
        self.assertPropertyError(
            channelDoc(CHANNEL + [("redirect-in-topic", "t" * 300)]), "channel 'c'",
            "redirect-in-topic", "a topic name has at most 256 characters, not 300")
        self.assertPropertyError(
            listenerDoc(LISTENER + [("redirect-in-topic", "t")]), "listener 'l'",
            "redirect-in-topic", "unknown property; only a channel has it")

    def test_typoSuggestsAnAlias(self):
        self.assertPropertyError(
            channelDoc(CHANNEL + [("max-packet-sise", "1")]), "channel 'c'",
            "max-packet-sise", "unknown property; did you mean 'max-packet-size'?")


class RefusedSpellingTests(Helpers, TestCase):
    """Names of the original that do not map onto ours say what to write."""

    def test_connectionMode(self):
        for value, message in [
                ("permanent", "the original's connection mode: write permanent=true "
                              "(connect at start-up, reconnect when dropped) instead"),
                ("single", "the original's connection mode: write permanent=false "
                           "(connect when there is something to send) instead"),
                ("multiple", "connection=multiple (a connection per address) has no "
                             "equivalent: declare one channel per server, each with "
                             "permanent=true or false"),
                ("other", "the original's connection mode (single, permanent or "
                          "multiple): write permanent=true or permanent=false instead")]:
            self.assertPropertyError(channelDoc(CHANNEL + [("connection", value)]),
                                     "channel 'c'", "connection", message)

    def test_sessionMode(self):
        self.assertPropertyError(
            channelDoc(CHANNEL + [("session", "request-response")]), "channel 'c'",
            "session", "the original's session mode has no equivalent here: remove it "
            "(to pair each reply with its request on a server that answers in order, "
            "use replies=ordered)")

    def test_earlyTopicSpelling(self):
        for kind, doc, base in (("listener", listenerDoc, edit(LISTENER,
                                                                drop=("topic-in",))),
                                ("channel", channelDoc, CHANNEL)):
            self.assertPropertyError(
                doc(base + [("topic.in", "debug.commands.in")]), f"{kind} "
                f"'{kind[0]}'", "topic.in", "the early layout's spelling of topic-in: "
                'write <property name="topic-in" value="debug.commands.in"/> instead')

    def test_earlyLayout(self):
        """The early listener attributes: one message says what to write for all."""
        error = self.parseError(EARLY)
        self.assertEqual(
            str(error), "media.xml:3: listener 'debug': attributes type, direction and "
            "auth of the early layout: remove type=\"tcp\" (every listener and channel "
            'is TCP); write <property name="direction" value="duplex"/> and '
            '<property name="auth" value="false"/> instead')
        # With the attributes fixed, topic.in is next.
        fixed = EARLY.replace(' type="tcp" direction="duplex" auth = "false"', "")
        self.assertPropertyError(
            fixed, "listener 'debug'", "topic.in", "the early layout's spelling of "
            'topic-in: write <property name="topic-in" value="debug.commands.in"/> '
            "instead")
        one = document(listeners=[element("listener", "l", LISTENER,
                                          ' name="l" direction="in"')])
        self.assertEqual(str(self.parseError(one)),
                         f"media.xml:{lineOf(one, '<listener ')}: listener 'l': attribute "
                         "direction of the early layout: write "
                         '<property name="direction" value="in"/> instead')

    def test_earlyLayoutMigrated(self):
        [debug] = parse(EARLY_MIGRATED.encode()).listeners
        self.assertEqual((debug.port, debug.msgtype, debug.direction, debug.auth,
                          debug.topic_in, debug.topic_out, debug.protocol.name),
                         (20001, "xmlcall", "duplex", False, "debug.commands.in",
                          "debug.commands.out", "xml-messages"))


class ThreadCallTests(TestCase):
    """TestEngineThreads as the original's deploy files call it."""

    def setUp(self):
        self.engine = FakeEngine()
        self.addCleanup(self.engine.close)
        # A thread of our own, waiting in a function with a telling name.
        self.stop = threading.Event()

        def parkedWorkerForTheTest():
            self.stop.wait(30)

        self.worker = threading.Thread(target=parkedWorkerForTheTest,
                                       name="test-worker", daemon=True)
        self.worker.start()
        self.addCleanup(self.worker.join)
        self.addCleanup(self.stop.set)
        self.events = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)

    def call(self, method, **params):
        return self.successResultOf(self.engine.call("TestEngineThreads", method,
                                                     **params))

    def threads(self, answer):
        self.assertEqual(answer.get("status"), "OK", answer.findtext("exception"))
        return {t.get("name"): t for t in answer.findall("thread")}

    def test_threadDumpWithoutStacks(self):
        for params in ({}, {"showStack": "false"}, {"showStack": " FALSE "}):
            threads = self.threads(self.call("testThreadDump", **params))
            self.assertEqual(set(threads), {t.name for t in threading.enumerate()})
            worker = threads["test-worker"]
            self.assertEqual((worker.get("id"), worker.get("daemon")),
                             (str(self.worker.ident), "true"))
            self.assertEqual(threads["MainThread"].get("daemon"), "false")
            self.assertEqual([t.text for t in threads.values()],
                             [None] * len(threads), params)
        logged = [e for e in self.events if e.get("name") == "test-worker"]
        self.assertEqual([e.get("stack") for e in logged], [None] * 3)

    def test_threadDumpWithStacks(self):
        threads = self.threads(self.call("testThreadDump", showStack="true"))
        self.assertIn("parkedWorkerForTheTest", threads["test-worker"].text)
        # The calling thread's own stack ends in the console method.
        self.assertIn("testThreadDump", threads["MainThread"].text)
        [logged] = [e for e in self.events if e.get("name") == "test-worker"]
        self.assertIn("parkedWorkerForTheTest", logged["stack"])

    def test_showStackMustBeBoolean(self):
        answer = self.call("testThreadDump", showStack="yes")
        self.assertEqual(answer.get("status"), "Exception")
        self.assertEqual(answer.findtext("exception"),
                         "parameter 'showStack': expected true or false, got 'yes'")

    def test_showThread(self):
        threads = self.threads(self.call("testShowThread", threadName="test-worker",
                                         showStack="true"))
        self.assertEqual(list(threads), ["test-worker"])
        self.assertIn("parkedWorkerForTheTest", threads["test-worker"].text)
        threads = self.threads(self.call("testShowThread", threadName="test-worker"))
        self.assertIsNone(threads["test-worker"].text)

    def test_showThreadMain(self):
        """The original's deploy file asks for 'main': the reactor's thread."""
        for name in ("main", "MainThread"):
            threads = self.threads(self.call("testShowThread", threadName=name,
                                             showStack="false"))
            self.assertEqual(list(threads), ["MainThread"])

    def test_showUnknownThread(self):
        answer = self.call("testShowThread", threadName="nope", showStack="true")
        self.assertEqual(answer.get("status"), "Exception")
        known = ", ".join(sorted({t.name for t in threading.enumerate()}))
        self.assertEqual(answer.findtext("exception"),
                         f"Unknown thread name=nope; the threads are: {known}")


def httpChannel(name, topicOut="http.request"):
    return ChannelConfig(name=name, host="127.0.0.1", port=8080,
                         protocol=ProtocolConfig.of("http"), redirect_in=True,
                         redirect_out=True, topic_in="http.response",
                         topic_out=topicOut)


class RequestPageTests(TestCase):
    """TestDirectChannels.testRequestPage names the channel it used."""

    def setUp(self):
        # A fake reactor: no connection attempt is ever answered.
        self.engine = FakeEngine()
        self.addCleanup(self.engine.close)

    def noResponse(self, page="/x"):
        d = self.engine.call("TestDirectChannels", "testRequestPage", page=page)
        self.engine.reactor.advance(5)
        answer = self.successResultOf(d)
        self.assertEqual(answer.get("status"), "Exception")
        return answer.findtext("exception")

    def test_namesTheChannel(self):
        self.engine.addChannel(httpChannel("web"))
        self.engine.addChannel(httpChannel("other", topicOut="elsewhere"))
        self.assertEqual(self.noResponse(), "No response from web page=/x")

    def test_namesEveryChannelItReached(self):
        self.engine.addChannel(httpChannel("web"))
        self.engine.addChannel(httpChannel("backup"))
        self.assertEqual(self.noResponse(), "No response from web, backup page=/x")

    def test_noChannel(self):
        self.assertEqual(self.noResponse(), "No response from any channel page=/x: "
                         "nothing subscribes to http.request: the request reached "
                         "no one")
