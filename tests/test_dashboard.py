"""The admin listener's dashboard without a browser: its rows and diffs, its
event stream (on a ``Clock``), and its HTTP endpoints through Twisted's
``Agent`` against an engine built from media.xml text on loopback ports.

The browser itself is driven in :mod:`tests.test_dashboard_browser`.
"""

from __future__ import annotations

import json
import time
from io import BytesIO

from lxml import etree
from twisted.internet import defer, reactor
from twisted.internet.protocol import Protocol
from twisted.internet.task import Clock
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial import unittest
from twisted.web.client import (Agent, FileBodyProducer, HTTPConnectionPool,
                                ResponseDone, ResponseNeverReceived, readBody)
from twisted.web.http_headers import Headers

from aiengine.config import parse
from aiengine.dashboard import STATIC_FILES, staticFile
from aiengine.dashboard.calls import examples
from aiengine.dashboard.feed import COLUMNS, EventFeed, diff, readRows
from aiengine.dashboard.sessions import Sessions
from aiengine.engine import Engine
from tests.support import pendingCalls, waitFor
from tests.test_admin import AdminTestCase, admin
from tests.test_console import xmlcall
from tests.test_routing import listener

ACTION = {b"x-aiengine": [b"1"]}


# -- the feed, on a Clock ---------------------------------------------------------


class FakeChannel:
    """What the feed reads of a channel: ``status()``."""

    def __init__(self, name, state="connected"):
        self.name = name
        self.values = {"name": name, "state": state, "stateSince": 0.0,
                       "host": "127.0.0.1", "port": 9000, "messagesIn": 0,
                       "messagesOut": 0, "bytesIn": 0, "bytesOut": 0, "queued": 0,
                       "dropped": 0, "failures": 0, "permanent": True,
                       "lastError": None}
        self.statusCalls = 0

    def status(self):
        self.statusCalls += 1
        return dict(self.values)


class FakeBroker:
    def topics(self):
        return []


class FakeEngine:
    def __init__(self, *names):
        self.channels = {name: FakeChannel(name) for name in names}
        self.listeners = {}
        self.broker = FakeBroker()


class FakeRequest:
    """The part of a twisted.web request the feed uses."""

    def __init__(self):
        self.written = []
        self.finished = False
        self.producer = None
        self._finish = []

    def registerProducer(self, producer, streaming):
        assert self.producer is None and streaming
        self.producer = producer

    def unregisterProducer(self):
        self.producer = None

    def write(self, data):
        assert not self.finished
        self.written.append(data)

    def notifyFinish(self):
        d = defer.Deferred()
        self._finish.append(d)
        return d

    def finish(self):
        self.finished = True
        for d in self._finish:
            d.callback(None)

    def lose(self):
        """The client went away."""
        for d in self._finish:
            d.errback(ConnectionError("gone"))

    def events(self):
        """``[(kind, data)]`` of what was written; ``("comment", text)`` too."""
        found = []
        for block in b"".join(self.written).split(b"\n\n"):
            kind = data = None
            for line in block.split(b"\n"):
                if line.startswith(b"event: "):
                    kind = line[7:].decode()
                elif line.startswith(b"data: "):
                    data = json.loads(line[6:])
                elif line.startswith(b":"):
                    kind, data = "comment", line[1:].strip().decode()
            if kind is not None:
                found.append((kind, data))
        return found


class DiffTests(unittest.SynchronousTestCase):
    """diff(): changed rows whole, removals by name, unchanged sections absent."""

    def test_diff(self):
        before = {"channels": {"a": ("a", 1), "b": ("b", 2)}, "topics": {"t": ("t", 0)}}
        after = {"channels": {"a": ("a", 1), "b": ("b", 3), "c": ("c", 0)},
                 "topics": {"t": ("t", 0)}}
        self.assertEqual(diff(before, after),
                         {"channels": {"rows": [["b", 3], ["c", 0]], "removed": []}})
        self.assertEqual(diff(after, before),
                         {"channels": {"rows": [["b", 2]], "removed": ["c"]}})
        self.assertEqual(diff(after, after), {})
        # A rename: one addition and one removal, same count.
        renamed = {"channels": {"a": ("a", 1), "b": ("b", 3), "d": ("d", 0)},
                   "topics": {"t": ("t", 0)}}
        self.assertEqual(diff(after, renamed),
                         {"channels": {"rows": [["d", 0]], "removed": ["c"]}})
        self.assertEqual(diff({}, before)["topics"], {"rows": [["t", 0]], "removed": []})


