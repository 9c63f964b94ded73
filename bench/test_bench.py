"""Checks of the benchmark suite's own pieces: configurations, peers' framing, reports.

No timing here: benchmarks are not tests, and nothing in ``tests/`` runs them.
Run with ``python -m twisted.trial bench.test_bench``.
"""

from __future__ import annotations

import argparse
import cProfile
import json
from pathlib import Path

import h11
from lxml import etree
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SkipTest, TestCase

from aiengine.config import parse
from aiengine.console.results import frame, resultElement
from bench import (bridge, console, httpvia, instructions, ping, pubsub, relay, scale,
                   servers, storm, web)
from bench.__main__ import (BASELINES, DEFAULT, PEERS, chosen, formatValue,
                            profileReport, table)
from bench.harness import Row, Settings, best, daemonXml, mediaXml, spread
from bench.peers import (httpforwarder, httpserver, latencyclient, mqttclient,
                         pubsubclient, rrclient, sink, source, wire, xmlconsole,
                         xmlloop)
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

    def test_pubsubHub(self):
        """Publishers' lines go in at hub-in, out at every hub-out connection."""
        config = self.load(*pubsub.daemonConfig())
        _, hubIn, hubOut = config.listeners
        self.assertEqual((hubIn.name, hubIn.direction, hubIn.topic_in),
                         ("hub-in", "in", pubsub.TOPIC))
        self.assertEqual((hubOut.name, hubOut.direction, hubOut.topic_out),
                         ("hub-out", "out", pubsub.TOPIC))
        self.assertEqual(hubIn.protocol.inbound.delimiter, b"\n")
        self.assertEqual(hubOut.protocol.outbound.delimiter, b"\n")
        self.assertEqual(config.channels, ())

    def test_pingEcho(self):
        """Topics.request's reply comes from Redis through a replies=ordered channel."""
        config = self.load(*ping.daemonConfig(6380))
        echo, = config.channels
        self.assertEqual((echo.port, echo.replies, echo.redirect_in, echo.redirect_out),
                         (6380, "ordered", True, True))
        self.assertEqual((echo.topic_out, echo.topic_in),
                         (ping.REQUEST_TOPIC, ping.REPLY_TOPIC))
        self.assertEqual(echo.protocol.inbound.delimiter, b"\r\n")

    def test_httpvia(self):
        config = self.load(*httpvia.daemonConfig(8080))
        pages = config.listeners[1]
        channel, = config.channels
        self.assertEqual((channel.protocol.name, channel.port), ("http", 8080))
        self.assertEqual((pages.topic_in, pages.topic_out),
                         (channel.topic_out, channel.topic_in))

    def test_bridgeNodes(self):
        """A sends each QoS's listener topic out through its bridge, B takes the
        same MQTT topic in and writes it to its listener."""
        (la, ca, ba), (lb, cb, bb) = bridge.daemonConfigs(1884)
        a = parse(daemonXml(la, ca, ba), path="a.xml")
        b = parse(daemonXml(lb, cb, bb), path="b.xml")
        (bridgeA,), (bridgeB,) = a.bridges, b.bridges
        self.assertEqual((bridgeA.name, bridgeA.host, bridgeA.port), ("cluster",
                                                                      "127.0.0.1", 1884))
        self.assertEqual((bridgeA.node_id, bridgeB.node_id), ("node-a", "node-b"))
        self.assertNotEqual(bridgeA.effective_client_id, bridgeB.effective_client_id)
        for qos in (0, 1):
            listenerA = next(c for c in a.listeners if c.name == f"in-qos{qos}")
            listenerB = next(c for c in b.listeners if c.name == f"out-qos{qos}")
            self.assertEqual((listenerA.direction, listenerB.direction), ("in", "out"))
            self.assertEqual(listenerA.protocol.inbound.delimiter, b"\n")
            topicA = next(t for t in bridgeA.topics if t.qos == qos)
            topicB = next(t for t in bridgeB.topics if t.qos == qos)
            self.assertEqual((topicA.local, topicA.direction), (listenerA.topic_in, "out"))
            self.assertEqual((topicB.local, topicB.direction), (listenerB.topic_out, "in"))
            self.assertEqual(topicA.remote, topicB.remote)
            # the paho pair's topic is not one the bridges carry
            self.assertNotIn(bridge.direct(qos), {t.remote for t in bridgeB.topics})
        self.assertEqual((a.channels, b.channels), ((), ()))

    def test_noBridgesSection(self):
        """Without bridges the file is what it was before they existed."""
        self.assertNotIn("<bridges>", mediaXml([("l", {"port": 0})]))
        self.assertEqual(daemonXml([("l", {"port": 0})]),
                         daemonXml([("l", {"port": 0})], (), ()))

    def test_quoting(self):
        """Property values are XML-escaped."""
        xml = mediaXml(channels=[("a&b", {"host": "x<y"})])
        root = etree.fromstring(xml.encode())
        channel = root.find("directchannels/channel")
        self.assertEqual(channel.get("name"), "a&b")
        self.assertEqual(channel.find("property").get("value"), "x<y")


