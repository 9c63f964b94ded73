"""Tests for the framing protocols (SPEC section 3) and buildFramer."""

from __future__ import annotations

from hypothesis import assume, given, settings
from hypothesis import strategies as st
from twisted.internet import defer, protocol, reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.testing import StringTransport
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.trial.unittest import SkipTest, TestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from aiengine.config import ProtocolConfig, ProtocolSettings
from aiengine.protocols import (PROTOCOL_NAMES, FramingProtocol, IMessageReceiver,
                                buildFramer)
from aiengine.protocols.asymmetric import AsymmetricProtocol
from aiengine.protocols.stream import BinaryStreamProtocol, TextStreamProtocol
from aiengine.protocols.text import TextMessagesProtocol
from aiengine.protocols.xmlmessages import XmlMessagesProtocol
from tests.test_xmlsplit import separators, splits, xmlDocuments


@implementer(IMessageReceiver)
class Recorder:
    """Records what a framer reports, in order."""

    def __init__(self):
        self.events = []
        self.framer = None

    def framerConnected(self, framer):
        self.framer = framer
        self.events.append(("connected", framer))

    def messageReceived(self, message, attributes):
        self.events.append(("message", message, attributes))

    def messagesReceived(self, messages):
        for message in messages:
            if self.framer.transport.disconnecting:
                return  # as the framer's own loop does
            self.messageReceived(message, None)

    def protocolError(self, description):
        self.events.append(("error", description))

    def framerDisconnected(self, reason):
        self.events.append(("disconnected", reason))

    @property
    def messages(self):
        return [e[1] for e in self.events if e[0] == "message"]

    @property
    def errors(self):
        return [e[1] for e in self.events if e[0] == "error"]


class BatchRecorder(Recorder):
    """A Recorder that also takes several messages at once."""

    def messagesReceived(self, messages):
        self.events.append(("batch", len(messages)))
        for message in messages:
            self.messageReceived(message, None)


def config(name, **kw):
    """A symmetric ProtocolConfig."""
    s = ProtocolSettings(name, **kw)
    return ProtocolConfig(name, s, s)


def connect(protocolConfig, log=None, receiver=None):
    """A framer on a StringTransport, with a Recorder; returns all three."""
    receiver = Recorder() if receiver is None else receiver
    framer = buildFramer(protocolConfig, receiver, log=log)
    transport = StringTransport()
    framer.makeConnection(transport)
    return framer, transport, receiver


def feed(framer, packets):
    for packet in packets:
        framer.dataReceived(packet)


def assertSameBytes(test, got, expected):
    """assertEqual for lists of long bytes (whose diff would take ages)."""
    test.assertEqual([len(m) for m in got], [len(m) for m in expected])
    for i, (a, b) in enumerate(zip(got, expected)):
        test.assertTrue(a == b, f"message {i} differs")


delimiters = st.sampled_from([b"\n", b"\x00", b"\xff", b"\x01", b"\r\n", b"\x01\x02\x03",
                              b"END"])


def unambiguous(messages, delimiter):
    """Each message ends exactly where its delimiter starts."""
    return all((m + delimiter).find(delimiter) == len(m) for m in messages)


