"""Checks of the benchmark suite's own pieces: configurations, peers' framing, reports.

No timing here: benchmarks are not tests, and nothing in ``tests/`` runs them.
Run with ``python -m twisted.trial bench.test_bench``.
"""

from __future__ import annotations

import cProfile
import json
from pathlib import Path

import h11
from lxml import etree
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import TestCase

from aiengine.config import parse
from aiengine.console.results import frame, resultElement
from bench import console, instructions, relay, scale, storm, web
from bench.__main__ import formatValue, profileReport, table
from bench.harness import Row, best, daemonXml, mediaXml
from bench.peers import httpserver, sink, source, xmlloop
from bench.peers.consoleclient import request
from bench.storm import maxInWindow


class ConfigurationTests(TestCase):
    """Every benchmark's media.xml is one aiengine accepts, with what we meant."""

    def load(self, listeners, channels):
        return parse(daemonXml(listeners, channels), path="bench.xml")

    def test_console(self):
        config = self.load(*console.daemonConfig())
        self.assertEqual([(c.name, c.msgtype, c.port) for c in config.listeners],
                         [("console", "xmlcall", 0)])
        self.assertEqual(config.listeners[0].protocol.inbound.delimiter, b"\x01")
        self.assertEqual(config.channels, ())

    def test_relay(self):
        config = self.load(*relay.daemonConfig(1234, 5678))
        incoming, outgoing = config.channels
        self.assertEqual((incoming.port, incoming.redirect_in, incoming.topic_in),
                         (1234, True, relay.TOPIC))
        self.assertEqual((outgoing.port, outgoing.redirect_out, outgoing.topic_out),
                         (5678, True, relay.TOPIC))
        self.assertEqual(incoming.protocol.inbound.delimiter, b"\n")

    def test_http(self):
        config = self.load(*web.daemonConfig(8080))
        pages = config.listeners[1]
        channel, = config.channels
        self.assertEqual(channel.protocol.name, "http")
        # the listener feeds the channel and gets its answers back
        self.assertEqual((pages.topic_in, pages.topic_out),
                         (channel.topic_out, channel.topic_in))
        self.assertEqual(pages.direction, "duplex")

    def test_scale(self):
        config = self.load(*scale.daemonConfig(50, 4321))
        self.assertEqual(len(config.channels), 50)
        self.assertEqual(len({c.name for c in config.channels}), 50)
        self.assertTrue(all(c.permanent and c.port == 4321 for c in config.channels))

    def test_storm(self):
        config = self.load(*storm.daemonConfig(20, 4321))
        self.assertEqual({c.reconnection_timeout for c in config.channels},
                         {storm.TIMEOUT})

    def test_quoting(self):
        """Property values are XML-escaped."""
        xml = mediaXml(channels=[("a&b", {"host": "x<y"})])
        root = etree.fromstring(xml.encode())
        channel = root.find("directchannels/channel")
        self.assertEqual(channel.get("name"), "a&b")
        self.assertEqual(channel.find("property").get("value"), "x<y")


class PeerTests(TestCase):
    """The peers' framing, without sockets."""

    def test_sourceLines(self):
        data = source.makeLines(7, 3)
        lines = data.split(b"\n")[:-1]
        self.assertEqual([len(line) + 1 for line in lines], [source.LINE_SIZE] * 3)
        self.assertEqual([line[:10] for line in lines],
                         [b"0000000007", b"0000000008", b"0000000009"])

    def test_sourceChunks(self):
        factory = source.SourceFactory(source.CHUNK_LINES + 5)
        self.assertEqual(b"".join(factory.chunks).count(b"\n"), source.CHUNK_LINES + 5)

    def test_sinkCounts(self):
        events = []
        self.patch(sink, "emit", lambda event, **fields: events.append((event, fields)))
        factory = sink.SinkFactory(3)
        factory.received(b"a\nb")
        self.assertEqual(events, [])
        factory.received(b"\nc\n")
        factory.received(b"d\n")
        self.assertEqual([(e, f["lines"]) for e, f in events], [("done", 3)])

    def test_xmlloopAnswersAsTheConsole(self):
        """The baseline produces the console's exact reply bytes."""
        expected = resultElement("OK", "REQ-7")
        etree.SubElement(expected, "pong")
        self.assertEqual(xmlloop.answer(request(7)), frame(expected))

    def test_instructionWorkloads(self):
        """What bench.instructions counts: the console answers every request,
        and the baseline runs; a console that answered fewer would stop it."""
        instructions.runConsole(50)
        instructions.runBaseline(50)
        from bench.peers import consoleclient
        self.patch(consoleclient, "request", lambda n: b"<nope/>")
        self.assertRaises(SystemExit, instructions.runConsole, 5)

    def test_httpServerPipelined(self):
        factory = httpserver.PageFactory(pages=2, size=50)
        protocol = factory.buildProtocol(None)
        transport = StringTransport()
        protocol.makeConnection(transport)
        requests = (b"GET /page/1 HTTP/1.1\r\nHost: x\r\n\r\n"
                    b"GET /nothing HTTP/1.1\r\nHost: x\r\n\r\n"
                    b"GET /page/0 HTTP/1.1\r\nHost: x\r\n\r\n")
        # split inside the second request: the rest waits for more data
        protocol.dataReceived(requests[:40])
        protocol.dataReceived(requests[40:])
        client = h11.Connection(our_role=h11.CLIENT)
        client.receive_data(transport.value())
        answers = []
        for target in (b"/page/1", b"/nothing", b"/page/0"):
            client.send(h11.Request(method="GET", target=target, headers=[("Host", "x")]))
            client.send(h11.EndOfMessage())
            response = client.next_event()
            body = b""
            event = client.next_event()
            while not isinstance(event, h11.EndOfMessage):
                body += event.data
                event = client.next_event()
            answers.append((response.status_code, body))
            client.start_next_cycle()
        self.assertEqual([status for status, _ in answers], [200, 404, 200])
        self.assertEqual(answers[0][1], httpserver.body(1, 50))
        self.assertEqual(len(answers[2][1]), 50)
        self.assertNotIn(b"\n", answers[0][1])
        self.assertEqual(factory.requests, 3)