class TcpWire(StringTransport):
    """A StringTransport that records TCP_NODELAY, as the bare peers set it."""

    noDelay = False

    def setTcpNoDelay(self, enabled):
        self.noDelay = enabled


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

    def test_xmlConsoleAnswers(self):
        """The bare console answers every request of a read, as the console
        would, in one write; a request cut by the read waits for its end."""
        console = xmlconsole.Console()
        wire_ = TcpWire()
        console.makeConnection(wire_)
        data = request(1) + b"\x01" + request(2) + b"\x01" + request(3)
        console.dataReceived(data)
        self.assertEqual(wire_.value(), xmlloop.answer(request(1))
                         + xmlloop.answer(request(2)))
        console.dataReceived(b"\x01")
        self.assertTrue(wire_.value().endswith(xmlloop.answer(request(3))))
        self.assertTrue(wire_.noDelay)

    def test_httpForwarder(self):
        """Paths in as lines, pipelined GETs out, bodies back to whoever asked,
        in order, whatever the reads' boundaries; TCP_NODELAY on both sides."""
        upstream = httpforwarder.Upstream(8080)
        upstreamWire = TcpWire()
        upstream.makeConnection(upstreamWire)
        clients, wires = [], []
        for _ in range(2):
            client = httpforwarder.Client(upstream)
            wires.append(TcpWire())
            client.makeConnection(wires[-1])
            clients.append(client)
        clients[0].dataReceived(b"/a\n/b")
        clients[1].dataReceived(b"/c\n")
        clients[0].dataReceived(b"\n")
        self.assertEqual(upstreamWire.value(), b"".join(
            b"GET /%s HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nUser-Agent: aiengine/0.1.0"
            b"\r\nAccept: */*\r\n\r\n" % page for page in (b"a", b"c", b"b")))
        responses = b"".join(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s"
                             % (len(body), body) for body in (b"AA", b"CCC", b""))
        for i in range(0, len(responses), 7):
            upstream.dataReceived(responses[i:i + 7])
        self.assertEqual(wires[0].value(), b"AA\n\n")
        self.assertEqual(wires[1].value(), b"CCC\n")
        self.assertTrue(all(wire.noDelay for wire in [upstreamWire] + wires))


