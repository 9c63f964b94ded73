"""One connection of a channel: a wrapper around its framer that counts,
times and guards the connection, and reports what happens to its owner."""

from __future__ import annotations

from collections import deque
from typing import Optional

from twisted.internet.interfaces import IHandshakeListener, IPushProducer
from twisted.internet.protocol import Protocol
from twisted.protocols.policies import ProtocolWrapper, TimeoutMixin
from zope.interface import Interface, directlyProvides, implementer, providedBy

from aiengine.channels.policy import BRIEF_CONNECTION
from aiengine.tcp import (KEEPALIVE_IDLE, KEEPALIVE_INTERVAL, KEEPALIVE_PROBES,
                          setNoDelay, tuneKeepAlive)
from aiengine.tls import verifyResult

__all__ = ["IConnectionOwner", "ChannelConnection", "CLOSE_GRACE", "KEEPALIVE_IDLE",
           "KEEPALIVE_INTERVAL", "KEEPALIVE_PROBES"]

#: seconds a connection closed by disconnect() gets to flush before it is aborted
CLOSE_GRACE = 5.0


class IConnectionOwner(Interface):
    """What a :class:`ChannelConnection` tells the channel it belongs to."""

    def connectionProven(connection):
        """``connection`` stayed up :data:`BRIEF_CONNECTION` seconds after
        :meth:`ChannelConnection.startProofTimer` without a protocol error."""

    def connectionWritable(connection):
        """The server reads again what ``connection`` writes."""

    def responseOverdue(connection):
        """A reply owed on ``connection`` did not complete in time."""

    def connectionClosed(connection, reason):
        """``connection`` is gone (before its framer hears of it)."""


@implementer(IPushProducer)
class _WriteGate:
    """Registered with a connection's transport: tells whether the server reads.

    While the transport's buffer is full the channel keeps new messages in its
    bounded queue instead of the transport's unbounded buffer.
    """

    def __init__(self, connection):
        self.connection = connection
        self.paused = False

    def pauseProducing(self):
        self.paused = True

    def resumeProducing(self):
        self.paused = False
        self.connection.owner.connectionWritable(self.connection)

    def stopProducing(self):
        self.paused = True