class FeedTests(unittest.SynchronousTestCase):
    """EventFeed on a Clock: a snapshot, then only what changed, once a second."""

    def setUp(self):
        self.clock = Clock()
        self.clock.advance(1000)
        self.engine = FakeEngine("a", "b")
        self.feed = EventFeed(self.engine, self.clock, extra=lambda: {"actions": True})

    def connect(self):
        request = FakeRequest()
        self.feed.add(request)
        return request

    def test_snapshotFirst(self):
        request = self.connect()
        self.assertTrue(request.written[0].startswith(b"retry: 2000\nevent: snapshot\n"))
        [(kind, data)] = request.events()
        self.assertEqual(kind, "snapshot")
        self.assertEqual(data["now"], 1000)
        self.assertTrue(data["actions"])
        self.assertEqual(data["channels"]["columns"], list(COLUMNS["channels"]))
        rows = {row[0]: dict(zip(COLUMNS["channels"], row))
                for row in data["channels"]["rows"]}
        self.assertEqual(set(rows), {"a", "b"})
        self.assertEqual(rows["a"]["state"], "connected")
        self.assertEqual(rows["a"]["peer"], "127.0.0.1:9000")
        self.assertEqual(data["listeners"]["rows"], [])
        self.assertEqual(data["topics"]["rows"], [])
        self.assertIsNotNone(request.producer)

    def test_onlyChanges(self):
        """No change, no event; a change, the changed row only, within a second."""
        request = self.connect()
        self.clock.advance(1)
        self.assertEqual(len(request.events()), 1)
        self.engine.channels["a"].values.update(state="waiting", stateSince=1001.5,
                                                failures=1)
        self.clock.advance(1)
        kind, data = request.events()[-1]
        self.assertEqual(kind, "diff")
        self.assertEqual(data["now"], 1002)
        self.assertEqual(set(data), {"now", "channels"})
        [row] = data["channels"]["rows"]
        self.assertEqual((row[0], row[1], row[2]), ("a", "waiting", 1001.5))
        self.assertEqual(data["channels"]["removed"], [])
        # The same values again: nothing to send.
        self.clock.advance(1)
        self.assertEqual(len(request.events()), 2)

    def test_addedAndRemoved(self):
        request = self.connect()
        del self.engine.channels["b"]
        self.engine.channels["c"] = FakeChannel("c", "idle")
        self.clock.advance(1)
        kind, data = request.events()[-1]
        self.assertEqual(kind, "diff")
        self.assertEqual([row[0] for row in data["channels"]["rows"]], ["c"])
        self.assertEqual(data["channels"]["removed"], ["b"])

    def test_keepalive(self):
        """A quiet stream gets a comment every 15 s, so that it stays open."""
        request = self.connect()
        self.clock.pump([1] * 14)
        self.assertEqual(len(request.events()), 1)
        self.clock.advance(1)
        self.assertEqual(request.events()[-1], ("comment", "keepalive"))
        self.clock.pump([1] * 14)
        self.assertEqual(len(request.events()), 2)

    def test_sharedReading(self):
        """Two clients: one reading of the engine per second, the same diff to both."""
        first, second = self.connect(), self.connect()
        calls = self.engine.channels["a"].statusCalls
        self.engine.channels["b"].values["messagesIn"] = 5
        self.clock.advance(1)
        self.assertEqual(self.engine.channels["a"].statusCalls, calls + 1)
        self.assertEqual(first.written[-1], second.written[-1])
        self.assertEqual(first.events()[-1][0], "diff")

    def test_clientGoes(self):
        """The last client gone, the loop stops: nothing left on the clock."""
        first, second = self.connect(), self.connect()
        first.lose()
        self.assertEqual(len(self.feed.clients), 1)
        self.assertTrue(self.clock.getDelayedCalls())
        second.lose()
        self.assertEqual(self.feed.clients, set())
        self.assertEqual(self.clock.getDelayedCalls(), [])
        # A new client starts it again, from a fresh snapshot.
        third = self.connect()
        self.engine.channels["a"].values["queued"] = 3
        self.clock.advance(1)
        self.assertEqual([kind for kind, _ in third.events()], ["snapshot", "diff"])

    def test_slowClient(self):
        """A client whose connection is full gets no diffs, then a snapshot."""
        slow, fast = self.connect(), self.connect()
        slow.producer.pauseProducing()
        self.engine.channels["a"].values["messagesOut"] = 1
        self.clock.advance(1)
        self.engine.channels["a"].values["messagesOut"] = 2
        self.clock.advance(1)
        self.assertEqual(len(slow.events()), 1)
        self.assertEqual([kind for kind, _ in fast.events()], ["snapshot", "diff", "diff"])
        slow.producer.resumeProducing()
        self.clock.advance(1)  # nothing changed, but it missed diffs
        kind, data = slow.events()[-1]
        self.assertEqual(kind, "snapshot")
        rows = {row[0]: row for row in data["channels"]["rows"]}
        self.assertEqual(rows["a"][COLUMNS["channels"].index("messagesOut")], 2)
        self.assertEqual(len(fast.events()), 3)

    def test_close(self):
        """At shutdown every stream is finished and the loop stopped."""
        first, second = self.connect(), self.connect()
        self.feed.close()
        self.assertTrue(first.finished and second.finished)
        self.assertIsNone(first.producer)
        self.assertEqual(self.feed.clients, set())
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_brokenReading(self):
        """A bug while reading is logged once and ends the streams (pages come
        back to a fresh snapshot), instead of a loop failing every second."""
        request = self.connect()

        def broken():
            raise RuntimeError("bug")

        self.engine.channels["a"].status = broken
        self.clock.advance(1)
        self.assertTrue(request.finished)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)


