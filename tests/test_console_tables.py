"""``format="table"`` answers (Media.listChannels, Engine.listeners), Engine.help's
usage, and the unknown-channel message, against a real engine on loopback."""

from __future__ import annotations

import re

from lxml import etree
from twisted.internet import defer, reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Factory, Protocol
from twisted.protocols.basic import LineOnlyReceiver
from twisted.trial import unittest

from aiengine.config import parse
from aiengine.console.builtins import USAGE, LISTENER_COLUMNS
from aiengine.console.results import (duration, hostPort, listNames, plural, textBlock,
                                      textTable)
from aiengine.engine import Engine
from aiengine.media import CHANNEL_COLUMNS, Media, UnknownChannel, channelTable
from tests.support import ReservedPort, waitFor
from tests.test_console import xmlcall
from tests.test_media import ConsoleClientMixin

CONFIG = """<service>
  <listeners>
    <listener name="debug">
      <property name="port" value="0"/>
      <property name="protocol" value="text-messages"/>
      <property name="protocol.delimiter" value="\\1"/>
      <property name="msgtype" value="xmlcall"/>
    </listener>
    <listener name="feed">
      <property name="port" value="0"/>
      <property name="protocol" value="text-messages"/>
      <property name="direction" value="duplex"/>
      <property name="topic-in" value="feed.in"/>
      <property name="topic-out" value="feed.out"/>
      <property name="max-connections" value="1"/>
    </listener>
  </listeners>
  <directchannels>
    <channel name="plain">
      <property name="protocol" value="text-messages"/>
      <property name="host" value="127.0.0.1"/>
      <property name="port" value="{upper}"/>
      <property name="reconnectionTimeout" value="0.2"/>
    </channel>
    <channel name="down">
      <property name="protocol" value="text-messages"/>
      <property name="host" value="127.0.0.1"/>
      <property name="port" value="{refused}"/>
      <property name="reconnectionTimeout" value="600"/>
      <property name="queue-size" value="2"/>
    </channel>
  </directchannels>
</service>
"""


class Upper(LineOnlyReceiver):
    """Answers each line with the line in upper case."""

    delimiter = b"\n"

    def lineReceived(self, line):
        self.sendLine(line.upper())


class Lines(Protocol):
    """A client of the ``feed`` listener that keeps what it reads."""

    def __init__(self):
        self.data = b""
        self.lost = defer.Deferred()

    def dataReceived(self, data):
        self.data += data

    def connectionLost(self, reason):
        self.lost.callback(None)


def parseTable(text, columns):
    """The rows of a text table, as dicts by column, checking its header and
    that every column starts where its header says (left-aligned columns)
    or ends there (right-aligned ones)."""
    lines = text.strip("\n").split("\n")
    header = lines[0]
    if tuple(header.split()) != tuple(columns):
        raise AssertionError(f"header {header!r}, expected columns {columns}")
    rows = []
    for line in lines[1:]:
        cells = line.split()
        if len(cells) != len(columns):
            raise AssertionError(f"row {line!r} has {len(cells)} cells")
        rows.append(dict(zip(columns, cells)))
    return rows, lines


