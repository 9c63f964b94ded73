"""What the console logs: the client's mistakes at info (a routine timeout at
debug) without a traceback, a handler's bug as an error with its traceback,
one line per event, and a connection's opening and closing lines."""

from __future__ import annotations

import re

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.task import deferLater
from twisted.logger import LogLevel, formatEvent, globalLogPublisher
from twisted.trial import unittest

from aiengine.config import parse
from aiengine.engine import Engine
from tests.support import ReservedPort, waitFor
from tests.test_console import ConsoleTestCase, xmlcall
from tests.test_media import ConsoleClientMixin

NAMESPACE = "SocketServer::test"


class LogCase(ConsoleTestCase):
    """A console whose log events the test reads."""

    def setUp(self):
        super().setUp()
        self.events = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)

    def logged(self, since=0):
        """``(level, text, has traceback)`` of the console's events."""
        return [(e["log_level"], formatEvent(e), "log_failure" in e)
                for e in self.events[since:] if e.get("log_namespace") == NAMESPACE]


class CallLogTests(LogCase):
    """One line per failed call, at the level its cause deserves."""

    @inlineCallbacks
    def test_clientMistakesAreInfo(self):
        client = yield self.connect()
        since = len(self.events)
        answers = yield self.call(client, b"\n".join([
            xmlcall("Engin", "ping", "1"),
            xmlcall("Engine", "pnig", "2"),
            b"hello",
            xmlcall("Topics", "publish", "3", colour="red"),
            xmlcall("Slow", "echo"),
            b"<hello/>",
            xmlcall("Slow", "failLater", "4"),
        ]) + b"\n", 7)
        self.assertEqual({a.get("status") for a in answers}, {"Exception"})
        self.assertEqual(self.logged(since), [
            (LogLevel.info, "test.1: Engin.ping (request 1) failed: Unknown class 'Engin' "
                            "(did you mean 'Engine'?); known classes: Engine, Slow, Topics",
             False),
            (LogLevel.info, "test.1: Engine.pnig (request 2) failed: Class 'Engine' has no "
                            "method 'pnig'; did you mean 'ping'?", False),
            (LogLevel.info, "test.1: malformed XML request: document does not start with "
                            "'<'; dropped up to the line end; data b'hello\\n'", False),
            (LogLevel.info, "test.1: Topics.publish (request 3) failed: Unknown parameter "
                            "'colour' for Topics.publish; it takes: topic, message, type, "
                            "ttl", False),
            (LogLevel.info, "test.1: Slow.echo failed: Missing required parameter 'text' "
                            "for Slow.echo", False),
            (LogLevel.info, "test.1: <hello> failed: expected an <xmlcall> document, got "
                            "<hello>", False),
            (LogLevel.info, "test.1: Slow.failLater (request 4) failed: failed later",
             False),
        ])

    @inlineCallbacks
    def test_timeoutIsDebug(self):
        """A timeout the caller chose is routine: debug, no traceback."""
        self.broker.subscribe("silent", lambda message: None)
        client = yield self.connect()
        since = len(self.events)
        [answer] = yield self.call(client, xmlcall(
            "Topics", "request", "r", **{"topic-out": "silent", "topic-in": "back",
                                         "message": "?", "timeout": "0.05"}))
        self.assertEqual(answer.findtext("exception"), "no reply on back within 0.05 s")
        self.assertEqual(self.logged(since), [
            (LogLevel.debug, "test.1: Topics.request (request r) failed: no reply on back "
                             "within 0.05 s", False)])

    @inlineCallbacks
    def test_bugIsErrorWithTraceback(self):
        client = yield self.connect()
        since = len(self.events)
        boom, bad = yield self.call(client, xmlcall("Slow", "boom", "b")
                                    + xmlcall("Slow", "bad", "x"), 2)
        self.assertEqual(boom.findtext("exception"), "RuntimeError: boom")
        self.assertEqual(bad.findtext("exception"),
                         "Slow.bad: console method returned int, expected an lxml "
                         "element, a list of them or None")
        logged = self.logged(since)
        self.assertEqual([(level, traceback) for level, _, traceback in logged],
                         [(LogLevel.error, True), (LogLevel.error, False)])
        self.assertEqual(logged[0][1], "test.1: Slow.boom (request b) raised an unexpected "
                                       "error, answered RuntimeError: boom")
        self.assertEqual(logged[1][1], "test.1: Slow.bad (request x) answered what cannot "
                                       "be an answer: Slow.bad: console method returned "
                                       "int, expected an lxml element, a list of them or "
                                       "None")
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)


