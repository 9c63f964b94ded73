"""Listeners: TCP servers whose connections are framed and routed through the broker.

Each accepted connection is named ``<listener>.<n>`` and is its own session.
With direction ``in`` or ``duplex`` its inbound messages are published on
``topic-in`` with that session (so that a reply can find its way back).  With
``out`` or ``duplex`` the messages on ``topic-out`` are written to the
connections: a reply (a message with ``in-reply-to``) for a session goes to
the connection of that session only; every other message goes to every
connection, so an ``in`` listener feeding an ``out`` listener is a hub.

Hardening, shared by plain listeners and the console
(:class:`ListenerService` wraps any factory in a :class:`GuardFactory`):

* ``max-connections``: a connection beyond the limit is accepted and closed
  at once; refusals are counted and logged (the first, then every 100th).
* ``idle-timeout``: a connection with no traffic either way for that long is
  closed (and aborted if its peer does not even read the close).
* TLS: with a certificate and key (:func:`aiengine.tls.serverTLSOptions`) the listener
  speaks TLS through Twisted's ``TLSMemoryBIOFactory``.
* Stopping closes every connection, and aborts those whose peers do not
  read after :attr:`ListenerService.closeGrace` seconds, so a stuck peer
  cannot hang shut-down.

Per connection (:class:`ListenerConnection`):

* Outbound flow control: the connection is a streaming producer registered
  with its transport.  While the transport's write buffer is full, messages
  from ``topic-out`` wait in a per-connection queue bounded by
  :attr:`ListenerFactory.maxQueuedMessages` (1000) messages and
  :attr:`ListenerFactory.maxQueuedBytes` (1 MiB) of message bodies (one
  message is always accepted into an empty queue).  What happens when a
  queue is full is the listener's ``overflow`` policy:

  - ``pause`` (the default): nothing is dropped for connections that read.
    The ``topic-out`` subscriber is busy while any queue is full, so the
    broker pauses the topic's publishers; a connection whose queue stays
    full for ``slow-consumer-timeout`` seconds is a *slow consumer*: it is
    disconnected (aborted), counted (``slowConsumers``) and logged, and its
    queue is counted as dropped.  (As Redis's client-output-buffer-limit and
    NATS's slow-consumer rule do.)
  - ``drop``: the message is dropped for that connection, counted
    (``dropped``, per connection and listener) and logged (the first, then
    every 1000th); a slow peer never slows the others (for feeds where
    freshness beats completeness).
* Authentication: with a shared ``secret`` the first line a connection
  sends (up to ``\n``, before any framing, so it works the same for every
  protocol) must be that secret (surrounding whitespace ignored; compared in
  constant time; never published or logged).  A wrong one closes the
  connection.
  Until then nothing from ``topic-out`` is written to the connection: those
  messages are dropped and counted (``withheld``).
"""

from __future__ import annotations

import socket
from collections import deque

from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IHalfCloseableProtocol, IPushProducer
from twisted.internet.protocol import Factory, Protocol
from twisted.protocols.policies import ProtocolWrapper, TimeoutFactory, TimeoutProtocol
from twisted.protocols.tls import TLSMemoryBIOFactory, TLSMemoryBIOProtocol
from zope.interface import implementer

from aiengine.auth import LoginThrottle, SharedSecret
from aiengine.config import ListenerConfig
from aiengine.logs import (PeerSafeLogger, describeAddress, peerHost, peerOf, quietly,
                           worthLogging)
from aiengine.protocols import buildFramer
from aiengine.protocols.base import IMessageReceiver
from aiengine.protocols.xmlsplit import parseDocument
from aiengine.tcp import ServerEndpoint, setNoDelay

__all__ = ["ListenerFactory", "ListenerConnection", "ListenerService", "GuardFactory",
           "GuardProtocol", "ListenerUnavailable", "serverEndpoint"]


_log = PeerSafeLogger(namespace="aiengine.listeners")

# Listeners built in code take media.xml's defaults (written in ListenerConfig).
_DEFAULT_MAX_CONNECTIONS = ListenerConfig.__dataclass_fields__["max_connections"].default
_DEFAULT_IDLE_TIMEOUT = ListenerConfig.__dataclass_fields__["idle_timeout"].default

#: Length of the kernel's queue of connections not yet accepted.  Twisted's
#: default (50) overflows when hundreds of clients connect at once (after a
#: restart, say): the kernel then drops their handshakes and they stall.
LISTEN_BACKLOG = 511


#: queued outbound messages written together when a peer has read its buffer
RESUME_SLICE = 256


def serverEndpoint(reactor, interface: str, port: int, backlog: int = LISTEN_BACKLOG):
    """A TCP server endpoint bound to ``interface`` (an IPv4 or IPv6 literal),
    whose connections write through (:mod:`aiengine.tcp`)."""
    return ServerEndpoint(reactor, port, backlog=backlog, interface=interface)


# -- connections -----------------------------------------------------------------