class ScaleTests(unittest.SynchronousTestCase):
    """10,000 channels: a snapshot and a diff complete (the time is printed)."""

    def test_tenThousandChannels(self):
        channels = "".join(
            f'<channel name="c{i:05d}"><property name="protocol" value="text-messages"/>'
            f'<property name="host" value="127.0.0.1"/>'
            f'<property name="port" value="{1024 + i}"/></channel>' for i in range(10000))
        config = parse(f"<service><directchannels>{channels}</directchannels>"
                       f"</service>".encode())
        engine = Engine(config, Clock())
        started = time.perf_counter()
        first = readRows(engine)
        read = time.perf_counter() - started
        engine.channels["c00042"].messagesIn += 1
        del engine.channels["c09999"]
        started = time.perf_counter()
        second = readRows(engine)
        changes = diff(first, second)
        tick = time.perf_counter() - started
        started = time.perf_counter()
        snapshot = EventFeed(engine, Clock()).snapshot(second)
        encode = time.perf_counter() - started
        self.assertEqual(len(first["channels"]), 10000)
        self.assertEqual([row[0] for row in changes["channels"]["rows"]], ["c00042"])
        self.assertEqual(changes["channels"]["removed"], ["c09999"])
        # Measured, not asserted: a loaded CI machine must not fail this.
        print(f"\n10,000 channels: reading {read * 1000:.0f} ms, reading and diff "
              f"{tick * 1000:.0f} ms, snapshot event {encode * 1000:.0f} ms "
              f"({len(snapshot) // 1024} KiB)")


class SessionTests(unittest.SynchronousTestCase):
    def test_lifetime(self):
        clock = Clock()
        sessions = Sessions(clock)
        token = sessions.create()
        self.assertTrue(sessions.valid(token))
        self.assertFalse(sessions.valid(token + "x"))
        self.assertFalse(sessions.valid(None))
        clock.advance(sessions.lifetime)
        self.assertFalse(sessions.valid(token))
        self.assertEqual(len(sessions), 0)
        token = sessions.create()
        sessions.end(token)
        self.assertFalse(sessions.valid(token))

    def test_bounded(self):
        sessions = Sessions(Clock())
        sessions.size = 3
        tokens = [sessions.create() for _ in range(4)]
        self.assertEqual(len(sessions), 3)
        self.assertFalse(sessions.valid(tokens[0]))
        self.assertTrue(sessions.valid(tokens[3]))


# -- over HTTP ----------------------------------------------------------------------


class EventReader(Protocol):
    """Reads a ``text/event-stream`` body as it comes."""

    def __init__(self):
        self.buffer = b""
        self.events = []
        self.done = defer.Deferred()

    def dataReceived(self, data):
        self.buffer += data
        while b"\n\n" in self.buffer:
            block, self.buffer = self.buffer.split(b"\n\n", 1)
            request = FakeRequest()
            request.written.append(block + b"\n\n")
            self.events.extend(request.events())

    def connectionLost(self, reason):
        #: how the body ended (ResponseDone: cleanly)
        self.reason = reason
        self.done.callback(None)