class TextMessagesTests(TestCase):
    """text-messages: delimited messages."""

    @settings(max_examples=150, deadline=None)
    @given(st.data(), delimiters, st.lists(st.binary(max_size=20), max_size=12))
    def test_anySplitBatched(self, data, delimiter, messages):
        """A receiver that takes batches gets the same messages, in order,
        however the stream is cut."""
        assume(unambiguous(messages, delimiter))
        framer, transport, receiver = connect(config("text-messages", delimiter=delimiter),
                                              receiver=BatchRecorder())
        feed(framer, data.draw(splits(b"".join(m + delimiter for m in messages))))
        self.assertEqual(receiver.messages, messages)
        self.assertEqual(receiver.errors, [])

    def test_multiByteDelimiterLooksOnlyAtNewBytes(self):
        """With a multi-byte delimiter, a packet holding its last byte but not
        the whole delimiter does not re-read what is buffered: 900 KB waiting
        and a flood of 1-byte packets cost the packets, not the buffer."""
        framer, transport, receiver = connect(config("text-messages", delimiter=b"\r\n"))
        joins = []
        original = framer._takePieces
        framer._takePieces = lambda: (joins.append(1), original())
        framer.dataReceived(b"x" * 900000)
        for _ in range(1000):
            framer.dataReceived(b"\n")
        self.assertEqual(joins, [])
        framer.dataReceived(b"\r")
        framer.dataReceived(b"\n")
        self.assertEqual(joins, [1])
        self.assertEqual(receiver.messages, [b"x" * 900000 + b"\n" * 1000])
        # A delimiter split across packets is still found.
        framer.dataReceived(b"ab\r")
        framer.dataReceived(b"\ncd\r\n")
        self.assertEqual(receiver.messages[1:], [b"ab", b"cd"])

    def test_batchNotUsedForTooLarge(self):
        """A packet holding a message over the limit is handled one by one:
        the messages before it arrive, then the connection closes."""
        framer, transport, receiver = connect(
            config("text-messages", delimiter=b"\n", max_packet_size=3),
            receiver=BatchRecorder())
        framer.dataReceived(b"ab\ncd\ntoolong\nef\n")
        self.assertEqual(receiver.messages, [b"ab", b"cd"])
        self.assertEqual(len(receiver.errors), 1)
        self.assertTrue(transport.disconnecting)

    def test_sendMessages(self):
        """Several messages written at once are the bytes of one-by-one writes."""
        for delimiter in (b"\n", b"\r\n", b"\x01"):
            one, transportOne, _ = connect(config("text-messages", delimiter=delimiter))
            many, transportMany, _ = connect(config("text-messages", delimiter=delimiter))
            for message in (b"a", b"", b"bc"):
                one.sendMessage(message)
            many.sendMessages([b"a", b"", b"bc"])
            self.assertEqual(transportMany.value(), transportOne.value())

    @settings(max_examples=150, deadline=None)
    @given(st.data(), delimiters, st.lists(st.binary(max_size=20), max_size=8))
    def test_anySplit(self, data, delimiter, messages):
        """Any bytes (empty messages, NUL, 0xff) frame the same however the
        stream is cut."""
        assume(unambiguous(messages, delimiter))
        framer, transport, receiver = connect(config("text-messages", delimiter=delimiter))
        feed(framer, data.draw(splits(b"".join(m + delimiter for m in messages))))
        self.assertEqual(receiver.messages, messages)
        self.assertEqual(receiver.errors, [])
        self.assertFalse(transport.disconnecting)

    @settings(max_examples=150, deadline=None)
    @given(st.data(), delimiters, st.lists(st.binary(max_size=12), min_size=1, max_size=6),
           st.integers(0, 10))
    def test_sizeLimitAnySplit(self, data, delimiter, messages, limit):
        """Messages up to max-packet-size pass; the first longer one is
        reported once and closes the connection, however the stream is cut."""
        assume(unambiguous(messages, delimiter))
        framer, transport, receiver = connect(
            config("text-messages", delimiter=delimiter, max_packet_size=limit))
        feed(framer, data.draw(splits(b"".join(m + delimiter for m in messages))))
        expected = []
        for m in messages:
            if len(m) > limit:
                break
            expected.append(m)
        self.assertEqual(receiver.messages, expected)
        tooLong = len(expected) < len(messages)
        self.assertEqual(len(receiver.errors), int(tooLong))
        self.assertEqual(transport.disconnecting, tooLong)

    def test_tooLongUnterminated(self):
        """A message that grows past the limit without a delimiter is reported
        and closes the connection without waiting for its end."""
        framer, transport, receiver = connect(config("text-messages", max_packet_size=100))
        framer.dataReceived(b"ok\n" + b"x" * 60)
        self.assertFalse(transport.disconnecting)
        framer.dataReceived(b"x" * 41)
        self.assertEqual(receiver.messages, [b"ok"])
        self.assertEqual(len(receiver.errors), 1)
        self.assertIn("max-packet-size 100", receiver.errors[0])
        self.assertTrue(transport.disconnecting)
        framer.dataReceived(b"late\n")  # what still arrives while closing is ignored
        self.assertEqual(receiver.messages, [b"ok"])

    def test_trickledLongMessage(self):
        """A long message arriving in many small packets arrives whole."""
        framer, transport, receiver = connect(config("text-messages", delimiter=b"\r\n"))
        body = bytes(range(256)).replace(b"\n", b"") * 400
        feed(framer, [body[i:i + 7] for i in range(0, len(body), 7)])
        framer.dataReceived(b"\r\n")
        assertSameBytes(self, receiver.messages, [body])

    def test_outbound(self):
        """A message is written followed by the delimiter."""
        framer, transport, receiver = connect(config("text-messages", delimiter=b"\x01"))
        framer.sendMessage(b"")
        framer.sendMessage(b"a\x00b")
        self.assertEqual(transport.value(), b"\x01a\x00b\x01")

    def test_defaultDelimiter(self):
        """Without a configured delimiter, messages are lines ending in LF."""
        framer, transport, receiver = connect(config("text-messages"))
        framer.dataReceived(b"a\r\nb\n")
        framer.sendMessage(b"c")
        self.assertEqual(receiver.messages, [b"a\r", b"b"])
        self.assertEqual(transport.value(), b"c\n")

    def test_receiverClosesMidPacket(self):
        """When the receiver closes the connection, later messages of the same
        packet are not delivered."""
        framer, transport, receiver = connect(config("text-messages"))
        delivered = []
        receiver.messageReceived = lambda m, a: (delivered.append(m),
                                                 transport.loseConnection())
        framer.dataReceived(b"quit\nmore\n")
        self.assertEqual(delivered, [b"quit"])