@implementer(IPushProducer)
class _InboundGate:
    """Registered with a connection's ``topic-in``: while a subscriber there is
    busy, the connection holds what it reads instead of publishing it."""

    def __init__(self, connection):
        self.connection = connection

    def pauseProducing(self):
        self.connection.holdInbound()

    def resumeProducing(self):
        self.connection.releaseInbound()

    def stopProducing(self):
        pass


@implementer(IMessageReceiver, IPushProducer)
class ListenerConnection:
    """One accepted connection: the receiver of its framer.

    Also the streaming producer registered with its transport, which calls
    :meth:`pauseProducing` when its write buffer is full and
    :meth:`resumeProducing` once the peer has read it.

    Counters: ``messagesIn``, ``messagesOut`` (written), ``errors``,
    ``dropped`` (outbound messages dropped because the peer did not read).
    """

    def __init__(self, factory, name):
        self.factory = factory
        self.name = name
        self.framer = None
        self.authenticated = factory.secret is None
        self.messagesIn = 0
        self.messagesOut = 0
        self.errors = 0
        self.dropped = 0
        self._closed = defer.Deferred()
        self._producerTopic = None
        self._inboundGate = None
        # Inbound messages held while topic-in is paused; reading stops only
        # once they pass maxHeldBytes, so a peer's close is seen meanwhile.
        self._holding = False
        self._held: deque = deque()
        self._heldBytes = 0
        self._readPaused = False
        self._registered = False
        self._writePaused = False
        self._queue: deque = deque()
        self._queuedBytes = 0
        self._gone = False
        #: the slow-consumer timer, while the queue is full (overflow pause)
        self._slowCall = None

    # -- IMessageReceiver ----------------------------------------------------

    def framerConnected(self, framer):
        self.framer = framer
        factory = self.factory
        factory.connections[self.name] = self
        factory.log.info("{connection} connected from {peer}", connection=self.name,
                         peer=peerOf(framer.transport))
        framer.transport.registerProducer(self, True)
        self._registered = True
        if factory.acceptsInput and factory.config.topic_in:
            # A busy subscriber of topic-in holds this connection's messages,
            # and then pauses reading from its socket.
            self._producerTopic = factory.topicIn
            self._inboundGate = _InboundGate(self)
            self._producerTopic.registerProducer(self._inboundGate)

    def messageReceived(self, message, attributes):
        factory = self.factory
        if not factory.acceptsInput:
            factory.ignored += 1
            if worthLogging(factory.ignored):
                factory.log.warn(
                    "{connection}: this listener routes no inbound messages (direction "
                    "out, or no topic-in); ignored {n} so far", connection=self.name,
                    n=factory.ignored)
            return
        config = factory.config
        if factory.checkXml:
            try:
                parseDocument(message, config.protocol.inbound.max_packet_size)
            except ValueError as e:
                self.protocolError(f"message is not well-formed XML ({e}); dropped")
                return
        self.messagesIn += 1
        factory.messagesIn += 1
        if self._holding:
            self._held.append((message, attributes))
            self._heldBytes += len(message)
            if self._heldBytes > factory.maxHeldBytes and not self._readPaused:
                self._readPaused = True
                self.framer.transport.pauseProducing()
            return
        self._publish(message, attributes)

    def messagesReceived(self, messages):
        """Several messages from one packet: published together, when nothing
        makes them go one by one (a check, a hold, an ignoring listener)."""
        factory = self.factory
        if self._holding or factory.checkXml or not factory.acceptsInput:
            for message in messages:
                self.messageReceived(message, None)
            return
        count = len(messages)
        self.messagesIn += count
        factory.messagesIn += count
        topic = factory.topicIn
        topic.publishBatch(topic.messages(messages, factory.config.msgtype, self.name,
                                          self.name))

    def _publish(self, message, attributes):
        topic = self.factory.topicIn
        topic.publish(topic.message(message, self.factory.config.msgtype, self.name,
                                    self.name, attributes))

    def holdInbound(self):
        """``topic-in`` is paused: keep what is read, up to ``maxHeldBytes``."""
        self._holding = True

    def releaseInbound(self):
        """``topic-in`` takes messages again: publish what was held, in order."""
        self._holding = False
        while self._held and not self._holding:
            message, attributes = self._held.popleft()
            self._heldBytes -= len(message)
            self._publish(message, attributes)
        if not self._holding and self._readPaused and not self._gone:
            self._readPaused = False
            self.framer.transport.resumeProducing()

    def protocolError(self, description):
        self.errors += 1
        self.factory.errors += 1
        self.factory.log.warn("{connection}: {description}", connection=self.name,
                              description=description)

    def framerDisconnected(self, reason):
        factory = self.factory
        self._gone = True
        factory.connections.pop(self.name, None)
        if self._producerTopic is not None:
            self._producerTopic.unregisterProducer(self._inboundGate)
            self._producerTopic = None
        # The peer's last words: into the busy subscribers' bounded queues.
        while self._held:
            self._publish(*self._held.popleft())
        self._heldBytes = 0
        lost = self._dropQueue()
        factory.log.info("{connection} disconnected: {reason}{lost}",
                         connection=self.name, reason=reason.getErrorMessage(),
                         lost=f"; {lost} queued outbound message(s) dropped" if lost
                         else "")
        self._closed.callback(None)

    # -- authentication --------------------------------------------------------

    def authenticate(self, line) -> bool:
        """Check the secret line a peer sent first; close the connection if wrong."""
        factory = self.factory
        transport = self.framer.transport
        address = peerHost(transport)
        wait = factory.throttle.retryAfter(address)
        if wait > 0:
            # Not even checked: guesses from this address are slowed down.
            factory.authThrottled += 1
            factory.log.warn("{connection}: secret from {peer} refused unchecked: {wait:.1f}"
                             " s to wait after failed tries; closing",
                             connection=self.name, peer=peerOf(transport), wait=wait)
            self.close()
            return False
        # Constant time over fixed-length digests: the comparison tells an
        # attacker neither where the guess went wrong nor the secret's length.
        if factory.sharedSecret.matches(line):
            self.authenticated = True
            factory.authenticated += 1
            factory.throttle.succeeded(address)
            factory.log.info("{connection} authenticated", connection=self.name)
            return True
        factory.authFailures += 1
        wait = factory.throttle.failed(address)
        factory.log.warn("{connection}: authentication failed from {peer}; closing; the "
                         "next try from there waits {wait:g} s", connection=self.name,
                         peer=peerOf(transport), wait=wait)
        self.close()
        return False

    # -- outbound ------------------------------------------------------------------

    def send(self, message):
        """Write one message (bytes) to this connection, or queue or drop it.

        Written at once unless the peer is behind (the transport paused us);
        then queued.  With ``overflow`` drop, a message that does not fit
        the queue's bounds is dropped and counted; with pause it is kept,
        and a queue that reaches its bounds makes the connection *full* (see
        :meth:`ListenerFactory._outbound`).  Nothing is written before the
        peer has authenticated.
        """
        factory = self.factory
        if not self.authenticated:
            factory.withheld += 1
            if worthLogging(factory.withheld):
                factory.log.info(
                    "{connection} has not authenticated: not writing it an outbound "
                    "message ({n} withheld so far on this listener)",
                    connection=self.name, n=factory.withheld)
            return
        if self._writePaused or self._queue:
            if factory.pausing:
                self._queue.append(message)
                self._queuedBytes += len(message)
                if self._slowCall is None and self.full:
                    factory.queueFull(self)
                return
            if self._queue and (len(self._queue) >= factory.maxQueuedMessages or
                                self._queuedBytes + len(message) > factory.maxQueuedBytes):
                self._drop()
                return
            self._queue.append(message)
            self._queuedBytes += len(message)
            return
        self._write(message)

    def sendMany(self, messages):
        """Write several messages (bytes) as :meth:`send` would each: in one
        write through the framer's ``sendMessages`` when nothing waits."""
        if self._writePaused or self._queue or not self.authenticated:
            for message in messages:
                self.send(message)
            return
        self._writeMany(messages)

    @property
    def full(self) -> bool:
        """Whether the queue has reached its bounds (messages or bytes)."""
        factory = self.factory
        return (len(self._queue) >= factory.maxQueuedMessages
                or self._queuedBytes >= factory.maxQueuedBytes)

    def _dropQueue(self) -> int:
        """Empty the queue, counting it as dropped; returns how many."""
        lost = len(self._queue)
        self._queue.clear()
        self._queuedBytes = 0
        if lost:
            self.dropped += lost
            self.factory.dropped += lost
        self.factory.queueHasRoom(self)
        return lost

    def cutOffAsSlow(self):
        """The queue stayed full for slow-consumer-timeout: disconnect the peer."""
        self._slowCall = None
        factory = self.factory
        factory.slowConsumers += 1
        # Out of the routing first: what the drained topic delivers next must
        # not queue up for a connection that is being cut off.
        factory.connections.pop(self.name, None)
        lost = self._dropQueue()
        factory.log.warn(
            "{connection}: its queue has stayed full for {timeout:g} s (the peer reads "
            "too slowly): disconnecting it as a slow consumer; {lost} queued message(s) "
            "dropped ({n} slow consumer(s) so far)", connection=self.name,
            timeout=factory.slowConsumerTimeout, lost=lost, n=factory.slowConsumers)
        self._unregister()
        transport = self.framer.transport if self.framer is not None else None
        if transport is not None:
            # It does not read: a close would wait for it forever.
            transport.abortConnection()

    def _write(self, message):
        if self.framer.sendMessage(message) != 0:  # 0: refused, and reported
            self.messagesOut += 1
            self.factory.messagesOut += 1

    def _writeMany(self, messages):
        written = self.framer.sendMessages(messages)
        count = len(messages) if written is None else written
        self.messagesOut += count
        self.factory.messagesOut += count

    def _drop(self):
        factory = self.factory
        self.dropped += 1
        factory.dropped += 1
        if worthLogging(factory.dropped):
            factory.log.warn(
                "{connection}: peer is not reading; dropped an outbound message "
                "({queued} queued, {mine} dropped for this connection, {n} for the "
                "listener so far)", connection=self.name, queued=len(self._queue),
                mine=self.dropped, n=factory.dropped)

    @property
    def queued(self) -> int:
        """Outbound messages waiting for the peer to read."""
        return len(self._queue)

    # -- IPushProducer: the transport says whether the peer reads ---------------

    def pauseProducing(self):
        """The transport's write buffer is full: queue further messages."""
        self._writePaused = True

    def resumeProducing(self):
        """The peer read what was buffered: write the queue until full again."""
        transport = self.framer.transport if self.framer is not None else None
        if transport is None or self._gone:
            return
        if getattr(transport, "disconnecting", False):
            # A close asked for while paused: a registered producer would keep
            # the transport waiting for more data instead of closing.
            self._unregister()
            return
        self._writePaused = False
        queue = self._queue
        while queue and not self._writePaused:
            if len(queue) == 1:
                message = queue.popleft()
                self._queuedBytes -= len(message)
                self._write(message)
                break
            # In slices, each one write: the transport pauses us again once
            # its buffer is full, so at most a slice more than that is buffered.
            messages = [queue.popleft() for _ in range(min(len(queue), RESUME_SLICE))]
            self._queuedBytes -= sum(map(len, messages))
            self._writeMany(messages)
        if self._slowCall is not None and not self.full:
            self.factory.queueHasRoom(self)

    def stopProducing(self):
        """The transport is going away; :meth:`framerDisconnected` cleans up."""

    def _unregister(self):
        if self._registered:
            self._registered = False
            self.framer.transport.unregisterProducer()

    def close(self):
        """Close the connection; the Deferred fires once it is gone."""
        if self.framer is not None and self.framer.transport is not None \
                and not self._gone:
            self._unregister()
            self.framer.transport.loseConnection()
        return self._closed