class ServerTests(TestCase):
    """The peer servers' configurations, and what happens when one is missing."""

    def test_redisArgs(self):
        args = servers.redisArgs(7001, Path("/w"))
        pairs = dict(zip(args[::2], args[1::2]))
        self.assertEqual((pairs["--port"], pairs["--bind"], pairs["--save"],
                          pairs["--appendonly"], pairs["--daemonize"]),
                         ("7001", "127.0.0.1", "", "no", "no"))
        self.assertEqual(pairs["--client-output-buffer-limit"], "pubsub 0 0 0")

    def test_mosquittoConf(self):
        lines = servers.mosquittoConf(7002).splitlines()
        self.assertIn("listener 7002 127.0.0.1", lines)
        self.assertIn("allow_anonymous true", lines)
        self.assertIn("persistence false", lines)
        self.assertFalse(any(line.startswith("port ") for line in lines))

    def test_bridgeMosquittoConf(self):
        """The bridge benchmark's broker: the usual one, without queue limits."""
        lines = bridge.mosquittoConf(7004).splitlines()
        self.assertEqual(lines[:len(servers.mosquittoConf(7004).splitlines())],
                         servers.mosquittoConf(7004).splitlines())
        self.assertIn("max_queued_messages 1000000", lines)
        self.assertIn("max_inflight_messages 0", lines)

    def test_bridgeSkipped(self):
        """Without mosquitto every bridge row is a SKIP with the reason; nothing starts."""
        def unavailable(kind, settings):
            raise servers.Unavailable(f"no {kind}")

        self.patch(bridge.servers, "install", unavailable)
        rows = bridge.run(Settings(workdir=Path(self.mktemp())))
        self.assertEqual(len(rows), 4)
        self.assertEqual({row.skipped for row in rows}, {"no mosquitto"})
        self.assertEqual([row.target for row in rows],
                         [">= 0.8", ">= 0.7, >= 5,000/s", "info", "info"])

    def test_httpviaSkipped(self):
        """Without nginx both windows' rows and the bare forwarder's are SKIPs."""
        def unavailable(kind, settings):
            raise servers.Unavailable(f"no {kind}")

        self.patch(servers, "install", unavailable)
        rows = httpvia.run(Settings(workdir=Path(self.mktemp())))
        self.assertEqual({row.skipped for row in rows}, {"no nginx"})
        self.assertEqual([row.target for row in rows], [">= 0.5", "info"] * 2)
        self.assertTrue(rows[1].measure.startswith("bare Twisted forwarder"))

    def test_nginxConf(self):
        root = Path(self.mktemp()).resolve()
        text = servers.nginxConf(7003, root, asRoot=False)
        self.assertIn("listen 127.0.0.1:7003;", text)
        self.assertIn(f"root {root}/www;", text)
        self.assertIn("keepalive_requests", text)
        self.assertNotIn("user ", text)
        self.assertIn("user root;", servers.nginxConf(7003, root, asRoot=True))
        for line in text.splitlines():
            if "_path " in line or line.startswith(("pid ", "error_log ")):
                self.assertIn(str(root), line)  # nothing of the system's nginx

    def test_nginxAcceptsConf(self):
        """nginx itself accepts the configuration (when it is installed)."""
        program = servers.binary("nginx")
        if not program:
            raise SkipTest("nginx is not installed")
        root = Path(self.mktemp()).resolve()
        (root / "www").mkdir(parents=True)
        (root / "temp").mkdir()
        conf = root / "nginx.conf"
        conf.write_text(servers.nginxConf(servers.freePort(), root,
                                          servers.os.geteuid() == 0))
        done = servers.subprocess.run([program, "-t", "-p", str(root), "-e",
                               str(root / "error.log"), "-c", str(conf)],
                              capture_output=True, text=True)
        self.assertEqual(done.returncode, 0, done.stderr)

    def test_page(self):
        page = servers.page()
        self.assertEqual(len(page), servers.PAGE_SIZE)
        self.assertNotIn(b"\n", page)

    def _missing(self, root):
        self.patch(servers, "binary", lambda name: None)
        self.patch(servers.os, "geteuid", lambda: 0 if root else 1000)
        self.patch(servers, "_apt", {"updated": False, "failed": {}})
        calls = []

        def run(argv, log, timeout):
            calls.append(argv)
            return servers.subprocess.CompletedProcess(argv, 100)

        self.patch(servers, "_run", run)
        settings = Settings(workdir=Path(self.mktemp()))
        settings.say = lambda text: None
        return settings, calls

    def test_notRoot(self):
        """Not root: no apt, a skip with what to run."""
        settings, calls = self._missing(root=False)
        e = self.assertRaises(servers.Unavailable, servers.install, "redis", settings)
        self.assertIn("not root", str(e))
        self.assertIn("apt-get install -y redis-server", str(e))
        self.assertEqual(calls, [])

    def test_aptFails(self):
        """Root: apt-get update once, one install per package, then a skip."""
        settings, calls = self._missing(root=True)
        settings.workdir.mkdir()
        self.patch(servers, "binary", lambda name: "/usr/bin/apt-get"
                   if name == "apt-get" else None)
        self.assertRaises(servers.Unavailable, servers.install, "redis", settings)
        self.assertRaises(servers.Unavailable, servers.install, "redis", settings)
        self.assertRaises(servers.Unavailable, servers.install, "nginx", settings)
        commands = [argv[argv.index("install") + 1:] if "install" in argv else ["update"]
                    for argv in calls]
        self.assertEqual(commands, [["update"], ["-y", "--no-install-recommends",
                                                 "redis-server"],
                                    ["-y", "--no-install-recommends", "nginx-light"]])

    def test_skippedRow(self):
        text = table([Row("ping", "pings", target=">= 0.5", skipped="no redis")])
        self.assertIn("| ping | pings | - | - | - | >= 0.5 | SKIP |", text)
        self.assertIn("- ping, pings: skipped: no redis", text)