class XmlMessagesTests(TestCase):
    """xml-messages: one XML document per message."""

    @settings(max_examples=80, deadline=None)
    @given(st.data(), st.lists(st.tuples(xmlDocuments(), separators), max_size=4),
           st.sampled_from([None, b"\x01", b"\n", b"\r\n", b"\x00", b"|\x04"]))
    def test_anySplit(self, data, docs, delimiter):
        framer, transport, receiver = connect(config("xml-messages", delimiter=delimiter))
        stream = b"".join(doc + sep + (delimiter or b"") for doc, sep in docs)
        feed(framer, data.draw(splits(stream)))
        self.assertEqual(receiver.messages, [doc for doc, _ in docs])
        self.assertEqual(receiver.errors, [])
        # No attributes: an XML message is its bytes.
        self.assertTrue(all(e[2] is None for e in receiver.events if e[0] == "message"))

    def test_malformedThenGood(self):
        """A malformed document is reported, the connection stays open and the
        next document is delivered."""
        framer, transport, receiver = connect(config("xml-messages"))
        framer.dataReceived(b"<a></b>\n<ok/>")
        framer.dataReceived(b"\x00junk\n<ok2>")
        framer.dataReceived(b"</ok2>")
        self.assertEqual(receiver.messages, [b"<ok/>", b"<ok2></ok2>"])
        self.assertEqual(len(receiver.errors), 2)
        self.assertIn("malformed", receiver.errors[0])
        self.assertFalse(transport.disconnecting)

    def test_tooLarge(self):
        """A document over max-packet-size is reported and closes the
        connection; documents before it in the same packet are delivered."""
        framer, transport, receiver = connect(config("xml-messages", max_packet_size=50))
        framer.dataReceived(b"<a/><big>" + b"x" * 50)
        self.assertEqual(receiver.messages, [b"<a/>"])
        self.assertEqual(len(receiver.errors), 1)
        self.assertIn("max-packet-size", receiver.errors[0])
        self.assertTrue(transport.disconnecting)
        framer.dataReceived(b"</big><c/>")
        self.assertEqual(receiver.messages, [b"<a/>"])

    def test_delimiterSkipped(self):
        """The configured delimiter is skipped between documents and written
        after outbound ones."""
        framer, transport, receiver = connect(config("xml-messages", delimiter=b"|"))
        framer.dataReceived(b"<a/>|\x01<b/>|")
        framer.sendMessage(b"<c/>")
        self.assertEqual(receiver.messages, [b"<a/>", b"<b/>"])
        self.assertEqual(receiver.errors, [])
        self.assertEqual(transport.value(), b"<c/>|")

    def test_outboundWithoutDelimiter(self):
        framer, transport, receiver = connect(config("xml-messages"))
        framer.sendMessage(b"<c/>")
        self.assertEqual(transport.value(), b"<c/>")


def packetLists(elements):
    return st.lists(elements, max_size=8)