class DashboardTestCase(AdminTestCase):
    """An engine with an admin listener, and requests with bodies."""

    @defer.inlineCallbacks
    def request(self, path, method=b"GET", headers=None, body=None, listenerName="admin"):
        """``(response, body)``; ``body`` bytes are sent as the request's."""
        url = f"http://127.0.0.1:{self.port(listenerName)}{path}".encode()
        producer = FileBodyProducer(BytesIO(body)) if body is not None else None
        response = yield self.agent.request(method, url, Headers(headers or {}), producer)
        data = yield readBody(response)
        return response, data

    def post(self, path, body=b"", headers=ACTION, **kwargs):
        return self.request(path, b"POST", headers, body, **kwargs)

    @defer.inlineCallbacks
    def snapshot(self, headers=None):
        response, body = yield self.request("/api/snapshot", headers=headers)
        self.assertEqual(response.code, 200, body)
        data = json.loads(body)
        return {section: {row[0]: dict(zip(data[section]["columns"], row))
                          for row in data[section]["rows"]}
                for section in COLUMNS} | {"actions": data["actions"]}

    @defer.inlineCallbacks
    def events(self, headers=None):
        """An open event stream: its reader (closed at cleanup)."""
        url = f"http://127.0.0.1:{self.port('admin')}/api/events".encode()
        agent = Agent(reactor, pool=HTTPConnectionPool(reactor, persistent=False))
        response = yield agent.request(b"GET", url, Headers(headers or {}))
        self.assertEqual(response.code, 200)
        self.assertEqual(response.headers.getRawHeaders(b"content-type"),
                         [b"text/event-stream"])
        reader = EventReader()
        response.deliverBody(reader)
        self.addCleanup(lambda: reader.done.called or (
            reader.transport.stopProducing(), reader.done)[1])
        return reader


class PageTests(DashboardTestCase):
    """GET /: the page's files, with headers that keep it to itself."""

    @defer.inlineCallbacks
    def test_files(self):
        yield self.startAdmin()
        response, body = yield self.request("/")
        self.assertEqual(response.code, 200)
        self.assertEqual(response.headers.getRawHeaders(b"content-type"),
                         [b"text/html; charset=utf-8"])
        for marker in (b"data-console-input", b"data-console-send",
                       b"data-console-output", b'src="app.js"', b'href="style.css"'):
            self.assertIn(marker, body)
        csp = response.headers.getRawHeaders(b"content-security-policy")[0]
        self.assertIn(b"script-src 'self'", csp)
        self.assertIn(b"frame-ancestors 'none'", csp)
        self.assertEqual(response.headers.getRawHeaders(b"x-frame-options"), [b"DENY"])
        for path, (name, contentType) in STATIC_FILES.items():
            response, body = yield self.request(path.decode())
            self.assertEqual((response.code, body), (200, staticFile(name)), path)
            self.assertEqual(response.headers.getRawHeaders(b"content-type"),
                             [contentType])
        # The page's script makes the markup the browser tests look for.
        script = staticFile("app.js")
        for marker in (b'"data-channel"', b"dataset.state", b'"data-action"',
                       b'"data-topic"', b"api/events", b"X-Aiengine"):
            self.assertIn(marker, script)
        response, _ = yield self.request("/app.js", method=b"POST", headers=ACTION)
        self.assertEqual(response.code, 405)

    @defer.inlineCallbacks
    def test_notFound(self):
        yield self.startAdmin()
        for path in ("/api/nope", "/api/channels/echo", "/api/channels/echo/explode",
                     "/app.js/x"):
            response, body = yield self.request(path)
            self.assertEqual(response.code, 404, path)
            self.assertEqual(json.loads(body)["ok"], False)

    @defer.inlineCallbacks
    def test_snapshot(self):
        """GET /api/snapshot: the rows the event stream starts with, as JSON."""
        yield self.startAdmin()
        self.engine.broker.publish("echo.out", b"hello")
        yield waitFor(lambda: self.engine.channels["echo"].messagesIn == 1,
                      what="the echo")
        found = yield self.snapshot()
        echo = found["channels"]["echo"]
        self.assertEqual(echo["state"], "connected")
        self.assertEqual(echo["peer"], f"127.0.0.1:{self.echoPort.getHost().port}")
        self.assertEqual((echo["messagesIn"], echo["messagesOut"]), (1, 1))
        self.assertEqual(echo["bytesOut"], len(b"hello\n"))  # with its delimiter
        self.assertLessEqual(echo["since"], reactor.seconds())
        self.assertEqual(set(found["listeners"]), {"debug", "admin", "gate"})
        self.assertEqual(found["listeners"]["admin"]["address"],
                         f"127.0.0.1:{self.port('admin')}")
        self.assertGreaterEqual(found["listeners"]["admin"]["connections"], 1)
        self.assertEqual(found["topics"]["echo.out"]["published"], 1)
        self.assertEqual(found["topics"]["echo.out"]["subscribers"], 1)
        self.assertTrue(found["actions"])

    @defer.inlineCallbacks
    def test_examples(self):
        yield self.startAdmin()
        response, body = yield self.request("/api/examples")
        found = json.loads(body)["examples"]
        self.assertEqual(found, examples())
        self.assertIn('<xmlcall class="Engine" method="ping" requestId="1"/>', found)
        self.assertEqual(len(found), 4)


