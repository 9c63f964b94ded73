"""Listeners: TCP servers whose connections are framed and routed through the broker.

Each accepted connection is named ``<listener>.<n>`` and is its own session.
With direction ``in`` or ``duplex`` its inbound messages are published on
``topic-in`` with that session.  With ``out`` or ``duplex`` the messages on
``topic-out`` are written to the connections: a message with a session goes to
the connection of that session only, an unsessioned one to every connection.
"""

from __future__ import annotations

from lxml import etree
from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.endpoints import TCP4ServerEndpoint, TCP6ServerEndpoint
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from zope.interface import implementer

from aiengine.protocols import buildFramer
from aiengine.protocols.base import IMessageReceiver
from aiengine.protocols.xmlsplit import safeParser

__all__ = ["ListenerFactory", "ListenerConnection", "ListenerService", "serverEndpoint"]


def serverEndpoint(reactor, interface: str, port: int):
    """A TCP server endpoint bound to ``interface`` (an IPv4 or IPv6 literal)."""
    if ":" in interface:
        return TCP6ServerEndpoint(reactor, port, interface=interface)
    return TCP4ServerEndpoint(reactor, port, interface=interface)


@implementer(IMessageReceiver)
class ListenerConnection:
    """One accepted connection: the receiver of its framer."""

    def __init__(self, factory, name):
        self.factory = factory
        self.name = name
        self.framer = None
        self.messagesIn = 0
        self.messagesOut = 0
        self.errors = 0
        self._closed = defer.Deferred()
        self._producerTopic = None

    def framerConnected(self, framer):
        self.framer = framer
        factory = self.factory
        factory.connections[self.name] = self
        factory.log.info("{connection} connected from {peer}", connection=self.name,
                         peer=_peer(framer.transport))
        if factory.acceptsInput and factory.config.topic_in:
            # A busy subscriber of topic-in pauses reading from this socket.
            self._producerTopic = factory.broker.topic(factory.config.topic_in)
            self._producerTopic.registerProducer(framer.transport)

    def messageReceived(self, message, attributes):
        factory = self.factory
        if not factory.acceptsInput:
            factory.ignored += 1
            if factory.ignored == 1 or factory.ignored % 1000 == 0:
                factory.log.warn(
                    "{connection}: listener direction is 'out'; ignored {n} inbound "
                    "message(s) so far", connection=self.name, n=factory.ignored)
            return
        config = factory.config
        if config.msgtype == "xml":
            try:
                etree.fromstring(message, factory.xmlParser)
            except etree.XMLSyntaxError as e:
                self.protocolError(f"message is not well-formed XML ({e}); dropped")
                return
        self.messagesIn += 1
        factory.messagesIn += 1
        factory.broker.publish(config.topic_in, message, msgtype=config.msgtype,
                               source=self.name, session=self.name, attributes=attributes)

    def protocolError(self, description):
        self.errors += 1
        self.factory.errors += 1
        self.factory.log.warn("{connection}: {description}", connection=self.name,
                              description=description)

    def framerDisconnected(self, reason):
        factory = self.factory
        factory.connections.pop(self.name, None)
        if self._producerTopic is not None:
            self._producerTopic.unregisterProducer(self.framer.transport)
            self._producerTopic = None
        factory.log.info("{connection} disconnected: {reason}", connection=self.name,
                         reason=reason.getErrorMessage())
        self._closed.callback(None)

    def send(self, message):
        """Write one message to this connection."""
        self.messagesOut += 1
        self.factory.messagesOut += 1
        self.framer.sendMessage(message)

    def close(self):
        """Close the connection; the Deferred fires once it is gone."""
        if self.framer is not None and self.framer.transport is not None:
            self.framer.transport.loseConnection()
        return self._closed


def _peer(transport):
    try:
        address = transport.getPeer()
        return f"{address.host}:{address.port}"
    except Exception:
        return "?"


class ListenerFactory(Factory):
    """Builds a framed, routed connection per accepted socket."""

    # SocketServer::<name> logs its own start and stop lines.
    noisy = False

    def logPrefix(self):
        """Names the listener in Twisted's own port log lines."""
        return self.log.namespace

    def __init__(self, config, broker):
        self.config = config
        self.broker = broker
        self.log = Logger(namespace=f"SocketServer::{config.name}")
        self.connections: dict[str, ListenerConnection] = {}
        self.acceptsInput = config.direction in ("in", "duplex") and bool(config.topic_in)
        self.acceptsOutput = config.direction in ("out", "duplex") and bool(config.topic_out)
        self.xmlParser = safeParser()
        self.count = 0
        self.messagesIn = self.messagesOut = self.errors = self.ignored = 0
        self.undeliverable = 0
        self._subscription = None

    def startFactory(self):
        if self.acceptsOutput and self._subscription is None:
            self._subscription = self.broker.subscribe(
                self.config.topic_out, self._outbound, name=f"listener:{self.config.name}")

    def stopFactory(self):
        if self._subscription is not None:
            self._subscription.cancel()
            self._subscription = None

    def buildProtocol(self, addr):
        self.count += 1
        connection = ListenerConnection(self, f"{self.config.name}.{self.count}")
        return buildFramer(self.config.protocol, connection, self.log)

    def _outbound(self, message):
        if message.session is None:
            for connection in tuple(self.connections.values()):
                connection.send(message.body)
            return
        connection = self.connections.get(message.session)
        if connection is not None:
            connection.send(message.body)

    def closeConnections(self):
        """Close every connection; the Deferred fires when all are gone."""
        return defer.DeferredList([c.close() for c in tuple(self.connections.values())])


class ListenerService(Service):
    """Listens with a factory on an interface and port; closes everything on stop."""

    def __init__(self, name, factory, interface, port, reactor=None):
        if reactor is None:
            from twisted.internet import reactor
        self.name = name
        self.factory = factory
        self.interface = interface
        self.port = port
        self.reactor = reactor
        self.listeningPort = None
        self.log = Logger(namespace=f"SocketServer::{name}")

    def privilegedStartService(self):
        # Bind before the process drops privileges, and fail start-up loudly.
        d = serverEndpoint(self.reactor, self.interface, self.port).listen(self.factory)
        failures = []
        d.addCallbacks(self._listening, failures.append)
        if failures:
            failures[0].raiseException()
        Service.privilegedStartService(self)

    def _listening(self, port):
        self.listeningPort = port
        address = port.getHost()
        self.log.info("listening on {host}:{port}", host=address.host, port=address.port)

    def startService(self):
        if self.listeningPort is None:
            self.privilegedStartService()
        Service.startService(self)

    @property
    def address(self):
        """The bound ``(host, port)``, or None when not listening."""
        if self.listeningPort is None:
            return None
        host = self.listeningPort.getHost()
        return host.host, host.port

    def stopService(self):
        Service.stopService(self)
        port, self.listeningPort = self.listeningPort, None
        waits = []
        if port is not None:
            waits.append(defer.maybeDeferred(port.stopListening))
        closer = getattr(self.factory, "closeConnections", None)
        if closer is not None:
            waits.append(closer())
        return defer.DeferredList(waits)
