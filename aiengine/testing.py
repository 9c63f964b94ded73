"""Test doubles for programs that embed aiengine, without sockets or real time.

Everything here runs on a ``MemoryReactorClock`` (Twisted's fake reactor, which
records connection attempts and is a ``Clock``): time passes only when the test
says (``reactor.advance``), and no byte goes to the network.

- :class:`FakeEngine`: an engine to call console classes on, and to hold
  channels, topics and their subscribers.  ``engine.call("Topics", "publish",
  topic="t", message="hi")`` fires with the ``<xmlcallresult>`` element,
  exactly as a console connection would get it.
- :class:`FakeServer` (and :func:`lastAttempt`, :func:`attempts`): the server
  end of a channel's connection attempt: accept or refuse it, read what the
  channel wrote, send it data, close it.

Our own tests use them; see docs/embedding.md for examples.
"""

from __future__ import annotations

import weakref
from typing import Optional

from lxml import etree
from twisted.internet import error
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure

from aiengine.broker import Broker
from aiengine.channels import Channel
from aiengine.console.builtins import registerBuiltins
from aiengine.console.protocol import ConsoleFactory
from aiengine.console.registry import CallRegistry
from aiengine.media import Media, registerMedia
from aiengine.protocols.xmlsplit import Document, XmlSplitter

__all__ = ["FakeEngine", "FakeServer", "FakeTransport", "attempts", "lastAttempt",
           "stopChannel"]

# The servers accepted so far, by reactor (see stopChannel).
_accepted: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


class FakeTransport(StringTransport):
    """A ``StringTransport`` that also remembers keepalive and abort calls."""

    def __init__(self, host="127.0.0.1", port=4000):
        StringTransport.__init__(self, IPv4Address("TCP", "127.0.0.1", 50000),
                                 IPv4Address("TCP", host, port))
        #: what setTcpKeepAlive was last given (None: never called)
        self.keepalive = None
        #: abortConnection was called
        self.aborted = False

    def setTcpKeepAlive(self, enable):
        """Remember the keepalive setting."""
        self.keepalive = enable

    def abortConnection(self):
        """Remember the abort, and lose the connection as StringTransport does."""
        self.aborted = True
        StringTransport.abortConnection(self)


def attempts(reactor) -> int:
    """How many connection attempts (TCP and TLS) were made on ``reactor``."""
    return len(reactor.tcpClients) + len(reactor.sslClients)


def lastAttempt(reactor, tls: bool = False, channel=None) -> "FakeServer":
    """The server end of the last attempt made on ``reactor`` (TLS ones with
    ``tls``), or the last one ``channel`` made."""
    clients = reactor.sslClients if tls else reactor.tcpClients
    for index in range(len(clients) - 1, -1, -1):
        if channel is None or getattr(clients[index][2], "channel", None) is channel:
            return FakeServer(reactor, index, tls)
    raise LookupError(f"no connection attempt of {channel!r}")


class FakeServer:
    """The server end of one connection attempt made on a
    ``MemoryReactorClock``: ``reactor.tcpClients[index]`` (or ``sslClients``).

    Nothing happens until the test decides: :meth:`accept` connects it,
    :meth:`refuse` fails it; then :meth:`received` is what the channel wrote,
    :meth:`send` feeds it data and :meth:`close` ends the connection as a
    server's close (or reset) would.
    """

    def __init__(self, reactor, index: int = -1, tls: bool = False):
        clients = reactor.sslClients if tls else reactor.tcpClients
        entry = clients[index]
        self.host, self.port, self.factory = entry[0], entry[1], entry[2]
        self.reactor = reactor
        #: the client's protocol, once accepted
        self.protocol = None
        #: accepted and not closed
        self.open = False
        #: the transport it writes to, once accepted
        self.transport: Optional[FakeTransport] = None

    def accept(self, transport: Optional[FakeTransport] = None) -> "FakeServer":
        """The attempt succeeds: the client's protocol is connected to
        ``transport`` (a new :class:`FakeTransport` by default)."""
        self.protocol = self.factory.buildProtocol(IPv4Address("TCP", "127.0.0.1",
                                                               self.port))
        self.transport = FakeTransport(self.host, self.port) if transport is None \
            else transport
        self.transport.protocol = self.protocol
        self.open = True
        _accepted.setdefault(self.reactor, []).append(self)
        self.protocol.makeConnection(self.transport)
        return self

    def refuse(self, exception: Optional[Exception] = None) -> None:
        """The attempt fails (connection refused, by default)."""
        self.factory.clientConnectionFailed(
            None, Failure(exception or error.ConnectionRefusedError()))

    def received(self) -> bytes:
        """What the client wrote so far."""
        return self.transport.value()

    def clear(self) -> None:
        """Forget what the client wrote so far."""
        self.transport.clear()

    def send(self, data: bytes) -> None:
        """Bytes from the server."""
        self.protocol.dataReceived(data)

    def close(self, exception: Optional[Exception] = None) -> None:
        """The connection ends: a clean close, or ``exception`` (for example
        ``ConnectionLost()`` for a reset)."""
        reason = Failure(exception or error.ConnectionDone())
        self.open = False
        self.protocol.connectionLost(reason)
        self.factory.clientConnectionLost(None, reason)


