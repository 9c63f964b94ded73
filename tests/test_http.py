"""Tests for the ``http`` client protocol: exact requests on a StringTransport,
response framing fed by hand, and pipelining against a real twisted.web server
on loopback."""

from __future__ import annotations

from hypothesis import given, settings as hsettings, strategies as st
from twisted.internet import defer, reactor
from twisted.internet.address import IPv4Address
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint, connectProtocol
from twisted.internet.error import ConnectionDone
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial import unittest
from twisted.web import resource, server, static
from zope.interface import implementer

import aiengine
from aiengine.config import ProtocolSettings
from aiengine.protocols.base import IMessageReceiver
from aiengine.protocols.http import HttpClientProtocol, hostHeader

UA = b"User-Agent: aiengine/" + aiengine.__version__.encode("ascii") + b"\r\n"


def request(target, host):
    """The exact bytes expected for GET ``target`` with Host ``host``."""
    return (b"GET " + target + b" HTTP/1.1\r\nHost: " + host + b"\r\n" + UA
            + b"Accept: */*\r\n\r\n")


@implementer(IMessageReceiver)
class Recorder:
    """A receiver that records what the framer reports."""

    def __init__(self):
        self.framer = None
        self.messages = []
        self.errors = []
        self.reason = None
        self.disconnected = defer.Deferred()
        self._waiters = []
        self.onMessage = None

    def framerConnected(self, framer):
        self.framer = framer

    def messageReceived(self, message, attributes):
        self.messages.append((message, attributes))
        if self.onMessage is not None:
            self.onMessage(message, attributes)
        for n, d in list(self._waiters):
            if len(self.messages) >= n:
                self._waiters.remove((n, d))
                d.callback(self.messages)

    def protocolError(self, description):
        self.errors.append(description)

    def framerDisconnected(self, reason):
        self.reason = reason
        self.disconnected.callback(None)

    def waitForMessages(self, n):
        d = defer.Deferred()
        self._waiters.append((n, d))
        if len(self.messages) >= n:
            self._waiters.remove((n, d))
            d.callback(self.messages)
        return d

    @property
    def bodies(self):
        return [m for m, _ in self.messages]


def makeSettings(**kw):
    return ProtocolSettings(name="http", **kw)


def connected(host="example.org", port=80, peer=None, **kw):
    """A protocol on a StringTransport, and its recorder."""
    rec = Recorder()
    proto = HttpClientProtocol(makeSettings(**kw), rec, host=host, port=port)
    transport = StringTransport(peerAddress=peer)
    proto.makeConnection(transport)
    return proto, rec, transport


def peerClosed(proto):
    proto.connectionLost(Failure(ConnectionDone()))


