"""Bridges: local topics shared with other daemons through an MQTT 5 broker.

:class:`MqttBridge` drives a paho-mqtt client from the reactor: paho's socket
is a reader (and, while paho has bytes to send, a writer) of the reactor, and
only the blocking ``connect`` runs in a thread.  Outbound messages wait in the
bridge's own bounded queue, never in paho's offline queue (which reorders and
drops QoS 0), and go out in order once the bridge is connected; QoS 1 ones are
limited to a window of unacknowledged messages and are sent again after a
reconnection when they were not acknowledged.  Every message carries an
``origin`` user property (node id and boot epoch) and an ``origin-id``: a
receiver drops the ones it has seen recently, and its own.  Every message
also carries its ``message-id`` at its sender, and a reply to a message that
came in names it by that id and its sender's node and boot epoch
(``in-reply-to-origin``): the reply pairs with its request at the sender (and
goes to the request's session), and with nothing at any other node.
"""

from __future__ import annotations

import ssl
import time
from collections import OrderedDict, deque

from twisted.internet import defer, threads
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python import threadable
from zope.interface import implementer
from twisted.internet.interfaces import IPushProducer, IReadWriteDescriptor

from aiengine.channels.policy import FailureStreak, reconnectDelay
from aiengine.logs import worthLogging
from aiengine.mqttwire import (PUBLISH, MalformedPacket, decodePublish,
                               encodeProperties, puback, splitPackets)

__all__ = ["MqttBridge", "STOPPED", "CONNECTING", "CONNECTED", "WAITING",
           "WINDOW", "RECENT_IDS", "COUNTERS"]

STOPPED = "stopped"
CONNECTING = "connecting"
CONNECTED = "connected"
WAITING = "waiting"

#: QoS 1 messages sent and not yet acknowledged, at most
WINDOW = 1000
#: message origins (node, boot epoch and id) remembered to drop duplicates,
#: at least: a bridge remembers receive-maximum + WINDOW of them if more (after
#: a broker restart with a persistent session, every message received and not
#: yet acknowledged comes again, and A's unacknowledged ones after them)
RECENT_IDS = 10000
#: the counters of :meth:`MqttBridge.status` (``queued`` and ``heldAcks``
#: are what waits now, the others count since start)
COUNTERS = ("messagesIn", "messagesOut", "duplicatesDropped", "loopsDropped",
            "queued", "dropped", "reconnects", "paused", "inboundPaused",
            "heldAcks")
#: bytes read from the broker's socket at once
READ_SIZE = 256 * 1024
#: bytes for the broker waiting in the bridge's buffer, at most; beyond them
#: outbound messages wait in the bridge's queue (and pause publishers)
OUT_HIGH = 256 * 1024
#: messages handed to paho per reactor turn, at most
DRAIN_BATCH = 2000

#: the user property the bridge sets itself (not a message attribute):
#: ``<node-id>:<boot epoch ms>/<n>``
_ORIGIN = "origin"
#: user properties that pair a reply with its request across nodes (not
#: message attributes either): every message carries its id at its sender
#: (``message-id``); a reply to a request that came in through a bridge names
#: the request by that id in ``in-reply-to`` and its sender's ``<node-id>:<boot
#: epoch ms>`` in ``in-reply-to-origin``
_MESSAGE_ID = "message-id"
_REPLY_ORIGIN = "in-reply-to-origin"
_INTERNAL = (_ORIGIN, _MESSAGE_ID, _REPLY_ORIGIN)
_IN_REPLY_TO = "in-reply-to"


class _HostnameContext(ssl.SSLContext):
    """An SSLContext that checks the server against ``tls.hostname`` rather
    than the host connected to (paho passes its host as server_hostname)."""

    hostname = None

    def wrap_socket(self, sock, *args, server_hostname=None, **kwargs):
        return super().wrap_socket(sock, *args,
                                   server_hostname=self.hostname or server_hostname,
                                   **kwargs)


