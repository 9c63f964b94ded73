"""``text-stream`` and ``binary-stream``: whatever arrives, in bounded chunks."""

from __future__ import annotations

from aiengine.protocols.base import FramingProtocol

__all__ = ["BinaryStreamProtocol", "TextStreamProtocol"]


class BinaryStreamProtocol(FramingProtocol):
    """Deliver the bytes as they arrive, in chunks of at most
    ``max_read_size`` bytes.  Outbound messages are written as given, followed
    by ``protocol.delimiter`` when one is configured (none by default)."""

    def __init__(self, settings, receiver, log=None):
        super().__init__(settings, receiver, log)
        self.maxRead = max(settings.max_read_size, 1)

    def framedDataReceived(self, data):
        self._deliverChunks(data)

    def sendMessages(self, messages):
        """Write several messages in one piece."""
        self.writeJoined(messages)

    def _deliverChunks(self, data):
        size = self.maxRead
        start = 0
        while start < len(data) and not self.transport.disconnecting:
            end = self._chunkEnd(data, start, start + size)
            self.deliver(data[start:end])
            start = end

    def _chunkEnd(self, data, start, end):
        return end


def _isContinuation(byte):
    return 0x80 <= byte < 0xC0


def _sequenceLength(lead):
    """Bytes in the UTF-8 sequence a lead byte starts (1 for anything else)."""
    if lead >= 0xF0:
        return 4 if lead < 0xF8 else 1
    if lead >= 0xE0:
        return 3
    return 2 if lead >= 0xC0 else 1


class TextStreamProtocol(BinaryStreamProtocol):
    """As ``binary-stream``, but no UTF-8 character is split between two
    messages: an incomplete sequence at the end of a packet (at most 3 bytes)
    waits for the next one.  Invalid UTF-8 passes through unchanged.  A
    character longer than ``max_read_size`` (below 4) makes a chunk of its own.
    """

    _held = b""

    def framedDataReceived(self, data):
        if self._held:
            data = self._held + data
            self._held = b""
        if data and data[-1] >= 0x80:
            # Look back at most 3 bytes for the start of the last character.
            for back in range(1, min(3, len(data)) + 1):
                lead = data[-back]
                if not _isContinuation(lead):
                    if _sequenceLength(lead) > back:
                        self._held = data[-back:]
                        data = data[:-back]
                    break
        self._deliverChunks(data)

    def _chunkEnd(self, data, start, end):
        if end >= len(data) or not _isContinuation(data[end]):
            return end
        # ``end`` is inside a character: move back to where it starts...
        for cut in range(end - 1, max(start, end - 3) - 1, -1):
            if not _isContinuation(data[cut]):
                if cut > start:
                    return cut
                # ... or, if it starts the chunk, take it whole.
                return min(cut + _sequenceLength(data[cut]), len(data))
        return end  # not UTF-8 here: cut anywhere

    def connectionLost(self, reason):
        if self._held:
            # The peer never completed the character: pass the bytes on anyway.
            held, self._held = self._held, b""
            self.deliver(held)
        super().connectionLost(reason)
