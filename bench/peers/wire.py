"""The three pub/sub wire formats the comparison benchmarks speak, without sockets.

- ``lines``: aiengine's hub (an ``in`` listener feeding an ``out`` listener,
  ``text-messages`` with ``\\n``): a message is its body and a newline, both ways.
- ``resp``: Redis (RESP2). ``PUBLISH topic body`` as a command array; a
  subscriber gets ``*3 $7 message $<n> topic $<n> body`` arrays.
- ``mqtt``: MQTT 3.1.1 at QoS 0: ``CONNECT``/``CONNACK``, ``SUBSCRIBE``/``SUBACK``,
  and ``PUBLISH`` packets without packet id, which the broker forwards unchanged in
  form (its own fixed header, the topic, the body).

Each format has an encoder for what a client sends (:func:`publish`,
:func:`subscribe`, :func:`hello`), a :class:`Counter` that counts delivered
messages in a byte stream by a marker only deliveries carry (one C-level
``bytes.count`` per read, so a client keeps up with a server in C), and a
:class:`Decoder` that takes the stream apart message by message (for the latency
benchmark, whose messages carry their send time).  Bodies hold no newline, no
NUL and no ``$`` (:func:`body`), which the markers rely on.
"""

from __future__ import annotations

FORMATS = ("lines", "resp", "mqtt")
#: bytes of a message body (a hub line is the body and its newline: 100 bytes)
BODY_SIZE = 99


def body(n: int, size: int = BODY_SIZE) -> bytes:
    """Message ``n``'s body: a 10-digit number and dots, ``size`` bytes."""
    head = b"%010d" % n
    return head + b"." * (size - len(head))


def stampedBody(t: float, size: int = BODY_SIZE) -> bytes:
    """A body that carries a send time ``t`` (``time.monotonic()``)."""
    head = b"%.9f " % t
    return head + b"." * (size - len(head))


def stampOf(data: bytes) -> float:
    """The send time in a body made by :func:`stampedBody`."""
    return float(data[:data.index(b" ")])


# -- encoders --------------------------------------------------------------------

def respCommand(*words) -> bytes:
    """A RESP command array of bulk strings."""
    parts = [b"*%d\r\n" % len(words)]
    for word in words:
        if isinstance(word, str):
            word = word.encode()
        parts.append(b"$%d\r\n%s\r\n" % (len(word), word))
    return b"".join(parts)


def _mqttLength(n: int) -> bytes:
    """MQTT's variable-length "remaining length"."""
    out = bytearray()
    while True:
        byte, n = n % 128, n // 128
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _mqttString(text) -> bytes:
    if isinstance(text, str):
        text = text.encode()
    return len(text).to_bytes(2, "big") + text


def mqttPacket(kind: int, payload: bytes) -> bytes:
    """A packet: its first byte (type and flags), remaining length, payload."""
    return bytes([kind]) + _mqttLength(len(payload)) + payload


def mqttConnect(clientId: str, keepalive: int = 0) -> bytes:
    """CONNECT, MQTT 3.1.1, clean session, no will, no credentials."""
    return mqttPacket(0x10, _mqttString("MQTT") + b"\x04\x02"
                      + keepalive.to_bytes(2, "big") + _mqttString(clientId))


def hello(fmt: str, clientId: str = "bench") -> bytes:
    """What a connection sends before anything else (MQTT's CONNECT)."""
    return mqttConnect(clientId) if fmt == "mqtt" else b""


def helloDone(fmt: str, data: bytes):
    """How many bytes of ``data`` the server's answer to :func:`hello` takes
    (0 when nothing is expected), or None while it is incomplete; ValueError
    when the server refused."""
    if fmt != "mqtt":
        return 0
    if len(data) < 4:
        return None
    if data[0] != 0x20 or data[3] != 0:
        raise ValueError(f"CONNACK refused or unexpected: {data[:4]!r}")
    return 4


def subscribe(fmt: str, topic: str) -> bytes:
    """What a subscriber sends to get ``topic``'s messages (nothing for the hub:
    every connection of the ``out`` listener gets them)."""
    if fmt == "resp":
        return respCommand("SUBSCRIBE", topic)
    if fmt == "mqtt":
        return mqttPacket(0x82, b"\x00\x01" + _mqttString(topic) + b"\x00")
    return b""


