"""The original's own files, byte for byte (issue 9): its media.xml layout
(CRLF line ends, stray spaces, a console listener with topic-in and
topic-out) loads and runs, and its deploy request files, sent as its
aiconsole sent them (the document, then 0x01), are answered OK."""

from __future__ import annotations

import os
import re

from lxml import etree
from twisted.internet import defer, reactor
from twisted.internet.protocol import Factory
from twisted.trial import unittest
from twisted.web import server

from aiengine.config import parse
from aiengine.engine import Engine
from tests.support import waitFor
from tests.test_console import xmlcall
from tests.test_media import ConsoleClientMixin, Pages, Upper

HERE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "original")


def original(name) -> bytes:
    with open(os.path.join(HERE, name), "rb") as f:
        return f.read()


def pointed(data: bytes, ports: dict, host=b"127.0.0.1") -> bytes:
    """``data`` with only the ports of the named elements, and the channels'
    hosts, changed: every other byte stays."""
    def element(match):
        name = match.group(1).decode()
        text = match.group(0)
        if name in ports:
            text = re.sub(rb'(name="port" value=")\d+', rb"\g<1>%d" % ports[name], text)
        return re.sub(rb'(name="host" value=")[^"]+', rb"\g<1>" + host, text)
    return re.sub(rb'<(?:listener|channel) name="([^"]+)".*?</(?:listener|channel)>',
                  element, data, flags=re.S)


class LoadTests(unittest.TestCase):
    def test_loadsUnchanged(self):
        data = original("media.xml")
        self.assertIn(b"\r\n", data)
        config = parse(data, os.path.join(HERE, "media.xml"))
        self.assertEqual([listener.name for listener in config.listeners],
                         ["debug", "ear-listener", "mouth-speaker"])
        debug = config.listeners[0]
        self.assertEqual((debug.msgtype, debug.topic_in, debug.topic_out),
                         ("xmlcall", "debug.commands.in", "debug.commands.out"))
        google, images = config.channels
        self.assertEqual((google.name, google.protocol.name, google.topic_out),
                         ("google", "http", "http.request"))
        self.assertFalse(images.redirect_in or images.redirect_out)

    def test_pointedChangesOnlyPortsAndHosts(self):
        data = original("media.xml")
        changed = pointed(data, {"debug": 0, "google": 8080})
        self.assertNotEqual(changed, data)
        self.assertEqual(re.sub(rb'value="[^"]*"', b"", changed),
                         re.sub(rb'value="[^"]*"', b"", data))


class RunTests(ConsoleClientMixin, unittest.TestCase):
    """The original's media.xml, pointed at local servers, running."""

    timeout = 30

    @defer.inlineCallbacks
    def setUp(self):
        site = server.Site(Pages())
        site.noisy = False
        web = reactor.listenTCP(0, site, interface="127.0.0.1")
        self.addCleanup(web.stopListening)
        lines = reactor.listenTCP(0, Factory.forProtocol(Upper), interface="127.0.0.1")
        self.addCleanup(lines.stopListening)
        data = pointed(original("media.xml"), {
            "debug": 0, "ear-listener": 0, "mouth-speaker": 0,
            "google": web.getHost().port, "image-processor": lines.getHost().port})
        self.engine = Engine(parse(data, os.path.join(HERE, "media.xml")), reactor)
        self.engine.startService()
        self.addCleanup(self.engine.stopService)
        yield waitFor(lambda: all(c.state == "connected"
                                  for c in self.engine.channels.values()),
                      what="both channels connected")

    @defer.inlineCallbacks
    def test_deployFilesAnswerOK(self):
        client = yield self.console()
        for name in ("xml-threaddump.xml", "xml-test-directchannels.xml"):
            before = len(client.results())
            # as aiconsole sent it: the file's document, then 0x01
            client.transport.write(original(name) + b"\x01")
            yield waitFor(lambda: len(client.results()) > before, what=name)
            answer = client.results()[-1]
            self.assertEqual(answer.get("status"), "OK",
                             f"{name}: {answer.findtext('exception')}")
            self.assertEqual(answer.get("name"),
                             etree.fromstring(original(name)).get("name"))
        self.assertEqual(answer.findtext("page"), "http://code.google.com/p/ahuman/")
        self.assertEqual(answer.findtext("body"), "page http://code.google.com/p/ahuman/")

    @defer.inlineCallbacks
    def test_consoleTopicsRoundTrip(self):
        """A watcher of debug.commands.in/out sees each call and answer, and
        an xmlcall another connection publishes on debug.commands.in is
        executed and answered on debug.commands.out."""
        watcher = yield self.console()
        caller = yield self.console()
        yield self.call(watcher, xmlcall("Topics", "subscribe", "w1",
                                         topic="debug.commands.in"), ["w1"])
        yield self.call(watcher, xmlcall("Topics", "subscribe", "w2",
                                         topic="debug.commands.out"), ["w2"])
        yield waitFor(lambda: len(watcher.docs) >= 4, what="the watcher's own call")
        before = len(watcher.docs)
        [pong] = yield self.call(caller, xmlcall("Engine", "ping", "c1"), ["c1"])
        self.assertEqual(pong.get("status"), "OK")
        yield waitFor(lambda: len(watcher.docs) >= before + 2, what="call and answer")
        call, answer = watcher.docs[before:before + 2]
        self.assertEqual(call.get("topic"), "debug.commands.in")
        self.assertEqual(answer.get("in-reply-to"), call.get("id"))

        before = len(watcher.docs)
        inner = xmlcall("Engine", "ping", "via-topic").decode()
        [published] = yield self.call(caller, xmlcall(
            "Topics", "publish", "c2", topic="debug.commands.in", type="xml",
            message=inner), ["c2"])
        messageId = published.findtext("messageId")
        yield waitFor(lambda: any(d.get("in-reply-to") == messageId
                                  for d in watcher.docs[before:]),
                      what="the topic call's answer")
        [executed] = [d for d in watcher.docs[before:]
                      if d.get("in-reply-to") == messageId]
        result = etree.fromstring(executed.text.encode())
        self.assertEqual((result.get("requestId"), result.get("status")),
                         ("via-topic", "OK"))
        self.assertEqual(result.find("pong").tag, "pong")
