"""Outbound channels ("active sockets"): connections aiengine opens to other servers.

Each configured ``<channel>`` becomes a :class:`Channel` with its own
``ReconnectingClientFactory``.  A channel frames its connection with the
configured protocol (:func:`aiengine.protocols.buildFramer`), writes the
messages published on its ``topic-out`` (redirect-out) and publishes what it
reads on its ``topic-in`` (redirect-in).  The media API reaches it directly:
:meth:`Channel.send`, :meth:`Channel.receive`, :meth:`Channel.receiveFixed`,
:meth:`Channel.connect`, :meth:`Channel.disconnect`.

A *permanent* channel connects at start and reconnects whenever the connection
drops or an attempt fails (see :func:`reconnectDelay`).  An *on-demand* one
(``permanent=false``) connects only when something is to be sent, closes after
its idle timeout and never reconnects by itself.  While a channel is not
connected, outbound messages wait in a bounded queue, sent in order on connect.
"""

from __future__ import annotations

import random as _random
from collections import deque
from typing import Optional

from twisted.internet import error
from twisted.internet.defer import Deferred, TimeoutError, fail, succeed
from twisted.internet.protocol import ReconnectingClientFactory
from twisted.logger import Logger
from twisted.protocols.policies import ProtocolWrapper, TimeoutMixin
from twisted.python.failure import Failure
from zope.interface import implementer

from aiengine.broker import Message
from aiengine.protocols.base import IMessageReceiver

__all__ = [
    "Channel", "ChannelStopped", "reconnectDelay",
    "CONNECTED", "CONNECTING", "WAITING", "IDLE", "STOPPED", "STATES",
]

CONNECTED = "connected"
CONNECTING = "connecting"
#: waiting for the next connection attempt (permanent channels)
WAITING = "waiting"
#: on-demand channel without a connection
IDLE = "idle"
#: not started, stopped, or disconnected on request
STOPPED = "stopped"
STATES = (CONNECTED, CONNECTING, WAITING, IDLE, STOPPED)

#: shortest wait after a failed attempt, so a zero timeout cannot spin
MIN_FAILED_DELAY = 0.1
#: a connection that drops sooner than this without having received anything
#: counts as a failed attempt, so a server that accepts and hangs up at once is
#: not hammered
BRIEF_CONNECTION = 1.0
#: seconds a closing connection gets to flush before it is aborted
CLOSE_GRACE = 5.0
#: log the first drop and then every this many
DROP_LOG_EVERY = 100


class ChannelStopped(Exception):
    """The channel was stopped (or disconnected) while the caller waited."""


def reconnectDelay(timeout: float, failures: int, random=None) -> float:
    """Seconds to wait before the next connection attempt.

    ``failures`` counts attempts that failed in a row since the channel was
    last connected.  With none (a connection that was up has dropped) the
    channel retries soon: ``uniform(0, min(1, timeout))``.  After a failed
    attempt it waits about ``timeout`` (``uniform(0.9, 1.1) * timeout``, at
    least :data:`MIN_FAILED_DELAY`); the jitter keeps many channels from
    reconnecting in lock-step.  ``random`` is a ``random.Random`` (default:
    the module's).
    """
    rng = _random if random is None else random
    timeout = max(0.0, float(timeout))
    if failures <= 0:
        return rng.uniform(0.0, min(1.0, timeout))
    return max(MIN_FAILED_DELAY, rng.uniform(0.9, 1.1) * timeout)


def _buildFramer(protocol, receiver, log, host, port):
    from aiengine.protocols import buildFramer
    return buildFramer(protocol, receiver, log=log, host=host, port=port)


def _withBody(message, body):
    return Message(message.topic, message.id, body, message.msgtype, message.source,
                   message.session, message.attributes)


