"""The few MQTT 5 packets a bridge handles itself, on the wire (MQTT 5.0, 2.2
and 3.3): PUBLISH in and out, and the PUBACK of one that came in.

paho-mqtt keeps the connection (CONNECT, SUBSCRIBE, keep alive, the acks of
what the bridge publishes); these are the packets of every message, where
paho's ``Properties`` objects cost more than all the rest of the bridge.
"""

from __future__ import annotations

__all__ = ["PUBLISH", "MalformedPacket", "splitPackets", "decodePublish",
           "encodeProperties", "puback"]

#: the packet type of PUBLISH (the high four bits of the first byte)
PUBLISH = 3

_USER_PROPERTY = 0x26
_CONTENT_TYPE = 0x03

# Every PUBLISH property (MQTT 5.0, 3.3.2.3) by the size of its value:
# one byte, two, four, a variable byte integer, or a two-byte length and that
# many bytes (UTF-8 strings and binary data alike).
_FIXED = {0x01: 1, 0x23: 2, 0x02: 4}
_VARINT = {0x0B}
_LENGTH_PREFIXED = {0x03, 0x08, 0x09}


class MalformedPacket(ValueError):
    """Bytes from the broker that are not the MQTT 5 they claim to be."""


def _varint(buf, pos: int, end: int):
    """A variable byte integer at ``pos``: (value, position after it), or
    None when it is not complete before ``end``."""
    value, shift = 0, 0
    while pos < end:
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7
        if shift > 21:
            raise MalformedPacket("a variable byte integer longer than four bytes")
    return None


def splitPackets(buf, start: int = 0):
    """The complete packets in ``buf`` from ``start``: a list of
    ``(packet start, body start, end)`` (the first byte, at the packet's
    start, says its type), and where the incomplete rest begins."""
    packets = []
    end = len(buf)
    pos = start
    while pos + 1 < end:
        length = _varint(buf, pos + 1, end)
        if length is None:
            break
        size, body = length
        if body + size > end:
            break
        packets.append((pos, body, body + size))
        pos = body + size
    return packets, pos


def _text(buf, pos: int, end: int):
    if pos + 2 > end:
        raise MalformedPacket("a string runs past the end of its packet")
    after = pos + 2 + (buf[pos] << 8 | buf[pos + 1])
    if after > end:
        raise MalformedPacket("a string runs past the end of its packet")
    try:
        return bytes(buf[pos + 2:after]).decode("utf-8"), after
    except UnicodeDecodeError:
        raise MalformedPacket("a string that is not UTF-8") from None


def decodePublish(first: int, buf, start: int, end: int):
    """A PUBLISH packet's parts: ``(topic, qos, packet id or None, payload,
    user properties as a list of pairs, content type or None)``.

    ``first`` is its first byte; its body is ``buf[start:end]``.
    """
    qos = (first >> 1) & 3
    if qos == 3:
        raise MalformedPacket("PUBLISH with QoS 3")
    topic, pos = _text(buf, start, end)
    mid = None
    if qos:
        if pos + 2 > end:
            raise MalformedPacket("PUBLISH without its packet id")
        mid = buf[pos] << 8 | buf[pos + 1]
        pos += 2
    length = _varint(buf, pos, end)
    if length is None:
        raise MalformedPacket("PUBLISH without its properties")
    size, pos = length
    stop = pos + size
    if stop > end:
        raise MalformedPacket("properties run past the end of the PUBLISH")
    pairs, contentType = [], None
    while pos < stop:
        ident = buf[pos]
        pos += 1
        if ident == _USER_PROPERTY:
            key, pos = _text(buf, pos, stop)
            value, pos = _text(buf, pos, stop)
            pairs.append((key, value))
        elif ident == _CONTENT_TYPE:
            contentType, pos = _text(buf, pos, stop)
        elif ident in _LENGTH_PREFIXED:
            if pos + 2 > stop:
                raise MalformedPacket("a property runs past the end of the PUBLISH")
            pos += 2 + (buf[pos] << 8 | buf[pos + 1])
        elif ident in _FIXED:
            pos += _FIXED[ident]
        elif ident in _VARINT:
            length = _varint(buf, pos, stop)
            if length is None:
                raise MalformedPacket("a property runs past the end of the PUBLISH")
            pos = length[1]
        else:
            raise MalformedPacket(f"property {ident:#04x} in a PUBLISH")
    if pos > stop:
        raise MalformedPacket("a property runs past the end of the PUBLISH")
    return topic, qos, mid, bytes(buf[stop:end]), pairs, contentType


def _utf8(text: str) -> bytes:
    data = text.encode("utf-8")
    if len(data) > 0xFFFF:
        raise ValueError("an MQTT string is at most 65,535 bytes")
    return len(data).to_bytes(2, "big") + data


def encodeProperties(contentType, pairs) -> bytes:
    """A PUBLISH's property block: its length, then the content type (if
    any) and the user properties."""
    out = bytearray()
    if contentType is not None:
        out += b"\x03" + _utf8(contentType)
    for key, value in pairs:
        out += b"\x26" + _utf8(key) + _utf8(value)
    length = len(out)
    prefix = bytearray()
    while True:
        byte, length = length & 0x7F, length >> 7
        prefix.append(byte | 0x80 if length else byte)
        if not length:
            break
    return bytes(prefix + out)


def puback(mid: int) -> bytes:
    """The PUBACK of packet ``mid``: success, so no reason code (3.4.2.1)."""
    return bytes((0x40, 2, mid >> 8, mid & 0xFF))
