"""Outbound channels ("active sockets"): connections aiengine opens to other servers.

Each configured ``<channel>`` becomes a :class:`Channel`; its states and
their moves are :mod:`aiengine.channels.machine`'s table, and it makes every
connection attempt itself, when its policy says
(:mod:`aiengine.channels.policy`).  A channel frames its connection with the
configured protocol (:func:`aiengine.protocols.buildFramer`), writes the
messages published on its ``topic-out`` (redirect-out) and publishes what it
reads on its ``topic-in`` (redirect-in).  The media API reaches it directly:
:meth:`Channel.send`, :meth:`Channel.receive`, :meth:`Channel.receiveFixed`,
:meth:`Channel.connect`, :meth:`Channel.disconnect`.

A *permanent* channel connects at start and reconnects whenever the connection
drops or an attempt fails (see :func:`reconnectDelay`).  An *on-demand* one
(``permanent=false``) connects only when something is to be sent, closes after
its idle timeout and never reconnects by itself.  While a channel is not
connected, or its server does not read fast enough, outbound messages wait in
a bounded queue, sent in order as soon as they can be.

With ``tls=true`` the channel connects with TLS and verifies the server's
certificate against ``tls.ca`` (or the system's trust store) and the name in
``tls.hostname`` (default: ``host``); a verification failure is a failed
connection attempt like any other.

Faults are counted in :meth:`Channel.status` and logged once per change of
state: the first failure of a streak, a change of its reason, a reminder at
most every :data:`REMIND_INTERVAL` seconds (see :func:`failureNotice`) and the
recovery.  A connection counts as a success only once it has *proven* itself
(delivered a message, or stayed up :data:`BRIEF_CONNECTION` seconds without a
protocol error): a server that accepts and closes, answers garbage or resets
before a whole message is another failed attempt, not a flood of reconnects.

:meth:`Channel.stop` gives queued messages up to ``flush-timeout`` seconds to
be sent, then reports how many were not.

Requests and replies: an http channel's framer pairs each response with its
request.  With ``replies=ordered`` (a text server that answers every
message, in order) the channel pairs them itself: each inbound message is
stamped with ``in-reply-to`` and the session of the oldest message it wrote
that has no reply yet, so that the broker hands it to the request that is
waiting for it (and a listener to the connection that asked).  At most
``max-in-flight`` messages are written and unanswered; the rest wait in the
queue.  A queued message whose caller gave up (a withdrawn request) or whose
``ttl`` ran out is dropped when its turn comes, and counted.
"""

from __future__ import annotations

import random as _random
from typing import Optional

from twisted.internet import error
from twisted.internet.defer import Deferred, TimeoutError, fail, succeed
from twisted.internet.error import NotConnectingError
from twisted.internet.protocol import ClientFactory
from twisted.logger import LogLevel
from twisted.python.failure import Failure
from zope.interface import implementer

from aiengine.channels.connection import CLOSE_GRACE, ChannelConnection, IConnectionOwner
from aiengine.channels.dialer import Dialer
from aiengine.channels.inbox import Inbox
from aiengine.channels.machine import (CONNECTED, CONNECTING, IDLE, STATES, STOPPED,
                                       WAITING, ChannelMachine)
from aiengine.channels.outbox import Deadline, Outbox
from aiengine.channels.policy import (DROPPED, FAILED, IDLE_END, OURS, FailureStreak,
                                      classifyEnd, reconnectDelay)
from aiengine.logs import PeerSafeLogger
from aiengine.protocols.base import IMessageReceiver
from aiengine.tls import clientTLSOptions, describeFailure

__all__ = [
    "Channel", "ChannelStopped", "CONNECTED", "CONNECTING", "WAITING", "IDLE", "STOPPED",
    "STATES",
]


#: log the first drop and then every this many
DROP_LOG_EVERY = 100


class ChannelStopped(Exception):
    """The channel was stopped (or disconnected) while the caller waited."""


def _buildFramer(protocol, receiver, log, host, port):
    from aiengine.protocols import buildFramer
    return buildFramer(protocol, receiver, log=log, host=host, port=port)


class _FramerLogger(PeerSafeLogger):
    """The channel's logger as its framers see it.

    While the channel is failing, a framer's warnings (a server answering
    garbage on every attempt) are not emitted: the channel reports the
    streak itself, once per change of reason, and counts every error.  A
    lower level would not do, since twistd writes debug events too.
    """

    def __init__(self, channel):
        PeerSafeLogger.__init__(self, namespace=channel.log.namespace)
        self._channel = channel

    def emit(self, level, format=None, **kwargs):
        if level == LogLevel.warn and self._channel._streak.count:
            return
        PeerSafeLogger.emit(self, level, format, **kwargs)