class RequestTests(unittest.SynchronousTestCase):
    """The bytes written for each kind of page address."""

    def sent(self, address, **kw):
        proto, rec, transport = connected(**kw)
        proto.sendMessage(address)
        self.assertEqual(rec.errors, [])
        self.assertFalse(transport.disconnecting)
        return transport.value()

    def test_originForm(self):
        self.assertEqual(self.sent(b"/index.html", host="example.org", port=8080),
                         request(b"/index.html", b"example.org:8080"))

    def test_port80LeftOut(self):
        self.assertEqual(self.sent(b"/a?b=c", host="example.org", port=80),
                         request(b"/a?b=c", b"example.org"))

    def test_bareWordGetsSlash(self):
        self.assertEqual(self.sent(b"index.html", port=81),
                         request(b"/index.html", b"example.org:81"))

    def test_whitespaceStripped(self):
        self.assertEqual(self.sent(b"  /x \r\n"), request(b"/x", b"example.org"))

    def test_fragmentNotSent(self):
        self.assertEqual(self.sent(b"/x#part"), request(b"/x", b"example.org"))

    def test_spacesAndNonAsciiPercentEncoded(self):
        self.assertEqual(self.sent("/a b/\u00e9".encode("utf-8")),
                         request(b"/a%20b/%C3%A9", b"example.org"))

    def test_absoluteForm(self):
        self.assertEqual(
            self.sent(b"http://code.google.com/p/x?q=1", host="proxy.example", port=3128),
            request(b"http://code.google.com/p/x?q=1", b"code.google.com"))

    def test_absoluteFormWithPort(self):
        self.assertEqual(self.sent(b"HTTP://www.example.org:8080/x"),
                         request(b"http://www.example.org:8080/x", b"www.example.org:8080"))

    def test_absoluteFormEmptyPath(self):
        self.assertEqual(self.sent(b"http://code.google.com"),
                         request(b"http://code.google.com/", b"code.google.com"))

    def test_ipv6ChannelHost(self):
        self.assertEqual(self.sent(b"/", host="::1", port=8080),
                         request(b"/", b"[::1]:8080"))
        self.assertEqual(self.sent(b"/", host="::1", port=80), request(b"/", b"[::1]"))

    def test_ipv6AbsoluteUrl(self):
        self.assertEqual(self.sent(b"http://[::1]:81/x"),
                         request(b"http://[::1]:81/x", b"[::1]:81"))

    def test_hostFromPeerWhenNotGiven(self):
        self.assertEqual(
            self.sent(b"/p", host=None, port=None,
                      peer=IPv4Address("TCP", "127.0.0.1", 8000)),
            request(b"/p", b"127.0.0.1:8000"))

    def test_hostHeader(self):
        self.assertEqual(hostHeader("example.org", None), "example.org")
        self.assertEqual(hostHeader("example.org", 443), "example.org:443")
        self.assertEqual(hostHeader("[::1]", 8080), "[::1]:8080")

    def test_pipelinedWrittenAtOnce(self):
        proto, rec, transport = connected()
        proto.sendMessage(b"/one")
        proto.sendMessage(b"/two")
        proto.sendMessage(b"/three")
        self.assertEqual(transport.value(), request(b"/one", b"example.org")
                         + request(b"/two", b"example.org")
                         + request(b"/three", b"example.org"))

    def test_invalidAddresses(self):
        for address in [b"", b"   ", b"https://example.org/", b"ftp://example.org/x",
                        b"http:///nohost", b"http://example.org:port/",
                        b"/a\r\nX-Injected: 1", b"/nul\x00", b"http://user:pw@example.org/"]:
            proto, rec, transport = connected()
            proto.sendMessage(address)
            self.assertEqual(transport.value(), b"", address)
            self.assertEqual(len(rec.errors), 1, address)
            self.assertFalse(transport.disconnecting, address)
            # Nothing is in flight for it: a response now is unsolicited.
            peerClosed(proto)
            self.assertEqual(rec.messages, [], address)

    def test_invalidThenValid(self):
        proto, rec, transport = connected()
        proto.sendMessage(b"https://example.org/")
        proto.sendMessage(b"/ok", {"in-reply-to": "m2"})
        self.assertEqual(transport.value(), request(b"/ok", b"example.org"))
        proto.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        self.assertEqual(rec.bodies, [b"ok"])
        self.assertEqual(rec.messages[0][1]["in-reply-to"], "m2")
        self.assertEqual(rec.messages[0][1]["request-index"], 1)


OK = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-A: 1\r\n\r\nhello"
CHUNKED = (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
           b"3\r\nabc\r\n4;ext=1\r\ndefg\r\n0\r\nX-Checksum: 42\r\nX-More: yes\r\n\r\n")
NOTFOUND = b"HTTP/1.1 404 Not Found\r\nContent-Length: 4\r\n\r\nnope"


