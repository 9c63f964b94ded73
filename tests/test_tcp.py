"""TCP_NODELAY on every listener, console and channel socket, unless
``tcp.nodelay=false`` says otherwise (issue 11)."""

from __future__ import annotations

import socket

from twisted.internet import defer, reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Factory, Protocol
from twisted.trial import unittest

from aiengine.config import parse
from aiengine.engine import Engine
from tests.support import waitFor


def listener(name, nodelay=None, msgtype="text"):
    extra = ("" if nodelay is None
             else f'<property name="tcp.nodelay" value="{nodelay}"/>')
    topics = ("" if msgtype == "xmlcall"
              else '<property name="topic-in" value="t"/>')
    return (f'<listener name="{name}"><property name="port" value="0"/>'
            f'<property name="protocol" value="text-messages"/>'
            f'<property name="msgtype" value="{msgtype}"/>{topics}{extra}</listener>')


def channel(name, port, nodelay):
    return (f'<channel name="{name}"><property name="host" value="127.0.0.1"/>'
            f'<property name="port" value="{port}"/>'
            f'<property name="protocol" value="text-messages"/>'
            f'<property name="tcp.nodelay" value="{nodelay}"/></channel>')


def nodelay(transport) -> int:
    return transport.getHandle().getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)


class NoDelayTests(unittest.TestCase):
    timeout = 20

    def setUp(self):
        self.server = Factory.forProtocol(Protocol)
        self.port = reactor.listenTCP(0, self.server, interface="127.0.0.1")
        self.addCleanup(self.port.stopListening)
        text = ("<service><listeners>" + listener("on") + listener("off", "false")
                + listener("console", msgtype="xmlcall")
                + "</listeners><directchannels>"
                + channel("fast", self.port.getHost().port, "true")
                + channel("nagle", self.port.getHost().port, "false")
                + "</directchannels></service>")
        self.engine = Engine(parse(text.encode()), reactor)
        self.engine.startService()
        self.addCleanup(self.engine.stopService)

    @defer.inlineCallbacks
    def accepted(self, name):
        """The daemon's side of a new connection to listener ``name``."""
        service = self.engine.listeners[name]
        client = yield connectProtocol(
            TCP4ClientEndpoint(reactor, "127.0.0.1", service.address[1]), Protocol())
        self.addCleanup(client.transport.loseConnection)
        yield waitFor(lambda: service.guard.protocols, what=f"{name} accepted")
        [guard] = service.guard.protocols
        return guard.transport

    @defer.inlineCallbacks
    def test_listenersAndConsole(self):
        self.assertEqual(nodelay((yield self.accepted("on"))), 1)
        self.assertEqual(nodelay((yield self.accepted("console"))), 1)
        self.assertEqual(nodelay((yield self.accepted("off"))), 0)

    @defer.inlineCallbacks
    def test_channels(self):
        channels = self.engine.channels
        yield waitFor(lambda: all(c.state == "connected" for c in channels.values()),
                      what="channels connected")
        self.assertEqual(nodelay(channels["fast"]._protocol.transport), 1)
        self.assertEqual(nodelay(channels["nagle"]._protocol.transport), 0)

    def test_defaults(self):
        config = parse(("<service><listeners>" + listener("l")
                        + "</listeners></service>").encode())
        self.assertTrue(config.listeners[0].tcp_nodelay)