class _SecretLine(Protocol):
    """Reads a connection's first line, the shared secret, before its framer
    sees any byte: authentication works the same whatever the protocol."""

    #: longest secret line accepted; a peer sending more without a line end
    #: is treated as a wrong secret
    MAX_LINE = 4096

    def __init__(self, framer, connection):
        self.framer = framer
        self.connection = connection
        self._buffer = b""
        self._state = "reading"  # then "open" or "refused"

    def makeConnection(self, transport):
        Protocol.makeConnection(self, transport)
        self.framer.makeConnection(transport)

    def dataReceived(self, data):
        if self._state == "open":
            self.framer.dataReceived(data)
            return
        if self._state == "refused":
            # Read together with a wrong secret: no second guess.
            self.connection.factory.rejected += 1
            return
        self._buffer += data
        line, newline, rest = self._buffer.partition(b"\n")
        if not newline and len(self._buffer) <= self.MAX_LINE:
            return
        self._buffer = b""
        if not self.connection.authenticate(line if newline else b""):
            self._state = "refused"
            if rest:
                self.connection.factory.rejected += 1
            return
        self._state = "open"
        if rest:
            self.framer.dataReceived(rest)

    def connectionLost(self, reason):
        self.framer.connectionLost(reason)


class ListenerFactory(Factory):
    """Builds a framed, routed connection per accepted socket.

    :param config: the :class:`~aiengine.config.ListenerConfig`.
    :param broker: the :class:`~aiengine.broker.Broker`.
    :param secret: the shared secret (bytes) a connection must send as its
        first message, or ``None`` for no authentication.

    Counters: ``count`` (connections so far), ``messagesIn``, ``messagesOut``,
    ``errors``, ``ignored`` (inbound on an ``out`` listener), ``dropped``
    (outbound, peer not reading), ``withheld`` (outbound, peer not
    authenticated), ``authenticated``, ``authFailures``, ``rejected``
    (inbound after a wrong secret, before the close), ``undeliverable``
    (replies for connections that had closed), ``unrouted`` (messages for
    every connection while none was open), ``slowConsumers`` (connections
    disconnected by the overflow pause policy).
    """

    # SocketServer::<name> logs its own start and stop lines.
    noisy = False

    #: outbound messages one connection may queue while its peer is behind
    maxQueuedMessages = 1000
    #: bytes of outbound message bodies one connection may queue likewise
    maxQueuedBytes = 1 << 20
    #: bytes of inbound messages one connection holds while topic-in is paused
    #: before it stops reading its socket
    maxHeldBytes = 1 << 16

    def logPrefix(self):
        """Names the listener in Twisted's own port log lines."""
        return self.log.namespace

    def __init__(self, config, broker, secret: bytes | None = None):
        self.config = config
        self.broker = broker
        #: overflow policy pause (True) or drop (False); see the module's docstring
        self.pausing = config.overflow == "pause"
        self.slowConsumerTimeout = config.slow_consumer_timeout
        #: what a connection's first line is compared with; never logged
        self.sharedSecret = None if secret is None else SharedSecret(secret)
        #: the shared secret (bytes) or None; never logged
        self.secret = secret
        self.log = PeerSafeLogger(namespace=f"SocketServer::{config.name}")
        self.connections: dict[str, ListenerConnection] = {}
        self.acceptsInput = config.direction in ("in", "duplex") and bool(config.topic_in)
        self.acceptsOutput = config.direction in ("out", "duplex") and bool(config.topic_out)
        #: where inbound messages are published (None when none are routed)
        self.topicIn = broker.topic(config.topic_in, pin=True) if self.acceptsInput else None
        # msgtype=xml: each message must be one well-formed document.  The
        # xml-messages framing has already parsed it under the same rules.
        self.checkXml = (config.msgtype == "xml"
                         and config.protocol.inbound.name != "xml-messages")
        self.count = 0
        self.messagesIn = self.messagesOut = self.errors = self.ignored = 0
        self.dropped = self.withheld = 0
        self.authenticated = self.authFailures = self.rejected = 0
        #: secret lines refused unchecked because their address had to wait
        self.authThrottled = 0
        #: failed secret lines per address (see LoginThrottle)
        self.throttle = LoginThrottle(broker.clock)
        #: replies for connections of ours that had closed
        self.undeliverable = 0
        #: messages for every connection when none was open
        self.unrouted = 0
        #: connections disconnected because their queue stayed full
        self.slowConsumers = 0
        self._sessionPrefix = config.name + "."
        self._subscription = None
        # overflow pause: the connections whose queue is full, and the
        # Deferred the topic-out subscription waits on meanwhile
        self._full: set = set()
        self._drained = None

    def startFactory(self):
        if self.acceptsOutput and self._subscription is None:
            self._subscription = self.broker.subscribe(
                self.config.topic_out, self._outbound, name=f"listener:{self.config.name}",
                batchCallback=self._outboundBatch)

    def stopFactory(self):
        if self._subscription is not None:
            self._subscription.cancel()
            self._subscription = None
        for connection in tuple(self._full):
            self.queueHasRoom(connection)

    def buildProtocol(self, addr):
        self.count += 1
        connection = ListenerConnection(self, f"{self.config.name}.{self.count}")
        framer = buildFramer(self.config.protocol, connection, self.log)
        if self.secret is None:
            return framer
        return _SecretLine(framer, connection)

    def _outbound(self, message):
        """The topic-out subscriber: a reply to its connection, anything else
        to every connection.

        Returns a Deferred while a connection's queue is full (overflow
        pause), so that the broker pauses the topic's publishers; with
        overflow drop, never: each connection bounds its own backlog.
        """
        session = message.session
        if message.inReplyTo is None or session is None:
            connections = self.connections
            if connections:
                for connection in tuple(connections.values()):
                    self._sendTo(connection, message.body)
            else:
                self._unrouted(1, message.id)
        else:
            connection = self.connections.get(session)
            if connection is not None:
                self._sendTo(connection, message.body)
            elif session.startswith(self._sessionPrefix):
                # A reply for one of our connections that has closed meanwhile.
                self.undeliverable += 1
                if worthLogging(self.undeliverable, 100):
                    self.log.warn("{id} is for {session}, which has disconnected: "
                                  "dropped ({n} so far)", id=message.id, session=session,
                                  n=self.undeliverable)
            # else: a reply for a session of another listener or the console.
        return self._holdIfFull()

    def _outboundBatch(self, messages):
        """The topic-out subscriber for several messages of one packet (never
        replies: a batch is what a connection read): each connection gets
        them in one write when it can take them, else one by one as
        :meth:`_outbound` gives them."""
        connections = self.connections
        if connections:
            bodies = [message.body for message in messages]
            for connection in tuple(connections.values()):
                try:
                    connection.sendMany(bodies)
                except Exception as e:
                    connection.protocolError(f"could not write {len(bodies)} "
                                             f"message(s): {e!r}")
        else:
            self._unrouted(len(messages), messages[0].id)
        return self._holdIfFull()

    def _holdIfFull(self):
        """A Deferred for the broker while a connection's queue is full."""
        if self._full:
            if self._drained is None:
                self._drained = defer.Deferred()
            return self._drained
        return None

    def _unrouted(self, count, firstId):
        before, self.unrouted = self.unrouted, self.unrouted + count
        if worthLogging(self.unrouted) or self.unrouted // 1000 > before // 1000:
            self.log.warn("no connection is open: {n} message(s) from {id} dropped "
                          "({total} so far)", n=count, id=firstId, total=self.unrouted)

    def queueFull(self, connection):
        """``connection``'s queue reached its bounds: publishers wait for it,
        for ``slowConsumerTimeout`` seconds at most."""
        self._full.add(connection)
        connection._slowCall = self.broker.clock.callLater(
            self.slowConsumerTimeout, connection.cutOffAsSlow)

    def queueHasRoom(self, connection):
        """``connection`` has room again, or is gone: publishers may go on."""
        call, connection._slowCall = connection._slowCall, None
        if call is not None and call.active():
            call.cancel()
        self._full.discard(connection)
        if not self._full and self._drained is not None:
            drained, self._drained = self._drained, None
            drained.callback(None)

    @staticmethod
    def _sendTo(connection, body):
        # One connection's failure must not keep the message from the others.
        try:
            connection.send(body)
        except Exception as e:
            connection.protocolError(f"could not write a message: {e!r}")

    def closeConnections(self):
        """Close every connection; the Deferred fires when all are gone."""
        return defer.DeferredList([c.close() for c in tuple(self.connections.values())])

    def stats(self) -> dict:
        """The counters, by name."""
        return {key: getattr(self, key) for key in (
            "count", "messagesIn", "messagesOut", "errors", "ignored", "dropped",
            "withheld", "authenticated", "authFailures", "authThrottled", "rejected",
            "undeliverable", "unrouted", "slowConsumers")} | {
            "openConnections": len(self.connections)}