class ConnectionLogTests(LogCase):
    """A connection logs when it opens and when it closes: peer, duration, calls."""

    @inlineCallbacks
    def closedConnection(self, running):
        """Open a connection, make one ping and ``running`` calls that never
        end, close it abruptly; the console's lines about it."""
        since = len(self.events)
        client = yield self.connect()
        port = client.transport.getHost().port
        yield self.call(client, xmlcall("Engine", "ping", "p"))
        for n in range(running):
            client.transport.write(xmlcall("Slow", "wait", f"w{n}", tag=str(n)))
        yield waitFor(lambda: len(self.slow.waiting) == running, what="calls running")
        client.transport.abortConnection()
        yield client.lost
        yield waitFor(lambda: self.factory.openConnections == 0, what="server close")
        return port, self.logged(since)

    @inlineCallbacks
    def test_twoLinesNoCallRunning(self):
        port, logged = yield self.closedConnection(0)
        self.assertEqual([level for level, _, _ in logged], [LogLevel.info] * 2)
        self.assertEqual(logged[0][1], f"test.1: console connection from 127.0.0.1:{port}")
        self.assertRegex(logged[1][1], "^" + re.escape(
            f"test.1: console connection from 127.0.0.1:{port} closed after ")
            + r"\d\.\ds, 1 call$")

    @inlineCallbacks
    def test_oneCallRunning(self):
        port, logged = yield self.closedConnection(1)
        self.assertRegex(logged[1][1], r"closed after \d\.\ds, 2 calls; 1 call still "
                                        r"running cancelled, not answered$")
        # The cancelled call's own line is detail, at debug.
        self.assertEqual([level for level, _, _ in logged],
                         [LogLevel.info, LogLevel.info, LogLevel.debug])
        self.assertEqual(logged[2][1], "test.1: Slow.wait w0 cancelled: connection gone")

    @inlineCallbacks
    def test_callsRunning(self):
        port, logged = yield self.closedConnection(2)
        closing = [text for _, text, _ in logged if "closed after" in text]
        self.assertEqual(len(closing), 1)
        self.assertRegex(closing[0], r"closed after \d\.\ds, 3 calls; 2 calls still "
                                     r"running cancelled, not answered$")

    @inlineCallbacks
    def test_halfClosedPeer(self):
        """A peer that stopped sending gets its calls cancelled after a while:
        one line, counted in words."""
        self.factory.halfCloseTimeout = 0.05
        client = yield self.connect()
        since = len(self.events)
        client.transport.write(xmlcall("Slow", "wait", "w", tag="t"))
        yield waitFor(lambda: "t" in self.slow.waiting, what="call running")
        client.transport.loseWriteConnection()
        [answer] = yield client.waitDocs(1)
        self.assertEqual(answer.findtext("exception"),
                         "cancelled: the connection was closed by the peer 0.05 s earlier")
        yield client.lost
        yield deferLater(reactor, 0, lambda: None)
        texts = [text for _, text, _ in self.logged(since)]
        self.assertIn("test.1: the peer closed its side 0.05 s ago: cancelling 1 call "
                      "still running", texts)


class LoginLogTests(LogCase):
    """Calls before login are the client's mistake; a wrong secret is one warning."""

    secret = b"s3cret-Token"

    @inlineCallbacks
    def test_oneLineEach(self):
        client = yield self.connect()
        since = len(self.events)
        early, wrong = yield self.call(client, xmlcall("Engine", "ping", "1")
                                       + xmlcall("Engine", "login", "2", secret="nope"), 2)
        self.assertEqual(wrong.findtext("exception"), "authentication failed")
        yield client.lost
        logged = [entry for entry in self.logged(since)
                  if "console connection" not in entry[1]]
        self.assertEqual([(level, traceback) for level, _, traceback in logged],
                         [(LogLevel.info, False), (LogLevel.warn, False)])
        self.assertEqual(logged[0][1], "test.1: Engine.ping (request 1) failed: not "
                                       "authenticated: call Engine.login(secret) first")
        self.assertRegex(logged[1][1], r"^test\.1: authentication failed from "
                                       r"127\.0\.0\.1:\d+; closing the connection")


MEDIA_CONFIG = """<service>
  <listeners>
    <listener name="debug">
      <property name="port" value="0"/>
      <property name="protocol" value="text-messages"/>
      <property name="protocol.delimiter" value="\\1"/>
      <property name="msgtype" value="xmlcall"/>
    </listener>
  </listeners>
  <directchannels>
    <channel name="ondemand">
      <property name="protocol" value="text-messages"/>
      <property name="host" value="127.0.0.1"/>
      <property name="port" value="{refused}"/>
      <property name="permanent" value="false"/>
    </channel>
  </directchannels>
</service>
"""


class MediaLogTests(ConsoleClientMixin, unittest.TestCase):
    """Media calls whose outcome is expected log no traceback."""

    def setUp(self):
        self.refused = ReservedPort()
        self.addCleanup(self.refused.close)
        self.engine = Engine(parse(MEDIA_CONFIG.format(refused=self.refused.port).encode()),
                             reactor)
        self.engine.startService()
        self.addCleanup(self.engine.stopService)
        self.events = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)

    def logged(self):
        return [(e["log_level"], formatEvent(e), "log_failure" in e) for e in self.events
                if e.get("log_namespace") == "SocketServer::debug"
                and "console connection" not in formatEvent(e)]

    @inlineCallbacks
    def test_expectedOutcomes(self):
        """A receive that times out (debug), an on-demand channel that cannot
        connect (info: the channel warns about it itself), an unknown channel
        (info); the answers are as they were."""
        client = yield self.console()
        timedOut, refused, unknown = yield self.call(client, b"".join([
            xmlcall("Media", "receive", requestId="R", channel="ondemand", timeout="0.05"),
            xmlcall("Media", "connect", requestId="C", channel="ondemand"),
            xmlcall("Media", "status", requestId="U", channel="on-demand")]),
            ["R", "C", "U"])
        self.assertEqual(timedOut.findtext("exception"),
                         "no message from channel ondemand within 0.05 s")
        self.assertEqual(refused.findtext("exception"),
                         "ConnectionRefusedError: Connection was refused by other side: "
                         "111: Connection refused.")
        self.assertEqual(unknown.findtext("exception"),
                         "Unable to find channel by name=on-demand (did you mean "
                         "'ondemand'?); known channels: ondemand")
        self.assertEqual(sorted(self.logged()), sorted([
            (LogLevel.debug, "debug.1: Media.receive (request R) failed: no message from "
                             "channel ondemand within 0.05 s", False),
            (LogLevel.info, "debug.1: Media.connect (request C) failed: "
                            "ConnectionRefusedError: Connection was refused by other side: "
                            "111: Connection refused.", False),
            (LogLevel.info, "debug.1: Media.status (request U) failed: Unable to find "
                            "channel by name=on-demand (did you mean 'ondemand'?); known "
                            "channels: ondemand", False)]))