class ActionTests(DashboardTestCase):
    """POST actions: the header, the method, and what they do."""

    @defer.inlineCallbacks
    def test_headerRequired(self):
        """Without X-Aiengine: 1 (what a cross-site form sends) nothing happens."""
        yield self.startAdmin()
        for path in ("/api/channels/echo/disconnect", "/api/console", "/api/publish"):
            for headers in (None, {b"x-aiengine": [b"0"]},
                            {b"content-type": [b"application/x-www-form-urlencoded"]}):
                response, body = yield self.post(path, b"x=1", headers=headers)
                self.assertEqual(response.code, 403, (path, headers))
                self.assertIn("X-Aiengine: 1", json.loads(body)["error"])
        self.assertEqual(self.engine.channels["echo"].state, "connected")

    @defer.inlineCallbacks
    def test_getRefused(self):
        """An action by GET (a link, an <img>) is refused."""
        yield self.startAdmin()
        for path in ("/api/channels/echo/disconnect", "/api/console", "/api/publish"):
            response, _ = yield self.request(path, headers=ACTION)
            self.assertEqual(response.code, 405, path)
            self.assertEqual(response.headers.getRawHeaders(b"allow"), [b"POST"])
        response, _ = yield self.post("/api/events")
        self.assertEqual(response.code, 405)
        self.assertEqual(self.engine.channels["echo"].state, "connected")

    @defer.inlineCallbacks
    def test_disconnectConnect(self):
        """Media.disconnect and Media.connect, as at the console."""
        yield self.startAdmin()
        response, body = yield self.post("/api/channels/echo/disconnect")
        self.assertEqual(response.code, 200, body)
        self.assertEqual(json.loads(body), {"ok": True, "channel": "echo",
                                            "action": "disconnect", "state": "stopped"})
        yield waitFor(lambda: not self.echo.connections, what="the server to see the close")
        response, body = yield self.post("/api/channels/echo/connect")
        self.assertEqual(response.code, 200, body)
        self.assertIn(json.loads(body)["state"], ("connecting", "connected"))
        yield waitFor(lambda: self.engine.channels["echo"].state == "connected"
                      and len(self.echo.connections) == 1, what="the channel back")

    @defer.inlineCallbacks
    def test_unknownChannel(self):
        yield self.startAdmin()
        response, body = yield self.post("/api/channels/ecko/connect")
        self.assertEqual(response.code, 404)
        error = json.loads(body)["error"]
        self.assertIn("Unable to find channel by name=ecko", error)
        self.assertIn("did you mean 'echo'?", error)
        # A name that needs quoting in a URL.
        response, body = yield self.post("/api/channels/a%2Fb%20c/connect")
        self.assertIn("name=a/b c", json.loads(body)["error"])

    @defer.inlineCallbacks
    def test_console(self):
        """The xmlcall runs as at a console connection; the answer is its
        <xmlcallresult>, counted in the console's metrics."""
        yield self.startAdmin()
        response, body = yield self.post("/api/console",
                                         xmlcall("Engine", "ping", "p1", name="n"))
        self.assertEqual(response.code, 200)
        self.assertEqual(response.headers.getRawHeaders(b"content-type"),
                         [b"application/xml; charset=utf-8"])
        answer = etree.fromstring(body)
        self.assertEqual((answer.tag, answer.get("requestId"), answer.get("name"),
                          answer.get("status")), ("xmlcallresult", "p1", "n", "OK"))
        self.assertEqual(answer[0].tag, "pong")
        self.assertEqual(self.engine.registry.calls[("Engine", "ping", "ok")], 1)

        response, body = yield self.post("/api/console", xmlcall(
            "Media", "listChannels", "t", format="table"))
        table = etree.fromstring(body).findtext("table")
        self.assertIn("echo", table)
        self.assertIn("connected", table)

        for call, words in (
                (xmlcall("Engine", "pnig", "e1"), "did you mean 'ping'?"),
                (xmlcall("Media", "status", "e2", channel="nope"),
                 "Unable to find channel by name=nope"),
                (xmlcall("Media", "status", "e3"), "Missing required parameter 'channel'"),
                (b"<xmlcall class='Engine'", "malformed XML"),
                (xmlcall("Topics", "subscribe", "e4", topic="t"),
                 "Topics.subscribe needs a console connection"),
                (xmlcall("Engine", "login", "e5", secret="x"),
                 "Engine.login needs a console connection")):
            response, body = yield self.post("/api/console", call)
            self.assertEqual(response.code, 200)
            answer = etree.fromstring(body)
            self.assertEqual(answer.get("status"), "Exception", body)
            self.assertIn(words, answer.findtext("exception"))
        self.assertEqual(self.engine.registry.calls[("Media", "status", "exception")], 1)

    @defer.inlineCallbacks
    def test_consoleClientGoes(self):
        """A call still waiting when its client goes is cancelled."""
        yield self.startAdmin()
        url = f"http://127.0.0.1:{self.port('admin')}/api/console".encode()
        agent = Agent(reactor, pool=HTTPConnectionPool(reactor, persistent=False))
        d = agent.request(b"POST", url, Headers(ACTION), FileBodyProducer(BytesIO(
            xmlcall("Media", "receive", "r", channel="echo", timeout="30"))))
        dashboard = self.engine.listeners["admin"].factory.resource.dashboard
        yield waitFor(lambda: dashboard.pending, what="the call to run")
        d.cancel()
        yield self.assertFailure(d, ResponseNeverReceived)
        yield waitFor(lambda: not dashboard.pending, what="the call to be cancelled")
        self.assertEqual(self.engine.registry.calls[("Media", "receive", "exception")], 1)

    @defer.inlineCallbacks
    def test_publish(self):
        """POST /api/publish reaches the topic's subscribers."""
        yield self.startAdmin()
        received = []
        self.engine.broker.subscribe("demo", received.append)
        response, body = yield self.post("/api/publish", json.dumps(
            {"topic": "demo", "message": "<note>hi</note>", "type": "xml"}).encode())
        self.assertEqual(response.code, 200, body)
        self.assertEqual(json.loads(body), {"ok": True, "messageId": "demo-1"})
        [message] = received
        self.assertEqual((message.body, message.msgtype), (b"<note>hi</note>", "xml"))
        self.assertTrue(message.source.startswith("admin.web."))

        for data, words in (({"topic": "demo", "message": "<a", "type": "xml"},
                             "not well-formed XML"),
                            ({"topic": "demo", "message": "x", "type": "nope"},
                             "parameter 'type' must be one of"),
                            ({"topic": "", "message": "x"}, "must name a topic"),
                            ({"topic": "demo", "message": "a\x00b"}, "parameter 'message'"),
                            ({"topic": "demo"}, "expected JSON"),
                            ([1], "expected JSON")):
            response, body = yield self.post("/api/publish", json.dumps(data).encode())
            self.assertEqual(response.code, 400, data)
            self.assertIn(words, json.loads(body)["error"])
        response, body = yield self.post("/api/publish", b"{not json")
        self.assertEqual(response.code, 400)
        self.assertEqual(len(received), 1)

    @defer.inlineCallbacks
    def test_bodyTooLarge(self):
        yield self.startAdmin()
        response, _ = yield self.post("/api/console", b" " * 1000001)
        self.assertEqual(response.code, 413)

    @defer.inlineCallbacks
    def test_refusedWhenTheConsoleNeedsALogin(self):
        """An admin listener without auth must not open what a console keeps
        behind its login: its actions are refused, its page still shows."""
        secret = self.mktemp()
        with open(secret, "wb") as f:
            f.write(b"console-secret\n")
        yield self.startAdmin(extraListeners=listener(
            "locked", protocol="xml-messages", msgtype="xmlcall",
            auth="true", **{"auth.secret-file": secret}))
        response, body = yield self.post("/api/console", xmlcall("Engine", "ping"))
        self.assertEqual(response.code, 403)
        self.assertIn("console 'locked' requires a login", json.loads(body)["error"])
        response, _ = yield self.post("/api/channels/echo/disconnect")
        self.assertEqual(response.code, 403)
        self.assertEqual(self.engine.channels["echo"].state, "connected")
        found = yield self.snapshot()
        self.assertFalse(found["actions"])