class _AttemptFactory(ClientFactory):
    """Builds each attempt's connection and reports how attempts end to
    ``channel`` (the :class:`Channel` it belongs to).

    When to try again is the channel's to decide (its policy:
    :func:`~aiengine.channels.policy.reconnectDelay`), so this is a plain
    ``ClientFactory``, not a ``ReconnectingClientFactory`` with its own.
    """

    noisy = False

    def __init__(self, channel):
        self.channel = channel

    def buildProtocol(self, addr):
        channel = self.channel
        framer = _buildFramer(channel.config.protocol, channel, channel._framerLog,
                              channel.config.host, channel.config.port)
        return ChannelConnection(self, framer, channel, channel.config, channel.reactor,
                                 channel.log)

    # ProtocolWrapper's registration hooks.
    def registerProtocol(self, p):
        self.channel._protocol = p

    def unregisterProtocol(self, p):
        if self.channel._protocol is p:
            self.channel._protocol = None

    def clientConnectionFailed(self, connector, reason):
        self.channel._attemptFailed(reason)

    def clientConnectionLost(self, connector, reason):
        self.channel._afterConnectionLost(reason)


class _StopFlush:
    """A stop() in progress that is still trying to send queued messages."""

    def __init__(self, deadline, sentBefore):
        self.deadline = deadline
        self.sentBefore = sentBefore
        self.waiters: list = []
        self.finishing = False


