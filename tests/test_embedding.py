"""aiengine as a library: its public names, an engine configured in code, and
the test doubles of :mod:`aiengine.testing` (docs/embedding.md)."""

from lxml import etree
from twisted.internet import defer, reactor
from twisted.internet.protocol import Factory
from twisted.protocols.basic import LineReceiver
from twisted.trial import unittest

import aiengine
from aiengine.config import ChannelConfig, ListenerConfig, ProtocolConfig, ServiceConfig
from aiengine.console.interfaces import CallError, ConsoleClass, Param, method
from aiengine.testing import FakeEngine, lastAttempt, stopChannel


class Echo(LineReceiver):
    delimiter = b"\n"

    def lineReceived(self, line):
        self.sendLine(b"echo " + line)


class PublicNamesTests(unittest.TestCase):
    """``from aiengine import ...`` gives the documented names."""

    def test_everyNameInAllResolves(self):
        from aiengine import broker, config, engine
        expected = {"Engine": engine.Engine, "Broker": broker.Broker,
                    "Message": broker.Message, "load": config.load,
                    "parse": config.parse, "ConfigError": config.ConfigError}
        for name, value in expected.items():
            self.assertIs(getattr(aiengine, name), value)
        self.assertEqual(set(aiengine.__all__), set(expected) | {"__version__"})

    def test_unknownNameIsAnAttributeError(self):
        self.assertRaises(AttributeError, getattr, aiengine, "Chanel")


def channelConfig(port, **kw):
    settings = dict(name="up", host="127.0.0.1", port=port,
                    protocol=ProtocolConfig.of("text-messages"), redirect_in=True,
                    redirect_out=True, topic_in="up.in", topic_out="up.out")
    settings.update(kw)
    return ChannelConfig(**settings)


class EngineInCodeTests(unittest.TestCase):
    """An Engine built from dataclasses, on real loopback sockets."""

    def setUp(self):
        self.server = reactor.listenTCP(0, Factory.forProtocol(Echo),
                                        interface="127.0.0.1")
        self.addCleanup(self.server.stopListening)

    def start(self, config):
        engine = aiengine.Engine(config, reactor)
        engine.startService()
        self.addCleanup(engine.stopService)
        return engine

    @defer.inlineCallbacks
    def test_channelAndListenerRouteManyMessages(self):
        # A listener's clients publish on "up.out"; the channel writes them to
        # the echo server, whose answers come back on "up.in".
        port = self.server.getHost().port
        listener = ListenerConfig(name="in", port=0, direction="in",
                                  protocol=ProtocolConfig.of("text-messages"),
                                  topic_in="up.out")
        engine = self.start(ServiceConfig(path="<code>", listeners=(listener,),
                                          channels=(channelConfig(port),)))
        answers = []
        allIn = defer.Deferred()

        def collect(message):
            answers.append(message.body)
            if len(answers) == 200:
                allIn.callback(None)

        engine.broker.subscribe("up.in", collect, name="test")
        yield engine.channels["up"].connect()
        host, listenPort = engine.listeners["in"].address

        class Client(LineReceiver):
            delimiter = b"\n"

        from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
        clients = yield defer.gatherResults([
            connectProtocol(TCP4ClientEndpoint(reactor, host, listenPort), Client())
            for _ in range(4)])
        for n, client in enumerate(clients):
            client.transport.write(b"".join(b"c%d-%d\n" % (n, i) for i in range(50)))
        timeout = reactor.callLater(10, allIn.cancel)
        yield allIn
        timeout.cancel()
        for client in clients:
            client.transport.loseConnection()
        for n in range(4):
            # Each client's lines arrive in its order.
            mine = [a for a in answers if a.startswith(b"echo c%d-" % n)]
            self.assertEqual(mine, [b"echo c%d-%d" % (n, i) for i in range(50)])

    def test_badConfigurationInCodeIsRefused(self):
        # The same checks as media.xml: redirect-in needs a topic-in.
        config = ServiceConfig(path="<code>", channels=(
            channelConfig(1, topic_in=None),))
        e = self.assertRaises(aiengine.ConfigError, aiengine.Engine, config, reactor)
        self.assertIn("redirect-in is true", str(e))
        self.assertEqual(e.prop, "topic-in")

    def test_protocolConfigOf(self):
        protocol = ProtocolConfig.of("text-messages", delimiter=b"\r\n")
        self.assertIs(protocol.inbound, protocol.outbound)
        self.assertEqual((protocol.name, protocol.inbound.delimiter, protocol.asymmetric),
                         ("text-messages", b"\r\n", False))


