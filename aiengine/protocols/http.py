"""The ``http`` protocol: the client side of HTTP/1.1 for outbound channels.

A message written to the channel is the address of a page; the protocol sends
``GET`` for it and delivers the response body, with status and headers as
attributes.  Responses are parsed by httptools (llhttp, in C), in its strict
mode; requests are written here (they are always the same three headers).

Pipelining: every request is written as soon as it is sent, while earlier
responses are still outstanding, and the responses are matched, in order, to
the requests in flight.  llhttp parses whatever it is given and cannot say
where in it a message ended, so the data is fed in segments, each ending where
the response being parsed may end: after a blank line (``CRLF CRLF``) for a
header section (a response without a body ends there), at the end of a
``Content-Length`` body, and after the trailers of a chunked body (whose
chunks are skipped by their sizes, so that blank lines in their data do not
cut segments).  A segment therefore completes at most one response, at its
very end; the response is delivered before the next segment is parsed, and
whatever follows the response to the last request in flight is counted
exactly as bytes nobody asked for.

Every request that is sent gets exactly one delivered message: its response,
or, if the connection goes before the response is complete, an empty body with
``status`` 0 and ``reason`` "connection closed" (the receiver also gets one
``protocolError`` naming how many were left unanswered).  Callers correlate
responses with requests through the attributes they passed to
:meth:`HttpClientProtocol.sendMessage`, which are copied into the response's.
"""

from __future__ import annotations

import re
from collections import deque
from urllib.parse import urlsplit

import httptools

import aiengine
from aiengine.protocols.base import FramingProtocol

__all__ = ["HttpClientProtocol", "InvalidAddress", "USER_AGENT", "hostHeader"]

#: the User-Agent header of every request
USER_AGENT = "aiengine/" + aiengine.__version__
#: longest page address, in bytes (nginx's default for a request line is 8 KiB)
MAX_ADDRESS = 8192
#: informational (1xx) responses allowed before a response
MAX_INFORMATIONAL = 10
#: body pieces (chunks, or reads of a body) allowed in one response: a body
#: cut into 1-byte chunks costs a Python event per byte
MAX_BODY_PIECES = 10000
#: largest header section (status line and header lines), and largest
#: trailer section, of a response; also the most bytes parsed in a row without
#: a complete header, body piece or chunk (an endless header line, chunk
#: extension...).  16 KiB, as h11's and Node's default.
MAX_HEAD_SIZE = 16384

_SCHEME = re.compile(rb"^([A-Za-z][A-Za-z0-9+.\-]*)://")
# Control characters in an address are a mistake or an injection attempt; they
# are refused rather than encoded.
_CONTROL = re.compile(rb"[\x00-\x1f\x7f]")
# Spaces and non-ASCII bytes are percent-encoded, as a browser would.
_ENCODE = re.compile(rb"[ \x80-\xff]")
# What a request may carry (RFC 9112's request-target, RFC 9110's field-value;
# as h11 checked them when it wrote the requests).
_TARGET = re.compile(rb"[\x21-\x7e]+")
_FIELD_VALUE = re.compile(rb"(?:[^\x00\s]+(?:[ \t]+[^\x00\s]+)*)?")
_REQUEST_END = (b"\r\nUser-Agent: " + USER_AGENT.encode("ascii")
                + b"\r\nAccept: */*\r\n\r\n")

_BLANK_LINE = b"\r\n\r\n"
# The framing of the response being parsed.
_HEAD = 0  # its header section is not complete (or no response has begun)
_LENGTH = 1  # a Content-Length body
_CHUNKED = 2  # a chunked body, and its trailers
_CLOSE = 3  # a body that the end of the connection ends
_NONE = 4  # no body (1xx, 204, 304): the response is complete


class InvalidAddress(ValueError):
    """A page address that cannot become a request."""


def _percentEncode(data: bytes) -> bytes:
    return _ENCODE.sub(lambda m: b"%%%02X" % m.group(0)[0], data)


def hostHeader(host: str, port=None) -> str:
    """The Host header value for ``host`` and ``port``: IPv6 literals in
    brackets, the port left out when it is 80 or unknown."""
    if ":" in host and not host.startswith("["):
        host = "[" + host + "]"
    if port is not None and int(port) != 80:
        return f"{host}:{int(port)}"
    return host