class WireTests(TestCase):
    """The pub/sub clients' framing: what they write, count and decode."""

    def delivered(self, fmt, topic, bodies):
        """What a server writes to a subscriber for ``bodies``."""
        if fmt == "resp":
            return b"".join(wire.respCommand("message", topic, b) for b in bodies)
        return b"".join(wire.publish(fmt, topic, b) for b in bodies)

    def test_lineIs100Bytes(self):
        self.assertEqual(len(wire.publish("lines", "t", wire.body(5))), 100)

    def test_counterAcrossSplits(self):
        """Every delivery is counted once, however the stream is cut."""
        for fmt in wire.FORMATS:
            stream = self.delivered(fmt, "bench", [wire.body(i) for i in range(7)])
            for step in (1, 2, 3, 5, 13, 64, len(stream)):
                counter = wire.Counter(wire.deliveryMarker(fmt, "bench"))
                for i in range(0, len(stream), step):
                    counter.feed(stream[i:i + step])
                self.assertEqual(counter.count, 7, (fmt, step))

    def test_decoderAcrossSplits(self):
        bodies = [wire.stampedBody(1000.5 + i) for i in range(4)]
        for fmt in wire.FORMATS:
            stream = self.delivered(fmt, "bench", bodies)
            for step in (1, 7, len(stream)):
                decoder = wire.Decoder(fmt)
                out = []
                for i in range(0, len(stream), step):
                    out += decoder.feed(stream[i:i + step])
                self.assertEqual(out, bodies, (fmt, step))
        self.assertEqual(wire.stampOf(bodies[2]), 1002.5)

    def test_respPublish(self):
        self.assertEqual(wire.publish("resp", "t", b"abc"),
                         b"*3\r\n$7\r\nPUBLISH\r\n$1\r\nt\r\n$3\r\nabc\r\n")
        confirm = b"*3\r\n$9\r\nsubscribe\r\n$5\r\nbench\r\n:1\r\n"
        self.assertIsNone(wire.subscribed("resp", confirm[:-1], "bench"))
        self.assertEqual(wire.subscribed("resp", confirm + b"*3", "bench"), len(confirm))
        self.assertRaises(ValueError, wire.subscribed, "resp", b"-ERR nope\r\n" * 5,
                          "bench")

    def test_mqttPackets(self):
        self.assertEqual(wire.mqttConnect("c"),
                         b"\x10\x0d\x00\x04MQTT\x04\x02\x00\x00\x00\x01c")
        self.assertEqual(wire.subscribe("mqtt", "ab"),
                         b"\x82\x07\x00\x01\x00\x02ab\x00")
        packet = wire.publish("mqtt", "bench", wire.body(1))
        self.assertEqual(packet[:2], bytes([0x30, 2 + 5 + wire.BODY_SIZE]))
        long = wire.mqttPacket(0x30, b"x" * 200)
        self.assertEqual(long[1:3], b"\xc8\x01")  # 200 = 0x48 + 1 * 128
        self.assertEqual(wire.helloDone("mqtt", b"\x20\x02\x00\x00rest"), 4)
        self.assertIsNone(wire.helloDone("mqtt", b"\x20\x02"))
        self.assertRaises(ValueError, wire.helloDone, "mqtt", b"\x20\x02\x00\x05")
        self.assertEqual(wire.subscribed("mqtt", b"\x90\x03\x00\x01\x00", "t"), 5)
        self.assertRaises(ValueError, wire.subscribed, "mqtt", b"\x90\x03\x00\x01\x80",
                          "t")

    def test_markersNotInBodies(self):
        for fmt in ("resp", "mqtt"):
            marker = wire.deliveryMarker(fmt, "bench")
            self.assertNotIn(marker, wire.body(1234567))
            self.assertNotIn(marker, wire.stampedBody(12345.678))

    def test_publisherChunks(self):
        """A publisher writes exactly --count messages."""
        for count in (1, pubsubclient.CHUNK_MESSAGES, 2 * pubsubclient.CHUNK_MESSAGES + 7):
            plan = pubsubclient.chunks("resp", "bench", count)
            written = sum(chunk.count(b"PUBLISH") * times for chunk, times in plan)
            self.assertEqual(written, count)

    def test_publisherSizes(self):
        self.assertEqual(pubsub.published(Settings(), 10, 1) * 10,
                         pubsub.published(Settings(), 1, 10) * 10)


