"""The console's topic-in and topic-out (issue 9): watching the console's
traffic, and calls made through the broker, end to end on loopback."""

from __future__ import annotations

import os

from lxml import etree
from twisted.internet import defer, reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.trial import unittest

from aiengine.config import ConfigError, parse
from aiengine.engine import Engine
from tests.support import waitFor
from tests.test_console import Collector, xmlcall
from tests.test_media import ConsoleClientMixin

CALLS_IN, CALLS_OUT = "debug.commands.in", "debug.commands.out"


def console(auth=""):
    return f"""
    <listener name="debug">
      <property name="port" value="0"/>
      <property name="protocol" value="text-messages"/>
      <property name="protocol.delimiter" value="\\1"/>
      <property name="msgtype" value="xmlcall"/>
      <property name="topic-in" value="{CALLS_IN}"/>
      <property name="topic-out" value="{CALLS_OUT}"/>{auth}
    </listener>"""


#: connections here send calls to the console's topic-in and read the
#: answers for them from its topic-out
HUB = f"""
    <listener name="hub">
      <property name="port" value="0"/>
      <property name="protocol" value="text-messages"/>
      <property name="protocol.delimiter" value="\\1"/>
      <property name="topic-in" value="{CALLS_IN}"/>
      <property name="topic-out" value="{CALLS_OUT}"/>
    </listener>"""


def body(message):
    return etree.fromstring(message.body)


class TopicsTestCase(ConsoleClientMixin, unittest.TestCase):
    timeout = 30

    def startEngine(self, listeners):
        text = f"<service><listeners>{listeners}</listeners></service>"
        self.engine = Engine(parse(text.encode(), os.path.join(self.mktemp(), "m.xml")),
                             reactor)
        self.engine.startService()
        self.addCleanup(self.engine.stopService)
        self.topics = self.engine.listeners["debug"].factory.topics

    def watch(self, topic):
        """Every message published on ``topic`` from now on."""
        seen = []
        subscription = self.engine.broker.subscribe(topic, seen.append, name="watcher")
        self.addCleanup(subscription.cancel)
        return seen

    @defer.inlineCallbacks
    def hubClient(self):
        port = self.engine.listeners["hub"].address[1]
        client = yield connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port),
                                       Collector())
        self.addCleanup(lambda: client.transport.loseConnection() or client.lost)
        return client


class WatchTests(TopicsTestCase):
    """Calls made at console connections, and their answers, seen on the topics."""

    @defer.inlineCallbacks
    def test_everyCallAndAnswerMirrored(self):
        self.startEngine(console())
        calls, answers = self.watch(CALLS_IN), self.watch(CALLS_OUT)
        clients = []
        for _ in range(3):
            clients.append((yield self.console()))
        tags = {}
        requests = []
        for c, client in enumerate(clients):
            ids = [f"{c}-{i}" for i in range(5)]
            tags[client] = ids
            requests.append(self.call(client, b"\x01".join(
                xmlcall("Engine", "ping", i) for i in ids) + b"\x01", ids))
        results = yield defer.gatherResults(requests)
        for answered in results:
            self.assertEqual([r.get("status") for r in answered], ["OK"] * 5)
        self.assertEqual(len(calls), 15)
        self.assertEqual(len(answers), 15)
        callsById = {m.id: m for m in calls}
        for answer in answers:
            request = callsById[answer.inReplyTo]
            # the answer's copy names its call, and both carry the connection
            self.assertEqual(answer.session, request.session)
            self.assertTrue(request.session.startswith("debug."))
            self.assertEqual(body(answer).get("requestId"),
                             body(request).get("requestId"))
            self.assertEqual(body(answer).find("pong").tag, "pong")
        # a connection's calls are executed once: no answers from topic-in
        self.assertEqual(self.topics.calls, 0)

    @defer.inlineCallbacks
    def test_consoleWatcherSeesTraffic(self):
        """A person at another console subscribes to both topics."""
        self.startEngine(console())
        watcher = yield self.console()
        caller = yield self.console()
        yield self.call(watcher, xmlcall("Topics", "subscribe", "s1", topic=CALLS_IN)
                        + xmlcall("Topics", "subscribe", "s2", topic=CALLS_OUT),
                        ["s1", "s2"])
        # the watcher's own second subscribe call and its answer were seen
        yield waitFor(lambda: len(watcher.docs) >= 4, what="the watcher's own call")
        before = len(watcher.docs)
        yield self.call(caller, xmlcall("Engine", "version", "v1"), ["v1"])
        yield waitFor(lambda: len(watcher.docs) >= before + 2, what="two events")
        events = watcher.docs[before:]
        self.assertEqual([e.tag for e in events], ["xmlevent"] * 2)
        self.assertEqual([e.get("topic") for e in events], [CALLS_IN, CALLS_OUT])
        self.assertEqual(events[1].get("in-reply-to"), events[0].get("id"))
        self.assertIn('requestId="v1"', events[0].text)
        self.assertIn('status="OK"', events[1].text)

    @defer.inlineCallbacks
    def test_unwatchedNothingPublished(self):
        self.startEngine(console())
        client = yield self.console()
        yield self.call(client, xmlcall("Engine", "ping", "p"), ["p"])
        broker = self.engine.broker
        self.assertEqual(broker.topic(CALLS_IN).published, 0)
        self.assertEqual(broker.topic(CALLS_OUT).published, 0)
        self.assertEqual(broker.unrouted, 0)