@implementer(IHandshakeListener)
class ChannelConnection(ProtocolWrapper, TimeoutMixin):
    """One connection of a channel, around its framer.

    Counts the bytes each way, closes the connection after the idle timeout
    (traffic either way restarts it), turns TCP keepalive on, holds the
    framer back until a TLS handshake is done (within ``connect-timeout``),
    times the replies owed (``response-timeout``) and tells its owner (an
    :class:`IConnectionOwner`) when the server stops or starts reading, when
    the connection has proven itself and when it is gone.

    :param config: the channel's :class:`~aiengine.config.ChannelConfig`.
    :param clock: an ``IReactorTime``.
    :param log: the channel's logger.
    """

    def __init__(self, factory, framer, owner, config, clock, log):
        ProtocolWrapper.__init__(self, factory, framer)
        self.owner = owner
        self.config = config
        self.clock = clock
        self.log = log
        self.tls = bool(config.tls)
        self.gate = _WriteGate(self)
        self.idleClosed = False
        self.closedByUs = False
        #: the framer is connected (after the handshake, with TLS)
        self.up = False
        self.connectedAt = None
        self.bytesIn = 0
        self.messagesIn = 0
        self.messagesOut = 0
        self.proven = False
        #: a protocol error just reported, until a message or a write follows
        self.pendingError: Optional[str] = None
        #: the protocol error the framer closed this connection for
        self.protocolFailure: Optional[str] = None
        #: replies=ordered: the attributes of each message written and not yet
        #: answered (in-reply-to, session), oldest first
        self.awaiting = deque() if config.replies == "ordered" else ()
        self.bytesOut = 0
        #: why it failed, when we know better than the connection-lost reason
        self.failReason: Optional[str] = None
        self.verifyResult = None
        # A plain attribute (the framers read it for every message): set by
        # ProtocolWrapper.loseConnection and by our aborts.
        self.disconnecting = False
        self._gateRegistered = False
        self._abortCall = None
        self._handshakeCall = None
        self._proofCall = None
        self._responseCall = None

    def callLater(self, period, func):
        """``func`` in ``period`` seconds (TimeoutMixin's timer too)."""
        return self.clock.callLater(period, func)

    def makeConnection(self, transport):
        # ProtocolWrapper's, except that the framer hears of the connection
        # only once TLS is up.
        directlyProvides(self, providedBy(transport))
        Protocol.makeConnection(self, transport)
        self.factory.registerProtocol(self)
        if not self.tls:
            self._up()
        elif not self.disconnecting:
            timeout = self.config.connect_timeout
            self._handshakeCall = self.callLater(timeout, self._handshakeTimedOut)

    def connectionMade(self):
        if self.config.tcp_nodelay:
            setNoDelay(self.transport)
        if self.config.keepalive:
            setKeepAlive = getattr(self.transport, "setTcpKeepAlive", None)
            if setKeepAlive is not None:
                setKeepAlive(1)
                tuneKeepAlive(self.transport)

    def handshakeCompleted(self):
        """TLS is up and the certificate verified: now the framer may talk."""
        self._cancel("_handshakeCall")
        if not self.disconnecting and not self.up:
            self._up()

    def _handshakeTimedOut(self):
        self._handshakeCall = None
        self.failReason = (f"TLS handshake did not complete within "
                           f"{self.config.connect_timeout:g} s")
        self.disconnecting = True
        self.transport.abortConnection()

    def _up(self):
        self.up = True
        self.connectedAt = self.clock.seconds()
        idle = self.config.effective_idle_timeout
        if idle and idle > 0:
            self.setTimeout(idle)
        try:
            self.transport.registerProducer(self.gate, True)
            self._gateRegistered = True
        except RuntimeError:
            pass  # someone else's producer: do without flow control
        self.wrappedProtocol.makeConnection(self)

    def awaitResponse(self, waiting: bool):
        """Replies are owed (``waiting``), or not: the next must complete
        within ``response-timeout`` seconds of now."""
        timeout = self.config.response_timeout
        if waiting and timeout > 0 and not self.disconnecting:
            call = self._responseCall
            if call is not None and call.active():
                # Every reply moves the deadline later: moving the timer is
                # cheaper than a new one each time, and leaves no cancelled
                # calls for the reactor to sweep.
                call.reset(timeout)
            else:
                self._responseCall = self.callLater(timeout, self._responseTimedOut)
        else:
            self._cancel("_responseCall")

    @property
    def awaitingResponse(self) -> bool:
        """Whether a reply is being timed."""
        return self._responseCall is not None

    def _responseTimedOut(self):
        self._responseCall = None
        self.owner.responseOverdue(self)

    def startProofTimer(self):
        """After failures: recovery is declared once this connection holds."""
        if self._proofCall is None and not self.proven:
            self._proofCall = self.callLater(BRIEF_CONNECTION, self._heldUp)

    def _heldUp(self):
        self._proofCall = None
        if self.protocolFailure is None:
            self.owner.connectionProven(self)

    def markProven(self) -> None:
        """This connection works (it delivered a message, or held up)."""
        self.proven = True
        self._cancel("_proofCall")

    def livedLongEnough(self) -> bool:
        return (self.up and
                self.clock.seconds() - self.connectedAt >= BRIEF_CONNECTION)

    def isProven(self, clean) -> bool:
        """Did this connection work, as opposed to being a failed attempt?"""
        if self.proven:
            return True
        if not self.up or self.protocolFailure is not None:
            return False
        # A clean close after we wrote: the server may well have taken our
        # messages and be done (on-demand request/close style).
        return self.livedLongEnough() or (clean and self.messagesOut > 0)

    def dataReceived(self, data):
        self.bytesIn += len(data)
        if self.timeOut:
            self.resetTimeout()
        self.wrappedProtocol.dataReceived(data)

    def write(self, data):
        self.bytesOut += len(data)
        if self.timeOut:
            self.resetTimeout()
        self.transport.write(data)

    def writeSequence(self, data):
        data = list(data)
        self.bytesOut += sum(len(d) for d in data)
        self.resetTimeout()
        ProtocolWrapper.writeSequence(self, data)

    def loseConnection(self):
        if (self.pendingError is not None and self.protocolFailure is None
                and not self.closedByUs and not self.idleClosed):
            # The framer closes right after reporting: the server broke the
            # protocol.  Up long enough before that, it had proven itself.
            if self.livedLongEnough():
                self.proven = True
            self.protocolFailure = self.pendingError
        # A registered producer would keep a TLS transport from shutting down.
        self._releaseGate()
        ProtocolWrapper.loseConnection(self)

    def _releaseGate(self):
        if self._gateRegistered:
            self._gateRegistered = False
            self.transport.unregisterProducer()

    def timeoutConnection(self):
        self.idleClosed = True
        self.log.info("no traffic for {idle} s: closing the connection",
                      idle=self.timeOut)
        self.loseConnection()

    def close(self, grace=CLOSE_GRACE):
        """Close; abort if the peer has not let us flush within ``grace`` seconds."""
        self.closedByUs = True
        if not self.disconnecting:
            self.loseConnection()
        if grace <= 0:
            self._abort()
        elif self._abortCall is None:
            self._abortCall = self.callLater(grace, self._abort)

    def _abort(self):
        self._abortCall = None
        abort = getattr(self.transport, "abortConnection", None)
        if abort is not None and self.connected:
            self.log.warn("connection did not close in time: aborting")
            self.disconnecting = True
            abort()

    def _cancel(self, name):
        call = getattr(self, name)
        if call is not None and call.active():
            call.cancel()
        setattr(self, name, None)

    def connectionLost(self, reason):
        self.connected = False
        self.setTimeout(None)
        for name in ("_abortCall", "_handshakeCall", "_proofCall", "_responseCall"):
            self._cancel(name)
        if self.tls and not self.up:
            self.verifyResult = verifyResult(self.transport)
        self.owner.connectionClosed(self, reason)
        self.factory.unregisterProtocol(self)
        if self.up:
            self.wrappedProtocol.connectionLost(reason)