@implementer(IReadWriteDescriptor)
class _PahoSocket:
    """paho's socket as a reactor file descriptor, buffered both ways.

    paho reads a packet with three ``recv`` calls and writes each packet
    with its own ``send``.  Given this object as its socket, it reads from a
    buffer that one ``recv`` of the reactor's read filled, and its writes
    gather in a buffer that goes out with one ``send`` per reactor turn.
    PUBLISH packets never reach paho: the bridge takes them from the
    buffer (:meth:`MqttBridge._publishPacket`).
    """

    __slots__ = ("bridge", "client", "sock", "raw", "inbuf", "inpos", "outbuf",
                 "error", "eof", "pahoWrites", "writing", "published")

    def __init__(self, bridge, client, sock):
        self.bridge = bridge
        self.client = client
        self.sock = sock
        #: the start of a packet that has not fully arrived
        self.raw = b""
        #: packets for paho, read up to ``inpos``
        self.inbuf = b""
        self.inpos = 0
        self.outbuf = bytearray()
        #: why the connection ended (an OSError), or None; ``eof``: it closed
        self.error = None
        self.eof = False
        #: paho has packets to write; ``writing``: we are a reactor writer
        self.pahoWrites = False
        self.writing = False
        #: messages given to paho since its packets were last written out
        self.published = 0

    # -- the socket paho sees ---------------------------------------------------

    def recv(self, size):
        """From the buffer; BlockingIOError when it is empty."""
        pos = self.inpos
        if pos < len(self.inbuf):
            self.inpos = pos + size
            return self.inbuf[pos:pos + size]
        if self.error is not None:
            raise self.error
        if self.eof:
            return b""
        raise BlockingIOError()

    def send(self, data):
        """Into the buffer; BlockingIOError when it is full (paho keeps the
        packet and writes it later)."""
        if len(self.outbuf) >= OUT_HIGH:
            raise BlockingIOError()
        self.outbuf += data
        return len(data)

    def close(self):
        """paho is done: what it wrote goes out if the socket takes it now."""
        if self.outbuf and self.error is None:
            try:
                self.sock.send(self.outbuf)
            except (OSError, ValueError):
                pass
            self.outbuf.clear()
        self.sock.close()

    def __getattr__(self, name):
        return getattr(self.sock, name)

    # -- the reactor's side -------------------------------------------------------

    def fileno(self):
        return self.sock.fileno()

    def logPrefix(self):
        return f"MqttBridge {self.bridge.name}"

    def buffered(self) -> bool:
        """Whether paho has bytes to read (or the end to see)."""
        return (self.inpos < len(self.inbuf) or self.error is not None
                or self.eof)

    def doRead(self):
        sock = self.sock
        try:
            data = sock.recv(READ_SIZE)
            # TLS may hold decrypted bytes that the socket no longer signals
            pending = getattr(sock, "pending", None)
            while pending is not None and pending():
                data += sock.recv(READ_SIZE)
        except (BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError):
            return
        except OSError as e:
            self.error, data = e, b""
        if not data and self.error is None:
            self.eof = True
        raw = self.raw + data if self.raw else data
        packets, end = splitPackets(raw)
        self.raw = raw[end:]
        forPaho = []
        take = self.bridge._publishPacket
        try:
            for start, body, end in packets:
                if raw[start] >> 4 == PUBLISH:
                    take(raw[start], raw, body, end)
                else:
                    forPaho.append(raw[start:end])
        except MalformedPacket as e:
            # paho then ends the connection, as MQTT says to
            self.bridge.log.warn("{address} sent a malformed PUBLISH ({why}): "
                                 "closing the connection", address=self.bridge._address,
                                 why=e)
            self.error = ConnectionError(f"malformed PUBLISH: {e}")
            self.raw = b""
        if forPaho:
            rest = self.inbuf[self.inpos:]
            self.inbuf = rest + b"".join(forPaho) if rest else b"".join(forPaho)
            self.inpos = 0
        self.bridge._read(self)

    def doWrite(self):
        if self.pahoWrites:
            self.published = 0
            self.client.loop_write()
        self.flush()
        self.bridge._wrote(self)

    def flush(self) -> None:
        """Write the buffer, as much as the socket takes now."""
        out = self.outbuf
        while out and self.error is None:
            try:
                n = self.sock.send(out)
            except (BlockingIOError, ssl.SSLWantWriteError, ssl.SSLWantReadError):
                break
            except OSError as e:
                self.error = e
                out.clear()
                # paho learns it at its next read
                self.bridge._read(self)
                return
            del out[:n]
        self.updateWriter()

    def updateWriter(self) -> None:
        want = self.pahoWrites or bool(self.outbuf)
        if want != self.writing and self.bridge._socket is self:
            self.writing = want
            if want:
                self.bridge.reactor.addWriter(self)
            else:
                self.bridge.reactor.removeWriter(self)

    def connectionLost(self, reason):
        # The reactor only calls this when it gave up on the descriptor:
        # paho reports the end itself in its own calls.
        self.bridge._socketGone(self)