class FigureTests(TestCase):
    """The arithmetic and the table."""

    def test_maxInWindow(self):
        self.assertEqual(maxInWindow([]), 0)
        self.assertEqual(maxInWindow([5.0, 1.0, 1.05, 1.09, 1.2, 1.25]), 3)
        self.assertEqual(maxInWindow([0.0, 0.2, 0.4]), 1)
        self.assertEqual(maxInWindow([0.0] * 10), 10)

    def test_best(self):
        self.assertEqual(best([3, None, 5]), 5)
        self.assertEqual(best([3, None, 5], higher=False), 3)
        self.assertIsNone(best([None]))

    def test_formatValue(self):
        self.assertEqual(formatValue(123456.7, "lines/s"), "123,457 lines/s")
        self.assertEqual(formatValue(1.234, "s"), "1.23 s")
        self.assertEqual(formatValue(None, "s"), "-")

    def test_table(self):
        text = table([
            Row("relay", "lines/s", 1.0, 4.0, "lines/s", 0.25, ">= 0.5", False),
            Row("scale", "ping", 2.0, None, "ms", None, "info", None, note="a note"),
            Row("http", "-", error="server gone"),
        ])
        lines = text.splitlines()
        self.assertIn("| relay | lines/s | 1 lines/s | 4 lines/s | 0.25 | >= 0.5 | FAIL |",
                      lines)
        self.assertIn("| scale | ping | 2.0 ms | - | - | info | info |", lines)
        self.assertIn("- http: error: server gone", lines)
        self.assertIn("- scale, ping: a note", lines)


def _busy(n):
    return sum(i * i for i in range(n))


class ProfileReportTests(TestCase):
    """The profile listing names the functions that took the time."""

    def test_report(self):
        path = Path(self.mktemp())
        profiler = cProfile.Profile()
        profiler.runcall(_busy, 20000)
        profiler.dump_stats(str(path))
        report = profileReport(path)
        self.assertIn("-- top 15 by own time --", report)
        self.assertIn("bench/test_bench.py", report)
        self.assertIn("_busy", report)


class EventTests(TestCase):
    """Peers speak JSON lines, and say when a stream stalls."""

    def test_stall(self):
        from bench.peers import _common
        events = []
        self.patch(_common, "emit", lambda event, **fields: events.append((event, fields)))
        clock = Clock()
        stall = _common.Stall(10, lambda: "3 of 5", clock=clock)
        stall.progress()
        clock.advance(9)
        stall.progress()
        clock.advance(9)
        self.assertEqual(events, [])
        clock.advance(1)
        self.assertEqual(events, [("error", {"text": "stalled: nothing for 10 s; 3 of 5"})])

    def test_stallDone(self):
        from bench.peers import _common
        clock = Clock()
        stall = _common.Stall(10, lambda: "", clock=clock)
        stall.progress()
        stall.done()
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_emit(self):
        from bench.peers import _common
        written = []

        class Out:
            def write(self, text):
                written.append(text)

            def flush(self):
                pass

        self.patch(_common.sys, "stdout", Out())
        _common.emit("done", rate=1.5)
        self.assertEqual([json.loads(line) for line in written],
                         [{"event": "done", "rate": 1.5}])