class HostTests(DashboardTestCase):
    """Without auth, the dashboard answers loopback names only (DNS rebinding)."""

    @defer.inlineCallbacks
    def test_host(self):
        yield self.startAdmin()
        port = self.port("admin")
        for host, code in ((b"evil.example:%d" % port, 403), (b"evil.example", 403),
                           (b"127.0.0.1.evil.example", 403),
                           (b"localhost:%d" % port, 200), (b"127.0.0.1:%d" % port, 200),
                           (b"[::1]:%d" % port, 200), (b"app.localhost", 200)):
            for path in ("/", "/api/snapshot"):
                response, _ = yield self.request(path, headers={b"host": [host]})
                self.assertEqual(response.code, code, (host, path))
        response, _ = yield self.post("/api/channels/echo/disconnect",
                                      headers={b"host": [b"evil.example"], **ACTION})
        self.assertEqual(response.code, 403)
        self.assertEqual(self.engine.channels["echo"].state, "connected")
        # /metrics and /health answer whatever the Host, as before.
        response, _ = yield self.request("/health", headers={b"host": [b"evil.example"]})
        self.assertEqual(response.code, 200)


class AuthTests(DashboardTestCase):
    """auth=true: bearer tokens, and the login form's session cookie."""

    SECRET = b"s3cret-token"

    @defer.inlineCallbacks
    def startSecured(self):
        path = self.mktemp()
        with open(path, "wb") as f:
            f.write(self.SECRET + b"\n")
        yield self.startAdmin(admin(auth="true", **{"auth.secret-file": path}))
        self.resource = self.engine.listeners["admin"].factory.resource
        # Every event logged meanwhile, to show the secret is in none.
        self.logged = []
        globalLogPublisher.addObserver(self.logged.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.logged.append)

    @defer.inlineCallbacks
    def test_unauthorized(self):
        """Without a token: 401 everywhere but the login form and its style."""
        yield self.startSecured()
        for method, path in ((b"GET", "/api/snapshot"), (b"GET", "/api/events"),
                             (b"GET", "/app.js"), (b"GET", "/api/examples"),
                             (b"POST", "/api/console"), (b"POST", "/api/publish"),
                             (b"POST", "/api/channels/echo/disconnect"),
                             (b"POST", "/logout")):
            response, body = yield self.request(path, method, headers=ACTION,
                                                body=b"" if method == b"POST" else None)
            self.assertEqual(response.code, 401, path)
            self.assertEqual(response.headers.getRawHeaders(b"www-authenticate"),
                             [b'Bearer realm="aiengine"'])
        self.assertEqual(self.engine.channels["echo"].state, "connected")
        # A browser asking for the page gets the login form, as a 401.
        response, body = yield self.request("/")
        self.assertEqual(response.code, 401)
        self.assertIn(b"data-login-secret", body)
        self.assertNotIn(b"data-console-input", body)
        response, _ = yield self.request("/style.css")
        self.assertEqual(response.code, 200)

    @defer.inlineCallbacks
    def test_bearer(self):
        yield self.startSecured()
        bearer = {b"authorization": [b"Bearer " + self.SECRET]}
        found = yield self.snapshot(headers=bearer)
        self.assertEqual(found["channels"]["echo"]["state"], "connected")
        self.assertTrue(found["actions"])
        response, body = yield self.post("/api/console", xmlcall("Engine", "ping", "1"),
                                         headers={**bearer, **ACTION})
        self.assertEqual(etree.fromstring(body).get("status"), "OK")
        # The header is required with a bearer token too.
        response, body = yield self.post("/api/console", xmlcall("Engine", "ping", "1"),
                                         headers=bearer)
        self.assertEqual(response.code, 403)
        reader = yield self.events(headers=bearer)
        yield waitFor(lambda: reader.events, what="the snapshot")
        self.assertEqual(reader.events[0][0], "snapshot")

    @defer.inlineCallbacks
    def test_loginForm(self):
        """The form trades the secret for a session cookie; wrong secrets are
        throttled as bearer tokens are; logout ends the session."""
        yield self.startSecured()
        form = {b"content-type": [b"application/x-www-form-urlencoded"]}
        response, body = yield self.request("/login", b"POST", form, b"secret=wrong")
        self.assertEqual(response.code, 401)
        self.assertIn(b"Wrong secret.", body)
        self.assertIsNone(response.headers.getRawHeaders(b"set-cookie"))
        # The address waits now: even the right secret is not checked.
        response, body = yield self.request("/login", b"POST", form,
                                            b"secret=" + self.SECRET)
        self.assertEqual(response.code, 429)
        self.assertIsNone(response.headers.getRawHeaders(b"set-cookie"))
        self.resource.throttle.succeeded("127.0.0.1")
        # The secret in the URL is not taken: it would end up in histories.
        response, body = yield self.request("/login?secret=" + self.SECRET.decode(),
                                            b"POST", form, b"")
        self.assertEqual(response.code, 401)
        self.resource.throttle.succeeded("127.0.0.1")

        response, body = yield self.request("/login", b"POST", form,
                                            b"secret=" + self.SECRET)
        self.assertEqual(response.code, 303)
        self.assertEqual(response.headers.getRawHeaders(b"location"), [b"./"])
        [cookie] = response.headers.getRawHeaders(b"set-cookie")
        name = b"aiengine_session_%d" % self.port("admin")
        self.assertTrue(cookie.startswith(name + b"="), cookie)
        flags = {flag.strip().lower() for flag in cookie.split(b";")[1:]}
        self.assertTrue({b"httponly", b"samesite=strict", b"path=/"} <= flags, flags)
        token = cookie.split(b";")[0].split(b"=", 1)[1]
        self.assertNotIn(self.SECRET, token)
        session = {b"cookie": [name + b"=" + token]}

        found = yield self.snapshot(headers=session)
        self.assertIn("echo", found["channels"])
        response, body = yield self.request("/", headers=session)
        self.assertIn(b"data-console-input", body)
        # A cookie goes with cross-site requests too (where SameSite does
        # not hold): actions still need the header.
        response, _ = yield self.post("/api/channels/echo/disconnect", headers=session)
        self.assertEqual(response.code, 403)
        response, _ = yield self.post("/api/channels/echo/disconnect",
                                      headers={**session, **ACTION})
        self.assertEqual(response.code, 200)
        self.assertEqual(self.engine.channels["echo"].state, "stopped")

        response, _ = yield self.post("/logout", headers={**session, **ACTION})
        self.assertEqual(response.code, 200)
        response, _ = yield self.request("/api/snapshot", headers=session)
        self.assertEqual(response.code, 401)
        # Another listener's cookie name, or a made-up token, opens nothing.
        response, _ = yield self.request("/api/snapshot", headers={
            b"cookie": [b"aiengine_session_1=" + token]})
        self.assertEqual(response.code, 401)

        lines = [formatEvent(event) for event in self.logged]
        self.assertTrue([line for line in lines
                         if "wrong secret from 127.0.0.1 at the login form" in line], lines)
        self.assertIn("dashboard: browser logged in from 127.0.0.1", lines)
        # Neither the secret nor the session token in any line or field.
        everything = repr(lines) + repr(self.logged)
        self.assertNotIn(self.SECRET.decode(), everything)
        self.assertNotIn(token.decode(), everything)