class StreamTests(TestCase):
    """text-stream and binary-stream: bounded chunks of what arrives."""

    @settings(max_examples=150, deadline=None)
    @given(packetLists(st.binary(max_size=40)), st.integers(1, 16))
    def test_binaryStream(self, packets, maxRead):
        """Bytes pass untouched, in non-empty chunks of at most max-read-size
        that never merge two packets."""
        framer, transport, receiver = connect(config("binary-stream", max_read_size=maxRead))
        chunks = []
        for packet in packets:
            before = len(receiver.messages)
            framer.dataReceived(packet)
            got = receiver.messages[before:]
            self.assertEqual(b"".join(got), packet)
            chunks += got
        self.assertTrue(all(0 < len(c) <= maxRead for c in chunks))

    @settings(max_examples=150, deadline=None)
    @given(st.data(), st.text(max_size=40), st.integers(1, 16))
    def test_textStreamNeverSplitsCharacters(self, data, text, maxRead):
        """Valid UTF-8 arrives as whole characters, whatever the packets, in
        chunks of at most max-read-size (or one character, if that is longer)."""
        stream = text.encode("utf-8", "surrogatepass")
        assume(text == stream.decode("utf-8", "ignore"))
        framer, transport, receiver = connect(config("text-stream", max_read_size=maxRead))
        feed(framer, data.draw(splits(stream)))
        self.assertEqual(b"".join(receiver.messages), stream)
        for chunk in receiver.messages:
            decoded = chunk.decode("utf-8")  # raises if a character was split
            self.assertTrue(0 < len(chunk) <= maxRead or len(decoded) == 1, chunk)

    @settings(max_examples=150, deadline=None)
    @given(st.data(), st.binary(max_size=60), st.integers(1, 16))
    def test_textStreamAnyBytes(self, data, stream, maxRead):
        """Invalid UTF-8 passes through unchanged; at most 3 bytes are held
        back, and they are delivered when the connection ends."""
        framer, transport, receiver = connect(config("text-stream", max_read_size=maxRead))
        for packet in data.draw(splits(stream)):
            framer.dataReceived(packet)
            self.assertLessEqual(len(framer._held), 3)
        framer.connectionLost(Failure(Exception("done")))
        self.assertEqual(b"".join(receiver.messages), stream)
        self.assertTrue(all(0 < len(c) <= max(maxRead, 4) for c in receiver.messages))

    def test_textStreamHoldsIncompleteCharacter(self):
        framer, transport, receiver = connect(config("text-stream"))
        framer.dataReceived(b"price: \xe2\x82")
        self.assertEqual(receiver.messages, [b"price: "])
        framer.dataReceived(b"\xac.")
        self.assertEqual(receiver.messages, [b"price: ", b"\xe2\x82\xac."])

    def test_outboundAsGiven(self):
        """Stream protocols write messages as given, then the delimiter if one
        is configured (SPEC 3: written after every outbound message)."""
        for name in ("text-stream", "binary-stream"):
            framer, transport, receiver = connect(config(name))
            framer.sendMessage(b"a\xffb")
            self.assertEqual(transport.value(), b"a\xffb", name)
            framer, transport, receiver = connect(config(name, delimiter=b"\r\n"))
            framer.sendMessage(b"a\xffb")
            self.assertEqual(transport.value(), b"a\xffb\r\n", name)


