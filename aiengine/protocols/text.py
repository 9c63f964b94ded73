"""``text-messages``: messages cut by a delimiter (one or more bytes)."""

from __future__ import annotations

from twisted.protocols.basic import LineOnlyReceiver

from aiengine.logs import worthLogging
from aiengine.protocols.base import FramingProtocol

__all__ = ["TextMessagesProtocol", "DEFAULT_DELIMITER"]

#: used when ``protocol.delimiter`` is not configured (or empty)
DEFAULT_DELIMITER = b"\n"


class TextMessagesProtocol(FramingProtocol, LineOnlyReceiver):
    """Delimited messages: every byte but the delimiter is data, empty
    messages included.  A message longer than ``max_packet_size`` is
    reported and closes the connection.

    An outbound message that holds the delimiter would arrive as several:
    it is refused (not written), reported to the receiver as a protocol
    error and logged (the first, then every 1000th); ``refused`` counts them.
    """

    refused = 0

    def __init__(self, settings, receiver, log=None):
        FramingProtocol.__init__(self, settings, receiver, log)
        self._batch = None if self._showMessages else receiver.messagesReceived
        self.delimiter = self._delimiter = settings.delimiter or DEFAULT_DELIMITER
        self.maxMessage = settings.max_packet_size
        # LineOnlyReceiver's buffer check also sees a delimiter's first bytes
        # still waiting for the rest; the exact limit is checked per message.
        self.MAX_LENGTH = self.maxMessage + len(self.delimiter) - 1
        # An int: ``int in bytes`` is a plain byte search.
        self._lastByte = self.delimiter[-1]
        # A multi-byte delimiter may start in bytes already held: its first
        # len - 1 bytes' worth of them, kept so that a packet is searched
        # with them only, never with the whole buffer.
        self._overlap = len(self.delimiter) - 1
        self._tail = b""
        # Pieces of a message that no packet has ended yet: kept as a list so
        # a peer trickling a long message costs linear, not quadratic, time.
        self._pieces = []
        self._piecesSize = 0

    def framedDataReceived(self, data):
        if self.transport.disconnecting:
            return  # closing (a failure or the receiver's choice): no more messages
        overlap = self._overlap
        if self._lastByte not in data or (
                overlap and (self._tail + data).find(self.delimiter) < 0):
            # No delimiter ends in this packet: keep it without re-reading
            # what came before.
            self._pieces.append(data)
            self._piecesSize += len(data)
            if overlap:
                self._tail = (self._tail + data)[-overlap:]
            if len(self._buffer) + self._piecesSize > self.MAX_LENGTH:
                self._takePieces()
                self.lineLengthExceeded(self._buffer)
            return
        if self._pieces:
            self._takePieces()
        # LineOnlyReceiver.dataReceived's loop, handing each message straight
        # to the receiver: this is the hottest path of a relaying daemon.
        transport = self.transport
        messages = (self._buffer + data).split(self.delimiter)
        self._buffer = messages.pop()
        if overlap:
            self._tail = self._buffer[-overlap:]
        maxMessage = self.maxMessage
        if (self._batch is not None and len(messages) > 1
                and max(map(len, messages)) <= maxMessage):
            self._batch(messages)
            messages = ()
        deliver = self.deliver if self._showMessages else self.receiver.messageReceived
        for message in messages:
            if transport.disconnecting:
                return  # the receiver closed the connection
            if len(message) > maxMessage:
                self.lineLengthExceeded(message)
                return
            deliver(message, None)
        if len(self._buffer) > self.MAX_LENGTH:
            self.lineLengthExceeded(self._buffer)

    def sendMessage(self, message, attributes=None):
        """Write one message; returns 0 when it is refused (it holds the
        delimiter), else None."""
        if message.find(self._delimiter) >= 0:
            self._refuse(1)
            return 0
        FramingProtocol.sendMessage(self, message, attributes)
        return None

    def sendMessages(self, messages):
        """Write several messages at once; returns how many were written."""
        delimiter = self._delimiter
        if not (self._showMessages or self._showPackets):
            data = delimiter.join(messages) + delimiter
            # One scan of what is written: each message adds exactly one
            # delimiter unless it holds one itself.
            if data.count(delimiter) == len(messages):
                self.transport.write(data)
                return len(messages)
        written = 0
        for message in messages:
            if self.sendMessage(message) is None:
                written += 1
        return written

    def _refuse(self, n):
        self.refused += n
        description = (f"an outbound message holds the delimiter {self._delimiter!r} "
                       f"and would arrive as several: refused")
        if worthLogging(self.refused):
            self.log.warn("protocol error: {description} ({n} so far)",
                          description=description, n=self.refused)
        self.receiver.protocolError(description)

    def _takePieces(self):
        self._buffer = b"".join([self._buffer] + self._pieces)
        self._pieces = []
        self._piecesSize = 0

    def lineReceived(self, line):
        if len(line) > self.maxMessage:
            self.lineLengthExceeded(line)
        else:
            self.deliver(line)

    def lineLengthExceeded(self, line):
        unfinished = " so far" if line is self._buffer else ""
        self._buffer = self._tail = b""
        self.fail(f"message longer than max-packet-size {self.maxMessage} bytes "
                  f"({len(line)} bytes{unfinished}), dropped")