def stopChannel(channel) -> Deferred:
    """``channel.stop()``; a fake server never reports a close by itself, so
    the open connections of ``channel`` are closed here as a server would."""
    d = channel.stop()
    for server in list(_accepted.get(channel.reactor, ())):
        if server.open and getattr(server.protocol, "owner", None) is channel:
            server.close()
    protocol = channel._protocol
    if protocol is not None:
        # A connection the test made by hand (factory.buildProtocol).
        reason = Failure(error.ConnectionDone())
        protocol.connectionLost(reason)
        channel._factory.clientConnectionLost(None, reason)
    return d


class _Collector:
    """A console connection's transport output, cut into documents."""

    def __init__(self):
        self.splitter = XmlSplitter(separators=b"\x01", maxSize=1 << 30)
        self.waiting = {}
        self.docs = []

    def feed(self, data):
        for item in self.splitter.feed(data):
            if isinstance(item, Document):
                self.docs.append(item.root)
                d = self.waiting.pop(item.root.get("requestId"), None)
                if d is not None:
                    d.callback(item.root)


class _ConsoleTransport(StringTransport):
    def __init__(self, collector):
        StringTransport.__init__(self)
        self.collector = collector

    def write(self, data):
        self.collector.feed(data)


class FakeEngine:
    """An engine without sockets, for testing console classes and topic code.

    It has what console methods find on ``call.engine``: ``broker`` (on the
    fake reactor's clock), ``registry`` (the built-in classes: ``Engine``,
    ``Topics``, ``Media``, ``TestDirectChannels``, ``TestEngineThreads``),
    ``channels``, ``media`` and ``reactor`` (a ``MemoryReactorClock``).

    :meth:`call` runs a console call through a real console connection on a
    ``StringTransport``; :meth:`addChannel` starts a channel whose attempts
    :func:`lastAttempt` answers.
    """

    def __init__(self, reactor=None):
        self.reactor = MemoryReactorClock() if reactor is None else reactor
        self.broker = Broker(clock=self.reactor)
        self.registry = CallRegistry()
        registerBuiltins(self.registry)
        self.channels: dict = {}
        self.media = Media(self.channels)
        registerMedia(self.registry)
        self.listeners: dict = {}
        self._console = None
        self._requests = 0

    def addChannel(self, config) -> Channel:
        """Start a channel for ``config`` (a
        :class:`~aiengine.config.ChannelConfig`) on the fake reactor."""
        channel = self.channels[config.name] = Channel(config, self.broker, self.reactor)
        channel.start()
        return channel

    def call(self, className: str, methodName: str, **params) -> Deferred:
        """Call ``className.methodName`` with ``params`` (``_`` in a keyword
        stands for ``-``); fires with the ``<xmlcallresult>`` element."""
        console = self.console()
        self._requests += 1
        requestId = f"T{self._requests}"
        request = etree.Element("xmlcall", {"class": className, "method": methodName,
                                            "requestId": requestId})
        if params:
            parameters = etree.SubElement(request, "parameters")
            for key, value in params.items():
                etree.SubElement(parameters, "property", name=key.replace("_", "-"),
                                 value=str(value))
        answered = console.transport.collector.waiting[requestId] = Deferred()
        console.dataReceived(etree.tostring(request) + b"\x01")
        return answered

    def console(self):
        """The console connection :meth:`call` uses (made on first use)."""
        if self._console is None:
            factory = ConsoleFactory(self.registry, self, name="test")
            self._console = factory.buildProtocol(None)
            self._console.makeConnection(_ConsoleTransport(_Collector()))
        return self._console

    def events(self) -> list:
        """The ``<xmlevent>`` documents the console connection received
        (after ``Topics.subscribe`` calls)."""
        return [doc for doc in self.console().transport.collector.docs
                if doc.tag == "xmlevent"]

    def close(self) -> None:
        """Close the console connection (ending its subscriptions)."""
        if self._console is not None:
            self._console.connectionLost(Failure(error.ConnectionDone()))
            self._console = None

