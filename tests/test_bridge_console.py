"""The console across nodes: node A's console calls node B's console
through B's bridged command topics (docs/scale-out.md, "Managing several
nodes from one console"), with engines built from media.xml text and a real
mosquitto on a free loopback port.

``Topics.request`` pairs a reply with its request by ``in-reply-to``, which
names the request's message id, ``<topic>-<n>``, counted by each node.  The
bridge carries each message's id at its sender and names a reply's request
by that id and its sender's node, so answers find their calls even when the
nodes' counts differ (B's own console used, another managing node, a
restart, a lost message), and come back to the caller's session.  Subscribing to
b.res and picking one's answers by requestId does not depend on the ids
(:meth:`ConsoleAcrossNodesTests.test_subscribeAndPublish`)."""

from __future__ import annotations

import os
import re

from lxml import etree
from twisted.internet import defer, reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.task import deferLater
from twisted.trial import unittest

from aiengine.config import parse
from tests.support import waitFor
from tests.test_bridge import Mosquitto, bridgeConnected, requireMosquitto, startEngine
from tests.test_console import Collector, xmlcall
from tests.test_media import ConsoleClientMixin

#: B's command topics, locally and on the MQTT broker
CMD, RES = "b.cmd", "b.res"
REMOTE_CMD, REMOTE_RES = "aiengine/node-b/cmd", "aiengine/node-b/res"


def console(topics="", auth=""):
    """The console listener ``debug``, on a free loopback port."""
    return f"""
    <listener name="debug">
      <property name="port" value="0"/>
      <property name="interface" value="127.0.0.1"/>
      <property name="protocol" value="xml-messages"/>
      <property name="msgtype" value="xmlcall"/>{topics}{auth}
    </listener>"""


def channel(name):
    """An on-demand channel: listed by Media.listChannels, never connected."""
    return f"""
    <channel name="{name}">
      <property name="protocol" value="text-messages"/>
      <property name="host" value="127.0.0.1"/>
      <property name="port" value="9"/>
      <property name="permanent" value="false"/>
    </channel>"""


def bridge(port, node, cmd, res):
    return f"""
    <bridge name="cluster">
      <property name="engine" value="mqtt"/>
      <property name="host" value="127.0.0.1"/>
      <property name="port" value="{port}"/>
      <property name="node-id" value="{node}"/>
      <property name="reconnectionTimeout" value="0.2"/>
      <topic local="{CMD}" remote="{REMOTE_CMD}" direction="{cmd}" qos="1"/>
      <topic local="{RES}" remote="{REMOTE_RES}" direction="{res}" qos="1"/>
    </bridge>"""


def nodeB(port, auth=""):
    """The managed node: its console takes calls on b.cmd and answers on
    b.res, and its bridge brings b.cmd in and sends b.res out."""
    topics = f"""
      <property name="topic-in" value="{CMD}"/>
      <property name="topic-out" value="{RES}"/>"""
    return f"""<service>
  <listeners>{console(topics, auth)}
  </listeners>
  <directchannels>{channel("only-on-b")}{channel("b-spare")}
  </directchannels>
  <bridges>{bridge(port, "node-b", "in", "out")}
  </bridges>
</service>"""


#: a listener of A whose connections send calls for B and read B's answers
HUB = f"""
    <listener name="hub">
      <property name="port" value="0"/>
      <property name="interface" value="127.0.0.1"/>
      <property name="protocol" value="text-messages"/>
      <property name="protocol.delimiter" value="\\1"/>
      <property name="topic-in" value="{CMD}"/>
      <property name="topic-out" value="{RES}"/>
    </listener>"""


def nodeA(port, node="node-a", listeners=""):
    """A managing node: a plain console, and a bridge that sends b.cmd out
    and brings b.res in."""
    return f"""<service>
  <listeners>{console()}{listeners}
  </listeners>
  <directchannels>{channel("only-on-" + node[-1])}
  </directchannels>
  <bridges>{bridge(port, node, "out", "in")}
  </bridges>
</service>"""


def onB(requestId, inner, timeout="10"):
    """What a person types at A's console: ``Topics.request`` carrying the
    call ``inner`` for B's console."""
    return xmlcall("Topics", "request", requestId, topic_out=CMD, topic_in=RES,
                   message=inner.decode(), timeout=timeout)


DOC = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                   "docs", "scale-out.md")


def docSection():
    """The code blocks of scale-out.md's "Managing several nodes from one
    console": the two media.xml files and the lines a person types."""
    with open(DOC, encoding="utf-8") as f:
        text = f.read()
    section = text.split("\n## Managing several nodes from one console\n")[1]
    section = section.split("\n## ")[0]
    blocks = re.findall(r"^```(\w*)\n(.*?)^```", section, re.M | re.S)
    xml = [body for kind, body in blocks if kind == "xml"]
    typed = [line for kind, body in blocks if not kind
             for line in body.splitlines() if line.startswith("<xmlcall ")]
    return xml, typed