class TableHelperTests(unittest.TestCase):
    """The text helpers the tables are made of."""

    def test_duration(self):
        cases = [(0, "0.0s"), (0.44, "0.4s"), (2.3, "2.3s"), (9.96, "9.9s"), (10, "10s"),
                 (59.9, "59s"), (60, "1m00s"), (192, "3m12s"), (3599, "59m59s"),
                 (3600, "1h00m"), (7500, "2h05m"), (86399, "23h59m"),
                 (90000, "1d01h"), (-1, "0.0s"), (None, "-")]
        self.assertEqual([(s, duration(s)) for s, _ in cases], cases)

    def test_textTableAligns(self):
        text = textTable(("NAME", "STATE", "IN"),
                         [("a", "connected", 3), ("long-name", None, 12345)],
                         right={"IN"})
        self.assertEqual(text.split("\n"), [
            "NAME       STATE         IN",
            "a          connected      3",
            "long-name  -          12345"])

    def test_textTableKeepsRowsOnOneLine(self):
        """A cell cannot start a line of its own, nor carry 0x01."""
        text = textTable(("NAME",), [("evil\nNAME\x01",)])
        self.assertEqual(text.split("\n"), ["NAME", "evil\\nNAME\\x01"])

    def test_textBlock(self):
        element = textBlock("table", "A  B\n1  <&>")
        self.assertIn(b"<table><![CDATA[\nA  B\n1  <&>\n]]></table>",
                      etree.tostring(element))
        # CDATA cannot hold "]]>": then it is escaped text, read the same.
        tricky = textBlock("table", "x]]>y")
        self.assertEqual(etree.fromstring(etree.tostring(tricky)).text, "\nx]]>y\n")

    def test_listNames(self):
        self.assertEqual(listNames(["b", "a"]), "a, b")
        names = {f"c{i:02d}": None for i in range(25)}
        self.assertEqual(listNames(names),
                         ", ".join(f"c{i:02d}" for i in range(20)) + " and 5 more")

    def test_pluralAndHostPort(self):
        self.assertEqual([plural(n, "call") for n in (0, 1, 2)],
                         ["0 calls", "1 call", "2 calls"])
        self.assertEqual(hostPort("127.0.0.1", 9), "127.0.0.1:9")
        self.assertEqual(hostPort("::1", 9), "[::1]:9")
        self.assertEqual(hostPort("[::1]", 9), "[::1]:9")

    def test_channelTableAge(self):
        """AGE is the time since the state began, when the channel says when."""
        status = dict(name="c", state="connected", host="h", port=1, messagesIn=1,
                      messagesOut=2, queued=3, dropped=4)
        rows, _ = parseTable(channelTable([dict(status, stateSince=1000.0), status],
                                          now=1192.5), CHANNEL_COLUMNS)
        self.assertEqual([row["AGE"] for row in rows], ["3m12s", "-"])
        self.assertEqual(rows[0], dict(NAME="c", STATE="connected", PEER="h:1",
                                       AGE="3m12s", IN="1", OUT="2", QUEUED="3",
                                       DROPPED="4"))


class UnknownChannelTests(unittest.TestCase):
    """An unknown channel's message names the ones that exist."""

    def test_knownNamesListed(self):
        media = Media({name: None for name in ("lines", "google")})
        failure = self.failureResultOf(media.status("line"), UnknownChannel)
        self.assertEqual(str(failure.value), "Unable to find channel by name=line (did you "
                                             "mean 'lines'?); known channels: google, lines")

    def test_atMostTwenty(self):
        media = Media({f"c{i:02d}": None for i in range(25)})
        failure = self.failureResultOf(media.send("nothing-like-it", "m"), UnknownChannel)
        self.assertEqual(str(failure.value),
                         "Unable to find channel by name=nothing-like-it; known channels: "
                         + ", ".join(f"c{i:02d}" for i in range(20)) + " and 5 more")

    def test_manyChannelsNoSuggestion(self):
        """Beyond 1000 channels a typo is not compared with every name."""
        media = Media({f"c{i:04d}": None for i in range(1001)})
        failure = self.failureResultOf(media.status("c0001x"), UnknownChannel)
        self.assertNotIn("did you mean", str(failure.value))
        self.assertTrue(str(failure.value).endswith("c0019 and 981 more"))