class FakeEngineTests(unittest.TestCase):
    """The test doubles, as an embedding program's tests would use them."""

    def setUp(self):
        self.engine = FakeEngine()
        self.addCleanup(self.engine.close)

    def test_callAnswersLikeTheConsole(self):
        result = self.successResultOf(self.engine.call("Engine", "ping"))
        self.assertEqual((result.tag, result.get("requestId"), result.get("status")),
                         ("xmlcallresult", "T1", "OK"))

    def test_unknownMethodAnswersAnException(self):
        result = self.successResultOf(self.engine.call("Engine", "nosuch"))
        self.assertEqual(result.get("status"), "Exception")
        self.assertIn("has no method 'nosuch'", result.findtext("exception"))

    def test_subscribersGetWhatIsPublished(self):
        self.successResultOf(self.engine.call("Topics", "subscribe", topic="news"))
        seen = []
        self.engine.broker.subscribe("news", seen.append, name="second")
        for n in range(3):
            self.successResultOf(self.engine.call("Topics", "publish", topic="news",
                                                  message=f"item {n}"))
        self.assertEqual([m.body for m in seen], [b"item 0", b"item 1", b"item 2"])
        self.assertEqual([(e.get("topic"), e.text) for e in self.engine.events()],
                         [("news", f"item {n}") for n in range(3)])

    def test_channelThroughTheMediaClass(self):
        channel = self.engine.addChannel(channelConfig(4000, redirect_in=False,
                                                       redirect_out=False,
                                                       topic_in=None, topic_out=None))
        self.addCleanup(stopChannel, channel)
        server = lastAttempt(self.engine.reactor, channel=channel).accept()
        self.successResultOf(self.engine.call("Media", "send", channel="up",
                                              message="hello"))
        self.assertEqual(server.received(), b"hello\n")
        answer = self.engine.call("Media", "receive", channel="up", timeout="5")
        self.assertNoResult(answer)
        server.send(b"world\n")
        self.assertIn("world", "".join(self.successResultOf(answer).itertext()))
        # Sizes follow Channel.receiveFixed's rules, from the console too.
        empty = self.successResultOf(self.engine.call("Media", "receiveFixed",
                                                      channel="up", size="0"))
        self.assertEqual((empty.get("status"), empty.findtext("data")), ("OK", ""))
        for size, error in (("-1", "size must not be negative (-1)"),
                            ("x", "size must be a whole number, not 'x'")):
            refused = self.successResultOf(self.engine.call(
                "Media", "receiveFixed", channel="up", size=size))
            self.assertEqual(refused.findtext("exception"), error)
        # A refused attempt, then the retry the channel schedules itself.
        server.close()
        self.assertEqual(channel.state, "waiting")
        self.engine.reactor.advance(channel.config.reconnection_timeout * 2)
        lastAttempt(self.engine.reactor, channel=channel).refuse()
        self.assertEqual(channel.status()["failures"], 1)


# The examples of docs/embedding.md and docs/console.md, as written there.

class Clock(ConsoleClass):
    """Console class ``Clock``: the daemon's idea of the time."""

    name = "Clock"
    description = "Time on the daemon."

    @method("Seconds since the epoch.", Param("digits", "Decimals to keep.", default="0"))
    def now(self, call):
        try:
            digits = int(call.params["digits"])
        except ValueError:
            raise CallError("digits must be a whole number")
        element = etree.Element("now")
        element.text = f"{call.engine.reactor.seconds():.{digits}f}"
        return element


class DocExampleTests(unittest.TestCase):
    """docs/embedding.md's tests, run as written."""

    def setUp(self):
        self.engine = FakeEngine()
        self.engine.registry.register(Clock())
        self.addCleanup(self.engine.close)

    def test_now(self):
        self.engine.reactor.advance(12.5)
        result = self.successResultOf(self.engine.call("Clock", "now", digits="1"))
        self.assertEqual(result.get("status"), "OK")
        self.assertEqual(result.findtext("now"), "12.5")

    def test_badDigits(self):
        result = self.successResultOf(self.engine.call("Clock", "now", digits="x"))
        self.assertEqual(result.get("status"), "Exception")
        self.assertEqual(result.findtext("exception"), "digits must be a whole number")

    def test_subscribersSeeEveryMessage(self):
        seen = []
        self.engine.broker.subscribe("news", seen.append, name="mine")
        self.successResultOf(self.engine.call("Topics", "subscribe", topic="news"))
        self.engine.broker.publish("news", "item 1")
        self.assertEqual([m.text for m in seen], ["item 1"])
        self.assertEqual([e.text for e in self.engine.events()], ["item 1"])

    def test_channelRetriesThenDelivers(self):
        config = ChannelConfig(name="backend", host="127.0.0.1", port=9000,
                               protocol=ProtocolConfig.of("text-messages"),
                               reconnection_timeout=5.0)
        channel = self.engine.addChannel(config)
        self.addCleanup(stopChannel, channel)
        lastAttempt(self.engine.reactor, channel=channel).refuse()
        channel.send(b"queued while down")
        self.engine.reactor.advance(10)
        server = lastAttempt(self.engine.reactor, channel=channel).accept()
        self.assertEqual(server.received(), b"queued while down\n")
        self.assertEqual(channel.status()["failures"], 1)