class _Request:
    """A request in flight: what the caller asked for."""

    __slots__ = ("page", "index", "attributes")

    def __init__(self, page, index, attributes):
        self.page = page
        self.index = index
        self.attributes = attributes


class _Stop(Exception):
    """Raised by a parser callback to stop the parser; the reason is the
    reader's ``failure``."""


class _ResponseReader:
    """The httptools callbacks: the responses of one connection, in order.

    Complete responses are appended to ``done`` as ``(status, reason,
    headers, body pieces, last)`` (``last``: the connection ends after it).
    A callback that finds a limit broken sets ``failure`` and stops the
    parser, which cannot be used again.
    """

    def __init__(self, maxBody):
        self.parser = httptools.HttpResponseParser(self)
        # Whitespace after a chunk size: h11 allowed it, as "some servers in
        # the wild" send it.  llhttp is otherwise strict: a line ends with
        # CRLF, which the segments rely on.
        self.parser.set_dangerous_leniencies(lenient_spaces_after_chunk_size=True)
        self.maxBody = maxBody
        self.done = []
        self.failure = None
        self.informational = 0  # 1xx responses before the current response
        self.quiet = 0  # bytes parsed in a row without a callback
        self.stirred = False  # a callback ran (set by every one; cleared by the framer)
        self._reset()

    def _reset(self):
        self.framing = _HEAD
        self.status = 0
        self.reason = b""
        self.headers = []
        self.headSize = 0  # of the header section, then of the trailer section
        self.length = None  # Content-Length
        self.chunked = False
        self.last = False  # no response follows this one
        self.body = []
        self.bodySize = 0
        self.pieces = 0
        # Where the chunks of a chunked body are (kept by the framer, which
        # must know where the body can end before llhttp parses it):
        self.chunkLeft = 0  # bytes of the current chunk's data and CRLF not parsed
        self.sizeLine = b""  # the start of a chunk-size line cut by the end of a read
        self.trailers = False  # the last chunk has been seen

    def stop(self, description):
        self.failure = description
        raise _Stop(description)

    # -- httptools callbacks ----------------------------------------------------

    def on_status(self, data):
        self.stirred = True
        self.reason += data  # more than one call when a read cuts it
        self.headSize += len(data)
        if self.headSize > MAX_HEAD_SIZE:
            self.stop(f"malformed response: header section larger than "
                      f"{MAX_HEAD_SIZE} bytes")

    def on_header(self, name, value):
        self.stirred = True
        name = name.lower()
        value = value.rstrip(b" \t")  # llhttp drops the leading whitespace only
        self.headSize += len(name) + len(value) + 4
        if self.headSize > MAX_HEAD_SIZE:
            self.stop(f"malformed response: {'trailer' if self.framing else 'header'}"
                      f" section larger than {MAX_HEAD_SIZE} bytes")
        if self.framing == _HEAD:
            if name == b"content-length":
                # llhttp has checked it: digits, and only one.
                try:
                    self.length = int(value)
                except ValueError:
                    self.stop("malformed response: bad Content-Length")
            elif name == b"transfer-encoding":
                # llhttp would read other codings as a body up to the end of
                # the connection; h11 refused them, and so do we.
                if self.chunked:
                    self.stop("malformed response: multiple Transfer-Encoding headers")
                if value.lower() != b"chunked":
                    self.stop("malformed response: only Transfer-Encoding: chunked "
                              "is supported")
                self.chunked = True
                value = b"chunked"  # as h11 gave it
        self.headers.append((name.decode("latin-1"), value.decode("latin-1")))

    def on_headers_complete(self):
        self.stirred = True
        parser = self.parser
        status = self.status = parser.get_status_code()
        if status < 200:
            if status == 101:
                self.stop("malformed response: 101 Switching Protocols, and no "
                          "protocol switch was asked for")
            self.informational += 1
            if self.informational > MAX_INFORMATIONAL:
                self.stop(f"more than {MAX_INFORMATIONAL} informational responses "
                          f"before a response")
            self.framing = _NONE
            return
        self.informational = 0
        self.headSize = 0
        # After "Connection: close" (llhttp reads the tokens), or from an
        # HTTP/1.0 server (even with keep-alive, as h11 did), no response
        # follows.  (Decided on the headers: trailers do not count.)
        self.last = not parser.should_keep_alive() or parser.get_http_version() < "1.1"
        if status == 204 or status == 304:
            self.framing = _NONE
        elif self.chunked:
            self.framing = _CHUNKED
        elif self.length is not None:
            self.framing = _LENGTH
        else:
            self.framing = _CLOSE
            self.last = True  # the end of the connection ends the body

    def on_body(self, data):
        self.stirred = True
        size = self.bodySize + len(data)
        if size > self.maxBody:
            self.stop(f"response body larger than {self.maxBody} bytes")
        self.bodySize = size
        self.body.append(data)
        self.pieces += 1
        if self.pieces > MAX_BODY_PIECES:
            self.stop(f"response body in more than {MAX_BODY_PIECES} pieces")

    def on_message_complete(self):
        self.stirred = True
        if self.status >= 200:
            if self.framing == _CHUNKED and not self.last:
                # "Connection: close" in the trailers: llhttp reads no more.
                self.last = not self.parser.should_keep_alive()
            self.done.append((self.status, self.reason, self.headers, self.body,
                              self.last))
        self._reset()