# -- limits common to every listener ----------------------------------------------


@implementer(IHalfCloseableProtocol)
class GuardProtocol(TimeoutProtocol):
    """Wraps one accepted connection: closes it after ``idle-timeout``.

    A peer that shuts down its sending side (half-close, as scripts do) is
    not cut off: an inner protocol that handles half-closes (the console,
    which answers what it has read first) decides when to close; any other
    is closed in order, so what was written to it still reaches the peer.
    """

    _abortCall = None
    _handshakeCall = None

    def makeConnection(self, transport):
        """Connected: a TLS connection must finish its handshake in time."""
        if self.factory.noDelay:
            setNoDelay(transport)
        TimeoutProtocol.makeConnection(self, transport)
        timeout = self.factory.handshakeTimeout
        if isinstance(self.wrappedProtocol, TLSMemoryBIOProtocol) and timeout:
            self._handshakeCall = self.factory.callLater(timeout, self._handshakeExpired)

    def _handshakeExpired(self):
        self._handshakeCall = None
        # Twisted's TLS protocol keeps the state only here; if it ever goes,
        # the connection counts as done (idle-timeout still applies).
        if getattr(self.wrappedProtocol, "_handshakeDone", True) or self.transport is None:
            return
        factory = self.factory
        factory.handshakeTimeouts += 1
        factory.log.info("{connection}: TLS handshake not done within {timeout:g} s, "
                         "aborting", connection=self.connectionName(),
                         timeout=factory.handshakeTimeout)
        self.transport.abortConnection()

    def readConnectionLost(self):
        """The peer sent everything it will send."""
        inner = IHalfCloseableProtocol(self.wrappedProtocol, None)
        if inner is not None:
            inner.readConnectionLost()
        else:
            self.close(self.factory.closeGrace)

    def writeConnectionLost(self):
        """Our sending side is shut down."""
        inner = IHalfCloseableProtocol(self.wrappedProtocol, None)
        if inner is not None:
            inner.writeConnectionLost()

    def timeoutFunc(self):
        """Idle too long: close, and abort if the peer does not read the close."""
        # The fired call must go: the close itself writes (TLS's close_notify),
        # and a write resets the timeout.
        self.cancelTimeout()
        factory = self.factory
        factory.timedOut += 1
        factory.log.info("{connection}: idle for {timeout} s, closing",
                         connection=self.connectionName(), timeout=factory.timeoutPeriod)
        self.close(factory.closeGrace)

    def close(self, grace):
        """Close gracefully; abort if still open ``grace`` seconds later."""
        if self.transport is None or self._abortCall is not None:
            return
        # A producer registered with a full write buffer would hold the close
        # back; the peer that stopped reading is the one being closed.
        if getattr(self.transport, "producer", None) is not None:
            self.transport.unregisterProducer()
        inner = self.wrappedProtocol
        if isinstance(inner, TLSMemoryBIOProtocol):
            # TLS closes with its own close_notify first, then the socket.
            if getattr(inner, "_producer", None) is not None:
                inner.unregisterProducer()
            inner.loseConnection()
        else:
            self.loseConnection()
        self._abortCall = self.factory.callLater(grace, self._abort)

    def _abort(self):
        self._abortCall = None
        if self.transport is not None:
            self.factory.aborted += 1
            self.factory.log.info("{connection}: peer did not take the close, aborting",
                                  connection=self.connectionName())
            self.transport.abortConnection()

    def connectionLost(self, reason):
        if self._abortCall is not None:
            self._abortCall.cancel()
            self._abortCall = None
        if self._handshakeCall is not None:
            self._handshakeCall.cancel()
            self._handshakeCall = None
        factory = self.factory
        try:
            TimeoutProtocol.connectionLost(self, reason)
        finally:
            # Whatever the inner protocol did, shutdown must not wait for it.
            self.transport = None
            factory.connectionGone()

    def connectionName(self) -> str:
        """The session name of the innermost protocol, or the peer address."""
        protocol = self.wrappedProtocol
        while isinstance(protocol, ProtocolWrapper):
            protocol = protocol.wrappedProtocol
        name = getattr(protocol, "session", None) or getattr(
            getattr(protocol, "receiver", None), "name", None)
        if name:
            return name
        return f"connection from {peerOf(self.transport)}" if self.transport else "?"