class FakePaho:
    """What the paho pair's peer calls on its client."""

    def __init__(self):
        self.published = []
        self.pending = False

    def publish(self, topic, payload, qos):
        self.published.append((topic, payload, qos))
        self.pending = True

    def want_write(self):
        return self.pending


class MqttClientTests(TestCase):
    """The paho pair's window, batches, pace and counting, without a broker."""

    def peer(self, role, qos=0, count=10, rate=None, skip=None):
        self.events = []
        self.patch(mqttclient, "emit",
                   lambda event, **fields: self.events.append((event, fields)))
        self.clock = Clock()
        self.patch(mqttclient, "reactor", self.clock)
        self.patch(mqttclient, "now", self.clock.seconds)
        args = argparse.Namespace(
            role=role, port=1883, topic="bench/direct", qos=qos, count=count, rate=rate,
            skip=skip, stall=5.0, timeout=60.0)
        peer = mqttclient.Peer(args)
        peer.client = FakePaho()
        peer.stall.clock = self.clock
        return peer

    def names(self):
        return [event for event, _ in self.events]

    def test_qos1Window(self):
        """At most WINDOW unacknowledged; each PUBACK lets one more go."""
        window = mqttclient.WINDOW
        peer = self.peer("pub", qos=1, count=window + 5)
        peer.go()
        self.assertEqual(len(peer.client.published), window)
        for n in range(5):
            peer.onPublish(None, None, n, None, None)
            self.assertEqual(len(peer.client.published), window + n + 1)
        self.assertEqual(self.names(), ["started", "sent"])
        for n in range(window):
            peer.onPublish(None, None, n, None, None)
        self.assertEqual(self.names(), ["started", "sent", "acked"])
        self.assertEqual({qos for _, _, qos in peer.client.published}, {1})
        self.assertEqual({len(body) for _, body, _ in peer.client.published},
                         {wire.BODY_SIZE})

    def test_qos0Batches(self):
        """A batch whenever paho has written the previous one; exactly --count."""
        batch = mqttclient.BATCH
        peer = self.peer("pub", qos=0, count=2 * batch + 3)
        peer.go()
        self.assertEqual(len(peer.client.published), batch)
        peer.written()  # paho still has some to write
        self.assertEqual(len(peer.client.published), batch)
        for expected in (2 * batch, 2 * batch + 3, 2 * batch + 3):
            peer.client.pending = False
            peer.written()
            self.assertEqual(len(peer.client.published), expected)
        self.assertEqual(self.names(), ["started", "sent"])

    def test_rate(self):
        """With --rate, each message when it is due, stamped with its send time."""
        peer = self.peer("pub", qos=1, count=5, rate=1000.0)
        self.clock.advance(100)
        peer.go()
        self.assertEqual(len(peer.client.published), 1)
        for _ in range(4):
            self.clock.advance(0.001)
        stamps = [wire.stampOf(body) for _, body, _ in peer.client.published]
        self.assertEqual(len(stamps), 5)
        for got, expected in zip(stamps, (100.0, 100.001, 100.002, 100.003, 100.004)):
            self.assertAlmostEqual(got, expected, places=6)
        self.assertIn("sent", self.names())

    def test_subscriberLatency(self):
        peer = self.peer("sub", count=3, skip=1)

        class Message:
            def __init__(self, t):
                self.payload = wire.stampedBody(t)

        for sent, read in ((1.0, 1.5), (2.0, 2.25), (3.0, 3.001)):
            peer.readTime = read
            peer.onMessage(None, None, Message(sent))
        (event, done), = self.events
        self.assertEqual((event, done["complete"], done["received"], done["lost"],
                          done["counted"]), ("done", True, 3, 0, 2))
        self.assertEqual((done["first"], done["last"]), (1.5, 3.001))
        self.assertAlmostEqual(done["max"], 0.25)

    def test_subscriberStall(self):
        """Nothing for --stall seconds: done, incomplete, with the count so far."""
        peer = self.peer("sub", count=10)
        peer.readTime = 1.0
        peer.onMessage(None, None, None)
        self.clock.advance(5)
        (event, done), = self.events
        self.assertEqual((event, done["complete"], done["deliveries"]), ("done", False, 1))
        self.assertIn("stalled", done["why"])