@implementer(IMessageReceiver, IConnectionOwner)
class Channel:
    """One configured outbound connection and everything queued for it.

    :param config: its :class:`~aiengine.config.ChannelConfig`.
    :param broker: the :class:`~aiengine.broker.Broker` of ``topic-in`` and
        ``topic-out``.
    :param reactor: ``IReactorTCP``, ``IReactorSSL`` (with TLS) and
        ``IReactorTime`` (the global reactor when None).
    :raises ConfigError: ``tls.ca`` holds no usable certificate.
    """

    def __init__(self, config, broker, reactor=None, random=None):
        if reactor is None:
            from twisted.internet import reactor
        self.name = config.name
        self.config = config
        self.broker = broker
        self.reactor = reactor
        self.log = PeerSafeLogger(namespace=f"ActiveSocket::{self.name}")
        self._framerLog = _FramerLogger(self)
        self._machine = ChannelMachine(reactor)
        self.connects = 0
        self.failures = 0
        self.drops = 0
        self.resets = 0
        self.idleCloses = 0
        self.messagesIn = 0
        self.messagesOut = 0
        # bytes of connections that have ended (the current one counts its own)
        self._bytesIn = 0
        self._bytesOut = 0
        self.errors = 0
        # Media.request timeouts (reads count theirs in the inbox)
        self._requestTimeouts = 0
        self.lastError: Optional[str] = None
        host = config.host
        if host.startswith("[") and host.endswith("]"):
            host = host[1:-1]  # [::1] as in URLs
        self._host = host
        self._tlsName = config.tls_hostname or host
        self._tlsOptions = clientTLSOptions(config, host) if config.tls else None
        self._factory = _AttemptFactory(self)
        # The attempt in progress (or the last one): a Dialer.
        self._connector = None
        # The addresses the last attempt tried (the host's, resolved).
        self._addresses: tuple = ()
        # The next attempt, when one is scheduled (WAITING).
        self._retryCall = None
        # Failed attempts in a row, for the retry delay (reset when a
        # connection is made, and by connect()).
        self._failedAttempts = 0
        # The module's shared generator by default: one per channel would
        # cost 2.5 KB and a seeding from the system each.
        self._random = _random if random is None else random
        self._protocol: Optional[ChannelConnection] = None
        self._framer = None
        self._producer = None
        self._subscription = None
        self._connectWaiters: list = []
        self._closeWaiters: list = []
        # How the last connection ended: classifyEnd's (kind, description).
        self._lost = (OURS, "closed")
        # The current streak of failed attempts, and its log lines.
        self._streak = FailureStreak(reactor, self.log)
        self._stopping: Optional[_StopFlush] = None
        # Only the http framer (to correlate each response) and an ordered
        # channel (to stamp replies) use a message's attributes: other
        # channels skip building them for every message.
        self._ordered = config.replies == "ordered"
        self._http = config.protocol.outbound.name == "http"
        self._replyAttributes = self._ordered or self._http
        # What waits to be written, and topic-out's publishers meanwhile.
        self._outbox = Outbox(config.queue_size, reactor, self.log)
        # Pinned: this channel keeps the object, so the broker must not
        # forget the topic while nothing else holds it.
        self._topicIn = (broker.topic(config.topic_in, pin=True)
                         if config.redirect_in and config.topic_in else None)

    # Empty until used: a deque costs about 600 bytes, and a daemon may run
    # tens of thousands of channels.
    _inbox = None  # an Inbox, made when first used (see inbox)
    #: Media.request calls waiting for their reply, by request id (a dict
    #: once the first is made)
    _replyWaiters = None
    _requestSeq = 0
    # Counters that most channels never move: on the class until they do.
    unanswered = responseTimeouts = 0

    def __repr__(self):
        return f"<Channel {self.name} {self.state} {self.config.host}:{self.config.port}>"

    @property
    def bytesIn(self) -> int:
        """Bytes read, over every connection."""
        protocol = self._protocol
        return self._bytesIn + (protocol.bytesIn if protocol is not None else 0)

    @property
    def bytesOut(self) -> int:
        """Bytes written, over every connection."""
        protocol = self._protocol
        return self._bytesOut + (protocol.bytesOut if protocol is not None else 0)

    # The outbox's counters (see status()).
    dropped = property(lambda self: self._outbox.dropped)
    expired = property(lambda self: self._outbox.expired)
    withdrawn = property(lambda self: self._outbox.withdrawn)
    unsent = property(lambda self: self._outbox.unsent)

    @property
    def queued(self) -> int:
        """Outbound messages waiting for a connection (or for the server to read)."""
        return len(self._outbox)

    def status(self) -> dict:
        """State, address and counters, for the console and the media API.

        ``failures`` counts failed connection attempts (refused, DNS, timeout,
        TLS, or a connection that ended before it proved itself),
        ``failedInRow`` the current streak of them, ``drops`` working
        connections that ended without our asking, ``resets`` connections lost
        uncleanly, ``errors`` protocol errors, ``unsent`` messages still queued
        when the channel stopped, ``expired`` and ``withdrawn`` queued
        messages dropped because their ``ttl`` ran out or their caller gave
        up, ``inFlight`` (http, replies=ordered) requests written and not yet
        answered, ``unanswered`` such messages whose connection ended first,
        ``responseTimeouts`` connections closed because a reply did not
        complete within ``response-timeout``.
        """
        return {
            "name": self.name,
            "state": self.state,
            "stateSince": self._machine.since,
            "host": self.config.host,
            "port": self.config.port,
            "ipVersion": self.config.ip_version,
            "addresses": " ".join(self._addresses),
            "address": self._connectedAddress(),
            "protocol": self.config.protocol.name,
            "permanent": self.config.permanent,
            "tls": bool(self.config.tls),
            "connects": self.connects,
            "failures": self.failures,
            "failedInRow": self._streak.count,
            "drops": self.drops,
            "resets": self.resets,
            "idleCloses": self.idleCloses,
            "messagesIn": self.messagesIn,
            "messagesOut": self.messagesOut,
            "bytesIn": self.bytesIn,
            "bytesOut": self.bytesOut,
            "queued": self.queued,
            "inFlight": self._inFlight(self._protocol),
            "responseTimeouts": self.responseTimeouts,
            "dropped": self._outbox.dropped,
            "expired": self._outbox.expired,
            "withdrawn": self._outbox.withdrawn,
            "unanswered": self.unanswered,
            "unsent": self._outbox.unsent,
            "inbox": len(self._inbox) if self._inbox is not None else 0,
            "inboxDropped": self._inbox.dropped if self._inbox is not None else 0,
            "receiveTimeouts": self._requestTimeouts + (
                self._inbox.timeouts if self._inbox is not None else 0),
            "errors": self.errors,
            "lastError": self.lastError,
        }

    def _connectedAddress(self) -> Optional[str]:
        """The address of the connection's peer (the one of the host's
        addresses that answered), or None."""
        protocol = self._protocol
        transport = getattr(protocol, "transport", None)
        if transport is None:
            return None
        peer = transport.getPeer()
        return getattr(peer, "host", None)

    # -- lifecycle ---------------------------------------------------------

    @property
    def state(self) -> str:
        """One of :data:`~aiengine.channels.machine.STATES`."""
        return self._machine.state

    def start(self) -> None:
        """Begin: subscribe to topic-out; a permanent channel connects now."""
        self._subscribe()
        if self.config.redirect_in and not self.config.topic_in:
            self.log.warn("redirect-in is on but no topic-in is configured: inbound "
                          "messages are kept for receive() only")
        if self.config.tls and not self.config.tls_verify:
            self.log.warn("tls.verify is false: the certificate of {host}:{port} is "
                          "not checked, anyone on the way can pose as the server",
                          host=self._host, port=self.config.port)
        if self.config.permanent:
            self._beginConnecting(resume=True)
        elif self.state == STOPPED:
            self._machine.move(IDLE)
            if self._outbox:
                self._beginConnecting()

    def stop(self) -> Deferred:
        """Stop for good: no reconnects, connection closed, topic-out left.

        Messages still queued get up to ``flush-timeout`` seconds to be sent:
        a waiting channel tries to connect at once, a connected one writes
        them and lets the transport drain.  What is left then is counted in
        ``unsent`` and logged.  Pending :meth:`receive` and :meth:`connect`
        calls fail with :class:`ChannelStopped`.  The Deferred fires when the
        connection is closed.
        """
        if self._stopping is not None:
            d = Deferred()
            self._stopping.waiters.append(d)
            return d
        if self._subscription is not None:
            self._subscription.cancel()
            self._subscription = None
        if self._inbox is not None:
            self._inbox.failAll(ChannelStopped(f"channel {self.name} stopped"))
        for d in list(self._replyWaiters.values()) if self._replyWaiters else ():
            d.errback(ChannelStopped(f"channel {self.name} stopped"))
        self._outbox.purgeStale()
        if self._outbox and self._mayFlushOnStop():
            return self._beginStopFlush()
        d = self._shutDown("stopped", grace=max(0.0, self.config.flush_timeout))
        self._reportUnsent()
        return d

    def disconnect(self) -> Deferred:
        """Close and stay down until :meth:`connect`; sends keep being queued."""
        if self._stopping is not None:
            return self._finishStop()
        return self._shutDown("disconnected on request")

    def connect(self) -> Deferred:
        """Connect now, or resume connecting after :meth:`disconnect`/:meth:`stop`.

        Fires with the channel once connected.  A permanent channel keeps
        trying until then; for an on-demand one a failed attempt fails it.
        """
        if self._stopping is not None:
            return fail(ChannelStopped(f"channel {self.name} is stopping"))
        self._subscribe()
        self._failedAttempts = 0  # asked for: start the delays over
        if self.state == CONNECTED and self._canWrite():
            return succeed(self)
        d = Deferred()
        self._connectWaiters.append(d)
        self._beginConnecting(resume=True)
        return d

    def _subscribe(self):
        if self._subscription is not None or not self.config.redirect_out:
            return
        if not self.config.topic_out:
            self.log.warn("redirect-out is on but no topic-out is configured")
            return
        self._subscription = self.broker.subscribe(
            self.config.topic_out, self._fromTopicOut, name=f"channel:{self.name}",
            batchCallback=self._fromTopicOutBatch)

    def _shutDown(self, why, grace=CLOSE_GRACE):
        self._cancelRetry()
        attempting = self.state == CONNECTING and self._protocol is None
        self._machine.move(STOPPED)
        if attempting and self._connector is not None:
            try:
                # Reports the cancelled attempt (clientConnectionFailed) here.
                self._connector.stopConnecting()
            except NotConnectingError:
                pass
        self._failConnectWaiters(ChannelStopped(f"channel {self.name} {why}"))
        if self._protocol is None:
            return succeed(None)
        d = Deferred()
        self._closeWaiters.append(d)
        self._protocol.close(grace)
        return d

    def _beginConnecting(self, resume=False):
        """Connect, unless already connecting or connected; a stopped channel
        only when ``resume`` (start() and connect() are asked to)."""
        state = self.state
        if state in (CONNECTING, CONNECTED) or (state == STOPPED and not resume):
            return
        self._cancelRetry()
        self._machine.move(CONNECTING)
        if self._protocol is not None:
            # The old connection is still closing; its end starts the next.
            return
        self._attempt()

    def _attempt(self):
        """Start one connection attempt (the reactor reports its outcome to
        the factory)."""
        config = self.config
        if config.tls:
            self.log.info("connecting to {host}:{port} with TLS ({check})",
                          host=self._host, port=config.port,
                          check=(f"certificate checked for {self._tlsName!r}"
                                 if config.tls_verify else "certificate NOT checked"))
        # (Otherwise no "connecting" line: "connected to" or the failure
        # follows, and with thousands of channels every start-up line counts.)
        self._connector = Dialer(self.reactor, self._host, config.port, self._factory,
                                 timeout=config.connect_timeout,
                                 tlsOptions=self._tlsOptions, family=config.ip_version,
                                 addressesSeen=self._addressesSeen).start()

    def _addressesSeen(self, addresses):
        self._addresses = addresses

    def _scheduleRetry(self) -> float:
        """The next attempt, after the policy's delay; returns the delay."""
        delay = reconnectDelay(self.config.reconnection_timeout, self._failedAttempts,
                               self._random)
        self._retryCall = self.reactor.callLater(delay, self._retryDue)
        return delay

    def _retryDue(self):
        self._retryCall = None
        self._machine.move(CONNECTING)
        self._attempt()

    def _cancelRetry(self):
        call, self._retryCall = self._retryCall, None
        if call is not None and call.active():
            call.cancel()

    # -- stopping with queued messages ------------------------------------------

    def _mayFlushOnStop(self):
        if self.config.flush_timeout <= 0 or self.state == STOPPED:
            return False
        return self.state in (CONNECTED, CONNECTING, WAITING) or (
            not self.config.permanent and self.state == IDLE)

    def _beginStopFlush(self):
        flush = self._stopping = _StopFlush(
            self.reactor.callLater(self.config.flush_timeout, self._stopFlushExpired),
            self.messagesOut)
        d = Deferred()
        flush.waiters.append(d)
        self._failConnectWaiters(ChannelStopped(f"channel {self.name} stopped"))
        self.log.info("stopping: trying for up to {timeout} s to send {n} queued "
                      "message(s)", timeout=self.config.flush_timeout, n=len(self._outbox))
        if self.state == CONNECTED:
            self._flush()
        elif self.state in (WAITING, IDLE):
            self._beginConnecting()  # now rather than at the next retry
        self._stopFlushProgress()
        return d

    def _stopFlushProgress(self):
        """During a stop flush: finish once everything is written or hopeless."""
        flush = self._stopping
        if flush is None or flush.finishing:
            return
        if self.state == CONNECTED:
            if not self._outbox:
                self._finishStop()
            return
        if self.state == CONNECTING:
            return
        retry = self._retryCall
        if retry is None or retry.getTime() >= flush.deadline.getTime():
            # No further attempt within the window.
            self._finishStop()

    def _stopFlushExpired(self):
        self._stopping.deadline = None
        self._finishStop()

    def _finishStop(self):
        """End a stop flush: close (within what is left of the window), report."""
        flush = self._stopping
        if flush.finishing:
            # A second stop() or disconnect() while closing: wait with the first.
            waiter = Deferred()
            flush.waiters.append(waiter)
            return waiter
        flush.finishing = True
        grace = 0.0
        if flush.deadline is not None:
            grace = max(0.0, flush.deadline.getTime() - self.reactor.seconds())
            flush.deadline.cancel()
            flush.deadline = None
        sent = self.messagesOut - flush.sentBefore
        if sent:
            self.log.info("stopping: sent {n} queued message(s)", n=sent)
        d = self._shutDown("stopped", grace=grace)
        self._reportUnsent()

        def done(result):
            self._stopping = None
            for waiter in flush.waiters:
                waiter.callback(None)
            return result

        return d.addBoth(done)

    def _reportUnsent(self):
        n = self._outbox.discard()
        if n:
            self.log.warn("stopped with {n} queued message(s) not sent", n=n)

    # -- outbound ----------------------------------------------------------

    def send(self, body, attributes=None, ticket=None, ttl=None) -> None:
        """Write ``body`` (bytes, or str as UTF-8) now, or queue it.

        It waits in the queue while the channel is not connected or the
        server does not read fast enough.  ``attributes`` go to the framer's
        ``sendMessage``.  A full queue drops the message (counted in
        ``dropped`` and logged).  An on-demand channel that is not connected
        starts connecting.  A queued message is dropped when its turn comes
        if ``ticket`` (the broker message it carries) has been withdrawn or
        has expired, or ``ttl`` seconds have passed (counted in
        ``withdrawn`` and ``expired``).
        """
        if body.__class__ is not bytes:
            body = body.encode("utf-8") if isinstance(body, str) else bytes(body)
        if not self._outbox and self._canWrite():
            self._write(body, attributes)
            return
        if ttl is not None:
            ticket = Deadline(self.reactor.seconds() + ttl)
        self._outbox.add(body, attributes, ticket, self._whyNotWriting)
        if self._canWrite():
            self._flush()
        elif not self.config.permanent and self.state == IDLE:
            self._beginConnecting()

    def request(self, body, timeout: Optional[float] = None) -> Deferred:
        """Send ``body`` and fire with its reply (a broker ``Message``).

        Only for channels that pair replies with requests (http, or
        ``replies=ordered``).  Fails with ``TimeoutError`` after ``timeout``
        seconds (default ``protocol.wait-time-sec``), when the request is
        also withdrawn from the queue if it was not written yet.
        """
        if not self._replyAttributes:
            return fail(ValueError(
                f"channel {self.name} does not pair replies with requests (it needs "
                f"protocol http or replies=ordered)"))
        if timeout is None:
            timeout = self.config.protocol.inbound.wait_time_sec
        self._requestSeq += 1
        requestId = f"{self.name}-request-{self._requestSeq}"
        ticket = Deadline(self.reactor.seconds() + timeout)
        d = Deferred()  # cancelled: CancelledError, and _replied cleans up
        if self._replyWaiters is None:
            self._replyWaiters = {}
        self._replyWaiters[requestId] = d
        timer = self.reactor.callLater(timeout, self._requestTimedOut, requestId, timeout)
        d.addBoth(self._replied, requestId, ticket, timer)
        self.send(body, {"in-reply-to": requestId, "session": None}, ticket)
        return d

    def _requestTimedOut(self, requestId, timeout):
        d = self._replyWaiters.get(requestId)
        if d is not None:
            self._requestTimeouts += 1
            d.errback(TimeoutError(f"no reply from channel {self.name} within "
                                   f"{timeout:g} s"))

    def _replied(self, result, requestId, ticket, timer):
        del self._replyWaiters[requestId]
        if isinstance(result, Failure):
            ticket.withdrawn = True  # not sent if it still waits in the queue
        if timer.active():
            timer.cancel()
        return result

    def _fromTopicOut(self, message):
        if self._replyAttributes:
            self.send(message.body, {"in-reply-to": message.id,
                                     "session": message.session}, message)
        else:
            self.send(message.body, None, message)
        return self._drainedIfPaused()

    def _fromTopicOutBatch(self, messages):
        """Several messages from topic-out at once: one write when possible."""
        if self._replyAttributes or self._outbox or not self._canWrite():
            for message in messages:
                self._fromTopicOut(message)
        else:
            self._sendWith(self._framer.sendMessages, len(messages),
                           [message.body for message in messages])
        return self._drainedIfPaused()

    def _drainedIfPaused(self) -> Optional[Deferred]:
        """While the server does not read (or does not answer, with
        max-in-flight reached): a Deferred for the broker to wait on."""
        protocol = self._protocol
        if self.state == CONNECTED and protocol is not None and (
                protocol.gate.paused or self._inFlightFull(protocol)):
            return self._outbox.holdPublishers()
        return None

    def _whyNotWriting(self) -> str:
        return ("the server is not reading" if self.state == CONNECTED
                else f"not connected ({self.state})")

    def _canWrite(self):
        if self.state != CONNECTED or self._framer is None:
            return False
        protocol = self._protocol
        return (protocol is not None and not protocol.gate.paused
                and not protocol.disconnecting and not self._inFlightFull(protocol))

    def _inFlight(self, protocol) -> int:
        """Requests written on ``protocol`` (a connection) and not answered."""
        if protocol is None:
            return 0
        if self._ordered:
            return len(protocol.awaiting)
        if self._http and self._framer is not None:
            return self._framer.inFlight
        return 0

    def _inFlightFull(self, protocol) -> bool:
        return (self._replyAttributes
                and self._inFlight(protocol) >= self.config.max_in_flight)

    def _write(self, body, attributes):
        if self._sendWith(self._framer.sendMessage, 1, body, attributes) \
                and self._replyAttributes:
            protocol = self._protocol
            if self._ordered:
                protocol.awaiting.append(attributes)
            if not protocol.awaitingResponse:
                protocol.awaitResponse(self._inFlight(protocol) > 0)

    def _replyArrived(self, connection):
        """A reply came (http, replies=ordered): the next is owed from now,
        and there may be room for what waits."""
        connection.awaitResponse(self._inFlight(connection) > 0)
        if self._outbox or self._outbox.holdingPublishers:
            self._writable()

    def responseOverdue(self, connection):
        """A reply did not complete within response-timeout: the server is
        stuck or trickling, and everything behind it waits; start over."""
        self.responseTimeouts += 1
        n = self._inFlight(connection)
        framer = self._framer
        if framer is not None and connection is self._protocol:
            framer.fail(f"no complete reply within {self.config.response_timeout:g} s; "
                        f"{n} request(s) unanswered")

    def _sendWith(self, send, count, *args):
        """``send(*args)`` through the framer; count what went out, report failures."""
        protocol = self._protocol
        protocol.pendingError = None
        try:
            written = send(*args)
        except Exception:
            failure = Failure()
            self._protocolFailed(f"could not send {count} message(s): "
                                 f"{failure.getErrorMessage()}")
            self.log.failure("could not send {n} message(s)", failure, n=count)
            return False
        if written is not None:
            # The framer refused some (it reported them as protocol errors).
            count = written
            protocol.pendingError = None  # not the server's fault
        self.messagesOut += count
        protocol.messagesOut += count
        return count > 0

    def _flush(self):
        outbox = self._outbox
        while outbox and self._canWrite():
            entry = outbox.take()
            if entry is None:
                return
            self._write(entry[0], entry[1])

    def connectionWritable(self, connection):
        """The server reads again: send what waited for it."""
        self._writable()

    def _writable(self):
        """The server reads (or answers) again: send what waited for it."""
        self._flush()
        protocol = self._protocol
        if protocol is not None and not protocol.gate.paused and not \
                self._inFlightFull(protocol):
            self._outbox.releasePublishers()
        self._stopFlushProgress()

    # -- IMessageReceiver ----------------------------------------------------

    def framerConnected(self, framer):
        """The connection is up: send what is queued, then wake connect() callers."""
        self._framer = framer
        self._failedAttempts = 0
        if self.state == STOPPED:
            # stop()/disconnect() came while the attempt was finishing.
            self._protocol.close()
            return
        self.connects += 1
        self._machine.move(CONNECTED)
        if self._streak.count:
            # Not a recovery yet, and not logged: a server that accepts and
            # hangs up would make a pair of lines per attempt.
            self._protocol.startProofTimer()
        else:
            self.log.info("connected to {host}:{port}{how}", host=self._host,
                          port=self.config.port,
                          how=" with TLS" if self.config.tls else "")
        if self._topicIn is not None and self._protocol is not None:
            self._producer = self._protocol.transport
            self._topicIn.registerProducer(self._producer)
        self._flush()
        waiters, self._connectWaiters = self._connectWaiters, []
        for d in waiters:
            d.callback(self)
        self._stopFlushProgress()

    def messagesReceived(self, messages):
        """Several messages from one packet: published together when redirected in."""
        connection = self._protocol
        topic = self._topicIn
        if (topic is None or connection is None or self._ordered
                or (self._inbox is not None and self._inbox.waiting)):
            for message in messages:
                self.messageReceived(message, None)
            return
        self._arrived(connection, len(messages))
        topic.publishBatch(topic.messages(messages, self.config.msgtype, self.name))

    def _arrived(self, connection, count):
        """``count`` messages came on ``connection``: counted, and proof that
        it works (the single and the batch path alike)."""
        self.messagesIn += count
        if connection is not None:
            connection.messagesIn += count
            connection.pendingError = None
            if not connection.proven and connection.protocolFailure is None:
                self.connectionProven(connection)

    def messageReceived(self, message, attributes):
        """One inbound message: publish it (redirect-in) or keep it for receive()."""
        connection = self._protocol
        self._arrived(connection, 1)
        if connection is not None:
            if self._replyAttributes:
                if self._ordered and connection.awaiting:
                    # Paired with the oldest message written and not answered.
                    request = connection.awaiting.popleft()
                    if request:
                        attributes = {**attributes, **request} if attributes else request
                self._replyArrived(connection)
        if attributes and self._replyWaiters:
            waiter = self._replyWaiters.get(attributes.get("in-reply-to"))
            if waiter is not None:
                # The caller's alone: neither published nor kept in the inbox.
                waiter.callback(self.inbox.message(message, self.config.msgtype,
                                                   attributes))
                return
        topic = self._topicIn
        if topic is not None:
            session = attributes.get("session") if attributes else None
            published = topic.message(message, self.config.msgtype, self.name, session,
                                      attributes)
            topic.publish(published)
            if self._inbox is not None and self._inbox.waiting:
                self._inbox.offer(published)
            return
        self.inbox.keep(self.inbox.message(message, self.config.msgtype, attributes))

    def protocolError(self, description):
        """The peer broke the framing: count it (the framer logs and acts).

        When the framer closes the connection for it, the connection was not
        a working one (see :meth:`ChannelConnection.loseConnection`).
        """
        if self._protocol is not None:
            self._protocol.pendingError = description
        self._protocolFailed(description)

    def _protocolFailed(self, description):
        self.errors += 1
        self.lastError = description

    def framerDisconnected(self, reason):
        """The framer's connection ended (see :meth:`connectionClosed`)."""
        self._framer = None

    # -- IConnectionOwner, and the factory's events ---------------------------

    def connectionProven(self, connection):
        """``connection`` works: a streak of failures, if any, is over."""
        connection.markProven()
        self._streak.ended(f"{self._host}:{self.config.port}")

    def connectionClosed(self, connection, reason):
        """Count how ``connection`` ended (:func:`classifyEnd`), for
        :meth:`_decideAfterLoss`."""
        self._framer = None
        self._bytesIn += connection.bytesIn
        self._bytesOut += connection.bytesOut
        if connection.awaiting:
            # A reply on the next connection cannot answer what was written
            # on this one.
            n = len(connection.awaiting)
            self.unanswered += n
            connection.awaiting.clear()
            self.log.warn("connection ended with {n} message(s) not answered; {total} "
                          "so far", n=n, total=self.unanswered)
        # Not connected, messages wait in the bounded queue (or are dropped):
        # publishers must not stay paused on a connection that is gone.
        self._outbox.releasePublishers()
        if self._producer is not None:
            self._topicIn.unregisterProducer(self._producer)
            self._producer = None
        address = f"{self._host}:{self.config.port}"
        kind, why = self._lost = classifyEnd(connection, reason, address, self._tlsName,
                                             ours=self.state == STOPPED)
        if kind == OURS:
            return
        if reason.check(error.ConnectionLost) and connection.failReason is None:
            self.resets += 1  # the peer reset it (or died)
        if kind == IDLE_END:
            self.idleCloses += 1
        elif kind == DROPPED:
            self.drops += 1
            self.lastError = f"connection to {address} lost: {why}"

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
        kind, why = self._lost
        self._lost = (OURS, "closed")
        if self.state == STOPPED:
            self.log.info("disconnected from {host}:{port}: {why}", host=self._host,
                          port=self.config.port, why=why)
            return
        if kind == FAILED:
            self._failed(why, Failure(error.ConnectError(string=why)))
            return
        if self.state == CONNECTING:
            # connect() came while this connection was closing: go on now.
            self.log.info("disconnected from {host}:{port}: {why}", host=self._host,
                          port=self.config.port, why=why)
            self._attempt()
            return
        if not self.config.permanent:
            self._machine.move(IDLE)
            self.log.info("disconnected from {host}:{port}: {why}", host=self._host,
                          port=self.config.port, why=why)
            if self._outbox or self._connectWaiters:
                self._beginConnecting()
            self._stopFlushProgress()
            return
        delay = self._scheduleRetry()
        self._machine.move(WAITING)
        self.log.info("disconnected from {host}:{port}: {why}; reconnecting in "
                      "{delay:.2f} s", host=self._host, port=self.config.port, why=why,
                      delay=delay)
        self._stopFlushProgress()

    def _attemptFailed(self, reason):
        if self.state == STOPPED:
            self.log.info("connection attempt cancelled")
            return
        why = f"cannot connect to {self._host}:{self.config.port}: {describeFailure(reason)}"
        self._failed(why, reason)

    def _failed(self, why, reason):
        """A failed attempt: count it, retry per policy, log per :func:`failureNotice`."""
        self.failures += 1
        self._failedAttempts += 1
        self.lastError = why
        if self.config.permanent:
            delay = self._scheduleRetry()
            self._machine.move(WAITING)
            then = f"; next attempt in {delay:.2f} s"
        else:
            self._machine.move(IDLE)
            then = f"; {len(self._outbox)} message(s) stay queued until the next send"
            self._failConnectWaiters(reason)
        self._streak.failed(why, then)
        self._stopFlushProgress()

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
        return self.inbox.receive(self._waitTime(timeout))

    def receiveFixed(self, size: int, timeout: Optional[float] = None) -> Deferred:
        """Exactly ``size`` bytes of the inbound stream, across messages.

        What is left of the last message stays for the next receive; on
        timeout the bytes taken so far are put back.  ``size`` is at most
        the channel's ``protocol.max-packet-size``: a larger read would
        gather bytes beyond the inbox's bound.
        """
        try:
            size = int(size)
        except (TypeError, ValueError):
            return fail(ValueError(f"size must be a whole number, not {size!r}"))
        if size < 0:
            return fail(ValueError(f"size must not be negative ({size})"))
        if size == 0:
            return succeed(b"")
        limit = self.config.protocol.inbound.max_packet_size
        if size > limit:
            # The bytes gathered for it are held outside the bounded inbox.
            return fail(ValueError(f"size must be at most {limit} bytes (the channel's "
                                   f"protocol.max-packet-size), not {size}"))
        return self.inbox.receiveFixed(size, self._waitTime(timeout))

    @property
    def inbox(self):
        """The :class:`~aiengine.channels.inbox.Inbox` (made when first used)."""
        if self._inbox is None:
            self._inbox = Inbox(self.name, self.config.inbox_size, self.reactor, self.log)
        return self._inbox

    def _waitTime(self, timeout):
        return self.config.protocol.inbound.wait_time_sec if timeout is None else timeout
