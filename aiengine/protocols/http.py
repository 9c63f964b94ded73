"""The ``http`` protocol: the client side of HTTP/1.1 for outbound channels.

A message written to the channel is the address of a page; the protocol sends
``GET`` for it and delivers the response body, with status and headers as
attributes.  Parsing and serialising are h11's.

Pipelining: every request is written as soon as it is sent, while earlier
responses are still outstanding.  h11 models one request/response cycle at a
time, so two kinds of h11 connection are used:

* each request is serialised by its own throwaway client ``Connection``
  (h11 offers no public serialiser, and a connection cannot serialise a
  second request before the first response has been parsed);
* responses are parsed by one long-lived client ``Connection``.  Before it
  parses the response to the request at the head of the in-flight FIFO, that
  request is sent into it again (the bytes it returns are dropped: they were
  already written), because h11 pairs each response with a request it has
  seen.  After each complete response the cycle is restarted with
  ``start_next_cycle()`` and the next request is fed.

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

import h11

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

_SCHEME = re.compile(rb"^([A-Za-z][A-Za-z0-9+.\-]*)://")
# Control characters in an address are a mistake or an injection attempt; they
# are refused rather than encoded.
_CONTROL = re.compile(rb"[\x00-\x1f\x7f]")
# Spaces and non-ASCII bytes are percent-encoded, as a browser would.
_ENCODE = re.compile(rb"[ \x80-\xff]")


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
    """A request in flight: what the caller asked for and what went out."""

    __slots__ = ("page", "index", "attributes", "event")

    def __init__(self, page, index, attributes, event):
        self.page = page
        self.index = index
        self.attributes = attributes
        self.event = event  # the h11.Request, fed again to the parser


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
        self._parser = h11.Connection(our_role=h11.CLIENT)
        self._inflight = deque()  # of _Request, oldest first
        self._fed = False  # the head of _inflight has been sent into _parser
        self._sent = 0  # requests sent on this connection
        self._response = None  # the h11.Response being received
        self._body = []
        self._bodySize = 0
        self._informational = 0  # 1xx responses before the current response
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
            event = self._buildRequest(address)
            data = self._serialise(event)
        except (InvalidAddress, h11.LocalProtocolError) as e:
            self.fail(f"cannot request {page!r}: {e}", close=False)
            return
        self._sent += 1
        self._inflight.append(_Request(page, self._sent, dict(attributes or {}), event))
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
        self._feedNext()

    def _buildRequest(self, address: bytes) -> h11.Request:
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
        return h11.Request(method="GET", target=target, headers=[
            ("Host", host),
            ("User-Agent", USER_AGENT),
            ("Accept", "*/*"),
        ])

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

    @staticmethod
    def _serialise(event: h11.Request) -> bytes:
        writer = h11.Connection(our_role=h11.CLIENT)
        return writer.send(event) + writer.send(h11.EndOfMessage())

    def _feedNext(self):
        """Let the parser expect the response to the oldest unparsed request."""
        if (not self._fed and self._inflight
                and self._parser.our_state is h11.IDLE
                and self._parser.their_state is h11.IDLE):
            self._parser.send(self._inflight[0].event)
            self._parser.send(h11.EndOfMessage())
            self._fed = True

    # -- inbound ------------------------------------------------------------

    def framedDataReceived(self, data):
        if self._closing or not data:
            # (h11 takes empty data for the end of file.)
            return
        if not self._fed:
            # h11 would happily parse a response nobody asked for.
            self.fail(f"{len(data)} bytes from the server with no request in flight")
            return
        self._parser.receive_data(data)
        self._processEvents()

    def _processEvents(self, eof=False):
        while not self._closing:
            if not self._fed:
                # No request expects a response: what is left of the packet
                # was not asked for (h11 would parse it anyway).
                leftover = len(self._parser.trailing_data[0])
                if leftover:
                    self.fail(f"{leftover} bytes from the server with no request in "
                              f"flight")
                return
            try:
                event = self._parser.next_event()
            except h11.RemoteProtocolError as e:
                if not eof:
                    self.fail(f"malformed response: {e}")
                # At end of file it is a response cut short: its request is
                # reported unanswered with the others.
                return
            if event is h11.NEED_DATA or event is h11.PAUSED:
                # PAUSED cannot last: a cycle is restarted as soon as it ends.
                return
            if isinstance(event, h11.InformationalResponse):
                self._informational += 1
                if self._informational > MAX_INFORMATIONAL:
                    self.fail(f"more than {MAX_INFORMATIONAL} informational responses "
                              f"before a response")
                    return
                continue
            if isinstance(event, h11.Response):
                self._response = event
                self._body = []
                self._bodySize = 0
                self._informational = 0
            elif isinstance(event, h11.Data):
                self._bodySize += len(event.data)
                if self._bodySize > self.settings.max_packet_size:
                    self.fail(f"response body larger than {self.settings.max_packet_size}"
                              " bytes")
                    return
                self._body.append(bytes(event.data))
                if len(self._body) > MAX_BODY_PIECES:
                    self.fail(f"response body in more than {MAX_BODY_PIECES} pieces")
                    return
            elif isinstance(event, h11.EndOfMessage):
                self._responseComplete(event)
            elif isinstance(event, h11.ConnectionClosed):
                return

    def fail(self, description, close=True):
        """Report a protocol error (see :meth:`FramingProtocol.fail`); when it
        closes the connection, nothing more is parsed and requests still in
        flight carry ``description`` as their ``error`` attribute."""
        if close:
            self._closing = True
            if self._failure is None:
                self._failure = description
        super().fail(description, close)

    def _responseComplete(self, end):
        request = self._inflight.popleft()
        self._fed = False
        response, body = self._response, b"".join(self._body)
        self._response, self._body, self._bodySize = None, [], 0
        headers = [(n.decode("latin-1"), v.decode("latin-1"))
                   for n, v in list(response.headers) + list(end.headers)]
        attributes = dict(request.attributes)
        attributes.update({
            "status": response.status_code,
            "reason": response.reason.decode("latin-1"),
            "headers": headers,
            "page": request.page,
            "request-index": request.index,
        })
        if self._parser.our_state is h11.MUST_CLOSE or \
                self._parser.their_state is h11.MUST_CLOSE:
            # "Connection: close", or an HTTP/1.0 server: this was the last one.
            self._closing = True
            if self.transport is not None and not self._lost:
                self.transport.loseConnection()
        elif self._parser.their_state is h11.DONE:
            self._parser.start_next_cycle()
            self._feedNext()
        self.deliver(body, attributes)

    def connectionLost(self, reason):
        self._lost = True
        # The server's end of file completes a close-delimited body.  When the
        # close was ours (transport.disconnecting), the end of file says
        # nothing about the body, which is then reported unanswered.
        if (not self._closing and self._fed
                and not getattr(self.transport, "disconnecting", False)):
            self._parser.receive_data(b"")
            self._processEvents(eof=True)
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