class HttpClientProtocol(FramingProtocol):
    """HTTP/1.1 client framing: page addresses out, response bodies in.

    :param settings: the :class:`~aiengine.config.ProtocolSettings`;
        ``max_packet_size`` limits each response body.
    :param receiver: the :class:`~aiengine.protocols.base.IMessageReceiver`.
    :param host: the channel's host, for the Host header of origin-form
        requests (the peer address when not given).
    :param port: the channel's port, likewise.
    """

    def __init__(self, settings, receiver, log=None, host=None, port=None):
        super().__init__(settings, receiver, log)
        self.host = host
        self.port = port
        self._reader = _ResponseReader(settings.max_packet_size)
        self._inflight = deque()  # of _Request, oldest first
        self._sent = 0  # requests sent on this connection
        self._tail = b""  # the last 3 bytes parsed: a blank line may straddle reads
        self._backlog = b""  # bytes not parsed yet (a receiver raised)
        self._closing = False  # no more data is parsed
        self._failure = None  # why we closed, when a protocol error did it
        self._lost = False

    @property
    def inFlight(self) -> int:
        """Requests sent and not yet answered."""
        return len(self._inflight)

    # -- outbound -----------------------------------------------------------

    def sendMessage(self, message, attributes=None):
        """Request the page at address ``message`` (bytes).

        ``attributes`` (a dict or ``None``) are copied into the attributes of
        the message that answers this request.  An address that cannot be
        requested is reported with ``protocolError`` and nothing is sent or
        delivered for it.
        """
        address = bytes(message).strip()
        page = address.decode("utf-8", "backslashreplace")
        if self._lost:
            self.fail(f"not connected; request for {page!r} dropped", close=False)
            return
        try:
            data = self._buildRequest(address)
        except InvalidAddress as e:
            self.fail(f"cannot request {page!r}: {e}", close=False)
            return
        self._sent += 1
        self._inflight.append(_Request(page, self._sent, dict(attributes or {})))
        if self._showMessages:
            self.log.info("message out ({n} bytes): {message!r}", n=len(address),
                          message=address)
        if self._closing:
            # Written to a closing connection, it would be lost; it stays in
            # flight so that connectionLost reports it unanswered.
            return
        if self._showPackets:
            self.log.info("packet out ({n} bytes): {data!r}", n=len(data), data=data)
        self.transport.write(data)

    def _buildRequest(self, address: bytes) -> bytes:
        """The bytes of ``GET`` for ``address``."""
        if not address:
            raise InvalidAddress("empty address")
        if len(address) > MAX_ADDRESS:
            raise InvalidAddress(f"address longer than {MAX_ADDRESS} bytes "
                                 f"({len(address)})")
        if _CONTROL.search(address):
            raise InvalidAddress("control characters in address")
        address = _percentEncode(address)
        scheme = _SCHEME.match(address)
        if scheme:
            if scheme.group(1).lower() != b"http":
                raise InvalidAddress(
                    f"scheme {scheme.group(1).decode('ascii')!r} not supported"
                    " (the channel speaks plain http)")
            target, host = self._absoluteForm(address)
        else:
            target = address if address.startswith(b"/") else b"/" + address
            target = target.split(b"#", 1)[0]
            host = self._channelHost().encode("ascii")
        if not _TARGET.fullmatch(target):
            raise InvalidAddress("illegal target characters")
        if not _FIELD_VALUE.fullmatch(host):
            raise InvalidAddress(f"illegal Host header value {host!r}")
        return b"GET " + target + b" HTTP/1.1\r\nHost: " + host + _REQUEST_END

    @staticmethod
    def _absoluteForm(address: bytes):
        url = urlsplit(address.decode("ascii"))
        try:
            url.port  # noqa: B018 -- raises on a malformed port
        except ValueError as e:
            raise InvalidAddress(str(e)) from None
        if not url.hostname:
            raise InvalidAddress("no host in URL")
        if "@" in url.netloc:
            raise InvalidAddress("credentials in URL")
        target = "http://" + url.netloc + (url.path or "/")
        if url.query:
            target += "?" + url.query
        return target.encode("ascii"), url.netloc.encode("ascii")

    def _channelHost(self) -> str:
        host, port = self.host, self.port
        if host is None and self.transport is not None:
            peer = self.transport.getPeer()
            host, port = getattr(peer, "host", None), getattr(peer, "port", None)
        if not host:
            raise InvalidAddress("no host known for an origin-form request")
        return hostHeader(host, port)

    # -- inbound ------------------------------------------------------------

    def framedDataReceived(self, data):
        if self._closing or not data:
            return
        if self._backlog:
            data, self._backlog = self._backlog + data, b""
        if not self._inflight:
            self.fail(f"{len(data)} bytes from the server with no request in flight")
            return
        self._parse(data)

    def _parse(self, data):
        """Feed ``data`` to the parser segment by segment (see the module's
        docstring), delivering each response as it completes."""
        reader = self._reader
        feed = reader.parser.feed_data
        n = len(data)
        pos = 0
        view = None
        while True:
            framing = reader.framing
            if framing == _LENGTH:
                end = pos + reader.length - reader.bodySize
                if end > n or end <= pos:
                    end = n
            elif framing == _CLOSE:
                end = n
            elif framing == _CHUNKED:
                end = self._chunkedEnd(data, pos, n)
            else:
                end = self._blankLineEnd(data, pos - 3)
            if pos == 0 and end == n:
                segment = data
            else:
                if view is None:
                    view = memoryview(data)
                segment = view[pos:end]
            reader.stirred = False
            failure = None
            try:
                feed(segment)
            except httptools.HttpParserCallbackError as e:
                if reader.failure is None:
                    raise (e.__context__ or e)  # a bug of ours: not the server's fault
                failure = reader.failure
            except (httptools.HttpParserError, httptools.HttpParserUpgrade) as e:
                failure = f"malformed response: {e}"
            if reader.stirred:
                reader.quiet = 0
            else:
                reader.quiet += end - pos
                if reader.quiet > MAX_HEAD_SIZE and failure is None:
                    failure = (f"malformed response: more than {MAX_HEAD_SIZE} bytes "
                               f"without a complete header line or chunk")
            pos = end
            if reader.done:
                try:
                    self._responsesComplete()
                except BaseException:
                    # The receiver raised: what is not parsed yet stays for later.
                    self._backlog = data[pos:]
                    self._tail = (self._tail + data[:pos])[-3:]
                    raise
            if failure is not None:
                if not self._closing:
                    self.fail(failure)
                return
            if self._closing:
                # "Connection: close", or a receiver that failed us: the rest
                # of the packet is not read.
                return
            if pos >= n:
                break
            if not self._inflight:
                self.fail(f"{n - pos} bytes from the server with no request in flight")
                return
        self._tail = data[-3:] if n >= 3 else (self._tail + data)[-3:]

    def _blankLineEnd(self, data, start):
        """Where in ``data`` the first blank line (CRLF CRLF) that begins at
        ``start`` or later ends, or ``len(data)`` when there is none.
        ``start`` may be -3 to -1: the last bytes parsed before ``data``."""
        if start < 0:
            tail = self._tail[start:]
            found = (tail + data[:3]).find(_BLANK_LINE)
            if found >= 0:
                return found + 4 - len(tail)
            start = 0
        found = data.find(_BLANK_LINE, start)
        return len(data) if found < 0 else found + 4

    def _chunkedEnd(self, data, pos, n):
        """Where the segment from ``pos`` ends in a chunked body: at the end
        of the body (after the trailers), or of ``data``.  The chunks are
        skipped by their sizes: their data may hold blank lines."""
        reader = self._reader
        if reader.trailers:
            return self._blankLineEnd(data, pos - 3)
        left = reader.chunkLeft
        p = pos
        while True:
            if left:
                if p + left >= n:
                    reader.chunkLeft = left - (n - p)
                    return n
                p += left
                left = 0
            lf = data.find(b"\n", p)
            if lf < 0:
                reader.chunkLeft = 0
                reader.sizeLine += data[p:]
                return n
            line = data[p:lf]
            if reader.sizeLine:
                line, reader.sizeLine = reader.sizeLine + line, b""
            try:
                size = int(line, 16)  # (it ignores the CR)
            except ValueError:
                try:
                    # An extension, or (lenient) spaces.
                    size = int(line.split(b";", 1)[0], 16)
                except ValueError:
                    # llhttp refuses it too: where the segment ends no longer
                    # matters.
                    reader.chunkLeft = 0
                    return n
            if size == 0:
                # The last chunk; the trailers end at the first blank line,
                # which begins with this line's CRLF.
                reader.chunkLeft = 0
                reader.trailers = True
                return self._blankLineEnd(data, lf - 1)
            left = size + 2  # the data, and its CRLF
            p = lf + 1

    def fail(self, description, close=True):
        """Report a protocol error (see :meth:`FramingProtocol.fail`); when it
        closes the connection, nothing more is parsed and requests still in
        flight carry ``description`` as their ``error`` attribute."""
        if close:
            self._closing = True
            if self._failure is None:
                self._failure = description
        super().fail(description, close)

    def _responsesComplete(self):
        done = self._reader.done
        while done:
            if self._closing:
                # A receiver failed us: these requests are reported unanswered.
                done.clear()
                return
            if not self._inflight:
                done.clear()
                self.fail("a response from the server with no request in flight")
                return
            status, reason, headers, body, last = done.pop(0)
            request = self._inflight.popleft()
            attributes = dict(request.attributes)
            attributes.update({
                "status": status,
                "reason": reason.decode("latin-1"),
                "headers": headers,
                "page": request.page,
                "request-index": request.index,
            })
            if last:
                # "Connection: close", or an HTTP/1.0 server: this was the last one.
                self._closing = True
                if self.transport is not None and not self._lost:
                    self.transport.loseConnection()
            self.deliver(b"".join(body), attributes)

    def connectionLost(self, reason):
        self._lost = True
        # The server's end of file completes a close-delimited body.  When the
        # close was ours (transport.disconnecting), the end of file says
        # nothing about the body, which is then reported unanswered.
        if (not self._closing and self._inflight
                and not getattr(self.transport, "disconnecting", False)):
            if self._backlog:
                data, self._backlog = self._backlog, b""
                self._parse(data)
            reader = self._reader
            if (not self._closing and self._inflight and reader.framing == _CLOSE
                    and reader.failure is None):
                reader.on_message_complete()
                self._responsesComplete()
        self._closing = True
        self._reportUnanswered()
        super().connectionLost(reason)

    def _reportUnanswered(self):
        if not self._inflight:
            return
        n = len(self._inflight)
        self.receiver.protocolError(
            f"connection closed with {n} request{'s' if n != 1 else ''} unanswered")
        self.log.warn("connection closed with {n} requests unanswered", n=n)
        while self._inflight:
            request = self._inflight.popleft()
            attributes = dict(request.attributes)
            attributes.update({
                "status": 0,
                "reason": "connection closed",
                "headers": [],
                "page": request.page,
                "request-index": request.index,
            })
            if self._failure is not None:
                attributes["error"] = self._failure
            self.deliver(b"", attributes)