class AsymmetricTests(TestCase):
    """asymmetric: each direction with its own protocol over one connection."""

    def setUp(self):
        self.protocol = ProtocolConfig(
            "asymmetric",
            ProtocolSettings("text-messages", delimiter=b"\n", max_packet_size=10),
            ProtocolSettings("xml-messages", delimiter=b"\x01"))
        self.framer, self.transport, self.receiver = connect(self.protocol)

    def test_directions(self):
        """Inbound is cut as text lines, outbound written as XML + 0x01."""
        self.assertIsInstance(self.framer, AsymmetricProtocol)
        self.framer.dataReceived(b"<a/>\nline two\n")
        self.framer.sendMessage(b"<reply/>")
        self.assertEqual(self.receiver.messages, [b"<a/>", b"line two"])
        self.assertEqual(self.transport.value(), b"<reply/>\x01")

    def test_sendMessagesUsesOutbound(self):
        """Several messages at once are written with the outbound protocol too."""
        self.framer.sendMessages([b"<a/>", b"<b/>"])
        self.assertEqual(self.transport.value(), b"<a/>\x01<b/>\x01")

    def test_sendMessagesOfOwnWriter(self):
        """A protocol that writes its own way is not bypassed by sendMessages."""
        class Shouting(FramingProtocol):
            def sendMessage(self, message, attributes=None):
                self.transport.write(message.upper() + b"!")

        transport = StringTransport()
        settings = ProtocolSettings("text-messages", delimiter=b"\n")
        framer = Shouting(settings, Recorder())
        framer.makeConnection(transport)
        framer.sendMessages([b"a", b"b"])
        self.assertEqual(transport.value(), b"A!B!")

    def test_sendMessagesJoinedIsSendMessageInOneWrite(self):
        """Protocols whose wire form is message + delimiter write a batch in
        one piece, exactly as message by message; logging them writes each."""
        for cls, name, delimiter in ((TextMessagesProtocol, "text-messages", b"\n"),
                                     (XmlMessagesProtocol, "xml-messages", b"\x01"),
                                     (BinaryStreamProtocol, "binary-stream", b"|"),
                                     (TextStreamProtocol, "text-stream", None)):
            for show in (False, True):
                writes = []
                settings = ProtocolSettings(name, delimiter=delimiter, show_packets=show)
                framer = cls(settings, Recorder(), log=Logger(namespace="quiet"))
                framer.makeConnection(StringTransport())
                framer.transport.write = writes.append
                framer.sendMessages([b"<a/>", b"<b/>"])
                one = StringTransport()
                single = cls(settings, Recorder(), log=Logger(namespace="quiet"))
                single.makeConnection(one)
                single.sendMessage(b"<a/>")
                single.sendMessage(b"<b/>")
                self.assertEqual(b"".join(writes), one.value(), name)
                self.assertEqual(len(writes), 2 if show else 1, (name, show))

    def test_oneConnection(self):
        """The receiver sees one framer, connected and disconnected once."""
        self.framer.dataReceived(b"x\n")
        self.framer.connectionLost(Failure(Exception("gone")))
        kinds = [e[0] for e in self.receiver.events]
        self.assertEqual(kinds, ["connected", "message", "disconnected"])
        self.assertIs(self.receiver.events[0][1], self.framer)
        self.assertIs(self.framer.inbound.transport, self.transport)
        self.assertIs(self.framer.outbound.transport, self.transport)

    def test_inboundErrors(self):
        """Framing errors of the inbound protocol reach the receiver and
        close the shared connection."""
        self.framer.dataReceived(b"far too long a line\n")
        self.assertEqual(len(self.receiver.errors), 1)
        self.assertTrue(self.transport.disconnecting)

    def test_heldBytesOnDisconnect(self):
        """Inner framers hear of the disconnection (text-stream flushes)."""
        protocol = ProtocolConfig("asymmetric", ProtocolSettings("text-stream"),
                                  ProtocolSettings("binary-stream"))
        framer, transport, receiver = connect(protocol)
        framer.dataReceived(b"a\xc3")
        framer.connectionLost(Failure(Exception("gone")))
        self.assertEqual(receiver.messages, [b"a", b"\xc3"])
        self.assertEqual([e[0] for e in receiver.events][-1], "disconnected")


class BuildFramerTests(TestCase):
    """buildFramer: a framer for every protocol name."""

    def test_everyName(self):
        classes = {"text-messages": TextMessagesProtocol,
                   "xml-messages": XmlMessagesProtocol,
                   "text-stream": TextStreamProtocol,
                   "binary-stream": BinaryStreamProtocol,
                   "asymmetric": AsymmetricProtocol}
        try:
            from aiengine.protocols.http import HttpClientProtocol
        except ImportError:
            raise SkipTest("aiengine.protocols.http is not there yet")
        classes["http"] = HttpClientProtocol
        self.assertEqual(set(classes), set(PROTOCOL_NAMES))
        for name, cls in classes.items():
            inner = ProtocolSettings("binary-stream" if name == "asymmetric" else name)
            framer = buildFramer(ProtocolConfig(name, inner, inner), Recorder(),
                                 host="127.0.0.1", port=80)
            self.assertIsInstance(framer, cls, name)
            self.assertIsInstance(framer, FramingProtocol, name)

    def test_asymmetricHttp(self):
        """Inner framers are built like outer ones, http included."""
        try:
            from aiengine.protocols.http import HttpClientProtocol
        except ImportError:
            raise SkipTest("aiengine.protocols.http is not there yet")
        protocol = ProtocolConfig("asymmetric", ProtocolSettings("text-stream"),
                                  ProtocolSettings("http"))
        framer = buildFramer(protocol, Recorder(), host="example.org", port=80)
        self.assertIsInstance(framer.outbound, HttpClientProtocol)

    def test_unknown(self):
        self.assertRaises(ValueError, buildFramer, config("smoke-signals"), Recorder())

    def test_receiverInterface(self):
        """The recorder used here is a faithful IMessageReceiver, and so is
        the asymmetric framer toward its inner framers."""
        verifyObject(IMessageReceiver, Recorder())
        framer, _, _ = connect(config("text-messages"))
        asym = buildFramer(ProtocolConfig("asymmetric", framer.settings, framer.settings),
                           Recorder())
        verifyObject(IMessageReceiver, asym)