def answerOf(result):
    """B's ``<xmlcallresult>`` inside A's answer to ``Topics.request``."""
    return etree.fromstring(result.findtext("message").encode())


class ConsoleAcrossNodesTests(ConsoleClientMixin, unittest.TestCase):
    """A person at node A's console calls node B's console."""

    timeout = 60
    maxDiff = None

    def setUp(self):
        requireMosquitto()
        self.mosquitto = Mosquitto(self)
        self.mosquitto.start()
        self.directory = os.path.abspath(self.mktemp())
        os.makedirs(self.directory)

    @defer.inlineCallbacks
    def engine(self, name, text):
        path = os.path.join(self.directory, name, "media.xml")
        os.makedirs(os.path.dirname(path))
        engine = startEngine(self, parse(text.encode(), path))
        yield bridgeConnected(engine, f"{name}'s bridge connected")
        return engine

    @defer.inlineCallbacks
    def nodes(self, auth="", listeners=""):
        self.b = yield self.engine("b", nodeB(self.mosquitto.port, auth))
        self.a = yield self.engine("a", nodeA(self.mosquitto.port, listeners=listeners))

    def topics(self, engine):
        return engine.listeners["debug"].factory.topics

    @defer.inlineCallbacks
    def test_listChannelsOfB(self):
        """The call a person types at A lists B's channels, not A's."""
        yield self.nodes()
        client = yield self.console(self.a)
        inner = b'<xmlcall class="Media" method="listChannels" requestId="b1"/>'
        [result] = yield self.call(client, onB("1", inner), ["1"])
        self.assertEqual(result.get("status"), "OK", result.findtext("exception"))
        message = result.find("message")
        self.assertEqual((message.get("topic"), message.get("source")),
                         (RES, "bridge:cluster"))
        answer = answerOf(result)
        self.assertEqual((answer.get("requestId"), answer.get("status")), ("b1", "OK"))
        self.assertEqual([c.get("name") for c in answer.iter("channel")],
                         ["b-spare", "only-on-b"])
        # A's own answer to the same call, for comparison
        [local] = yield self.call(client, inner.replace(b'"b1"', b'"a1"'), ["a1"])
        self.assertEqual([c.get("name") for c in local.iter("channel")], ["only-on-a"])
        self.assertEqual(self.topics(self.b).calls, 1)

    @defer.inlineCallbacks
    def test_typedAtTelnet(self):
        """The call exactly as docs/scale-out.md shows it, with the inner
        call written inline, as a person types it."""
        yield self.nodes()
        client = yield self.console(self.a)
        typed = (b'<xmlcall class="Topics" method="request" requestId="1"><parameters>'
                 b'<property name="topic-out" value="b.cmd"/>'
                 b'<property name="topic-in" value="b.res"/>'
                 b'<property name="timeout" value="10"/>'
                 b'<property name="message"><xmlcall class="Media" '
                 b'method="listChannels" requestId="b1"/></property>'
                 b'</parameters></xmlcall>\n')
        [result] = yield self.call(client, typed, ["1"])
        self.assertEqual(result.get("status"), "OK", result.findtext("exception"))
        answer = answerOf(result)
        self.assertEqual(answer.get("requestId"), "b1")
        self.assertEqual([c.get("name") for c in answer.iter("channel")],
                         ["b-spare", "only-on-b"])

    @defer.inlineCallbacks
    def test_documentedConfiguration(self):
        """docs/scale-out.md's two media.xml files (on free ports, with the
        test's mosquitto) and the lines it says to type at node-a."""
        [textB, textA], typed = docSection()
        self.assertEqual(len(typed), 3)

        def here(text):
            text = re.sub(r'name="port" value="\d+"', 'name="port" value="0"', text)
            return text.replace(
                '<property name="host" value="127.0.0.1"/>',
                '<property name="host" value="127.0.0.1"/><property name="port" '
                f'value="{self.mosquitto.port}"/>')

        self.b = yield self.engine("b", here(textB))
        self.a = yield self.engine("a", here(textA))
        client = yield self.console(self.a)
        [result] = yield self.call(client, typed[0].encode() + b"\n", ["1"])
        self.assertEqual(result.get("status"), "OK", result.findtext("exception"))
        self.assertEqual(result.find("message").get("source"), "bridge:cluster")
        answer = answerOf(result)
        self.assertEqual((answer.get("requestId"), answer.get("status")), ("b1", "OK"))
        # node-b's console, on node-b's port
        table = answer.findtext("table")
        port = self.b.listeners["debug"].address[1]
        self.assertIn(f"127.0.0.1:{port}", table)
        self.assertNotIn(f"127.0.0.1:{self.a.listeners['debug'].address[1]}", table)
        # the way that does not depend on message ids
        docs = yield self.call(client, "\n".join(typed[1:]).encode() + b"\n",
                               ["s", "p"])
        self.assertEqual([d.get("status") for d in docs], ["OK", "OK"])
        yield waitFor(lambda: [d for d in client.docs if d.tag == "xmlevent"],
                      what="node-b's answer as an event")
        [event] = [d for d in client.docs if d.tag == "xmlevent"]
        self.assertEqual(event.get("topic"), "b.res")
        pong = etree.fromstring(event.text.encode())
        self.assertEqual(pong.get("requestId"), "b-42")
        self.assertIsNotNone(pong.find("pong"))

    @defer.inlineCallbacks
    def concurrentCalls(self, clients, count=20, timeout="10", tag="r"):
        """``count`` calls at once, spread over ``clients`` (console
        connections of one node), each a different call on B; every one must
        get the answer to its own call."""
        expected = {}
        requests = []
        for n in range(count):
            client = clients[n % len(clients)]
            outer, inner = f"{tag}{n}", f"{tag}-b{n}"
            if n % 2:
                call = xmlcall("Engine", "ping", inner)
            else:
                # one channel's status: the answer names the channel
                call = xmlcall("Media", "status", inner,
                               channel=("only-on-b", "b-spare")[n // 2 % 2])
            expected[outer] = (inner, call)
            requests.append((client, outer, onB(outer, call, timeout)))
        for client in clients:
            mine = [(outer, data) for c, outer, data in requests if c is client]
            client.transport.write(b"".join(data for _, data in mine))
        results = yield defer.gatherResults([
            self.call(client, b"", [outer for c, outer, _ in requests if c is client])
            for client in clients])
        answers = {}
        for answered in results:
            for result in answered:
                answers[result.get("requestId")] = result
        self.assertEqual(len(answers), count)
        wrong = {}
        for outer, (inner, call) in expected.items():
            result = answers[outer]
            if result.get("status") != "OK":
                wrong[outer] = result.findtext("exception")
                continue
            answer = answerOf(result)
            if answer.get("requestId") != inner:
                wrong[outer] = f"the answer to {answer.get('requestId')}, not {inner}"
                continue
            self.assertEqual(answer.get("status"), "OK")
            sent = etree.fromstring(call)
            if sent.get("method") == "ping":
                self.assertIsNotNone(answer.find("pong"), outer)
            else:
                name = sent.find("parameters/property").get("value")
                self.assertEqual(answer.find("channel").get("name"), name)
        self.assertEqual(wrong, {}, "calls that did not get their own answer")

    @defer.inlineCallbacks
    def test_concurrentCallsFromTwoConnections(self):
        """20 calls at once from two of A's console connections (fresh
        nodes: A's and B's ids of the calls agree)."""
        yield self.nodes()
        clients = []
        for _ in range(2):
            clients.append((yield self.console(self.a)))
        yield self.concurrentCalls(clients)
        self.assertEqual(self.topics(self.b).calls, 20)
        # every request consumed its own reply
        self.assertEqual(self.a.broker.topic(RES).replies, 20)

    @defer.inlineCallbacks
    def test_pairingWhenMessageIdsDiffer(self):
        """Someone at B's own console makes a call first: B's console copies
        it onto b.cmd (b.res is watched, by B's bridge), so B's ids on b.cmd
        no longer match A's.  A's calls must still get their own answers."""
        yield self.nodes()
        atB = yield self.console(self.b)
        yield self.call(atB, xmlcall("Engine", "ping", "local"), ["local"])
        self.assertEqual(self.topics(self.b).mirrored, 2)
        # the copy of its answer reached A, where no request waited for it
        yield waitFor(lambda: self.a.broker.topic(RES).published == 1,
                      what="the copy of B's answer at A")
        clients = []
        for _ in range(2):
            clients.append((yield self.console(self.a)))
        yield self.concurrentCalls(clients, timeout="3")


    @defer.inlineCallbacks
    def test_subscribeAndPublish(self):
        """The way that does not depend on message ids: subscribe to b.res,
        publish calls with requestIds of one's own on b.cmd, and pick one's
        answers among the events by requestId; also after B's own console
        was used, from two connections at once."""
        yield self.nodes()
        atB = yield self.console(self.b)
        yield self.call(atB, xmlcall("Engine", "ping", "local"), ["local"])
        clients = []
        for _ in range(2):
            client = yield self.console(self.a)
            yield self.call(client, xmlcall("Topics", "subscribe", "s", topic=RES), ["s"])
            clients.append(client)
        for n, client in enumerate(clients):
            client.transport.write(b"".join(
                xmlcall("Topics", "publish", f"p{i}", topic=CMD, type="xml",
                        message=xmlcall("Media", "status", f"{n}-{i}",
                                        channel=("only-on-b", "b-spare")[i % 2]).decode())
                for i in range(5)))

        def answers(client):
            """B's answers seen by ``client``, by requestId."""
            return {answer.get("requestId"): answer for answer in (
                etree.fromstring(event.text.encode()) for event in client.docs
                if event.tag == "xmlevent" and event.get("topic") == RES)}

        yield waitFor(lambda: all(len(answers(c)) >= 10 for c in clients),
                      what="every answer at both connections")
        for n, client in enumerate(clients):
            mine = answers(client)
            for i in range(5):
                answer = mine[f"{n}-{i}"]
                self.assertEqual(answer.get("status"), "OK")
                self.assertEqual(answer.find("channel").get("name"),
                                 ("only-on-b", "b-spare")[i % 2])

    @defer.inlineCallbacks
    def test_twoManagingNodes(self):
        """A and C both call B, 10 calls each at once: each call gets its
        own answer, although A's and C's ids of their calls are the same."""
        yield self.nodes()
        c = yield self.engine("c", nodeA(self.mosquitto.port, "node-c"))
        atA = yield self.console(self.a)
        atC = yield self.console(c)
        yield defer.gatherResults([
            self.concurrentCalls([atA], 10, timeout="3", tag="a"),
            self.concurrentCalls([atC], 10, timeout="3", tag="c")])


    @defer.inlineCallbacks
    def test_listenerConnectionsGetTheirOwnAnswers(self):
        """Connections of a listener of A that publishes on b.cmd and writes
        b.res: each gets only the answers to its own calls, as it would
        from a console of A (the reply is routed by its session)."""
        yield self.nodes(listeners=HUB)
        port = self.a.listeners["hub"].address[1]
        clients = []
        for _ in range(3):
            client = yield connectProtocol(
                TCP4ClientEndpoint(reactor, "127.0.0.1", port), Collector())
            self.addCleanup(lambda c=client: c.transport.loseConnection() or c.lost)
            clients.append(client)
        for n, client in enumerate(clients):
            client.transport.write(b"".join(
                xmlcall("Engine", "ping", f"{n}-{i}") + b"\x01" for i in range(4)))
        yield defer.gatherResults([client.waitDocs(4) for client in clients])
        # a little longer: an answer that went to the wrong connection shows
        yield waitFor(lambda: self.topics(self.b).calls == 12, what="12 calls at B")
        for _ in range(20):
            yield deferLater(reactor, 0.01, lambda: None)
        for n, client in enumerate(clients):
            self.assertEqual(sorted(d.get("requestId") for d in client.docs),
                             [f"{n}-{i}" for i in range(4)])


    @defer.inlineCallbacks
    def test_bDownTimesOut(self):
        """With B stopped, the call at A is answered with a timeout, and A's
        console goes on working."""
        yield self.nodes()
        yield self.b.stopService()
        client = yield self.console(self.a)
        inner = xmlcall("Engine", "ping", "b1")
        [result] = yield self.call(client, onB("1", inner, timeout="0.5"), ["1"])
        self.assertEqual(result.get("status"), "Exception")
        self.assertIn(f"no reply on {RES} within 0.5 s", result.findtext("exception"))
        [pong] = yield self.call(client, xmlcall("Engine", "ping", "2"), ["2"])
        self.assertEqual(pong.get("status"), "OK")

    @defer.inlineCallbacks
    def test_consoleWithSecretRefusesBridgedCalls(self):
        """B's console with auth: a call that came through the bridge proves
        nothing, and is answered "not authenticated", even for a login."""
        secret = os.path.join(self.directory, "secret")
        with open(secret, "w") as f:
            f.write("s3cret")
        yield self.nodes(auth=f"""
      <property name="auth" value="true"/>
      <property name="auth.secret-file" value="{secret}"/>""")
        client = yield self.console(self.a)
        results = yield self.call(
            client, onB("1", xmlcall("Engine", "login", "b1", secret="s3cret"))
            + onB("2", xmlcall("Media", "listChannels", "b2")), ["1", "2"])
        for result in results:
            self.assertEqual(result.get("status"), "OK", result.findtext("exception"))
            answer = answerOf(result)
            self.assertEqual(answer.get("status"), "Exception")
            self.assertIn("not authenticated", answer.findtext("exception"))
        self.assertEqual(self.topics(self.b).refused, 2)