class EventStreamTests(DashboardTestCase):
    """GET /api/events over HTTP: a snapshot, diffs within a second, and ends."""

    @defer.inlineCallbacks
    def test_stream(self):
        yield self.startAdmin()
        feed = self.engine.listeners["admin"].factory.resource.dashboard.feed
        reader = yield self.events()
        yield waitFor(lambda: reader.events, what="the snapshot")
        kind, data = reader.events[0]
        self.assertEqual(kind, "snapshot")
        rows = {row[0]: row for row in data["channels"]["rows"]}
        self.assertEqual(rows["echo"][1], "connected")

        yield self.stopEcho()
        # Within a second of the change (plus the channel noticing it).
        yield waitFor(lambda: any(
            kind == "diff" and any(row[0] == "echo" and row[1] != "connected"
                                   for row in data.get("channels", {}).get("rows", ()))
            for kind, data in reader.events), timeout=5, what="the diff")
        diffs = [data for kind, data in reader.events if kind == "diff"]
        for data in diffs:
            self.assertEqual({row[0] for row in data.get("channels", {}).get("rows", [])}
                             - {"echo"}, set())
        self.assertEqual(len(feed.clients), 1)

        reader.transport.stopProducing()
        yield reader.done
        yield waitFor(lambda: not feed.clients, what="the feed to drop the client")
        self.assertEqual([call for call in pendingCalls()
                          if "dashboard" in repr(call.func)], [])

    @defer.inlineCallbacks
    def test_shutdown(self):
        """Stopping the engine ends the stream cleanly and stops the loop."""
        yield self.startAdmin()
        feed = self.engine.listeners["admin"].factory.resource.dashboard.feed
        reader = yield self.events()
        yield waitFor(lambda: reader.events, what="the snapshot")
        yield self.engine.stopService()
        yield reader.done
        reader.reason.trap(ResponseDone)  # ended cleanly, not cut
        self.assertEqual(feed.clients, set())
        self.assertIsNone(feed._loop)