class LoggingTests(TestCase):
    """showpackets / showmessages."""

    def events(self, protocol):
        events = []
        log = Logger(namespace="test.protocols", observer=events.append)
        framer, transport, receiver = connect(protocol, log=log)
        framer.dataReceived(b"a\nb\n")
        framer.sendMessage(b"c")
        return [e["log_format"].split(" (")[0] for e in events]

    def test_showBoth(self):
        self.assertEqual(
            self.events(config("text-messages", show_packets=True, show_messages=True)),
            ["packet in", "message in", "message in", "message out", "packet out"])

    def test_showNothing(self):
        self.assertEqual(self.events(config("text-messages")), [])

    def test_asymmetricLogsOnce(self):
        """Each direction logs by its own settings, and only once."""
        protocol = ProtocolConfig(
            "asymmetric",
            ProtocolSettings("text-messages", show_packets=True, show_messages=True),
            ProtocolSettings("binary-stream", show_packets=True))
        self.assertEqual(self.events(protocol),
                         ["packet in", "message in", "message in", "packet out"])


class _EchoUpper:
    """Server side receiver: answers every message in upper case."""

    def framerConnected(self, framer):
        self.framer = framer

    def messageReceived(self, message, attributes):
        self.framer.sendMessage(message.upper())

    def messagesReceived(self, messages):
        for message in messages:
            self.messageReceived(message, None)

    def protocolError(self, description):
        pass

    def framerDisconnected(self, reason):
        pass


class LoopbackTests(TestCase):
    """text-messages over a real TCP connection on 127.0.0.1."""

    @defer.inlineCallbacks
    def test_echo(self):
        protocolConfig = config("text-messages", delimiter=b"\r\n")
        serverGone = defer.Deferred()

        class ServerReceiver(_EchoUpper):
            def framerDisconnected(self, reason):
                serverGone.callback(None)

        factory = protocol.Factory.forProtocol(
            lambda: buildFramer(protocolConfig, ServerReceiver()))
        port = reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.addCleanup(port.stopListening)

        messages = [b"hello", b"", b"nul\x00byte", b"\xff\xfe", b"x" * 100000]
        received = []
        allReceived = defer.Deferred()
        clientGone = defer.Deferred()

        class ClientReceiver(Recorder):
            def messageReceived(self, message, attributes):
                received.append(message)
                if len(received) == len(messages):
                    allReceived.callback(None)

            def framerDisconnected(self, reason):
                clientGone.callback(None)

        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port)
        client = yield connectProtocol(endpoint, buildFramer(protocolConfig, ClientReceiver()))
        for m in messages:
            client.sendMessage(m)
        yield allReceived
        assertSameBytes(self, received, [m.upper() for m in messages])
        client.transport.loseConnection()
        yield defer.gatherResults([clientGone, serverGone])

    test_echo.timeout = 5


class DelimiterInMessageTests(TestCase):
    """An outbound message holding the delimiter would arrive as several
    messages: it is refused, reported and counted, and the others go out."""

    def test_refused(self):
        for delimiter in (b"\n", b"\r\n"):
            framer, transport, receiver = connect(config("text-messages",
                                                         delimiter=delimiter))
            self.assertEqual(framer.sendMessage(b"one" + delimiter + b"two"), 0)
            self.assertIsNone(framer.sendMessage(b"fine"))
            self.assertEqual(framer.sendMessages([b"a", b"b" + delimiter + b"c", b"d"]), 2)
            self.assertEqual(framer.sendMessages([b"e", b"f"]), 2)
            self.assertEqual(transport.value(), delimiter.join(
                [b"fine", b"a", b"d", b"e", b"f"]) + delimiter)
            self.assertEqual(framer.refused, 2)
            self.assertEqual(len(receiver.errors), 2)
            self.assertIn("holds the delimiter", receiver.errors[0])
            self.assertFalse(transport.disconnecting)

    def test_partOfTheDelimiterIsData(self):
        framer, transport, receiver = connect(config("text-messages", delimiter=b"\r\n"))
        self.assertEqual(framer.sendMessages([b"a\r", b"\nb"]), 2)
        self.assertEqual(transport.value(), b"a\r\r\n\nb\r\n")
        self.assertEqual(receiver.errors, [])
