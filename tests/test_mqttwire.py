"""aiengine.mqttwire against paho-mqtt's own encoder and decoder of MQTT 5
properties, and on broken input."""

from hypothesis import given, settings
from hypothesis import strategies as st
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from twisted.trial import unittest

from aiengine.mqttwire import (MalformedPacket, decodePublish, encodeProperties, puback,
                               splitPackets)

_text = st.text(max_size=40)


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | 0x80 if n else byte)
        if not n:
            return bytes(out)


def _publish(topic: str, qos: int, mid, propertyBlock: bytes, payload: bytes) -> bytes:
    body = len(topic.encode()).to_bytes(2, "big") + topic.encode()
    if qos:
        body += mid.to_bytes(2, "big")
    body += propertyBlock + payload
    return bytes((0x30 | qos << 1,)) + _varint(len(body)) + body


def _pahoProperties(pairs, contentType=None, **others) -> bytes:
    properties = Properties(PacketTypes.PUBLISH)
    if pairs:
        properties.UserProperty = pairs
    if contentType is not None:
        properties.ContentType = contentType
    for name, value in others.items():
        setattr(properties, name, value)
    return properties.pack()


class DecodeTests(unittest.TestCase):
    """PUBLISH packets whose properties paho encoded."""

    @settings(max_examples=200, deadline=None)
    @given(topic=_text.filter(lambda t: len(t.encode()) < 200), qos=st.sampled_from([0, 1]),
           mid=st.integers(1, 65535), payload=st.binary(max_size=300),
           pairs=st.lists(st.tuples(_text, _text), max_size=4),
           contentType=st.none() | _text)
    def test_roundTripWithPaho(self, topic, qos, mid, payload, pairs, contentType):
        packet = _publish(topic, qos, mid, _pahoProperties(pairs, contentType), payload)
        [(start, body, end)], rest = splitPackets(packet)
        self.assertEqual((start, end, rest), (0, len(packet), len(packet)))
        self.assertEqual(decodePublish(packet[0], packet, body, end),
                         (topic, qos, mid if qos else None, payload, pairs, contentType))

    def test_otherPropertiesSkipped(self):
        """Every other PUBLISH property is stepped over, whatever its size."""
        block = _pahoProperties([("k", "v")], "xml", PayloadFormatIndicator=1,
                                MessageExpiryInterval=300, ResponseTopic="r/t",
                                CorrelationData=b"\x00\x01\x02", SubscriptionIdentifier=200000,
                                TopicAlias=7)
        packet = _publish("t", 1, 9, block, b"body")
        self.assertEqual(decodePublish(packet[0], packet, 2, len(packet)),
                         ("t", 1, 9, b"body", [("k", "v")], "xml"))

    def test_ourEncodingReadByPaho(self):
        block = encodeProperties("application/json", [("origin", "a:1/2"), ("é", "ü")])
        properties = Properties(PacketTypes.PUBLISH)
        properties.unpack(block)
        self.assertEqual((properties.ContentType, properties.UserProperty),
                         ("application/json", [("origin", "a:1/2"), ("é", "ü")]))
        self.assertEqual(encodeProperties(None, []), b"\x00")

    def test_longPropertyBlock(self):
        """A block over 127 bytes has a two-byte length."""
        pairs = [("key", "v" * 200)]
        self.assertEqual(encodeProperties(None, pairs), _pahoProperties(pairs))

    def test_puback(self):
        self.assertEqual(puback(0x1234), b"\x40\x02\x12\x34")


class SplitTests(unittest.TestCase):
    """Packets cut anywhere by the reads that bring them."""

    def test_everyCut(self):
        one = _publish("a", 0, None, b"\x00", b"x" * 200)  # a two-byte length
        stream = one + puback(5) + _publish("b", 1, 3, b"\x00", b"")
        for cut in range(len(stream) + 1):
            first, rest = splitPackets(stream[:cut])
            second, end = splitPackets(stream[rest:])
            ends = [e for _, _, e in first] + [rest + e for _, _, e in second]
            self.assertEqual(ends, [len(one), len(one) + 4, len(stream)], cut)
            self.assertEqual(rest + end, len(stream))

    def test_varintTooLong(self):
        self.assertRaises(MalformedPacket, splitPackets, b"\x30\xff\xff\xff\xff\x01")


class MalformedTests(unittest.TestCase):
    """What a broken or hostile broker could send: refused, never misread."""

    def decode(self, packet):
        return decodePublish(packet[0], packet, 2 if packet[1] < 128 else 3, len(packet))

    def test_qos3(self):
        packet = _publish("t", 0, None, b"\x00", b"")
        self.assertRaises(MalformedPacket, self.decode, bytes((0x36,)) + packet[1:])

    def test_topicPastTheEnd(self):
        self.assertRaises(MalformedPacket, self.decode, b"\x30\x03\x00\x09a")

    def test_notUtf8(self):
        self.assertRaises(MalformedPacket, self.decode, b"\x30\x04\x00\x01\xff\x00")

    def test_missingPacketId(self):
        self.assertRaises(MalformedPacket, self.decode, b"\x32\x04\x00\x01t\x00")

    def test_propertiesPastTheEnd(self):
        self.assertRaises(MalformedPacket, self.decode, b"\x30\x05\x00\x01t\x09\x26")

    def test_unknownProperty(self):
        self.assertRaises(MalformedPacket, self.decode, b"\x30\x06\x00\x01t\x02\x11\x00")

    def test_userPropertyCut(self):
        self.assertRaises(MalformedPacket, self.decode,
                          b"\x30\x09\x00\x01t\x05\x26\x00\x05ab")

    def test_fixedPropertyPastItsBlock(self):
        # a four-byte expiry interval in a block that says it has two bytes
        self.assertRaises(MalformedPacket, self.decode,
                          b"\x30\x0a\x00\x01t\x02\x02\x00\x00\x00\x00x")