class TableTests(ConsoleClientMixin, unittest.TestCase):
    """The tables after real traffic through loopback channels and listeners."""

    @defer.inlineCallbacks
    def setUp(self):
        self.upper = reactor.listenTCP(0, Factory.forProtocol(Upper), interface="127.0.0.1")
        self.addCleanup(self.upper.stopListening)
        self.refused = ReservedPort()
        self.addCleanup(self.refused.close)
        config = parse(CONFIG.format(upper=self.upper.getHost().port,
                                     refused=self.refused.port).encode())
        self.engine = Engine(config, reactor)
        self.engine.startService()
        self.addCleanup(self.engine.stopService)
        channels = self.engine.channels
        yield waitFor(lambda: channels["plain"].state == "connected"
                      and channels["down"].state == "waiting", what="channels settled")

    @defer.inlineCallbacks
    def table(self, client, className, methodName, columns, requestId, format="table"):
        """The rows of a table answer, its text lines, and the answer."""
        [answer] = yield self.call(client, xmlcall(className, methodName,
                                                   requestId=requestId, format=format),
                                   [requestId])
        self.assertEqual(answer.get("status"), "OK", answer.findtext("exception"))
        [table] = answer
        self.assertEqual(table.tag, "table")
        rows, lines = parseTable(table.text, columns)
        return rows, lines, answer

    @defer.inlineCallbacks
    def test_channelTable(self):
        media = self.engine.media
        for word in ("one", "two", "three"):
            yield media.send("plain", word)
        for _ in range(3):
            yield media.receive("plain", timeout=5)
        for word in ("a", "b", "c"):  # queue-size 2: the third is dropped
            yield media.send("down", word)
        client = yield self.console()
        rows, lines, answer = yield self.table(client, "Media", "listChannels",
                                               CHANNEL_COLUMNS, "T")
        byName = {row["NAME"]: row for row in rows}
        self.assertEqual([row["NAME"] for row in rows], ["down", "plain"])
        plain = byName["plain"]
        self.assertEqual(
            {k: plain[k] for k in ("STATE", "PEER", "IN", "OUT", "QUEUED", "DROPPED")},
            dict(STATE="connected", PEER=f"127.0.0.1:{self.upper.getHost().port}",
                 IN="3", OUT="3", QUEUED="0", DROPPED="0"))
        down = byName["down"]
        self.assertEqual(
            {k: down[k] for k in ("STATE", "PEER", "IN", "OUT", "QUEUED", "DROPPED")},
            dict(STATE="waiting", PEER=f"127.0.0.1:{self.refused.port}", IN="0", OUT="0",
                 QUEUED="2", DROPPED="1"))
        # Numbers end where their header ends.
        header = lines[0]
        for line in lines[1:]:
            for column in ("IN", "OUT", "QUEUED", "DROPPED"):
                end = header.index(column) + len(column)
                self.assertNotEqual(line[end - 1], " ", (line, column))
                self.assertTrue(end == len(line) or line[end] == " ", (line, column))

        # The same counters as the XML answer, which is as it was.
        [xml] = yield self.call(client, xmlcall("Media", "listChannels", requestId="X"),
                                ["X"])
        self.assertEqual([c.tag for c in xml], ["channel", "channel"])
        for element in xml:
            row = byName[element.get("name")]
            self.assertEqual((row["STATE"], row["IN"], row["OUT"], row["QUEUED"],
                              row["DROPPED"]),
                             (element.get("state"), element.get("messagesIn"),
                              element.get("messagesOut"), element.get("queued"),
                              element.get("dropped")))
            since = element.get("stateSince")
            if since is None:
                self.assertEqual(row["AGE"], "-")
            else:
                self.assertRegex(row["AGE"], r"^\d+(\.\d)?s$|^\d+[mhd]\d\d[smh]$")

    @defer.inlineCallbacks
    def test_listenerTable(self):
        port = self.engine.listeners["feed"].address[1]
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port)
        first = yield connectProtocol(endpoint, Lines())
        self.addCleanup(lambda: first.transport.loseConnection() or first.lost)
        feed = self.engine.listeners["feed"].factory
        yield waitFor(lambda: feed.stats()["openConnections"] == 1, what="feed connection")
        # max-connections is 1: the second is refused.
        second = yield connectProtocol(endpoint, Lines())
        yield second.lost
        first.transport.write(b"x\ny\n")
        yield waitFor(lambda: feed.stats()["messagesIn"] == 2, what="lines read")
        self.engine.broker.publish("feed.out", "hello")
        yield waitFor(lambda: first.data == b"hello\n", what="line written")

        client = yield self.console()
        rows, lines, answer = yield self.table(client, "Engine", "listeners",
                                               LISTENER_COLUMNS, "L")
        debugPort = self.engine.listeners["debug"].address[1]
        self.assertEqual(rows, [
            dict(NAME="debug", ADDRESS=f"127.0.0.1:{debugPort}", OPEN="1", ACCEPTED="1",
                 REFUSED="0", IN="1", OUT="-"),
            dict(NAME="feed", ADDRESS=f"127.0.0.1:{port}", OPEN="1", ACCEPTED="1",
                 REFUSED="1", IN="2", OUT="1")])

        [xml] = yield self.call(client, xmlcall("Engine", "listeners", requestId="X"),
                                ["X"])
        feedElement = [e for e in xml if e.get("name") == "feed"][0]
        self.assertEqual((feedElement.get("openConnections"), feedElement.get("accepted"),
                          feedElement.get("refused"), feedElement.get("messagesIn"),
                          feedElement.get("messagesOut")), ("1", "1", "1", "2", "1"))

    @defer.inlineCallbacks
    def test_formatParameter(self):
        client = yield self.console()
        bad, upper, xml = yield self.call(client, b"".join([
            xmlcall("Media", "listChannels", requestId="B", format="tabel"),
            xmlcall("Engine", "listeners", requestId="U", format=" TABLE "),
            xmlcall("Engine", "listeners", requestId="X", format="xml")]),
            ["B", "U", "X"])
        self.assertEqual(bad.findtext("exception"),
                         "parameter 'format' must be xml or table, got 'tabel'")
        self.assertEqual([c.tag for c in upper], ["table"])
        self.assertEqual([c.tag for c in xml], ["listener", "listener"])

    @defer.inlineCallbacks
    def test_tableAtTelnet(self):
        """What a person sees: the table's lines start at the line's start,
        between the answer's tags."""
        client = yield self.console()
        before = len(client.raw)
        yield self.call(client, xmlcall("Media", "listChannels", requestId="T",
                                        format="table"), ["T"])
        raw = client.raw[before:].decode()
        self.assertRegex(raw, r'^<xmlcallresult requestId="T" status="OK">\n'
                              r'  <table><!\[CDATA\[\nNAME +STATE +PEER +AGE +IN +OUT +'
                              r'QUEUED +DROPPED\ndown +waiting .*\nplain +connected .*\n'
                              r'\]\]></table>\n</xmlcallresult>\n\x01$')

    @defer.inlineCallbacks
    def test_helpShowsUsageFirst(self):
        """Engine.help starts with how to write a call, and its examples work."""
        client = yield self.console()
        [answer] = yield self.call(client, xmlcall("Engine", "help", requestId="H"), ["H"])
        self.assertEqual(answer[0].tag, "usage")
        self.assertEqual(answer[0].text, "\n" + USAGE + "\n")
        self.assertEqual({c.tag for c in answer[1:]}, {"class"})
        examples = [line.strip() for line in USAGE.split("\n")
                    if line.startswith("  <xmlcall")]
        self.assertEqual(len(examples), 4)
        self.assertIn("<property name=\"topic\" value=\"demo\"/>", examples[1])
        self.assertIn("<property name=\"topic\">demo</property>", examples[2])
        for n, example in enumerate(examples):
            # Each example as typed, one per line, with a requestId to wait on.
            request = re.sub(r' requestId="\d+"', "", example).replace(
                "<xmlcall ", f'<xmlcall requestId="ex{n}" ', 1)
            [result] = yield self.call(client, request.encode() + b"\n", [f"ex{n}"])
            self.assertEqual(result.get("status"), "OK", (example, result.findtext(
                "exception")))
        # With class: the usage, then that class only.
        [one] = yield self.call(client, xmlcall("Engine", "help", requestId="M",
                                                **{"class": "Media"}), ["M"])
        self.assertEqual([c.tag for c in one], ["usage", "class"])


class ParseTableTests(unittest.TestCase):
    """The tests' table reader must be able to fail."""

    def test_parseTableRejectsWrongHeader(self):
        self.assertRaises(AssertionError, parseTable, "A  B\n1  2", ("A", "C"))
        self.assertRaises(AssertionError, parseTable, "A  B\n1", ("A", "B"))
        self.assertEqual(parseTable("A  B\n1  2\n", ("A", "B"))[0], [dict(A="1", B="2")])

