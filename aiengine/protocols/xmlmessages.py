"""``xml-messages``: each message is one complete XML document."""

from __future__ import annotations

from aiengine.protocols.base import FramingProtocol
from aiengine.protocols.xmlsplit import Document, TooLarge, XmlSplitter

__all__ = ["XmlMessagesProtocol"]


class XmlMessagesProtocol(FramingProtocol):
    """A document ends when its root element closes; a delimiter after it is
    optional.  The configured delimiter's bytes and 0x01 are skipped between
    documents, like whitespace.  Documents follow the untrusted-input rules
    of :mod:`aiengine.protocols.xmlsplit` (no DOCTYPE, no entities, ASCII-
    compatible encoding, depth limit).  Malformed documents are reported and
    dropped (with the rest of their line) and the stream carries on; a
    document, or a malformed line, over ``max_packet_size`` is reported and
    closes the connection.
    """

    def __init__(self, settings, receiver, log=None):
        super().__init__(settings, receiver, log)
        self.splitter = XmlSplitter(separators=self._delimiter + b"\x01",
                                    maxSize=settings.max_packet_size)

    def sendMessages(self, messages):
        """Write several documents in one piece."""
        self.writeJoined(messages)

    def framedDataReceived(self, data):
        if self.transport.disconnecting:
            return  # closing (a failure or the receiver's choice): no more messages
        try:
            items = self.splitter.feed(data)
        except TooLarge as e:
            self._deliverAll(e.items)
            self.fail(f"message longer than max-packet-size: {e}")
            return
        self._deliverAll(items)

    def _deliverAll(self, items):
        for item in items:
            if self.transport.disconnecting:
                return
            if isinstance(item, Document):
                self.deliver(item.data)
            else:
                self.fail(f"malformed XML message dropped ({len(item.data)} bytes): "
                          f"{item.error}", close=False)