class TopicCallTests(TopicsTestCase):
    """xmlcalls published on topic-in by others are executed and answered."""

    @defer.inlineCallbacks
    def test_listenerConnectionsGetTheirOwnAnswers(self):
        self.startEngine(console() + HUB)
        clients = []
        for _ in range(5):
            clients.append((yield self.hubClient()))
        for c, client in enumerate(clients):
            client.transport.write(b"".join(
                xmlcall("Engine", "ping", f"{c}-{i}") + b"\x01" for i in range(4)))
        yield defer.gatherResults([client.waitDocs(4) for client in clients])
        # a little longer: an answer that went to the wrong connection would show
        yield waitFor(lambda: self.topics.calls == 20, what="20 calls")
        for c, client in enumerate(clients):
            self.assertEqual(sorted(d.get("requestId") for d in client.docs),
                             [f"{c}-{i}" for i in range(4)])
            self.assertTrue(all(d.get("status") == "OK" for d in client.docs))
        self.assertEqual(self.topics.errors, 0)

    @defer.inlineCallbacks
    def test_notACallGetsAnException(self):
        self.startEngine(console() + HUB)
        client = yield self.hubClient()
        client.transport.write(b"hello\x01<order id='1'/>\x01")
        first, second = yield client.waitDocs(2)
        self.assertEqual(first.get("status"), "Exception")
        self.assertIn("malformed request", first.findtext("exception"))
        self.assertEqual(second.findtext("exception"),
                         "expected an <xmlcall> document, got <order>")
        self.assertEqual(self.topics.errors, 2)

    @defer.inlineCallbacks
    def test_unknownMethodAndSubscribeAnswered(self):
        self.startEngine(console() + HUB)
        client = yield self.hubClient()
        client.transport.write(xmlcall("Engine", "nothing", "n") + b"\x01"
                               + xmlcall("Topics", "subscribe", "s", topic="x") + b"\x01")
        docs = yield client.waitDocs(2)
        answers = {d.get("requestId"): d.findtext("exception") for d in docs}
        self.assertIn("nothing", answers["n"])
        self.assertIn("a call read from topic-in has none", answers["s"])
        self.assertNotIn("x", [t.name for t in self.engine.broker.topics()
                               if t.subscriptions])

    @defer.inlineCallbacks
    def test_topicsRequestFromConsoles(self):
        """Topics.request at several consoles: each gets its own call's answer."""
        self.startEngine(console())
        clients = []
        for _ in range(4):
            clients.append((yield self.console()))
        calls = []
        for c, client in enumerate(clients):
            inner = xmlcall("Engine", "version", f"inner-{c}").decode()
            calls.append(self.call(client, xmlcall(
                "Topics", "request", f"r{c}", topic_out=CALLS_IN, topic_in=CALLS_OUT,
                message=inner, timeout="5"), [f"r{c}"]))
        results = yield defer.gatherResults(calls)
        for c, [result] in enumerate(results):
            self.assertEqual(result.get("status"), "OK", result.findtext("exception"))
            answer = etree.fromstring(result.findtext("message").encode())
            self.assertEqual(answer.get("requestId"), f"inner-{c}")
            self.assertEqual(answer.get("status"), "OK")
        self.assertEqual(self.topics.calls, 4)

    def test_repliesOnTopicInNotAnswered(self):
        self.startEngine(console())
        answers = self.watch(CALLS_OUT)
        self.engine.broker.publish(CALLS_IN, b'<xmlcallresult status="OK"/>',
                                   attributes={"in-reply-to": "x-1"})
        self.assertEqual(answers, [])
        self.assertEqual(self.topics.ignored, 1)

    @defer.inlineCallbacks
    def test_stopCancelsRunningCalls(self):
        self.startEngine(console())
        answers = self.watch(CALLS_OUT)
        calls = self.watch(CALLS_IN)
        # "nowhere.out" has no subscriber: the request fails at once
        self.engine.broker.publish(CALLS_IN, xmlcall(
            "Topics", "request", "w", topic_out="nowhere.out", topic_in="nowhere.in",
            message="m", timeout="30"))
        # every subscriber sees the call before its answer is published
        self.assertEqual((len(calls), answers), (1, []))
        yield waitFor(lambda: answers, what="the first answer")
        self.assertIn("reached no one", body(answers[0]).findtext("exception"))
        # a request that waits: no reply comes on slow.in
        self.watch("slow.out")
        self.engine.broker.publish(CALLS_IN, xmlcall(
            "Topics", "request", "w2", topic_out="slow.out", topic_in="slow.in",
            message="m", timeout="30"))
        yield waitFor(lambda: self.engine.broker.topic("slow.in").waiting,
                      what="the request waiting")
        # and one not started yet
        self.engine.broker.publish(CALLS_IN, xmlcall("Engine", "ping", "w3"))
        self.engine.listeners["debug"].factory.stopFactory()
        self.assertEqual(
            {body(a).get("requestId"): body(a).findtext("exception") for a in answers[1:]},
            {"w2": "cancelled: the console stopped",
             "w3": "cancelled: the console stopped"})