class RequestResponseTests(TestCase):
    """rrclient's framings cut and check the answers of each server."""

    def feed(self, framing, stream, step):
        out = []
        for i in range(0, len(stream), step):
            out += framing.feed(stream[i:i + step])
        return out

    def test_http(self):
        framing = rrclient.Framing("http", 80, "/page.html", size=4)
        response = (b"HTTP/1.1 200 OK\r\nServer: nginx\r\nContent-Length: 4\r\n"
                    b"Connection: keep-alive\r\n\r\nabcd")
        wrong = b"HTTP/1.1 404 Not Found\r\nContent-Length: 2\r\n\r\nno"
        for step in (1, 9, 1000):
            framing.buffer = b""
            self.assertEqual(self.feed(framing, response + wrong + response, step),
                             [True, False, True])
        self.assertIn(b"GET /page.html HTTP/1.1\r\nHost: 127.0.0.1:80\r\n",
                      framing.request(0))

    def test_lines(self):
        framing = rrclient.Framing("lines", 1, "/p", size=3)
        self.assertEqual(framing.request(0), b"/p\n")
        self.assertEqual(self.feed(framing, b"abc\nab\nxyz\n", 2), [True, False, True])

    def test_console(self):
        framing = rrclient.Framing("console-ping", 1)
        self.assertEqual(framing.request(3),
                         b'<xmlcall class="Engine" method="ping" requestId="R3"/>\x01')
        answer = resultElement("OK", "R3")
        etree.SubElement(answer, "pong")
        self.assertEqual(self.feed(framing, frame(answer) * 2, 5), [True, True])
        request = rrclient.Framing("console-request", 1, topicOut="a", topicIn="b",
                                   message="PING").request(1)
        root = etree.fromstring(request.rstrip(b"\x01"))
        self.assertEqual((root.get("class"), root.get("method")), ("Topics", "request"))
        self.assertEqual({p.get("name"): p.get("value") for p in root.iter("property")},
                         {"topic-out": "a", "topic-in": "b", "message": "PING",
                          "timeout": "5"})

    def test_redis(self):
        framing = rrclient.Framing("redis-ping", 1)
        self.assertEqual(framing.request(0), b"*1\r\n$4\r\nPING\r\n")
        self.assertEqual(self.feed(framing, b"+PONG\r\n-ERR x\r\n+PONG\r\n", 3),
                         [True, False, True])

    def test_percentiles(self):
        values = [i / 1000 for i in range(1, 1001)]
        summary = latencyclient.summary(values)
        self.assertEqual((summary["p50"], summary["p99"], summary["max"]),
                         (0.5, 0.99, 1.0))


class FigureTests(TestCase):
    """The arithmetic and the table."""

    def test_maxInWindow(self):
        self.assertEqual(maxInWindow([]), 0)
        self.assertEqual(maxInWindow([5.0, 1.0, 1.05, 1.09, 1.2, 1.25]), 3)
        self.assertEqual(maxInWindow([0.0, 0.2, 0.4]), 1)
        self.assertEqual(maxInWindow([0.0] * 10), 10)

    def test_spread(self):
        self.assertEqual(spread([3, None, 1, 2]), (1, 2, 3))
        self.assertEqual(spread([None]), (None, None, None))

    def test_groups(self):
        self.assertEqual(chosen([]), DEFAULT)
        self.assertEqual(DEFAULT, BASELINES + PEERS)
        self.assertEqual(chosen(["peers"]), ["pubsub", "latency", "ping", "httpvia",
                                             "bridge"])
        self.assertEqual(chosen(["baselines"]), ["relay", "console", "scale", "http",
                                                 "storm"])
        self.assertEqual(chosen(["relay", "peers", "ping"]), ["relay"] + PEERS)

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