class ResponseTests(unittest.SynchronousTestCase):
    """Response framing, fed by hand."""

    def test_contentLength(self):
        proto, rec, transport = connected()
        proto.sendMessage(b"/page", {"in-reply-to": "m1", "session": "s", "status": 7})
        proto.dataReceived(OK)
        self.assertEqual(rec.messages, [(b"hello", {
            "in-reply-to": "m1", "session": "s",
            "status": 200, "reason": "OK",
            "headers": [("content-length", "5"), ("x-a", "1")],
            "page": "/page", "request-index": 1})])
        self.assertEqual(rec.errors, [])
        self.assertFalse(transport.disconnecting)

    def test_chunkedWithTrailers(self):
        proto, rec, _ = connected()
        proto.sendMessage(b"/c")
        proto.dataReceived(CHUNKED)
        self.assertEqual(rec.bodies, [b"abcdefg"])
        self.assertEqual(rec.messages[0][1]["headers"], [
            ("transfer-encoding", "chunked"), ("x-checksum", "42"), ("x-more", "yes")])

    def test_bodiesDoNotAccumulate(self):
        # The original appended every chunked body to the previous ones.
        proto, rec, _ = connected()
        for page in (b"/1", b"/2", b"/3", b"/4"):
            proto.sendMessage(page)
        proto.dataReceived(CHUNKED + CHUNKED + NOTFOUND + OK)
        self.assertEqual(rec.bodies, [b"abcdefg", b"abcdefg", b"nope", b"hello"])
        self.assertEqual([a["status"] for _, a in rec.messages], [200, 200, 404, 200])
        self.assertEqual([a["page"] for _, a in rec.messages], ["/1", "/2", "/3", "/4"])
        self.assertEqual([a["request-index"] for _, a in rec.messages], [1, 2, 3, 4])

    def test_pipelinedResponsesArriveLater(self):
        proto, rec, _ = connected()
        proto.sendMessage(b"/1")
        proto.sendMessage(b"/2")
        proto.dataReceived(OK)
        self.assertEqual(rec.bodies, [b"hello"])
        proto.sendMessage(b"/3")
        proto.dataReceived(NOTFOUND + CHUNKED)
        self.assertEqual(rec.bodies, [b"hello", b"nope", b"abcdefg"])
        self.assertEqual([a["page"] for _, a in rec.messages], ["/1", "/2", "/3"])

    def test_informationalSkipped(self):
        proto, rec, _ = connected()
        proto.sendMessage(b"/")
        proto.dataReceived(b"HTTP/1.1 103 Early Hints\r\nLink: </s.css>\r\n\r\n" + OK)
        self.assertEqual(rec.bodies, [b"hello"])
        self.assertEqual(rec.messages[0][1]["status"], 200)

    def test_noContent(self):
        proto, rec, _ = connected()
        proto.sendMessage(b"/a")
        proto.sendMessage(b"/b")
        proto.dataReceived(b"HTTP/1.1 204 No Content\r\n\r\n" + OK)
        self.assertEqual(rec.bodies, [b"", b"hello"])

    def test_sendFromReceiver(self):
        # A receiver that asks for the next page while handling a response.
        proto, rec, transport = connected()
        rec.onMessage = lambda m, a: (proto.sendMessage(b"/next")
                                      if a["page"] == "/first" else None)
        proto.sendMessage(b"/first")
        transport.clear()
        proto.dataReceived(OK)
        self.assertEqual(transport.value(), request(b"/next", b"example.org"))
        proto.dataReceived(NOTFOUND)
        self.assertEqual([(m, a["page"]) for m, a in rec.messages],
                         [(b"hello", "/first"), (b"nope", "/next")])

    def checkSplits(self, pieces):
        stream = CHUNKED + OK + NOTFOUND
        proto, rec, transport = connected()
        for page in (b"/1", b"/2", b"/3"):
            proto.sendMessage(page)
        for piece in pieces(stream):
            proto.dataReceived(piece)
        self.assertEqual(rec.errors, [])
        self.assertEqual(rec.bodies, [b"abcdefg", b"hello", b"nope"])
        self.assertEqual(rec.messages[0][1]["headers"][-1], ("x-more", "yes"))
        self.assertFalse(transport.disconnecting)

    def test_everySplitPoint(self):
        n = len(CHUNKED + OK + NOTFOUND)
        for i in range(n + 1):
            self.checkSplits(lambda s: [s[:i], s[i:]])

    def test_byteByByte(self):
        self.checkSplits(lambda s: [s[i:i + 1] for i in range(len(s))])

    @hsettings(max_examples=100, deadline=None)
    @given(st.lists(st.integers(min_value=0, max_value=200), max_size=12))
    def test_randomSplits(self, cuts):
        def pieces(s):
            points = sorted(set(c % (len(s) + 1) for c in cuts))
            bounds = [0] + points + [len(s)]
            return [s[a:b] for a, b in zip(bounds, bounds[1:])]
        self.checkSplits(pieces)

    def test_bodyAtLimit(self):
        proto, rec, transport = connected(max_packet_size=5)
        proto.sendMessage(b"/")
        proto.dataReceived(OK)
        self.assertEqual(rec.bodies, [b"hello"])
        self.assertFalse(transport.disconnecting)

    def test_tooLargeCloses(self):
        proto, rec, transport = connected(max_packet_size=4)
        proto.sendMessage(b"/big", {"in-reply-to": "m9"})
        proto.sendMessage(b"/other")
        proto.dataReceived(OK + NOTFOUND)
        self.assertTrue(transport.disconnecting)
        self.assertEqual(rec.messages, [])
        self.assertEqual(len(rec.errors), 1)
        self.assertIn("larger than 4", rec.errors[0])
        peerClosed(proto)
        self.assertEqual(rec.errors[1], "connection closed with 2 requests unanswered")
        self.assertEqual([(m, a["status"], a["page"]) for m, a in rec.messages],
                         [(b"", 0, "/big"), (b"", 0, "/other")])
        self.assertEqual(rec.messages[0][1]["in-reply-to"], "m9")
        self.assertEqual(rec.messages[0][1]["reason"], "connection closed")
        self.assertIn("larger than 4", rec.messages[0][1]["error"])

    def test_tooLargeChunked(self):
        proto, rec, transport = connected(max_packet_size=6)
        proto.sendMessage(b"/")
        proto.dataReceived(CHUNKED)
        self.assertTrue(transport.disconnecting)
        self.assertEqual(rec.messages, [])

    def test_garbageFails(self):
        proto, rec, transport = connected()
        proto.sendMessage(b"/")
        proto.dataReceived(b"SSH-2.0-OpenSSH_9.6\r\n\r\n")
        self.assertTrue(transport.disconnecting)
        self.assertEqual(len(rec.errors), 1)
        self.assertIn("malformed response", rec.errors[0])
        proto.dataReceived(OK)  # ignored once failed
        self.assertEqual(rec.messages, [])
        peerClosed(proto)
        self.assertEqual([a["status"] for _, a in rec.messages], [0])
        self.assertIsNotNone(rec.reason)

    def test_badContentLengthFails(self):
        proto, rec, transport = connected()
        proto.sendMessage(b"/")
        proto.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: -3\r\n\r\n")
        self.assertTrue(transport.disconnecting)
        self.assertIn("malformed response", rec.errors[0])

    def test_unsolicitedFails(self):
        proto, rec, transport = connected()
        proto.dataReceived(OK)
        self.assertTrue(transport.disconnecting)
        self.assertEqual(len(rec.errors), 1)
        self.assertEqual(rec.messages, [])

    def test_extraResponseInTheSamePacketFails(self):
        """A second response in the packet of the only one asked for is bytes
        with no request in flight: logged, counted, closed (it used to raise
        IndexError from the reactor)."""
        proto, rec, transport = connected()
        proto.sendMessage(b"/")
        proto.dataReceived(OK + NOTFOUND)
        self.assertEqual(rec.bodies, [b"hello"])
        self.assertEqual(rec.errors, [f"{len(NOTFOUND)} bytes from the server with no "
                                      f"request in flight"])
        self.assertTrue(transport.disconnecting)
        proto.sendMessage(b"/later")
        peerClosed(proto)
        self.assertEqual([a["status"] for _, a in rec.messages], [200, 0])

    def test_closeDelimited(self):
        proto, rec, transport = connected()
        proto.sendMessage(b"/c")
        proto.dataReceived(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nbo")
        proto.dataReceived(b"dy")
        self.assertEqual(rec.messages, [])
        peerClosed(proto)
        self.assertEqual(rec.bodies, [b"body"])
        self.assertEqual(rec.messages[0][1]["status"], 200)
        self.assertEqual(rec.errors, [])

    def test_closeDelimitedCutByUs(self):
        # When we hang up, the end of file does not end the body.
        proto, rec, transport = connected()
        proto.sendMessage(b"/c")
        proto.dataReceived(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nbo")
        transport.loseConnection()
        peerClosed(proto)
        self.assertEqual([(m, a["status"]) for m, a in rec.messages], [(b"", 0)])
        self.assertEqual(rec.errors, ["connection closed with 1 request unanswered"])

    def test_connectionCloseHeader(self):
        proto, rec, transport = connected()
        proto.sendMessage(b"/1")
        proto.sendMessage(b"/2")
        proto.dataReceived(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nhi")
        self.assertEqual(rec.bodies, [b"hi"])
        self.assertTrue(transport.disconnecting)
        proto.sendMessage(b"/3")  # too late: reported with the others
        peerClosed(proto)
        self.assertEqual(rec.errors, ["connection closed with 2 requests unanswered"])
        self.assertEqual([(a["page"], a["status"]) for _, a in rec.messages],
                         [("/1", 200), ("/2", 0), ("/3", 0)])

    def test_http10KeepsNoConnection(self):
        proto, rec, transport = connected()
        proto.sendMessage(b"/")
        proto.dataReceived(b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nhi")
        self.assertEqual(rec.bodies, [b"hi"])
        self.assertTrue(transport.disconnecting)

    def test_truncatedBody(self):
        proto, rec, transport = connected()
        proto.sendMessage(b"/")
        proto.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhalf")
        peerClosed(proto)
        self.assertEqual(rec.errors, ["connection closed with 1 request unanswered"])
        self.assertEqual([(m, a["status"]) for m, a in rec.messages], [(b"", 0)])
        self.assertNotIn("error", rec.messages[0][1])

    def test_closedWhileIdle(self):
        proto, rec, transport = connected()
        proto.sendMessage(b"/")
        proto.dataReceived(OK)
        peerClosed(proto)
        self.assertEqual(rec.errors, [])
        self.assertEqual(len(rec.messages), 1)

    def test_sendAfterLost(self):
        proto, rec, transport = connected()
        peerClosed(proto)
        proto.sendMessage(b"/")
        self.assertEqual(transport.value(), b"")
        self.assertEqual(len(rec.errors), 1)


class RequestValidationTests(unittest.SynchronousTestCase):
    """Requests are written by hand, with the checks h11 made when it wrote
    them."""

    def test_badChannelHostRefused(self):
        for host in ["exa mple.org ", "a\tb "]:
            proto, rec, transport = connected(host=host)
            proto.sendMessage(b"/")
            self.assertEqual(transport.value(), b"", host)
            self.assertEqual(len(rec.errors), 1, host)
            self.assertIn("illegal Host header value", rec.errors[0])
            self.assertEqual(proto.inFlight, 0)


BLANKS = (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
          b"8\r\n\r\n\r\n\r\n\r\n\r\n6;name=\"a;b\"\r\nab\r\n\r\n\r\n"
          b"0\r\nX-T: 1\r\n\r\n")
EMPTY_LINES = b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\n\r\n\r\n\r\n\r\n"


class ResponseParserTests(unittest.SynchronousTestCase):
    """What the response parser (httptools) is held to: framing wherever the
    reads are cut, the limits, and what counts as malformed."""

    def malformed(self, response, fragment="malformed response", **kw):
        proto, rec, transport = connected(**kw)
        proto.sendMessage(b"/", {"in-reply-to": "m"})
        proto.sendMessage(b"/2")
        for piece in (response if isinstance(response, list) else [response]):
            proto.dataReceived(piece)
        self.assertTrue(transport.disconnecting)
        self.assertEqual(len(rec.errors), 1, rec.errors)
        self.assertIn(fragment, rec.errors[0])
        self.assertEqual(rec.messages, [])
        peerClosed(proto)
        self.assertEqual([(a["status"], a["page"]) for _, a in rec.messages],
                         [(0, "/"), (0, "/2")])
        self.assertIn(fragment, rec.messages[0][1]["error"])
        return rec.errors[0]

    def test_blankLinesInBodiesAtEverySplit(self):
        """Blank lines inside bodies, and chunk extensions and trailers,
        whatever the reads: the same responses, and the bytes that follow
        the last one counted exactly."""
        stream = BLANKS + EMPTY_LINES + OK
        extra = b"\r\n\r\nHTTP/1.1 200 OK\r\n\r\n"
        whole = stream + extra
        cases = [([whole], len(extra))]
        for i in range(1, len(whole)):
            # The bytes after the last response in the read that completes it.
            cases.append(([whole[:i], whole[i:]],
                          i - len(stream) if i > len(stream) else len(extra)))
        cases.append(([whole[i:i + 1] for i in range(len(whole))], 1))
        for pieces, leftover in cases:
            proto, rec, transport = connected()
            for page in (b"/1", b"/2", b"/3"):
                proto.sendMessage(page)
            for piece in pieces:
                proto.dataReceived(piece)
            cut = len(pieces[0])
            self.assertEqual(rec.bodies, [b"\r\n\r\n\r\n\r\nab\r\n\r\n", b"\r\n" * 4,
                                          b"hello"], cut)
            self.assertEqual(rec.messages[0][1]["headers"][-1], ("x-t", "1"), cut)
            self.assertEqual(rec.errors, [f"{leftover} bytes from the server with no "
                                          f"request in flight"], cut)
            self.assertTrue(transport.disconnecting)

    def test_chunkDataIsOnePiece(self):
        """Blank lines in a chunk's data do not cut it into pieces: 20000 of
        them in one chunk are one piece, not 20000."""
        data = b"\r\n\r\n" * 20000
        proto, rec, transport = connected()
        proto.sendMessage(b"/")
        proto.dataReceived(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                           + b"%x\r\n" % len(data) + data + b"\r\n0\r\n\r\n")
        self.assertEqual(rec.errors, [])
        self.assertEqual(rec.bodies, [data])

    def test_tooManyPieces(self):
        body = b"1\r\nx\r\n"
        head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        proto, rec, transport = connected()
        proto.sendMessage(b"/")
        proto.dataReceived(head + body * 10000 + b"0\r\n\r\n")
        self.assertEqual(rec.bodies, [b"x" * 10000])
        self.malformed(head + body * 10001 + b"0\r\n\r\n",
                       "response body in more than 10000 pieces")

    def test_malformedStatusLines(self):
        for line in [b"HTTP/1.1 2000 OK", b"HTTP/1.1 20 OK", b"HTTP/1.1 abc OK",
                     b"HTTP/1.1200 OK", b"HTTX/1.1 200 OK", b"http/1.1 200 OK",
                     b"HTTP/1 200 OK", b"200 OK"]:
            error = self.malformed(line + b"\r\nContent-Length: 0\r\n\r\n")
            self.assertTrue(error.startswith("malformed response: "), line)

    def test_malformedHeaders(self):
        for response in [
                b"HTTP/1.1 200 OK\r\nBad Name: x\r\n\r\n",
                b"HTTP/1.1 200 OK\r\nX: a\x00b\r\nContent-Length: 0\r\n\r\n",
                b"HTTP/1.1 200 OK\nContent-Length: 0\n\n",  # no CR
                b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nx",
                b"HTTP/1.1 200 OK\r\nContent-Length: 1x\r\n\r\nx",
                # Both framings: a smuggling attempt rather than a response.
                b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nx\r\n0\r\n\r\n"]:
            self.malformed(response)

    def test_onlyChunkedTransferEncoding(self):
        """llhttp would read a body in another coding up to the end of the
        connection; it is refused, as h11 refused it."""
        for coding in [b"gzip", b"gzip, chunked", b"identity"]:
            self.malformed(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: " + coding
                           + b"\r\n\r\n1\r\nx\r\n0\r\n\r\n",
                           "only Transfer-Encoding: chunked is supported")
        self.malformed(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n"
                       b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
                       "multiple Transfer-Encoding headers")
        proto, rec, transport = connected()
        proto.sendMessage(b"/")
        proto.dataReceived(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: Chunked\r\n\r\n"
                           b"1  \r\nx\r\n0\r\n\r\n")  # spaces after a size: allowed
        self.assertEqual(rec.messages[0][0], b"x")
        self.assertEqual(rec.messages[0][1]["headers"], [("transfer-encoding", "chunked")])

    def test_switchingProtocolsRefused(self):
        self.malformed(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                       b"Connection: Upgrade\r\n\r\n" + OK, "101 Switching Protocols")

    def test_informationalLimit(self):
        proto, rec, transport = connected()
        proto.sendMessage(b"/")
        proto.dataReceived(b"HTTP/1.1 100 Continue\r\n\r\n" * 10 + OK)
        self.assertEqual(rec.bodies, [b"hello"])
        self.malformed(b"HTTP/1.1 100 Continue\r\n\r\n" * 11 + OK,
                       "more than 10 informational responses before a response")

    def test_headerValuesTrimmed(self):
        proto, rec, transport = connected()
        proto.sendMessage(b"/")
        proto.dataReceived(b"HTTP/1.1 200 \r\nX-A:  a b \t\r\nX-B:\r\nContent-Length: 0\r\n\r\n")
        self.assertEqual(rec.messages[0][1]["headers"],
                         [("x-a", "a b"), ("x-b", ""), ("content-length", "0")])
        self.assertEqual(rec.messages[0][1]["reason"], "")

    def test_headerSectionLimit(self):
        lines = b"".join(b"X-%03d: %s\r\n" % (i, b"v" * 100) for i in range(140))
        proto, rec, transport = connected()
        proto.sendMessage(b"/")
        proto.dataReceived(b"HTTP/1.1 200 OK\r\n" + lines  # 15 KiB
                           + b"Content-Length: 2\r\n\r\nhi")
        self.assertEqual(rec.bodies, [b"hi"])
        big = b"HTTP/1.1 200 OK\r\n" + lines * 2 + b"Content-Length: 2\r\n\r\nhi"
        self.malformed(big, "header section larger than 16384 bytes")
        self.malformed([big[i:i + 1000] for i in range(0, len(big), 1000)],
                       "header section larger than 16384 bytes")
        self.malformed(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                       b"1\r\nx\r\n0\r\n" + lines * 2 + b"\r\n",
                       "trailer section larger than 16384 bytes")

    def test_endlessLines(self):
        """A header line, or a chunk extension, that never ends is not kept
        whole: it fails once 16 KiB of it have come."""
        for start in [b"HTTP/1.1 200 OK\r\nX-Endless: ",
                      b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1;e="]:
            proto, rec, transport = connected()
            proto.sendMessage(b"/")
            proto.dataReceived(start)
            for i in range(200):
                if transport.disconnecting:
                    break
                proto.dataReceived(b"a" * 1000)
            self.assertLess(i, 20)
            self.assertEqual(len(rec.errors), 1)
            self.assertIn("malformed response: more than 16384 bytes", rec.errors[0])

    def test_connectionCloseInTrailers(self):
        """llhttp reads no more after it: the connection is closed after the
        response, and the later requests are reported unanswered."""
        proto, rec, transport = connected()
        proto.sendMessage(b"/1")
        proto.sendMessage(b"/2")
        proto.dataReceived(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                           b"1\r\nx\r\n0\r\nConnection: close\r\n\r\n" + OK)
        self.assertEqual(rec.bodies, [b"x"])
        self.assertTrue(transport.disconnecting)
        peerClosed(proto)
        self.assertEqual(rec.errors, ["connection closed with 1 request unanswered"])

    def test_closeDelimitedTooLarge(self):
        self.malformed([b"HTTP/1.0 200 OK\r\n\r\n", b"x" * 6, b"x" * 6],
                       "response body larger than 10 bytes", max_packet_size=10)

    def test_receiverRaises(self):
        """A receiver that raises: the exception is the receiver's, and the
        rest of the packet is parsed with the next one."""
        proto, rec, transport = connected()
        for page in (b"/1", b"/2", b"/3"):
            proto.sendMessage(page)

        def explode(message, attributes):
            rec.onMessage = None
            raise ZeroDivisionError()

        rec.onMessage = explode
        self.assertRaises(ZeroDivisionError, proto.dataReceived, OK + CHUNKED)
        proto.dataReceived(NOTFOUND)
        self.assertEqual(rec.bodies, [b"hello", b"abcdefg", b"nope"])
        self.assertEqual(rec.errors, [])


# -- against real servers on loopback ------------------------------------------

class Chunked(resource.Resource):
    """Writes its body in several pieces without a length: HTTP/1.1 chunked."""

    isLeaf = True

    def __init__(self, pieces):
        super().__init__()
        self.pieces = pieces

    def render_GET(self, request):
        for piece in self.pieces:
            request.write(piece)
        request.finish()
        return server.NOT_DONE_YET


LARGE = bytes(range(256)) * 1200  # 307200 bytes


class TrackingSite(server.Site):
    """A Site that knows when each of its connections has gone."""

    def __init__(self, root):
        super().__init__(root)
        self.lost = []

    def buildProtocol(self, addr):
        channel = super().buildProtocol(addr)
        lost = defer.Deferred()
        self.lost.append(lost)
        original = channel.connectionLost

        def connectionLost(reason):
            original(reason)
            lost.callback(None)

        channel.connectionLost = connectionLost
        return channel


class RawServer(Protocol):
    """Answers the first request with canned bytes, then hangs up."""

    def __init__(self, answer, lost):
        self.answer = answer
        self.lostDeferred = lost
        self.received = b""

    def dataReceived(self, data):
        self.received += data
        if b"\r\n\r\n" in self.received and self.answer is not None:
            self.transport.write(self.answer)
            self.answer = None
            self.transport.loseConnection()

    def connectionLost(self, reason):
        self.lostDeferred.callback(None)


class LoopbackTests(unittest.TestCase):
    """The protocol on real sockets."""

    timeout = 10

    @defer.inlineCallbacks
    def connect(self, factory, serverLost, **kw):
        port = yield TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(factory)
        self.addCleanup(port.stopListening)
        rec = Recorder()
        proto = HttpClientProtocol(makeSettings(**kw), rec, host="127.0.0.1",
                                   port=port.getHost().port)
        yield connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port),
                              proto)

        def disconnect():
            proto.transport.loseConnection()
            return defer.gatherResults([rec.disconnected] + serverLost())

        self.addCleanup(disconnect)
        return proto, rec

    def site(self):
        root = resource.Resource()
        for i in range(4):
            root.putChild(b"cl%d" % i, static.Data(b"content-length page %d" % i,
                                                   "text/plain"))
            root.putChild(b"ch%d" % i, Chunked([b"chunk", b" page ", b"%d" % i, b"!"]))
        root.putChild(b"large", static.Data(LARGE, "application/octet-stream"))
        return TrackingSite(root)

    @defer.inlineCallbacks
    def test_pipelinedPages(self):
        site = self.site()
        proto, rec = yield self.connect(site, lambda: site.lost)
        pages = [b"/cl0", b"/ch0", b"/missing", b"/cl1", b"/ch1", b"/cl2", b"/ch2",
                 b"/large", b"/cl3", b"/ch3"]
        for n, page in enumerate(pages):
            proto.sendMessage(page, {"in-reply-to": "req-%d" % n})
        yield rec.waitForMessages(len(pages))
        self.assertEqual(rec.errors, [])
        expected = []
        for page in pages:
            if page.startswith(b"/cl"):
                expected.append(b"content-length page " + page[3:])
            elif page.startswith(b"/ch"):
                expected.append(b"chunk page " + page[3:] + b"!")
            elif page == b"/large":
                expected.append(LARGE)
        bodies = rec.bodies
        self.assertEqual([b for p, b in zip(pages, bodies) if p != b"/missing"], expected)
        attrs = [a for _, a in rec.messages]
        self.assertEqual([a["page"] for a in attrs], [p.decode() for p in pages])
        self.assertEqual([a["in-reply-to"] for a in attrs], ["req-%d" % n for n in range(10)])
        self.assertEqual([a["request-index"] for a in attrs], list(range(1, 11)))
        self.assertEqual([a["status"] for a in attrs],
                         [404 if p == b"/missing" else 200 for p in pages])
        self.assertIn(("transfer-encoding", "chunked"), attrs[1]["headers"])
        self.assertIn(("content-length", str(len(LARGE))), attrs[7]["headers"])
        self.assertEqual(len(site.lost), 1)  # all on one connection

    @defer.inlineCallbacks
    def test_tooLargeCloses(self):
        site = self.site()
        proto, rec = yield self.connect(site, lambda: site.lost, max_packet_size=100000)
        proto.sendMessage(b"/cl0")
        proto.sendMessage(b"/large", {"in-reply-to": "big"})
        proto.sendMessage(b"/cl1")
        yield rec.disconnected
        self.assertEqual(rec.bodies[0], b"content-length page 0")
        self.assertEqual([(a["page"], a["status"]) for _, a in rec.messages],
                         [("/cl0", 200), ("/large", 0), ("/cl1", 0)])
        self.assertEqual(rec.messages[1][1]["in-reply-to"], "big")
        self.assertIn("larger than 100000", rec.errors[0])
        self.assertEqual(rec.errors[1], "connection closed with 2 requests unanswered")

    def rawServer(self, answer):
        lost = []

        def build():
            d = defer.Deferred()
            lost.append(d)
            return RawServer(answer, d)

        return Factory.forProtocol(build), lambda: lost

    @defer.inlineCallbacks
    def test_closeDelimited(self):
        factory, lost = self.rawServer(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nbody"
                                       + b"x" * 5000)
        proto, rec = yield self.connect(factory, lost)
        proto.sendMessage(b"/", {"in-reply-to": "c"})
        yield rec.disconnected
        self.assertEqual(rec.errors, [])
        self.assertEqual(rec.bodies, [b"body" + b"x" * 5000])
        self.assertEqual(rec.messages[0][1]["status"], 200)
        self.assertEqual(rec.messages[0][1]["in-reply-to"], "c")

    @defer.inlineCallbacks
    def test_garbage(self):
        factory, lost = self.rawServer(b"\x00\x01 this is not http\r\n\r\n")
        proto, rec = yield self.connect(factory, lost)
        proto.sendMessage(b"/")
        yield rec.disconnected
        self.assertIn("malformed response", rec.errors[0])
        self.assertEqual([a["status"] for _, a in rec.messages], [0])