class _Connection(ProtocolWrapper, TimeoutMixin):
    """One connection of a channel, around its framer.

    Counts the bytes each way, closes the connection after the idle timeout
    (traffic either way restarts it) and turns TCP keepalive on.
    """

    def __init__(self, factory, framer, channel):
        ProtocolWrapper.__init__(self, factory, framer)
        self.channel = channel
        self.idleClosed = False
        self.connectedAt = None
        self.bytesIn = 0
        self._closing = False
        self._abortCall = None

    # The framer reads transport.disconnecting: true when either we or the
    # real transport are closing.
    @property
    def disconnecting(self):
        return self._closing or bool(getattr(self.transport, "disconnecting", False))

    @disconnecting.setter
    def disconnecting(self, value):
        self._closing = bool(value)

    def callLater(self, period, func):
        return self.channel.reactor.callLater(period, func)

    def connectionMade(self):
        self.connectedAt = self.channel.reactor.seconds()
        config = self.channel.config
        if config.keepalive:
            setKeepAlive = getattr(self.transport, "setTcpKeepAlive", None)
            if setKeepAlive is not None:
                setKeepAlive(1)
        idle = config.effective_idle_timeout
        if idle and idle > 0:
            self.setTimeout(idle)

    def dataReceived(self, data):
        self.bytesIn += len(data)
        self.channel.bytesIn += len(data)
        self.resetTimeout()
        ProtocolWrapper.dataReceived(self, data)

    def write(self, data):
        self.channel.bytesOut += len(data)
        self.resetTimeout()
        ProtocolWrapper.write(self, data)

    def writeSequence(self, data):
        data = list(data)
        self.channel.bytesOut += sum(len(d) for d in data)
        self.resetTimeout()
        ProtocolWrapper.writeSequence(self, data)

    def timeoutConnection(self):
        self.idleClosed = True
        self.channel.log.info("no traffic for {idle} s: closing the connection",
                              idle=self.timeOut)
        self.loseConnection()

    def close(self):
        """Close; abort if the peer has not let us flush within CLOSE_GRACE."""
        if not self._closing:
            self.loseConnection()
        if self._abortCall is None:
            self._abortCall = self.callLater(CLOSE_GRACE, self._abort)

    def _abort(self):
        self._abortCall = None
        abort = getattr(self.transport, "abortConnection", None)
        if abort is not None:
            self.channel.log.warn("connection did not close within {grace} s: aborting",
                                  grace=CLOSE_GRACE)
            abort()

    def connectionLost(self, reason):
        self.setTimeout(None)
        if self._abortCall is not None and self._abortCall.active():
            self._abortCall.cancel()
        self._abortCall = None
        self.channel._connectionClosed(self, reason)
        ProtocolWrapper.connectionLost(self, reason)


class _ChannelFactory(ReconnectingClientFactory):
    """The channel's ``ReconnectingClientFactory``.

    ``continueTrying`` is on only for permanent channels that should be up;
    the delay comes from :func:`reconnectDelay`, with ``failures`` reset by
    :meth:`resetDelay` on every successful connection.
    """

    noisy = False
    jitter = 0  # reconnectDelay has its own
    factor = 1.0
    continueTrying = 0

    def __init__(self, channel):
        self.channel = channel
        self.clock = channel.reactor
        self.failures = 0
        self.random = _random.Random()
        self.protocol = None

    def buildProtocol(self, addr):
        channel = self.channel
        framer = _buildFramer(channel.config.protocol, channel, channel.log,
                              channel.config.host, channel.config.port)
        return _Connection(self, framer, channel)

    # ProtocolWrapper's registration hooks.
    def registerProtocol(self, p):
        self.protocol = p
        self.channel._protocol = p

    def unregisterProtocol(self, p):
        if self.protocol is p:
            self.protocol = None
        if self.channel._protocol is p:
            self.channel._protocol = None

    def startedConnecting(self, connector):
        self.connector = connector

    def clientConnectionFailed(self, connector, reason):
        self.connector = connector
        self.failures += 1
        self.channel._attemptFailed(reason)

    def clientConnectionLost(self, connector, reason):
        self.connector = connector
        self.channel._afterConnectionLost(reason)

    def resetDelay(self):
        """After a successful connection: the next drop retries soon again."""
        keep = self.continueTrying  # RCF turns it on; on-demand channels keep it off
        ReconnectingClientFactory.resetDelay(self)
        self.continueTrying = keep
        self.failures = 0

    def retry(self, connector=None) -> Optional[float]:
        """Schedule the next attempt; returns its delay (None when not trying)."""
        if not self.continueTrying:
            return None
        if connector is None:
            connector = self.connector
        if connector is None:
            raise ValueError("no connector to retry")
        self.retries += 1
        self.delay = reconnectDelay(self.channel.config.reconnection_timeout,
                                    self.failures, self.random)

        def reconnector():
            self._callID = None
            self.channel._reconnecting()
            connector.connect()

        self._callID = self.clock.callLater(self.delay, reconnector)
        return self.delay

    def cancelRetry(self):
        """Forget a scheduled attempt, if any."""
        if self._callID is not None:
            if self._callID.active():
                self._callID.cancel()
            self._callID = None