class GuardFactory(TimeoutFactory):
    """Wraps a listener's factory with ``max-connections`` and ``idle-timeout``.

    Twisted's ``TimeoutFactory`` closes idle connections; the connection
    limit is that of ``LimitTotalConnectionsFactory`` (``buildProtocol``
    returns ``None``, so the port closes the socket at once), counted over
    the wrapped protocols this factory tracks in ``protocols``.

    Counters: ``accepted``, ``refused``, ``timedOut``, ``aborted``,
    ``handshakeTimeouts`` (TLS handshakes not done within
    :attr:`handshakeTimeout` seconds: aborted).
    """

    protocol = GuardProtocol
    noisy = False
    #: seconds a TLS connection has to finish its handshake
    handshakeTimeout = 10.0

    def __init__(self, wrappedFactory, log, maxConnections=_DEFAULT_MAX_CONNECTIONS,
                 idleTimeout=_DEFAULT_IDLE_TIMEOUT,
                 reactor=None, closeGrace=5.0, noDelay=True):
        if reactor is None:
            from twisted.internet import reactor
        #: TCP_NODELAY on every accepted socket (see setNoDelay)
        self.noDelay = noDelay
        # TimeoutProtocol takes None for "never".
        TimeoutFactory.__init__(self, wrappedFactory, idleTimeout or None)
        self.log = log
        self.reactor = reactor
        self.maxConnections = maxConnections
        self.closeGrace = closeGrace
        self.accepted = self.refused = self.timedOut = self.aborted = 0
        self.handshakeTimeouts = 0
        self._emptyWaiters: list[defer.Deferred] = []

    def logPrefix(self):
        """Names the listener in Twisted's own log lines."""
        return self.log.namespace

    def callLater(self, period, func):
        """Schedules on this factory's reactor (a ``Clock`` in tests)."""
        return self.reactor.callLater(period, func)

    def buildProtocol(self, addr):
        """The wrapped protocol, or ``None`` (close at once) when full."""
        if len(self.protocols) >= self.maxConnections:
            self.refused += 1
            if worthLogging(self.refused, period=100):
                self.log.warn(
                    "refused a connection from {peer}: {open} connections open, the "
                    "max-connections limit; {n} refused so far",
                    peer=describeAddress(addr),
                    open=len(self.protocols), n=self.refused)
            return None
        wrapped = self.wrappedFactory.buildProtocol(addr)
        if wrapped is None:
            return None
        self.accepted += 1
        return self.protocol(self, wrapped, timeoutPeriod=self.timeoutPeriod)

    def connectionGone(self):
        """Called by each connection after it is lost."""
        if not self.protocols:
            waiters, self._emptyWaiters = self._emptyWaiters, []
            for waiter in waiters:
                waiter.callback(None)

    def closeAll(self, grace=None) -> defer.Deferred:
        """Close every connection; abort the ones still open after ``grace``
        seconds (default ``closeGrace``).  Fires when none is left."""
        if grace is None:
            grace = self.closeGrace
        if not self.protocols:
            return defer.succeed(None)
        waiter = defer.Deferred()
        self._emptyWaiters.append(waiter)
        for protocol in list(self.protocols):
            protocol.close(grace)
        return waiter


