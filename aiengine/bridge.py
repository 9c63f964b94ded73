"""Bridges: local topics shared with other daemons through an MQTT 5 broker.

:class:`MqttBridge` drives a paho-mqtt client from the reactor: paho's socket
is a reader (and, while paho has bytes to send, a writer) of the reactor, and
only the blocking ``connect`` runs in a thread.  Outbound messages wait in the
bridge's own bounded queue, never in paho's offline queue (which reorders and
drops QoS 0), and go out in order once the bridge is connected; QoS 1 ones are
limited to a window of unacknowledged messages and are sent again after a
reconnection when they were not acknowledged.  Every message carries an
``origin`` user property (node id and boot epoch) and an ``origin-id``: a
receiver drops the ones it has seen recently, and its own.
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

__all__ = ["MqttBridge", "STOPPED", "CONNECTING", "CONNECTED", "WAITING",
           "WINDOW", "RECENT_IDS", "COUNTERS"]

STOPPED = "stopped"
CONNECTING = "connecting"
CONNECTED = "connected"
WAITING = "waiting"

#: QoS 1 messages sent and not yet acknowledged, at most
WINDOW = 1000
#: (origin, id) pairs remembered to drop duplicates
RECENT_IDS = 10000
#: the counters of :meth:`MqttBridge.status`
COUNTERS = ("messagesIn", "messagesOut", "duplicatesDropped", "loopsDropped",
            "queued", "dropped", "reconnects", "paused", "inboundPaused")

#: user properties the bridge sets itself; not message attributes
_ORIGIN = "origin"
_ORIGIN_ID = "origin-id"


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
    """paho's socket as a reactor file descriptor."""

    def __init__(self, bridge, client, sock):
        self.bridge = bridge
        self.client = client
        self.sock = sock
        self.writing = False

    def fileno(self):
        return self.sock.fileno()

    def logPrefix(self):
        return f"MqttBridge {self.bridge.name}"

    def doRead(self):
        self.client.loop_read()

    def doWrite(self):
        self.client.loop_write()

    def connectionLost(self, reason):
        # The reactor only calls this when it gave up on the descriptor:
        # paho reports the end itself in its own calls.
        self.bridge._socketGone(self)


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
        self.state = STOPPED
        self.counters = dict.fromkeys(COUNTERS, 0)
        self._streak = FailureStreak(reactor, self.log)
        self._inbound = {t.remote: t for t in config.topics if t.direction != "out"}
        self._outbound = [t for t in config.topics if t.direction != "in"]
        self._queue = deque()  # (remote, qos, body, properties), oldest first
        self._inflight = OrderedDict()  # paho mid -> queue entry, QoS 1 only
        self._waiters = []  # Deferreds of paused publishers
        self._recent = deque()
        self._recentSet = set()
        self._nextId = 0
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
        self._mayStopReading = not self._outbound

    # -- life cycle ------------------------------------------------------------

    def start(self) -> None:
        """Subscribe to the outbound topics and connect."""
        if self.state != STOPPED:
            return
        self.state = WAITING
        for gate in self._gates:
            gate.topic.registerProducer(gate)
        for topic in self._outbound:
            self._subscriptions.append(self.broker.subscribe(
                topic.local, self._outgoing(topic), name=f"bridge {self.name}"))
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
        client = self._client
        self._release()
        if client is None:
            return
        if self._socket is not None:
            try:
                client.disconnect()
                client.loop_write()
            except Exception:
                self.log.failure("disconnecting from {address}", address=self._address)
        self._dropSocket()
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
        client.on_message = self._onMessage
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
        self._socket = _PahoSocket(self, client, sock)
        if not self._readingStopped():
            self.reactor.addReader(self._socket)
        # the CONNECT packet queued in the thread waits for the reactor
        self.reactor.addWriter(self._socket)
        self._socket.writing = True
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
        if threadable.isInIOThread() and self._socket is not None \
                and not self._socket.writing and client is self._client:
            self._socket.writing = True
            self.reactor.addWriter(self._socket)

    def _unregisterWrite(self, client, userdata, sock):
        if threadable.isInIOThread() and self._socket is not None \
                and self._socket.writing and client is self._client:
            self._socket.writing = False
            self.reactor.removeWriter(self._socket)

    def _socketClosed(self, client, userdata, sock):
        # paho closes the socket right after: it must leave the reactor first
        if self._socket is not None and self._socket.sock is sock:
            self._dropSocket()

    def _socketGone(self, descriptor):
        if descriptor is self._socket:
            client = self._client
            self._dropSocket()
            if client is not None and self.state != STOPPED:
                sock = client.socket()
                if sock is not None:
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
        if before != after and self._socket is not None:
            if after:
                self.reactor.removeReader(self._socket)
            else:
                self.reactor.addReader(self._socket)

    # -- outbound ----------------------------------------------------------------

    def _outgoing(self, topic):
        remote, qos = topic.remote, topic.qos

        def send(message):
            if message.source == self.source:
                # it came in through this bridge: sending it out would loop
                self.counters["loopsDropped"] += 1
                return None
            queue = self._queue
            if len(queue) >= self.config.queue_size + len(self._outbound):
                # only reached when several topics push at once past the pause
                self.counters["dropped"] += 1
                if worthLogging(self.counters["dropped"]):
                    self.log.warn("outbound queue full ({n} messages): dropped a "
                                  "message for {remote} ({dropped} so far)",
                                  n=len(queue), remote=remote,
                                  dropped=self.counters["dropped"])
                return self._pause()
            self._nextId += 1
            attributes = [(str(k), str(v)) for k, v in message.attributes.items()
                          if k not in (_ORIGIN, _ORIGIN_ID)]
            attributes.append((_ORIGIN, self.origin))
            attributes.append((_ORIGIN_ID, str(self._nextId)))
            queue.append((remote, qos, message.body, message.msgtype, attributes))
            if self.state == CONNECTED:
                self._drain()
            if len(queue) >= self.config.queue_size:
                return self._pause()
            return None

        return send

    def _pause(self) -> defer.Deferred:
        self.counters["paused"] += 1
        d = defer.Deferred()
        self._waiters.append(d)
        return d

    def _drain(self) -> None:
        from paho.mqtt.packettypes import PacketTypes
        from paho.mqtt.properties import Properties
        client, queue, inflight = self._client, self._queue, self._inflight
        while queue and self.state == CONNECTED:
            entry = queue[0]
            remote, qos, body, msgtype, attributes = entry
            if qos and len(inflight) >= WINDOW:
                break
            queue.popleft()
            properties = Properties(PacketTypes.PUBLISH)
            properties.UserProperty = attributes
            properties.ContentType = msgtype
            info = client.publish(remote, bytes(body), qos, properties=properties)
            if qos:
                inflight[info.mid] = entry
            else:
                self.counters["messagesOut"] += 1
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

    def _onMessage(self, client, userdata, mqttMessage):
        topic = self._inbound.get(mqttMessage.topic)
        if topic is None:
            return
        origin = originId = None
        attributes = {}
        msgtype = "text"
        properties = getattr(mqttMessage, "properties", None)
        if properties is not None:
            for key, value in getattr(properties, "UserProperty", ()):
                if key == _ORIGIN:
                    origin = value
                elif key == _ORIGIN_ID:
                    originId = value
                else:
                    attributes[key] = value
            msgtype = getattr(properties, "ContentType", None) or "text"
        if origin is not None:
            if origin == self.origin:
                self.counters["loopsDropped"] += 1
                return
            if originId is not None:
                key = (origin, originId)
                if key in self._recentSet:
                    self.counters["duplicatesDropped"] += 1
                    return
                self._recent.append(key)
                self._recentSet.add(key)
                if len(self._recent) > RECENT_IDS:
                    self._recentSet.discard(self._recent.popleft())
        self.counters["messagesIn"] += 1
        # no session: it reaches every local subscriber
        self.broker.publish(topic.local, mqttMessage.payload, msgtype=msgtype,
                            source=self.source, attributes=attributes or None)

    # -- status ------------------------------------------------------------------

    def status(self) -> dict:
        """The state and the counters (``queued``: waiting now, in-flight
        QoS 1 messages included)."""
        counters = dict(self.counters)
        counters["queued"] = len(self._queue) + len(self._inflight)
        return {"name": self.name, "state": self.state, **counters}