def subscribed(fmt: str, data: bytes, topic: str):
    """Bytes of ``data`` the subscription's confirmation takes, or None while it
    is incomplete (0 for the hub, which has none)."""
    if fmt == "resp":
        t = topic.encode()
        confirm = b"*3\r\n$9\r\nsubscribe\r\n$%d\r\n%s\r\n:1\r\n" % (len(t), t)
        if len(data) < len(confirm):
            return None
        if not data.startswith(confirm):
            raise ValueError(f"unexpected SUBSCRIBE answer {data[:80]!r}")
        return len(confirm)
    if fmt == "mqtt":
        if len(data) < 5:
            return None
        if data[0] != 0x90 or data[4] == 0x80:
            raise ValueError(f"SUBACK refused or unexpected: {data[:5]!r}")
        return 5
    return 0


def publish(fmt: str, topic: str, payload: bytes) -> bytes:
    """One published message as the publisher writes it."""
    if fmt == "resp":
        return respCommand("PUBLISH", topic, payload)
    if fmt == "mqtt":
        return mqttPacket(0x30, _mqttString(topic) + payload)
    return payload + b"\n"


def replyMarker(fmt: str):
    """What counts one server answer to a publish (Redis answers each PUBLISH
    with ``:<receivers>``); None when the server answers nothing."""
    return b"\n" if fmt == "resp" else None


def deliveryMarker(fmt: str, topic: str) -> bytes:
    """A byte string that occurs exactly once in each delivered message and
    nowhere else in a subscriber's stream once it is subscribed."""
    if fmt == "resp":
        return b"$7\r\nmessage\r\n"
    if fmt == "mqtt":
        return _mqttString(topic)  # the length's high byte is NUL, which no body has
    return b"\n"


# -- counting and decoding -------------------------------------------------------

class Counter:
    """Counts the occurrences of a marker in a stream cut anywhere."""

    def __init__(self, marker: bytes):
        self.marker = marker
        self.keep = len(marker) - 1
        self.tail = b""
        self.count = 0

    def feed(self, data: bytes) -> int:
        """Count ``data``'s markers (one may straddle the previous read); the total."""
        n = data.count(self.marker)
        if self.keep:
            if self.tail:
                # a marker across the boundary: neither side alone can hold it
                n += (self.tail + data[:self.keep]).count(self.marker)
            self.tail = (self.tail + data)[-self.keep:] if len(data) < self.keep \
                else data[-self.keep:]
        self.count += n
        return self.count


class Decoder:
    """Delivered message bodies, one by one, from a subscriber's stream."""

    def __init__(self, fmt: str):
        self.fmt = fmt
        self.buffer = b""

    def feed(self, data: bytes) -> list:
        """The bodies complete so far."""
        buffer = self.buffer + data
        out = []
        if self.fmt == "lines":
            *out, self.buffer = buffer.split(b"\n")
            return out
        pos = 0
        if self.fmt == "resp":
            while True:
                # *3\r\n$7\r\nmessage\r\n$<n>\r\n<topic>\r\n$<n>\r\n<body>\r\n
                try:
                    end, payload = _respPush(buffer, pos)
                except IndexError:
                    break
                if payload is not None:
                    out.append(payload)
                pos = end
        else:
            while pos + 2 <= len(buffer):
                length, shift, i = 0, 0, pos + 1
                while i < len(buffer):
                    byte = buffer[i]
                    length |= (byte & 0x7F) << shift
                    shift += 7
                    i += 1
                    if not byte & 0x80:
                        break
                else:
                    break
                if i + length > len(buffer):
                    break
                if buffer[pos] >> 4 == 3:  # PUBLISH (QoS 0: no packet id)
                    topicLength = int.from_bytes(buffer[i:i + 2], "big")
                    out.append(buffer[i + 2 + topicLength:i + length])
                pos = i + length
        self.buffer = buffer[pos:]
        return out


def _respLine(buffer: bytes, pos: int):
    end = buffer.index(b"\r\n", pos)  # ValueError when incomplete
    return buffer[pos:end], end + 2


def _respPush(buffer: bytes, pos: int):
    """One RESP value at ``pos``: (end, body of a ``message`` push or None).
    IndexError when the buffer does not hold all of it yet."""
    try:
        head, pos = _respLine(buffer, pos)
        if not head.startswith(b"*"):
            return pos, None  # +OK, :n and the like
        items = []
        for _ in range(int(head[1:])):
            line, pos = _respLine(buffer, pos)
            if line.startswith(b"$"):
                n = int(line[1:])
                if pos + n + 2 > len(buffer):
                    raise IndexError
                items.append(buffer[pos:pos + n])
                pos += n + 2
            else:
                items.append(line[1:])
    except ValueError:
        raise IndexError from None
    if len(items) == 3 and items[0] == b"message":
        return pos, items[2]
    return pos, None