class AuthTests(TopicsTestCase):
    """A console with a secret runs topic calls only from its logged-in
    connections and from the process itself."""

    def setUp(self):
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        self.secretFile = os.path.join(directory, "secret")
        with open(self.secretFile, "w") as f:
            f.write("s3cret")
        self.startEngine(console(f"""
      <property name="auth" value="true"/>
      <property name="auth.secret-file" value="{self.secretFile}"/>""") + HUB)

    @defer.inlineCallbacks
    def test_listenerConnectionRefused(self):
        client = yield self.hubClient()
        client.transport.write(xmlcall("Engine", "ping", "p") + b"\x01"
                               + xmlcall("Engine", "login", "l", secret="s3cret") + b"\x01")
        docs = yield client.waitDocs(2)
        for doc in docs:
            self.assertIn("not authenticated", doc.findtext("exception"))
        self.assertEqual(self.topics.refused, 2)

    @defer.inlineCallbacks
    def test_loggedInConsoleAndProcessRun(self):
        answers = self.watch(CALLS_OUT)
        client = yield self.console()
        publish = xmlcall("Topics", "publish", "pub", topic=CALLS_IN, type="xml",
                          message=xmlcall("Engine", "ping", "inner").decode())
        [refused] = yield self.call(client, publish, ["pub"])
        self.assertIn("not authenticated", refused.findtext("exception"))
        yield self.call(client, xmlcall("Engine", "login", "l", secret="s3cret"), ["l"])
        [published] = yield self.call(client, publish.replace(b'"pub"', b'"pub2"'),
                                      ["pub2"])
        self.assertEqual(published.get("status"), "OK")
        self.engine.broker.publish(CALLS_IN, xmlcall("Engine", "ping", "local"))
        def byId():
            return {body(a).get("requestId"): body(a) for a in answers
                    if body(a).get("requestId") in ("inner", "local")}

        yield waitFor(lambda: len(byId()) == 2, what="both answers")
        byId = byId()
        self.assertEqual(byId["inner"].get("status"), "OK")
        self.assertEqual(byId["local"].get("status"), "OK")
        self.assertEqual(self.topics.refused, 0)


class ConfigTests(unittest.TestCase):
    """media.xml refuses a listener that would open an unauthenticated
    console to other machines through its topic-in."""

    def doc(self, interface):
        return (f"<service><listeners>{console()}"
                + HUB.replace('<property name="port" value="0"/>',
                              '<property name="port" value="0"/>'
                              f'<property name="interface" value="{interface}"/>')
                + "</listeners></service>").encode()

    def test_openListenerRefused(self):
        error = self.assertRaises(ConfigError, parse, self.doc("0.0.0.0"))
        self.assertIn("listener 'hub'", str(error))
        self.assertIn("console 'debug'", str(error))

    def test_loopbackListenerAllowed(self):
        config = parse(self.doc("127.0.0.1"))
        self.assertEqual(config.listeners[0].topic_in, CALLS_IN)
