"""The contract between framing protocols and the layer above them.

A framing protocol is a Twisted ``Protocol`` that owns the transport, cuts the
inbound byte stream into messages and encodes outbound messages.  It knows
nothing of topics or sessions: it hands each message to its *receiver*, an
:class:`IMessageReceiver` (a listener connection or a channel), and offers
:meth:`FramingProtocol.sendMessage` to write one.
"""

from __future__ import annotations

from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from zope.interface import Interface

__all__ = ["IMessageReceiver", "FramingProtocol"]


class IMessageReceiver(Interface):
    """What a framing protocol reports to."""

    def framerConnected(framer):
        """The connection is up; ``framer.sendMessage(bytes)`` writes a message."""

    def messageReceived(message, attributes):
        """One complete inbound message: ``bytes``, and a dict of protocol
        attributes or ``None``."""

    def messagesReceived(messages):
        """Several complete inbound messages cut from one packet, in order:
        a list of ``bytes``, without attributes.

        Exactly what calling ``messageReceived(message, None)`` for each
        would do (the same ids, order, counts and proofs); framers that cut
        many messages at once call it instead, so that a relay can publish
        and write them in one go."""

    def protocolError(description):
        """The peer broke the framing (message too large, malformed...).

        Called once per offence, before the framer acts on it (it drops the
        offending data and, for size limits, closes the connection)."""

    def framerDisconnected(reason):
        """The connection is gone; ``reason`` is a ``Failure``."""


class FramingProtocol(Protocol):
    """Base class: routing-free framing around a receiver.

    Subclasses implement :meth:`framedDataReceived` (call
    :meth:`deliver` for each complete message) and :meth:`encode`.
    ``showpackets`` and ``showmessages`` logging happens here, once for all.
    """

    receiver = None
    settings = None
    log = Logger()

    def __init__(self, settings, receiver, log=None):
        self.settings = settings
        self.receiver = receiver
        if log is not None:
            self.log = log
        self._showPackets = settings.show_packets
        self._showMessages = settings.show_messages
        self._delimiter = settings.delimiter or b""

    # -- Protocol ---------------------------------------------------------

    def connectionMade(self):
        self.receiver.framerConnected(self)

    def dataReceived(self, data):
        if self._showPackets:
            self.log.info("packet in ({n} bytes): {data!r}", n=len(data), data=data)
        self.framedDataReceived(data)

    def connectionLost(self, reason):
        self.receiver.framerDisconnected(reason)

    # -- for subclasses ---------------------------------------------------

    def framedDataReceived(self, data):
        """Cut ``data`` into messages; call :meth:`deliver` for each."""
        raise NotImplementedError

    def deliver(self, message, attributes=None):
        """Hand one complete inbound message to the receiver."""
        if self._showMessages:
            self.log.info("message in ({n} bytes): {message!r}", n=len(message),
                          message=message)
        self.receiver.messageReceived(message, attributes)

    def encode(self, message):
        """The bytes that carry ``message`` on the wire (default: message + delimiter)."""
        return message + self._delimiter

    def fail(self, description, close=True):
        """Report a framing error to the receiver and log it; optionally close."""
        self.log.warn("protocol error: {description}", description=description)
        self.receiver.protocolError(description)
        if close and self.transport is not None:
            self.transport.loseConnection()

    # -- outbound -----------------------------------------------------------

    def sendMessages(self, messages):
        """Write several messages (bytes), in order: each with
        :meth:`sendMessage`, so a protocol that writes its own way (http) is
        never bypassed.  Protocols whose wire form is only message +
        delimiter override this with :meth:`writeJoined`; a subclass of one
        of those that overrides ``sendMessage`` overrides this too."""
        for message in messages:
            self.sendMessage(message)

    def writeJoined(self, messages):
        """Write ``messages`` as :meth:`sendMessage` would, in one transport
        write (one by one while messages or packets are logged)."""
        if self._showMessages or self._showPackets:
            for message in messages:
                FramingProtocol.sendMessage(self, message)
            return
        delimiter = self._delimiter
        self.transport.write(delimiter.join(messages) + delimiter)

    def sendMessage(self, message, attributes=None):
        """Write one message (bytes).  ``attributes`` are for protocols that use them."""
        data = self.encode(message)
        if self._showMessages:
            self.log.info("message out ({n} bytes): {message!r}", n=len(message),
                          message=message)
        if self._showPackets:
            self.log.info("packet out ({n} bytes): {data!r}", n=len(data), data=data)
        self.transport.write(data)