class ListenerUnavailable(CannotListenError):
    """A listener cannot bind its address.  Its text is the one line
    start-up prints: ``listener 'console' cannot listen on
    127.0.0.1:20001: address already in use``."""

    def __init__(self, name, interface, port, socketError):
        CannotListenError.__init__(self, interface, port, socketError)
        self.name = name

    @property
    def reason(self) -> str:
        """Why, in words: the system's message, lower-cased as a clause."""
        error = self.socketError
        text = getattr(error, "strerror", None) or str(error) or type(error).__name__
        return text[:1].lower() + text[1:]

    def __str__(self):
        address = (f"[{self.interface}]:{self.port}" if ":" in self.interface
                   else f"{self.interface}:{self.port}")
        return f"listener '{self.name}' cannot listen on {address}: {self.reason}"


class ListenerService(Service):
    """Listens with a factory on an interface and port; closes everything on stop.

    ``factory`` (a :class:`ListenerFactory` or the console's factory) is
    wrapped, when listening starts, in TLS when ``tls`` is given (an
    ``IOpenSSLServerConnectionCreator`` such as
    :func:`aiengine.tls.serverTLSOptions`'s
    result) and in a :class:`GuardFactory` enforcing ``maxConnections`` and
    ``idleTimeout`` (seconds; 0 = never), available as :attr:`guard`.
    """

    #: seconds a stopping listener waits for peers to take the close before
    #: aborting their connections
    closeGrace = 5.0

    def __init__(self, name, factory, interface, port, reactor=None,
                 maxConnections=_DEFAULT_MAX_CONNECTIONS,
                 idleTimeout=_DEFAULT_IDLE_TIMEOUT, tls=None, noDelay=True):
        if reactor is None:
            from twisted.internet import reactor
        self.name = name
        self.factory = factory
        self.interface = interface
        self.port = port
        self.reactor = reactor
        self.maxConnections = maxConnections
        self.idleTimeout = idleTimeout
        self.tls = tls
        #: TCP_NODELAY on accepted sockets
        self.noDelay = noDelay
        self.listeningPort = None
        self.guard = None
        self.log = PeerSafeLogger(namespace=f"SocketServer::{name}")

    @classmethod
    def fromConfig(cls, config, factory, reactor=None, tls=None):
        """A service for a :class:`~aiengine.config.ListenerConfig`."""
        return cls(config.name, factory, config.interface, config.port, reactor,
                   maxConnections=config.max_connections,
                   idleTimeout=config.idle_timeout, tls=tls, noDelay=config.tcp_nodelay)

    def privilegedStartService(self):
        """Bind and listen (once), before the process drops privileges.

        :raises ListenerUnavailable: the address cannot be bound (in use,
            not permitted, not an address of this host).
        """
        if self.listeningPort is not None:
            return  # twistd's own call, after aiengine.tap bound it early
        inner = self.factory
        if self.tls is not None:
            inner = TLSMemoryBIOFactory(self.tls, False, inner)
            inner.noisy = False
        self.guard = GuardFactory(inner, self.log, self.maxConnections, self.idleTimeout,
                                  self.reactor, self.closeGrace, noDelay=self.noDelay)
        # Twisted's "<prefix> starting on <port>" would repeat _listening's line.
        d = quietly(serverEndpoint(self.reactor, self.interface, self.port).listen,
                    self.guard)
        failures = []
        d.addCallbacks(self._listening, failures.append)
        if failures:
            error = failures[0].value
            if isinstance(error, CannotListenError) and not isinstance(
                    error, ListenerUnavailable):
                raise ListenerUnavailable(self.name, self.interface, self.port,
                                          error.socketError) from error
            failures[0].raiseException()
        Service.privilegedStartService(self)

    def probe(self):
        """Check that this listener's address can be bound now, and release it
        at once (``--check``); bound as Twisted binds, ``SO_REUSEADDR`` included.

        :raises ListenerUnavailable: it cannot.
        """
        family = socket.AF_INET6 if ":" in self.interface else socket.AF_INET
        try:
            address = socket.getaddrinfo(self.interface, self.port, family,
                                         socket.SOCK_STREAM, 0,
                                         socket.AI_NUMERICHOST)[0][4]
            with socket.socket(family, socket.SOCK_STREAM) as sock:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.bind(address)
                # Linux refuses a second listener only at listen() when both
                # sockets set SO_REUSEADDR.
                sock.listen(1)
        except OSError as e:
            raise ListenerUnavailable(self.name, self.interface, self.port, e) from e

    def _listening(self, port):
        self.listeningPort = port
        # Twisted's "(TCP Port <n> Closed)" would stand for stopService's line.
        if hasattr(port, "_logConnectionLostMsg"):
            port._logConnectionLostMsg = lambda: None
        self.log.info(
            "listening on {address}{tls} (max-connections {max}, idle-timeout "
            "{idle}){auth}", address=describeAddress(port.getHost()),
            tls=" with TLS" if self.tls is not None else "", max=self.maxConnections,
            idle=f"{self.idleTimeout:g} s" if self.idleTimeout else "off",
            auth=", authentication required"
            if getattr(self.factory, "secret", None) is not None else "")

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
        """Stop listening and close every connection; fires when all are gone.

        Each factory first closes its connections its own way
        (``closeConnections``); what is left after :attr:`closeGrace`
        seconds (peers that do not read) is aborted.
        """
        Service.stopService(self)
        port, self.listeningPort = self.listeningPort, None
        waits = []
        if port is not None:
            self.log.info("stopped listening on {address}",
                          address=describeAddress(port.getHost()))
            waits.append(defer.maybeDeferred(port.stopListening))
        closer = getattr(self.factory, "closeConnections", None)
        if closer is not None:
            waits.append(closer())
        if self.guard is not None:
            waits.append(self.guard.closeAll(self.closeGrace))
        return defer.DeferredList(waits)