class _Waiter:
    __slots__ = ("deferred", "size", "buf", "first", "timer")

    def __init__(self, size):
        self.deferred = None
        self.size = size
        self.buf = bytearray()
        self.first = None
        self.timer = None


@implementer(IMessageReceiver)
class Channel:
    """One configured outbound connection and everything queued for it.

    :param config: its :class:`~aiengine.config.ChannelConfig`.
    :param broker: the :class:`~aiengine.broker.Broker` of ``topic-in`` and
        ``topic-out``.
    :param reactor: ``IReactorTCP`` and ``IReactorTime`` (the global reactor
        when None).
    """

    def __init__(self, config, broker, reactor=None):
        if reactor is None:
            from twisted.internet import reactor
        self.name = config.name
        self.config = config
        self.broker = broker
        self.reactor = reactor
        self.log = Logger(namespace=f"ActiveSocket::{self.name}")
        self.state = STOPPED
        self.connects = 0
        self.failures = 0
        self.messagesIn = 0
        self.messagesOut = 0
        self.bytesIn = 0
        self.bytesOut = 0
        self.dropped = 0
        self.inboxDropped = 0
        self.errors = 0
        self.lastError: Optional[str] = None
        host = config.host
        if host.startswith("[") and host.endswith("]"):
            host = host[1:-1]  # [::1] as in URLs
        self._host = host
        self._factory = _ChannelFactory(self)
        self._connector = None
        self._protocol: Optional[_Connection] = None
        self._framer = None
        self._producer = None
        self._subscription = None
        # True while the channel must not connect: before start, after
        # stop() or disconnect(), until connect().
        self._held = True
        self._queue: deque = deque()
        self._inbox: deque = deque()
        self._waiters: deque = deque()
        self._connectWaiters: list = []
        self._closeWaiters: list = []
        self._inboxSeq = 0
        self._brief = False

    def __repr__(self):
        return f"<Channel {self.name} {self.state} {self.config.host}:{self.config.port}>"

    @property
    def queued(self) -> int:
        """Outbound messages waiting for a connection."""
        return len(self._queue)

    def status(self) -> dict:
        """State, address and counters, for the console and the media API."""
        return {
            "name": self.name,
            "state": self.state,
            "host": self.config.host,
            "port": self.config.port,
            "protocol": self.config.protocol.name,
            "permanent": self.config.permanent,
            "connects": self.connects,
            "failures": self.failures,
            "messagesIn": self.messagesIn,
            "messagesOut": self.messagesOut,
            "bytesIn": self.bytesIn,
            "bytesOut": self.bytesOut,
            "queued": self.queued,
            "dropped": self.dropped,
            "inbox": len(self._inbox),
            "inboxDropped": self.inboxDropped,
            "errors": self.errors,
            "lastError": self.lastError,
        }

    # -- lifecycle ---------------------------------------------------------

    def start(self) -> None:
        """Begin: subscribe to topic-out; a permanent channel connects now."""
        self._held = False
        self._subscribe()
        if self.config.redirect_in and not self.config.topic_in:
            self.log.warn("redirect-in is on but no topic-in is configured: inbound "
                          "messages are kept for receive() only")
        if self.config.permanent:
            self._beginConnecting()
        elif self.state == STOPPED:
            self.state = IDLE
            if self._queue:
                self._beginConnecting()

    def stop(self) -> Deferred:
        """Stop for good: no reconnects, connection closed, topic-out left.

        Pending :meth:`receive` and :meth:`connect` calls fail with
        :class:`ChannelStopped`.  The Deferred fires when the connection is closed.
        """
        if self._subscription is not None:
            self._subscription.cancel()
            self._subscription = None
        d = self._shutDown("stopped")
        waiters, self._waiters = self._waiters, deque()
        for waiter in waiters:
            self._endWaiter(waiter)
            waiter.deferred.errback(ChannelStopped(f"channel {self.name} stopped"))
        return d

    def disconnect(self) -> Deferred:
        """Close and stay down until :meth:`connect`; sends keep being queued."""
        return self._shutDown("disconnected on request")

    def connect(self) -> Deferred:
        """Connect now, or resume connecting after :meth:`disconnect`/:meth:`stop`.

        Fires with the channel once connected.  A permanent channel keeps
        trying until then; for an on-demand one a failed attempt fails it.
        """
        self._held = False
        self._subscribe()
        self._factory.failures = 0  # asked for: start the delays over
        if self.state == CONNECTED and self._canWrite():
            return succeed(self)
        d = Deferred()
        self._connectWaiters.append(d)
        self._beginConnecting()
        return d

    def _subscribe(self):
        if self._subscription is not None or not self.config.redirect_out:
            return
        if not self.config.topic_out:
            self.log.warn("redirect-out is on but no topic-out is configured")
            return
        self._subscription = self.broker.subscribe(
            self.config.topic_out, self._fromTopicOut, name=f"channel:{self.name}")

    def _shutDown(self, why):
        self._held = True
        self._factory.stopTrying()  # may report a cancelled attempt right here
        self.state = STOPPED
        self._failConnectWaiters(ChannelStopped(f"channel {self.name} {why}"))
        if self._protocol is None:
            return succeed(None)
        d = Deferred()
        self._closeWaiters.append(d)
        self._protocol.close()
        return d

    def _beginConnecting(self):
        if self._held or self.state in (CONNECTING, CONNECTED):
            return
        factory = self._factory
        factory.continueTrying = 1 if self.config.permanent else 0
        factory.cancelRetry()
        self.state = CONNECTING
        if self._protocol is not None:
            # The old connection is still closing; its end starts the next.
            return
        connector = self._connector
        if connector is None:
            self.log.info("connecting to {host}:{port}", host=self._host,
                          port=self.config.port)
            self._connector = self.reactor.connectTCP(
                self._host, self.config.port, factory, timeout=self.config.connect_timeout)
            factory.connector = self._connector
        elif getattr(connector, "state", "disconnected") == "disconnected":
            connector.connect()

    def _reconnecting(self):
        self.state = CONNECTING

    # -- outbound ----------------------------------------------------------

    def send(self, body, attributes=None) -> None:
        """Write ``body`` (bytes, or str as UTF-8) now, or queue it until connected.

        ``attributes`` go to the framer's ``sendMessage``.  A full queue drops
        the message (counted in ``dropped`` and logged).  An on-demand channel
        that is not connected starts connecting.
        """
        if isinstance(body, str):
            body = body.encode("utf-8")
        attributes = dict(attributes) if attributes else {}
        if not self._queue and self._canWrite():
            self._write(body, attributes)
            return
        if len(self._queue) >= self.config.queue_size:
            self.dropped += 1
            if self.dropped == 1 or self.dropped % DROP_LOG_EVERY == 0:
                self.log.warn(
                    "not connected ({state}) and {n} message(s) already queued: "
                    "dropped a message; {dropped} dropped so far",
                    state=self.state, n=len(self._queue), dropped=self.dropped)
        else:
            self._queue.append((body, attributes))
        if self._canWrite():
            self._flush()
        elif not self.config.permanent and self.state == IDLE:
            self._beginConnecting()

    def _fromTopicOut(self, message):
        self.send(message.body, {"in-reply-to": message.id, "session": message.session})

    def _canWrite(self):
        return (self._framer is not None and self._protocol is not None
                and self.state == CONNECTED and not self._protocol.disconnecting)

    def _write(self, body, attributes):
        self.messagesOut += 1
        try:
            self._framer.sendMessage(body, attributes)
        except Exception:
            failure = Failure()
            self._protocolFailed(f"could not send a message: {failure.getErrorMessage()}")
            self.log.failure("could not send a message of {n} bytes", failure, n=len(body))

    def _flush(self):
        while self._queue and self._canWrite():
            body, attributes = self._queue.popleft()
            self._write(body, attributes)

    # -- IMessageReceiver ----------------------------------------------------

    def framerConnected(self, framer):
        """The connection is up: send what is queued, then wake connect() callers."""
        self._framer = framer
        self._brief = False
        self._factory.resetDelay()
        if self._held:
            # stop()/disconnect() came while the attempt was finishing.
            self._protocol.close()
            return
        self.connects += 1
        self.state = CONNECTED
        self.log.info("connected to {host}:{port}", host=self._host, port=self.config.port)
        if self.config.redirect_in and self.config.topic_in and self._protocol is not None:
            self._producer = self._protocol.transport
            self.broker.topic(self.config.topic_in).registerProducer(self._producer)
        self._flush()
        waiters, self._connectWaiters = self._connectWaiters, []
        for d in waiters:
            d.callback(self)

    def messageReceived(self, message, attributes):
        """One inbound message: publish it (redirect-in) or keep it for receive()."""
        self.messagesIn += 1
        attributes = dict(attributes or {})
        session = attributes.get("session")
        config = self.config
        if config.redirect_in and config.topic_in:
            published = self.broker.publish(config.topic_in, message, msgtype=config.msgtype,
                                            source=self.name, session=session,
                                            attributes=attributes)
            if self._waiters:
                self._inbox.append(published)
                self._serve()
                # Only waiting readers get it; a part a fixed-size read left
                # over (a new Message object) stays for the next receive.
                if self._inbox and self._inbox[-1] is published:
                    self._inbox.pop()
            return
        self._inboxSeq += 1
        kept = Message(self.name, f"{self.name}-{self._inboxSeq}", message,
                       config.msgtype, self.name, session, attributes)
        if len(self._inbox) >= config.inbox_size:
            if not self._inbox:
                self._dropInbound()
                return
            self._inbox.popleft()
            self._dropInbound()
        self._inbox.append(kept)
        self._serve()

    def _dropInbound(self):
        self.inboxDropped += 1
        if self.inboxDropped == 1 or self.inboxDropped % DROP_LOG_EVERY == 0:
            self.log.warn("inbox full ({size} messages nobody received): dropped the "
                          "oldest; {dropped} dropped so far",
                          size=self.config.inbox_size, dropped=self.inboxDropped)

    def protocolError(self, description):
        """The peer broke the framing: count it (the framer logs and acts)."""
        self._protocolFailed(description)

    def _protocolFailed(self, description):
        self.errors += 1
        self.lastError = description

    def framerDisconnected(self, reason):
        """The framer's connection ended (see :meth:`_connectionClosed`)."""
        self._framer = None

    # -- connection events (from _Connection and _ChannelFactory) -------------

    def _connectionClosed(self, connection, reason):
        self._framer = None
        if self._producer is not None:
            self.broker.topic(self.config.topic_in).unregisterProducer(self._producer)
            self._producer = None
        if connection.idleClosed:
            why = "idle timeout"
        elif reason.check(error.ConnectionDone):
            why = "closed"
        else:
            why = reason.getErrorMessage()
            if not self._held:
                self.lastError = f"connection lost: {why}"
        lived = self.reactor.seconds() - (connection.connectedAt or 0)
        self._brief = (not connection.idleClosed and connection.bytesIn == 0
                       and lived < BRIEF_CONNECTION)
        self.log.info("disconnected from {host}:{port}: {why}", host=self._host,
                      port=self.config.port, why=why)

    def _afterConnectionLost(self, reason):
        try:
            self._decideAfterLoss()
        finally:
            # Last, so that a caller of stop()/disconnect() that reacts by
            # calling connect() finds the old connection entirely gone.
            waiters, self._closeWaiters = self._closeWaiters, []
            for d in waiters:
                d.callback(None)

    def _decideAfterLoss(self):
        if self._held:
            self.state = STOPPED
            return
        if not self.config.permanent:
            self.state = IDLE
            if self._queue or self._connectWaiters:
                self._beginConnecting()
            return
        if self._brief:
            # Up for a moment and silent: treat as a failed attempt.
            self._factory.failures += 1
        delay = self._factory.retry()
        if delay is None:
            self.state = STOPPED
            return
        self.state = WAITING
        why = ("the connection closed right after it was made" if self._brief
               else "the connection dropped")
        self.log.info("reconnecting in {delay:.2f} s: {why}", delay=delay, why=why)

    def _attemptFailed(self, reason):
        why = reason.getErrorMessage()
        if self._held:
            self.state = STOPPED
            self.log.info("connection attempt cancelled")
            return
        self.failures += 1
        self.lastError = f"cannot connect to {self._host}:{self.config.port}: {why}"
        if self.config.permanent:
            delay = self._factory.retry()
            if delay is not None:
                self.state = WAITING
                self.log.warn("cannot connect to {host}:{port}: {why}; next attempt "
                              "in {delay:.2f} s ({n} failed in a row)", host=self._host,
                              port=self.config.port, why=why, delay=delay,
                              n=self._factory.failures)
                return
            self.state = STOPPED
            return
        self.state = IDLE
        self.log.warn("cannot connect to {host}:{port}: {why}; {n} message(s) stay "
                      "queued until the next send", host=self._host,
                      port=self.config.port, why=why, n=len(self._queue))
        self._failConnectWaiters(reason)

    def _failConnectWaiters(self, reason):
        waiters, self._connectWaiters = self._connectWaiters, []
        for d in waiters:
            d.errback(reason)

    # -- media API: receive --------------------------------------------------

    def receive(self, timeout: Optional[float] = None) -> Deferred:
        """The oldest inbound message not yet received (a broker ``Message``).

        Waits up to ``timeout`` seconds (default ``protocol.wait-time-sec``),
        then fails with ``TimeoutError``.
        """
        return self._wait(_Waiter(None), timeout)

    def receiveFixed(self, size: int, timeout: Optional[float] = None) -> Deferred:
        """Exactly ``size`` bytes of the inbound stream, across messages.

        What is left of the last message stays for the next receive; on
        timeout the bytes taken so far are put back.
        """
        try:
            size = int(size)
        except (TypeError, ValueError):
            return fail(ValueError(f"size must be a whole number, not {size!r}"))
        if size < 0:
            return fail(ValueError(f"size must not be negative ({size})"))
        if size == 0:
            return succeed(b"")
        return self._wait(_Waiter(size), timeout)

    def _wait(self, waiter, timeout):
        if timeout is None:
            timeout = self.config.protocol.inbound.wait_time_sec
        timeout = max(0.0, float(timeout))

        def cancel(d):
            self._giveUp(waiter)

        waiter.deferred = Deferred(cancel)
        self._waiters.append(waiter)
        self._serve()
        if not waiter.deferred.called:
            waiter.timer = self.reactor.callLater(timeout, self._timedOut, waiter, timeout)
        return waiter.deferred

    def _timedOut(self, waiter, timeout):
        waiter.timer = None
        if self._giveUp(waiter):
            what = ("message" if waiter.size is None else f"{waiter.size} bytes")
            waiter.deferred.errback(TimeoutError(
                f"no {what} from channel {self.name} within {timeout:g} s"))

    def _giveUp(self, waiter):
        """Forget ``waiter``; put back the bytes it took.  False if it was done."""
        try:
            self._waiters.remove(waiter)
        except ValueError:
            return False
        self._endWaiter(waiter)
        if waiter.buf:
            self._inbox.appendleft(_withBody(waiter.first, bytes(waiter.buf)))
            waiter.buf = bytearray()
            self._serve()
        return True

    def _endWaiter(self, waiter):
        if waiter.timer is not None and waiter.timer.active():
            waiter.timer.cancel()
        waiter.timer = None

    def _serve(self):
        while self._waiters and self._inbox:
            waiter = self._waiters[0]
            if waiter.size is None:
                self._waiters.popleft()
                self._endWaiter(waiter)
                waiter.deferred.callback(self._inbox.popleft())
                continue
            message = self._inbox[0]
            if waiter.first is None:
                waiter.first = message
            need = waiter.size - len(waiter.buf)
            if len(message.body) <= need:
                self._inbox.popleft()
                waiter.buf += message.body
            else:
                waiter.buf += message.body[:need]
                self._inbox[0] = _withBody(message, message.body[need:])
            if len(waiter.buf) == waiter.size:
                self._waiters.popleft()
                self._endWaiter(waiter)
                waiter.deferred.callback(bytes(waiter.buf))