class _Properties:
    """MQTT 5 PUBLISH properties already encoded: paho only calls ``pack``
    (its own Properties object costs more than the rest of a publish)."""

    __slots__ = ("packed",)

    def __init__(self, packed: bytes):
        self.packed = packed

    def pack(self) -> bytes:
        return self.packed


def _remember(table: OrderedDict, key, value) -> None:
    """``table[key] = value``, forgetting the oldest beyond RECENT_IDS."""
    table[key] = value
    if len(table) > RECENT_IDS:
        table.popitem(last=False)


@implementer(IPushProducer)
class _InboundGate:
    """Registered with a local topic that a bridge publishes to: tells the
    bridge when a subscriber there is busy."""

    def __init__(self, bridge, topic):
        self.bridge = bridge
        self.topic = topic
        self.paused = False

    def pauseProducing(self):
        if not self.paused:
            self.paused = True
            self.bridge._topicBusy(True)

    def resumeProducing(self):
        if self.paused:
            self.paused = False
            self.bridge._topicBusy(False)

    def stopProducing(self):
        """Nothing: the bridge stops with the engine."""


class MqttBridge:
    """One ``<bridge>``: its topics shared through an MQTT 5 broker.

    :param config: a :class:`~aiengine.config.BridgeConfig`.
    :param broker: the engine's :class:`~aiengine.broker.Broker`.
    :param password: the bytes of ``password-file`` (read by the engine), or None.
    """

    def __init__(self, config, broker, reactor, password=None):
        self.config = config
        self.name = config.name
        self.broker = broker
        self.reactor = reactor
        self.password = password
        self.log = Logger(namespace=f"Bridge::{config.name}")
        self.source = f"bridge:{config.name}"
        #: node id and boot epoch: message ids restart at every start
        self.origin = f"{config.node_id}:{int(time.time() * 1000)}"
        self._originPrefix = self.origin + "/"
        self.state = STOPPED
        self.counters = dict.fromkeys(COUNTERS, 0)
        self._streak = FailureStreak(reactor, self.log)
        self._inbound = {t.remote: t for t in config.topics if t.direction != "out"}
        self._outbound = [t for t in config.topics if t.direction != "in"]
        self._queue = deque()  # (remote, qos, body, packed properties), oldest first
        self._inflight = OrderedDict()  # paho mid -> queue entry, QoS 1 only
        self._waiters = []  # Deferreds of paused publishers
        self._recent = deque()
        self._recentSet = set()
        self._recentLimit = max(RECENT_IDS, config.receive_maximum + WINDOW)
        self._nextId = 0
        # (local, body, msgtype, attributes, session, request) of one read
        self._arrived = []
        #: local id of a message that came in -> (its sender's origin, its id
        #: there): a reply to it goes out naming the request as its sender knows it
        self._cameIn = OrderedDict()
        #: local id of a message sent with a session -> the session: the reply
        #: that comes back for it goes to that session only, as a local one would
        self._sentSessions = OrderedDict()
        self._acks = []  # packet ids of QoS 1 messages not yet acknowledged
        self._subscriptions = []
        self._client = None
        self._socket = None
        self._connecting = None  # the Deferred of connect() in its thread
        self._why = None  # why the current connection is being given up
        self._retry = None
        self._misc = None
        self._address = f"{config.host}:{config.port}"
        # Inbound flow control: the local topics that came in pause the bridge
        # while a subscriber there is busy.  A bridge that only takes topics
        # in then stops reading its socket; one that also sends cannot (its
        # acknowledgements come on the same socket) and goes on reading.
        self._gates = [_InboundGate(self, broker.topic(local))
                       for local in sorted({t.local for t in self._inbound.values()})]
        self._busyTopics = 0
        # QoS 1 is held back by holding its acks (the broker sends at most
        # receive-maximum unacknowledged); QoS 0 has no acks, so a bridge
        # taking QoS 0 in can only stop reading, and only when it sends
        # nothing (its acks share the socket).
        self._mayStopReading = not self._outbound and any(
            t.qos == 0 for t in self._inbound.values())

    # -- life cycle ------------------------------------------------------------

    def start(self) -> None:
        """Subscribe to the outbound topics and connect."""
        if self.state != STOPPED:
            return
        self.state = WAITING
        for gate in self._gates:
            gate.topic.registerProducer(gate)
        for topic in self._outbound:
            send, sendBatch = self._outgoing(topic)
            self._subscriptions.append(self.broker.subscribe(
                topic.local, send, name=f"bridge {self.name}", batchCallback=sendBatch))
        self._connect()

    def stop(self) -> defer.Deferred:
        """Disconnect and stop; fires once paho's socket is closed and its
        connecting thread (if any) is over.  Queued messages are discarded."""
        self.state = STOPPED
        for gate in self._gates:
            gate.topic.unregisterProducer(gate)
        self._busyTopics = 0
        for sub in self._subscriptions:
            sub.cancel()
        self._subscriptions = []
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        self._retry = None
        waiters, self._waiters = self._waiters, []
        for d in waiters:
            d.callback(None)
        if self._connecting is not None:
            # the thread cannot be interrupted: close what it opened after it
            d = defer.Deferred()
            self._connecting.addBoth(lambda _: d.callback(None))
            return d.addCallback(lambda _: self._close())
        self._close()
        return defer.succeed(None)

    def _close(self) -> None:
        """Say goodbye to the broker and close paho's socket (not from
        inside paho's callbacks: see :meth:`_forget`)."""
        client, descriptor = self._client, self._socket
        self._release()
        if client is None:
            return
        if descriptor is not None:
            try:
                client.disconnect()
                client.loop_write()
            except Exception:
                self.log.failure("disconnecting from {address}", address=self._address)
        sock = client.socket()
        if sock is not None:
            sock.close()

    def _release(self) -> None:
        """Forget the client: its socket leaves the reactor, its timer stops."""
        self._client = None
        self._why = None
        if self._misc is not None and self._misc.running:
            self._misc.stop()
        self._misc = None
        self._dropSocket()

    def _dropSocket(self) -> None:
        descriptor, self._socket = self._socket, None
        if descriptor is not None:
            self.reactor.removeReader(descriptor)
            self.reactor.removeWriter(descriptor)

    # -- connecting --------------------------------------------------------------

    def _newClient(self):
        from paho.mqtt.client import CallbackAPIVersion, Client, MQTTv5
        config = self.config
        client = Client(CallbackAPIVersion.VERSION2,
                        client_id=config.effective_client_id, protocol=MQTTv5)
        # The bridge keeps its own window: with paho's, every ack scans all
        # its out-messages.
        client.max_inflight_messages_set(0)
        if config.username is not None:
            client.username_pw_set(config.username, self.password)
        if config.tls:
            context = _HostnameContext(ssl.PROTOCOL_TLS_CLIENT)
            context.hostname = config.tls_hostname
            if config.tls_ca is None:
                context.load_default_certs()
            else:
                context.load_verify_locations(config.tls_ca)
            client.tls_set_context(context)
        client.on_connect = self._onConnect
        client.on_disconnect = self._onDisconnect
        client.on_subscribe = self._onSubscribe
        # paho builds two objects per QoS 0 message to call on_publish
        if any(t.qos for t in self._outbound):
            client.on_publish = self._onPublish
        client.on_socket_register_write = self._registerWrite
        client.on_socket_unregister_write = self._unregisterWrite
        client.on_socket_close = self._socketClosed
        return client

    def _connect(self) -> None:
        from paho.mqtt.packettypes import PacketTypes
        from paho.mqtt.properties import Properties
        self._retry = None
        if self.state == STOPPED:
            return
        self.state = CONNECTING
        config = self.config
        client = self._client = self._newClient()
        properties = Properties(PacketTypes.CONNECT)
        properties.ReceiveMaximum = config.receive_maximum
        if config.session_expiry:
            properties.SessionExpiryInterval = config.session_expiry
        # paho's connect resolves, connects and (with TLS) shakes hands
        # blocking: in a thread, so the reactor never waits for it
        self._connecting = threads.deferToThread(
            client.connect, config.host, config.port, config.keepalive,
            clean_start=not config.session_expiry, properties=properties)
        self._connecting.addCallbacks(self._connected, self._connectFailed,
                                      callbackArgs=(client,), errbackArgs=(client,))

    def _connected(self, _, client):
        self._connecting = None
        if self.state == STOPPED or client is not self._client:
            return
        sock = client.socket()
        if sock is None:
            self._failed(client, "connection closed while connecting")
            return
        descriptor = self._socket = _PahoSocket(self, client, sock)
        # paho has no way to be given a socket: it takes the buffered one in
        # place of the one it made (its own reads and writes go through
        # ``_sock``, and ``socket()`` returns it)
        client._sock = descriptor
        if not self._readingStopped():
            self.reactor.addReader(descriptor)
        # the CONNECT packet queued in the thread waits for the reactor
        descriptor.pahoWrites = True
        descriptor.updateWriter()
        self._misc = LoopingCall(client.loop_misc)
        self._misc.clock = self.reactor
        self._misc.start(1.0, now=False)

    def _connectFailed(self, failure, client):
        self._connecting = None
        if self.state == STOPPED or client is not self._client:
            return
        self._failed(client, f"connection to {self._address} failed: "
                             f"{failure.getErrorMessage() or failure.type.__name__}")

    def _failed(self, client, why) -> None:
        """An attempt that did not get as far as connected."""
        self._forget(client)
        delay = reconnectDelay(self.config.reconnection_timeout, self._streak.count + 1)
        self._streak.failed(why, f"; next attempt in {delay:.2f} s")
        self._schedule(delay)

    def _lost(self, client, why) -> None:
        """A connection that was up has ended."""
        self._forget(client)
        self.counters["reconnects"] += 1
        self.log.warn("connection to {address} lost: {why}", address=self._address,
                      why=why)
        self._schedule(reconnectDelay(self.config.reconnection_timeout, 0))

    def _forget(self, client) -> None:
        # Called from paho's callbacks, where paho closes the socket itself
        # right before or after: only the reactor lets go of it here.
        if client is self._client:
            self._release()
        # acks are for the connection that brought the messages: the broker
        # sends them again on the next one
        self._acks.clear()
        self._arrived.clear()
        # unacknowledged QoS 1 messages go first again, in their order; a
        # copy that did arrive is dropped by the receiver's recent ids
        if self._inflight:
            self._queue.extendleft(reversed(self._inflight.values()))
            self._inflight.clear()

    def _schedule(self, delay) -> None:
        if self.state == STOPPED:
            return
        self.state = WAITING
        self._retry = self.reactor.callLater(delay, self._connect)

    # -- paho's callbacks (in the reactor, but for the connecting thread's) -----

    def _registerWrite(self, client, userdata, sock):
        descriptor = self._socket
        if descriptor is not None and sock is descriptor and not descriptor.pahoWrites \
                and threadable.isInIOThread():
            descriptor.pahoWrites = True
            descriptor.updateWriter()

    def _unregisterWrite(self, client, userdata, sock):
        descriptor = self._socket
        if descriptor is not None and sock is descriptor and descriptor.pahoWrites:
            descriptor.pahoWrites = False
            # what paho wrote may still be in the buffer: the writer stays
            # until the socket took it
            descriptor.updateWriter()

    def _socketClosed(self, client, userdata, sock):
        # paho closes the socket right after: it must leave the reactor first
        if self._socket is not None and self._socket is sock:
            self._dropSocket()

    def _socketGone(self, descriptor):
        if descriptor is self._socket:
            client = self._client
            self._dropSocket()
            if client is not None and self.state != STOPPED:
                sock = client.socket()
                if sock is not None:
                    descriptor.error = descriptor.error or ConnectionError("lost")
                    sock.close()
                if self.state == CONNECTED:
                    self._lost(client, "the reactor lost the socket")
                else:
                    self._failed(client, f"connection to {self._address} lost "
                                         "while connecting")

    def _onConnect(self, client, userdata, flags, reasonCode, properties):
        if client is not self._client or self.state == STOPPED:
            return
        if reasonCode.is_failure:
            # paho closes the connection itself; _onDisconnect says why
            self._why = f"{self._address} refused the connection: {reasonCode}"
            client.disconnect()
            return
        if not self._inbound:
            self._up()
            return
        from paho.mqtt.subscribeoptions import SubscribeOptions
        client.subscribe([(remote, SubscribeOptions(qos=topic.qos, noLocal=True))
                          for remote, topic in self._inbound.items()])

    def _onSubscribe(self, client, userdata, mid, reasonCodes, properties):
        if client is not self._client or self.state == STOPPED:
            return
        refused = [str(code) for code in reasonCodes if code.is_failure]
        if refused:
            self._why = (f"{self._address} refused the subscriptions: "
                         f"{', '.join(refused)}")
            client.disconnect()
            return
        self._up()

    def _up(self) -> None:
        self.state = CONNECTED
        if self._streak.count:
            self._streak.ended(self._address)
        else:
            self.log.info("connected to {address}", address=self._address)
        self._drain()

    def _onDisconnect(self, client, userdata, flags, reasonCode, properties):
        if client is not self._client or self.state == STOPPED:
            return
        if self.state == CONNECTED:
            self._lost(client, str(reasonCode))
        else:
            self._failed(client, self._why or f"connection to {self._address} ended "
                                              f"before it was ready: {reasonCode}")

    # -- inbound flow control ------------------------------------------------------

    def _readingStopped(self) -> bool:
        return self._mayStopReading and self._busyTopics > 0

    def _topicBusy(self, busy: bool) -> None:
        """A local topic that messages come in to became busy (or not)."""
        before = self._readingStopped()
        self._busyTopics += 1 if busy else -1
        after = self._readingStopped()
        if busy:
            self.counters["inboundPaused"] += 1
        elif not self._busyTopics:
            self._ack()
        if before != after and self._socket is not None:
            if after:
                self.reactor.removeReader(self._socket)
            else:
                self.reactor.addReader(self._socket)

    def _ack(self) -> None:
        """Acknowledge the QoS 1 messages received, unless a local topic is
        busy: then the broker, limited by receive-maximum, waits."""
        acks, descriptor = self._acks, self._socket
        if not acks or self._busyTopics or descriptor is None:
            return
        descriptor.outbuf += b"".join(puback(mid) for mid in acks)
        acks.clear()
        descriptor.updateWriter()

    # -- the socket ----------------------------------------------------------------

    def _read(self, descriptor) -> None:
        """What the reactor's read brought: the messages, published locally
        together, then the packets for paho, which it reads one by one (the
        end of the connection among them), then the messages' acks."""
        client = descriptor.client
        if self._arrived:
            self._publishArrived()
        while descriptor.buffered() and client is self._client \
                and client.socket() is descriptor:
            client.loop_read()
        if client is self._client:
            self._ack()
            if descriptor.buffered() and self._socket is descriptor:
                # paho did not see the end (it cannot happen with paho 2.1's
                # reads; if it does, it must not leave the bridge hanging)
                self._socketGone(descriptor)

    def _wrote(self, descriptor) -> None:
        """The socket took paho's packets: hand it more if any wait."""
        if self._queue and descriptor is self._socket and self.state == CONNECTED:
            self._drain()

    # -- outbound ----------------------------------------------------------------

    def _outgoing(self, topic):
        remote, qos = topic.remote, topic.qos
        source = self.source

        def enqueue(message, limit):
            if message.source == source:
                # it came in through this bridge: sending it out would loop
                self.counters["loopsDropped"] += 1
                return
            queue = self._queue
            if len(queue) >= limit:
                # only reached when several topics push at once past the pause
                self.counters["dropped"] += 1
                if worthLogging(self.counters["dropped"]):
                    self.log.warn("outbound queue full ({n} messages): dropped a "
                                  "message for {remote} ({dropped} so far)",
                                  n=len(queue), remote=remote,
                                  dropped=self.counters["dropped"])
                return
            self._nextId += 1
            pairs = [(str(k), str(v)) for k, v in message.attributes.items()
                     if k not in _INTERNAL]
            reply = message.inReplyTo
            if reply is not None:
                request = self._cameIn.get(reply)
                if request is not None:
                    # the request came in here: name it as its sender knows it
                    pairs = [(k, request[1] if k == _IN_REPLY_TO else v)
                             for k, v in pairs]
                    pairs.append((_REPLY_ORIGIN, request[0]))
            elif message.session is not None:
                _remember(self._sentSessions, message.id, message.session)
            pairs.append((_ORIGIN, self._originPrefix + str(self._nextId)))
            pairs.append((_MESSAGE_ID, message.id))
            body = message.body
            queue.append((remote, qos, body if body.__class__ is bytes else bytes(body),
                          encodeProperties(None if message.msgtype == "text"
                                           else message.msgtype, pairs)))

        def after():
            if self.state == CONNECTED:
                self._drain()
            if len(self._queue) >= self.config.queue_size:
                return self._pause()
            return None

        def send(message):
            enqueue(message, self.config.queue_size + len(self._outbound))
            return after()

        def sendBatch(messages):
            # a batch is what one read of a connection brought: taken whole,
            # past the queue's size if need be, and then its publisher waits
            limit = self.config.queue_size + len(self._outbound) + len(messages)
            for message in messages:
                enqueue(message, limit)
            return after()

        return send, sendBatch

    def _pause(self) -> defer.Deferred:
        self.counters["paused"] += 1
        d = defer.Deferred()
        self._waiters.append(d)
        return d

    def _drain(self) -> None:
        client, queue, inflight = self._client, self._queue, self._inflight
        descriptor = self._socket
        if descriptor is None:
            return
        budget = DRAIN_BATCH - descriptor.published
        while queue and budget > 0 and self.state == CONNECTED \
                and len(descriptor.outbuf) < OUT_HIGH:
            entry = queue[0]
            remote, qos, body, packed = entry
            if qos and len(inflight) >= WINDOW:
                break
            queue.popleft()
            budget -= 1
            info = client.publish(remote, body, qos, properties=_Properties(packed))
            if qos:
                inflight[info.mid] = entry
            else:
                self.counters["messagesOut"] += 1
        descriptor.published = DRAIN_BATCH - budget
        if self._waiters and len(queue) < self.config.queue_size:
            waiters, self._waiters = self._waiters, []
            for d in waiters:
                d.callback(None)

    def _onPublish(self, client, userdata, mid, reasonCode, properties):
        if client is not self._client:
            return
        if self._inflight.pop(mid, None) is not None:
            self.counters["messagesOut"] += 1
            if self._queue:
                self._drain()

    # -- inbound -----------------------------------------------------------------

    def _publishPacket(self, first, buf, start, end):
        """A PUBLISH from the broker (first byte ``first``, body
        ``buf[start:end]``); MalformedPacket if it is not one."""
        remote, qos, mid, payload, pairs, msgtype = decodePublish(first, buf, start, end)
        if qos == 2:
            raise MalformedPacket("QoS 2, above every subscription's")
        if qos:
            # acknowledged once published locally (see _read)
            self._acks.append(mid)
        topic = self._inbound.get(remote)
        if topic is None:
            return
        origin = messageId = replyOrigin = None
        attributes = {}
        for key, value in pairs:
            if key == _ORIGIN:
                origin = value
            elif key == _MESSAGE_ID:
                messageId = value
            elif key == _REPLY_ORIGIN:
                replyOrigin = value
            else:
                attributes[key] = value
        if origin is not None:
            if origin.startswith(self._originPrefix):
                self.counters["loopsDropped"] += 1
                return
            recent = self._recentSet
            if origin in recent:
                self.counters["duplicatesDropped"] += 1
                return
            self._recent.append(origin)
            recent.add(origin)
            if len(self._recent) > self._recentLimit:
                recent.discard(self._recent.popleft())
        self.counters["messagesIn"] += 1
        sender = origin.rpartition("/")[0] if origin is not None else None
        session = None
        reply = attributes.get(_IN_REPLY_TO)
        if reply is not None:
            if replyOrigin is not None and replyOrigin == self.origin:
                # a reply to a request this bridge sent: it names it by its id here
                session = self._sentSessions.get(reply)
            elif sender is not None or replyOrigin is not None:
                # a reply to another node's request, or to one its sender
                # made locally: it must not pair with a request of this node
                # that happens to have the same id
                attributes[_IN_REPLY_TO] = f"{replyOrigin or sender}/{reply}"
        request = (sender, messageId) if sender is not None and messageId else None
        self._arrived.append((topic.local, payload, msgtype or "text",
                              attributes or None, session, request))

    def _publishArrived(self) -> None:
        """Publish what one read brought, with no session (it reaches every
        local subscriber) unless it is the reply to a request this bridge
        sent with one: consecutive messages of a topic in one batch, replies
        on their own (only :meth:`Topic.publish` routes them).  The local id
        of each message is remembered with its sender's, for its replies."""
        arrived, self._arrived = self._arrived, []
        broker, source = self.broker, self.source
        cameIn = self._cameIn
        run, requests, runTopic = [], [], None

        def flush():
            if run:
                topic = broker.topic(runTopic)
                messages = topic.batch(run, source)
                # remembered before anyone can answer them
                for message, request in zip(messages, requests):
                    if request is not None:
                        _remember(cameIn, message.id, request)
                topic.publishBatch(messages)
                run.clear()
                requests.clear()

        for local, body, msgtype, attributes, session, request in arrived:
            if attributes is not None and _IN_REPLY_TO in attributes:
                flush()
                topic = broker.topic(local)
                message = topic.message(body, msgtype, source, session, attributes)
                if request is not None:
                    _remember(cameIn, message.id, request)
                topic.publish(message)
                continue
            if local != runTopic:
                flush()
                runTopic = local
            run.append((body, msgtype, attributes))
            requests.append(request)
        flush()

    # -- status ------------------------------------------------------------------

    def status(self) -> dict:
        """The state and the counters (``queued``: waiting now, in-flight
        QoS 1 messages included)."""
        counters = dict(self.counters)
        counters["queued"] = len(self._queue) + len(self._inflight)
        counters["heldAcks"] = len(self._acks)
        return {"name": self.name, "state": self.state, **counters}
