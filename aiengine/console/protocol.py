"""The XML-call console: a Twisted protocol serving ``<xmlcall>`` requests.

Wire format
===========

Requests: one XML document each, cut with
:class:`~aiengine.protocols.xmlsplit.XmlSplitter`.  A request is complete as
soon as its root element closes, so a person at telnet types the document
and presses Enter; whitespace and 0x01 bytes between documents are skipped,
so the original 0x01-framed clients work unchanged.

Replies and events: each is one XML element serialised as UTF-8 without an
XML declaration (indented for a person), followed by exactly the two bytes
``b"\\n\\x01"`` (:data:`~aiengine.console.results.TERMINATOR`)::

    <xmlcallresult requestId="REQ-1" status="OK">\\n
      <pong/>\\n
    </xmlcallresult>\\n\\x01

A 0x01-framed client reads up to 0x01 (and strips the whitespace around the
document); a person sees the document end its line, 0x01 being invisible.
0x01 never occurs inside a document: text that XML cannot carry is sent
base64-encoded.

Every request gets exactly one ``<xmlcallresult>``: ``requestId`` and
``name`` copied from the request when present, ``status="OK"`` with the
method's result as children, or ``status="Exception"`` with an
``<exception>`` child holding the message.  Malformed XML gets an Exception
(with the ``requestId`` and ``name`` recovered from the raw bytes when they
can be) and the connection stays usable; only a document larger than
``maxSize`` closes the connection, after its Exception answer.

Calls run concurrently: a method that returns a Deferred is answered when
it fires, so answers may come out of request order; one that returns at once
is answered at once.  Requests and answers are logged only with the
listener's ``protocol.showmessages``.
Memory stays bounded: while a connection has ``maxPending`` calls running,
further requests wait (at most ``maxSize`` bytes of them; more closes the
connection) and reading goes on, so that the peer's close is always seen;
while its peer does not read our writes (the transport's write buffer is
full), the console stops reading from it.  Requests are parsed with the
rules of :mod:`aiengine.protocols.xmlsplit` (no DOCTYPE, no entities, size
and depth limits).  A connection that sends ``maxMalformed`` malformed
requests in a row, or more than ``maxSize`` bytes without a document end or
a line end, gets an Exception answer and is closed.

Authentication
==============

With a ``secret`` (bytes) a connection starts unauthenticated: every call
but ``Engine.login(secret)`` answers Exception "not authenticated".  A right
secret answers ``<authenticated required="true"/>``; a wrong one answers
Exception "authentication failed" and closes the connection.  Secrets are
compared in constant time (HMAC-SHA256 digests with
``hmac.compare_digest``) and never logged: a login request is logged
without its parameters, and malformed requests are logged without their
bytes while the connection is unauthenticated or when they mention
``login``.  Without a secret, ``Engine.login`` answers
``<authenticated required="false"/>``: nothing to do.

Logging
=======

What a client gets wrong (malformed XML, an unknown class, method or
parameter, a call before login, any :class:`CallError` a method raises)
is its business: answered with an Exception and logged at info, one line,
no traceback; a wait that ran out as its caller allowed
(:class:`CallTimeout`) only at debug.  A method that raises anything else
is a bug: logged as an error with its traceback.  A connection logs a line
when it opens and one when it closes (peer, duration, calls).
"""

from __future__ import annotations

import itertools
import re
from collections import deque
from copy import deepcopy
from time import monotonic

from lxml import etree
from twisted.internet.defer import CancelledError, Deferred, DeferredList, fail
from twisted.internet.interfaces import IHalfCloseableProtocol, IPushProducer
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import LogLevel
from twisted.python.failure import Failure
from zope.interface import implementer

from aiengine.auth import SharedSecret
from aiengine.auth import LoginThrottle
from aiengine.logs import PeerSafeLogger, peerHost, peerOf
from aiengine.console.interfaces import Call, CallError
from aiengine.console.results import (TERMINATOR, duration, frame, messageElement,
                                      plural, resultElement, xmlSafe)
from aiengine.protocols.xmlsplit import Document, Malformed, TooLarge, XmlSplitter

__all__ = ["ConsoleProtocol", "ConsoleFactory", "TERMINATOR", "parseParameters",
           "prepareCall", "okResult", "failureMessage", "logCallError", "describeCall",
           "callLabel"]

# Recovers requestId/name from a malformed request's root start tag so that a
# program waiting for its answer gets it under the right id.
_ROOT_TAG = re.compile(rb"<xmlcall\b[^<>]*", re.S)
_ATTRIBUTE = {key: re.compile(rb"\s" + key.encode() + rb"""\s*=\s*(["'])([^<"']*)\1""")
              for key in ("requestId", "name")}

#: How much of a request or answer a debug log line shows.
_LOG_BYTES = 2000
#: Bytes handed to the splitter at once, so that reading stops soon after a
#: connection is condemned (too many malformed requests).
_SLICE = 4096
#: The only call an unauthenticated connection may make.
LOGIN = ("Engine", "login")
#: What a method returns when it answers at once (see ``_resultChildren``).
_IMMEDIATE = (etree._Element, list, tuple, type(None))


#: The last event serialised, as ``(message, bytes)``: every console
#: subscriber of a topic is handed the same message in turn, and shares one
#: serialisation of it (and one bytes object in every transport's buffer).
_lastEvent = (None, b"")


def _eventBytes(message) -> bytes:
    """``<xmlevent>`` for ``message``, framed; made once per message."""
    global _lastEvent
    if _lastEvent[0] is not message:
        _lastEvent = (message, frame(messageElement("xmlevent", message)))
    return _lastEvent[1]


def _rawAttribute(data: bytes, key: str):
    tag = _ROOT_TAG.search(data)
    if tag is None:
        return None
    match = _ATTRIBUTE[key].search(tag.group())
    if match is None:
        return None
    # Raw bytes may hold what XML cannot carry (NUL, control characters).
    return xmlSafe(match.group(2).decode("utf-8", "replace"))


def _content(element) -> str:
    """A property's text content; child elements count as XML text, so an
    XML payload can be written inline without escaping."""
    return (element.text or "") + "".join(
        etree.tostring(child, encoding=str, with_tail=True) for child in element)


def parseParameters(root, method, label: str) -> dict:
    """The parameters of the ``<xmlcall>`` element ``root`` for ``method``.

    ``<parameters><property name=".." value=".."/></parameters>``; a property
    may carry its value as content instead of ``value``.  Defaults are
    applied (every declared parameter is present in the result, possibly as
    ``None``).  Raises :class:`CallError` for unknown, repeated or missing
    parameters.
    """
    given = {}
    for parameters in root.iterchildren("parameters"):
        for prop in parameters:
            if not isinstance(prop.tag, str):
                continue  # comments and processing instructions
            if prop.tag != "property":
                raise CallError(f"unexpected <{prop.tag}> in <parameters>; expected "
                                f"<property name=\"..\" value=\"..\"/>")
            pname = prop.get("name")
            if not pname:
                raise CallError("a <property> in <parameters> has no name")
            if pname in given:
                raise CallError(f"parameter '{pname}' given twice")
            value = prop.get("value")
            given[pname] = value if value is not None else _content(prop)
    declared = {param.name: param for param in method.params}
    unknown = [pname for pname in given if pname not in declared]
    if unknown:
        takes = ", ".join(declared) or "no parameters"
        names = ", ".join(f"'{pname}'" for pname in unknown)
        raise CallError(f"Unknown parameter{'s' if len(unknown) > 1 else ''} {names} "
                        f"for {label}; it takes: {takes}")
    missing = [param.name for param in method.params
               if param.name not in given and param.required and param.default is None]
    if missing:
        names = ", ".join(f"'{pname}'" for pname in missing)
        raise CallError(f"Missing required parameter{'s' if len(missing) > 1 else ''} "
                        f"{names} for {label}")
    return {param.name: given.get(param.name, param.default) for param in method.params}


def _resultChildren(value) -> list:
    """The children of ``<xmlcallresult>`` for a method's return value."""
    if value is None:
        return []
    if isinstance(value, (list, tuple)):
        items = list(value)
    else:
        items = [value]
    for item in items:
        if not isinstance(item, etree._Element):
            raise TypeError(f"console method returned {type(item).__name__}, "
                            f"expected an lxml element, a list of them or None")
    return items


def prepareCall(factory, root, connection, authenticated, requestId, name):
    """The method ``root`` (an ``<xmlcall>``) names, its :class:`Call` and
    its label (``Class.method``); raises :class:`CallError` for a call that
    cannot be made."""
    if root.tag != "xmlcall":
        raise CallError(f"expected an <xmlcall> document, got <{root.tag}>")
    className, methodName = root.get("class"), root.get("method")
    if not authenticated and (className, methodName) != LOGIN:
        # Before the registry is asked: its errors list what exists.
        raise CallError("not authenticated: call Engine.login(secret) first")
    if not className:
        raise CallError("<xmlcall> has no 'class' attribute")
    if not methodName:
        raise CallError("<xmlcall> has no 'method' attribute")
    method = factory.registry.lookup(className, methodName)
    label = f"{className}.{methodName}"
    # Most calls have no parameters: no need to look for them.
    params = parseParameters(root, method, label) if method.params or len(root) else {}
    return method, Call(params, connection, factory.engine, element=root, name=name,
                        requestId=requestId), label


def okResult(value, requestId, name):
    """The ``status="OK"`` answer for a method's return value; raises
    ``TypeError`` for a value that cannot be one."""
    if type(value) is etree._Element:
        children = (value,)  # the common case, checked without a call
    else:
        children = _resultChildren(value)
    result = resultElement("OK", requestId, name)
    for child in children:
        if child.getparent() is not None:
            # Appending moves an element: keep the method's own tree whole.
            child = deepcopy(child)
        result.append(child)
    return result


def describeCall(label, requestId) -> str:
    """A call for a log line: ``Engine.pnig (request 3)``, or the label
    alone when the request has no ``requestId``."""
    return label if requestId is None else f"{label} (request {requestId})"


def callLabel(root) -> str:
    """``Class.method`` as an ``<xmlcall>`` asks for it (``?`` for a missing
    attribute), or ``<tag>`` for a document that is not an ``<xmlcall>``."""
    if root.tag != "xmlcall":
        return f"<{root.tag}>"
    return f"{root.get('class') or '?'}.{root.get('method') or '?'}"


def logCallError(log, who, label, requestId, message, routine=False) -> None:
    """Log a call answered with an Exception that the caller caused (a
    :class:`CallError`), without a traceback: the client was told.  Info,
    or debug for a ``routine`` one (a :class:`CallTimeout`)."""
    log.emit(LogLevel.debug if routine else LogLevel.info,
             "{session}: {call} failed: {error}", session=who,
             call=describeCall(label, requestId), label=label, requestId=requestId,
             error=message)


def failureMessage(failure, log, who, label, requestId) -> str:
    """The Exception text for a failed call, logged as its kind deserves: a
    :class:`CallError` is the caller's business (see :func:`logCallError`;
    not logged again when its method has logged it), anything else a bug,
    logged as an error with its traceback."""
    if failure.check(CallError):
        error = failure.value
        message = str(error)
        if not error.logged:
            logCallError(log, who, label, requestId, message, error.routine)
        return message
    message = f"{failure.type.__name__}: {failure.value}"
    # Not "message": the legacy log observers take that key for their own.
    log.failure("{session}: {call} raised an unexpected error, answered {error}",
                failure, session=who, call=describeCall(label, requestId), label=label,
                requestId=requestId, error=message, level=LogLevel.error)
    return message


@implementer(IPushProducer, IHalfCloseableProtocol)
class ConsoleProtocol(Protocol):
    """One console connection.

    :ivar session: ``"<factory name>.<n>"``, the connection's session name.
    :ivar authenticated: whether calls are allowed: ``True`` from the start
        when the factory has no secret, else after ``Engine.login``.

    As an ``IPushProducer`` registered with its own transport it learns when
    the peer stops reading our writes, and stops reading its requests.  A
    peer that shuts down its sending side (a script that wrote its requests)
    gets every call it sent answered before the connection is closed.
    """

    def __init__(self, factory: "ConsoleFactory", session: str):
        self.factory = factory
        self.session = session
        self.authenticated = not factory.authRequired
        self.log = factory.log
        self._splitter = XmlSplitter(separators=b"\x01", maxSize=factory.maxSize)
        # Typed at a terminal until the peer sends a 0x01: a line end inside
        # an unclosed attribute value, comment or CDATA section ends the
        # request, so that the next line's is served.
        self._splitter.lineEnds = True
        self._malformedInARow = 0
        self._closeAfterAnswer = False
        self._cleanups = []
        self._pending: set[Deferred] = set()
        self._pauses: set[str] = set()
        self._drainWaiters: list[Deferred] = []
        self._closing = False
        self._gone = False
        self._peerDone = False  # the peer half-closed: close once all is answered
        self._halfCloseCall = None
        # Requests read while maxPending calls run: parsed ones, and bytes.
        self._heldItems: deque = deque()
        self._heldData: list = []
        self._heldSize = 0
        self._outbox = None  # answers waiting for the end of the packet being read
        #: well-formed requests read on this connection (for its closing line)
        self.calls = 0
        self._openedAt = None
        self._peer = "?"

    # -- connection API for console methods (see interfaces.Call) -----------

    @property
    def authRequired(self) -> bool:
        """Whether this console requires ``Engine.login``."""
        return self.factory.authRequired

    def login(self, secret) -> bool:
        """Check ``secret`` (str or bytes, surrounding whitespace ignored)
        against the factory's; authenticate the connection when it matches.

        On a mismatch the connection is closed once the current answer is
        written.  Without a factory secret there is nothing to check: True.
        """
        factory = self.factory
        if not factory.authRequired:
            return True
        address = peerHost(self.transport)
        wait = factory.throttle.retryAfter(address)
        if wait > 0:
            # Not even checked: guesses from this address are slowed down.
            factory.loginsThrottled += 1
            self.log.warn("{session}: login from {peer} refused unchecked: {wait:.1f} s "
                          "to wait after failed logins; closing the connection",
                          session=self.session, peer=peerOf(self.transport), wait=wait)
            self._closing = True
            self._closeAfterAnswer = True
            raise CallError(f"too many failed logins from this address: try again in "
                            f"{wait:.1f} s", logged=True)
        if factory.sharedSecret.matches(secret):
            self.authenticated = True
            factory.logins += 1
            factory.throttle.succeeded(address)
            self.log.info("{session}: authenticated", session=self.session)
            return True
        factory.authFailures += 1
        wait = factory.throttle.failed(address)
        self.log.warn("{session}: authentication failed from {peer}; closing the "
                      "connection; the next try from there waits {wait:g} s",
                      session=self.session, peer=peerOf(self.transport), wait=wait)
        self.authenticated = False
        self._closing = True
        self._closeAfterAnswer = True
        return False

    def addCleanup(self, function) -> None:
        """Call ``function()`` when the connection closes (at once if it has)."""
        if self._gone:
            self._runCleanup(function)
        else:
            self._cleanups.append(function)

    def sendEvent(self, message):
        """Write broker ``message`` as ``<xmlevent topic id type source>``.

        Returns ``None``, or a Deferred that fires once the peer has read
        enough of what we wrote: a broker subscriber that returns it slows
        its publisher down instead of buffering without bound.
        """
        if self._gone or self.transport is None:
            return None
        self._writeBytes(_eventBytes(message))
        self.factory.events += 1
        if "write" in self._pauses:
            waiter = Deferred()
            self._drainWaiters.append(waiter)
            return waiter
        return None

    # -- Protocol -------------------------------------------------------------

    def connectionMade(self):
        self.factory.connectionOpened(self)
        self.transport.registerProducer(self, True)
        self._openedAt = self.factory.clock.seconds()
        self._peer = peerOf(self.transport)
        self.log.info("{session}: console connection from {peer}", session=self.session,
                      peer=self._peer)

    def dataReceived(self, data):
        # Answers made while reading one packet leave in one write.
        self._outbox = []
        try:
            self._dataReceived(data)
        except Exception:
            # Nothing the peer sends may break the connection's reading.
            self.factory.errors += 1
            self.log.failure("{session}: unexpected error reading requests",
                             session=self.session, level=LogLevel.error)
        finally:
            self._flushOutbox()

    def _flushOutbox(self):
        outbox, self._outbox = self._outbox, None
        if outbox and not self._gone and self.transport is not None:
            self.transport.write(b"".join(outbox))

    def connectionLost(self, reason=None):
        if self._gone:
            return
        self._gone = True
        self.factory.connectionClosed(self)
        running = len(self._pending)
        lasted = (None if self._openedAt is None
                  else self.factory.clock.seconds() - self._openedAt)
        self.log.info("{session}: console connection from {peer} closed after {lasted}, "
                      "{calls}{cancelled}", session=self.session, peer=self._peer,
                      lasted=duration(lasted), seconds=lasted,
                      calls=plural(self.calls, "call"), unfinished=running,
                      cancelled=(f"; {plural(running, 'call')} still running cancelled, "
                                 f"not answered" if running else ""))
        if self._halfCloseCall is not None:
            self._halfCloseCall.cancel()
            self._halfCloseCall = None
        self._dropHeld()
        for d in list(self._pending):
            d.cancel()
        self._fireDrainWaiters()
        cleanups, self._cleanups = self._cleanups, []
        for function in cleanups:
            self._runCleanup(function)

    # -- IHalfCloseableProtocol ------------------------------------------------

    def readConnectionLost(self):
        """The peer sent all it will: answer the calls still running, then close.

        A peer that closed entirely looks the same until we write to it, so
        calls still running after ``halfCloseTimeout`` seconds are cancelled.
        """
        self._peerDone = True
        if not self._pending and not self._heldItems and not self._heldData:
            self._close()
            return
        self._halfCloseCall = self.factory.clock.callLater(
            self.factory.halfCloseTimeout, self._halfCloseExpired)

    def _halfCloseExpired(self):
        self._halfCloseCall = None
        held = self._dropHeld()
        self.log.info("{session}: the peer closed its side {timeout:g} s ago: cancelling "
                      "{calls} still running{held}", session=self.session,
                      timeout=self.factory.halfCloseTimeout,
                      calls=plural(len(self._pending), "call"),
                      held=f", {plural(held, 'request')} not run" if held else "")
        self._closing = True  # nothing more is served
        for d in list(self._pending):
            d.cancel()

    def _dropHeld(self) -> int:
        """Forget the requests waiting for a free slot; returns how many were
        parsed (their bytes, and unparsed ones, count as discarded)."""
        items = len(self._heldItems)
        self.factory.discardedBytes += (sum(len(item.data) for item in self._heldItems)
                                        + self._heldSize)
        self._heldItems.clear()
        self._heldData, self._heldSize = [], 0
        return items

    def writeConnectionLost(self):
        """Our sending side is shut down: nothing more to do."""

    def _answered(self, result):
        # After a call's answer is written: serve what waited for a free slot;
        # the last answer closes a half-closed connection.
        if (self._heldItems or self._heldData) and not self._gone:
            self._serveHeld()
        if self._peerDone and not self._pending and not self._heldItems \
                and not self._heldData:
            self._close()
        return result

    # -- IPushProducer: the transport tells us whether the peer reads ---------

    def pauseProducing(self):
        """The peer does not read our writes: stop reading its requests."""
        self._pause("write")

    def resumeProducing(self):
        """The peer caught up: read again and release waiting event streams."""
        if getattr(self.transport, "disconnecting", False):
            # A close asked for while we were paused: the transport resumes
            # us instead of closing, unless we let go of it.
            self.transport.unregisterProducer()
        self._resume("write")
        self._fireDrainWaiters()

    def stopProducing(self):
        """The transport is going away; connectionLost does the cleaning."""

    # -- requests -------------------------------------------------------------

    def _dataReceived(self, data):
        splitter = self._splitter
        if splitter.lineEnds and data.find(b"\x01") >= 0:
            splitter.lineEnds = False  # a 0x01-framed client
        if self._heldItems or self._heldData or self._busy():
            self._hold(data)
            return
        for start in range(0, len(data), _SLICE):
            if self._closing:
                self.factory.discardedBytes += len(data) - start
                return
            if self._busy():
                self._hold(data[start:])
                return
            try:
                items = self._splitter.feed(data[start:start + _SLICE])
            except TooLarge as e:
                self._serve(e.items)
                if not self._closing:
                    self._tooLarge(str(e))
                return
            self._serve(items)

    def _busy(self) -> bool:
        """``maxPending`` calls are running: further requests wait."""
        return len(self._pending) >= self.factory.maxPending

    def _hold(self, data):
        """Keep bytes read while the connection is busy (bounded), so that
        reading, and seeing the peer's close, never stops."""
        self._heldData.append(data)
        self._heldSize += len(data)
        if self._heldSize > self.factory.maxSize and not self._closing:
            self._heldData, self._heldSize = [], 0
            self._tooLarge(f"more than {self.factory.maxSize} bytes of requests waiting "
                           f"while {self.factory.maxPending} calls run")

    def _serveHeld(self):
        """A call ended: serve what waited for it, as far as the limit allows."""
        if self._outbox is None:
            # Answers made here leave in one write, as in dataReceived.
            self._outbox = []
            try:
                self._serveHeld()
            finally:
                self._flushOutbox()
            return
        while not self._closing and not self._busy():
            if self._heldItems:
                self._serve([self._heldItems.popleft()])
            elif self._heldData:
                data = b"".join(self._heldData)
                self._heldData, self._heldSize = [], 0
                self._dataReceived(data)
            else:
                return

    def _serve(self, items):
        # _busy() inline: this loop runs for every request.
        pending, maxPending = self._pending, self.factory.maxPending
        for index, item in enumerate(items):
            if not self._closing and len(pending) >= maxPending:
                self._heldItems.extend(items[index:])
                return
            if self._closing:
                # Condemned (failed login, malformed flood): nothing more is served.
                self.factory.discardedBytes += len(item.data)
                continue
            try:
                if isinstance(item, Document):
                    self._malformedInARow = 0
                    self._request(item)
                elif isinstance(item, Malformed):
                    self._malformed(item)
            except Exception:
                requestId = name = None
                if isinstance(item, Document):
                    requestId, name = item.root.get("requestId"), item.root.get("name")
                self._internalError(Failure(), requestId, name)
            if self._closeAfterAnswer:
                self._close()

    def _malformed(self, item: Malformed):
        factory = self.factory
        factory.requests += 1
        factory.errors += 1
        factory.malformed += 1
        self._malformedInARow += 1
        if not self.authenticated or b"login" in item.data.lower():
            # It may hold a secret (a mistyped login, a secret typed alone).
            data = f"<{len(item.data)} bytes, not shown: may hold a secret>"
        else:
            data = item.data[:_LOG_BYTES]
        # The client's mistake, answered: info.
        self.log.info("{session}: malformed XML request: {error}; data {data!r}",
                      session=self.session, error=item.error, data=data)
        self._write(resultElement("Exception", _rawAttribute(item.data, "requestId"),
                                  _rawAttribute(item.data, "name"),
                                  f"malformed XML: {item.error}"))
        if self._malformedInARow >= factory.maxMalformed:
            self._closing = True
            self.log.warn("{session}: closing the connection: {n} malformed requests in "
                          "a row", session=self.session, n=self._malformedInARow)
            self._write(resultElement(
                "Exception", error=f"{self._malformedInARow} malformed requests in a row; "
                                   f"closing the connection"))
            self._close()

    def _tooLarge(self, reason: str):
        self._closing = True
        self.factory.requests += 1
        self.factory.errors += 1
        self.log.warn("{session}: closing the connection: {reason}",
                      session=self.session, reason=reason)
        self._write(resultElement("Exception", error=f"request too large: {reason}; "
                                                     f"closing the connection"))
        self._close()

    def _close(self):
        """Close once what was written is sent; read nothing more."""
        self._closing = True
        self._closeAfterAnswer = False
        if self._gone or self.transport is None:
            return
        self._flushOutbox()
        # A registered streaming producer can delay the close: unregister first.
        self.transport.unregisterProducer()
        self.transport.loseConnection()

    def _request(self, document: Document):
        factory = self.factory
        factory.requests += 1
        self.calls += 1
        root = document.root
        requestId, name = root.get("requestId"), root.get("name")
        if factory.showMessages:
            if (root.get("class"), root.get("method")) == LOGIN:
                self.log.info("{session}: request {requestId} Engine.login (parameters "
                              "not shown)", session=self.session, requestId=requestId)
            else:
                self.log.info("{session}: request {data!r}", session=self.session,
                              data=document.data[:_LOG_BYTES])
        # The console's topics see the call (when someone watches them),
        # and its answer names the copy published there.
        mirror = (factory.topics.mirrorCall(self, document.data)
                  if factory.topics is not None else None)
        try:
            method, call, label = prepareCall(factory, root, self, self.authenticated,
                                              requestId, name)
        except CallError as e:
            self._fail(requestId, name, callLabel(root), str(e), mirror)
            return
        started = monotonic()
        try:
            result = method.function(call)
        except Exception:
            result = fail()
        # Deferred is an Awaitable, so isinstance(x, Deferred) goes through
        # ABCMeta; the usual immediate results are recognised first.
        if isinstance(result, _IMMEDIATE) or not isinstance(result, Deferred):
            factory.registry.called(method, True, monotonic() - started)
            # Most calls answer at once: no Deferred machinery for them.
            try:
                self._succeeded(result, requestId, name, label, mirror)
            except Exception:
                self._internalError(Failure(), requestId, name, mirror)
            return
        d = result
        d.addBoth(factory.registry.ended, method, started)
        if not d.called:
            self._pending.add(d)
            d.addBoth(self._callEnded, d)
        d.addCallbacks(self._succeeded, self._failed,
                       callbackArgs=(requestId, name, label, mirror),
                       errbackArgs=(requestId, name, label, mirror))
        d.addErrback(self._internalError, requestId, name, mirror)
        d.addBoth(self._answered)

    def _callEnded(self, result, d):
        self._pending.discard(d)
        return result

    def _succeeded(self, value, requestId, name, label, mirror=None):
        if type(value) is etree._Element and value.getparent() is None:
            # The common case, without a call: one new element.
            result = resultElement("OK", requestId, name)
            result.append(value)
            self._write(result, mirror)
            return
        try:
            result = okResult(value, requestId, name)
        except TypeError as e:
            # The method's bug, not the caller's.
            message = f"{label}: {e}"
            self.factory.errors += 1
            self.log.error("{session}: {call} answered what cannot be an answer: "
                           "{error}", session=self.session,
                           call=describeCall(label, requestId), error=message)
            self._write(resultElement("Exception", requestId, name, message), mirror)
            return
        self._write(result, mirror)

    def _failed(self, failure: Failure, requestId, name, label, mirror=None):
        if failure.check(CancelledError) and self._gone:
            self.log.debug("{session}: {label} {requestId} cancelled: connection gone",
                           session=self.session, label=label, requestId=requestId)
            return
        if failure.check(CancelledError) and self._peerDone:
            message = (f"cancelled: the connection was closed by the peer "
                       f"{self.factory.halfCloseTimeout:g} s earlier")
        else:
            message = failureMessage(failure, self.log, self.session, label, requestId)
        self.factory.errors += 1
        self._write(resultElement("Exception", requestId, name, message), mirror)

    def _internalError(self, failure, requestId, name, mirror=None):
        """A bug of ours while answering: logged, and the request still gets
        its one answer."""
        self.factory.errors += 1
        self.log.failure("{session}: could not answer {requestId}", failure,
                         session=self.session, requestId=requestId, level=LogLevel.error)
        self._write(resultElement("Exception", requestId, name,
                                  "internal error serving the request"), mirror)

    def _fail(self, requestId, name, label, message, mirror=None):
        """Answer a call that could not be made (the caller's mistake)."""
        self.factory.errors += 1
        logCallError(self.log, self.session, label, requestId, message)
        self._write(resultElement("Exception", requestId, name, message), mirror)

    # -- writing --------------------------------------------------------------

    def _write(self, element, mirror=None):
        if mirror is not None:
            self.factory.topics.mirrorAnswer(self, element, mirror)
        if self._gone or self.transport is None:
            self.factory.undelivered += 1
            self.log.debug("{session}: connection gone, dropping {tag} {requestId}",
                           session=self.session, tag=element.tag,
                           requestId=element.get("requestId"))
            return
        data = frame(element)
        if self.factory.showMessages and element.tag == "xmlcallresult":
            self.log.info("{session}: answer {data!r}", session=self.session,
                          data=data[:_LOG_BYTES])
        self._writeBytes(data)

    def _writeBytes(self, data):
        if self._outbox is not None:
            self._outbox.append(data)
        else:
            self.transport.write(data)

    # -- flow control ---------------------------------------------------------

    def _pause(self, reason):
        if not self._pauses and not self._gone:
            self.transport.pauseProducing()
        self._pauses.add(reason)

    def _resume(self, reason):
        if reason not in self._pauses:
            return
        self._pauses.discard(reason)
        if not self._pauses and not self._gone and not self._closing:
            self.transport.resumeProducing()

    def _fireDrainWaiters(self):
        waiters, self._drainWaiters = self._drainWaiters, []
        for waiter in waiters:
            waiter.callback(None)

    # -- helpers --------------------------------------------------------------

    def _runCleanup(self, function):
        try:
            function()
        except Exception:
            self.log.failure("{session}: connection cleanup {function!r} failed",
                             session=self.session, function=function)

class ConsoleFactory(Factory):
    """Builds :class:`ConsoleProtocol` connections serving ``registry``.

    :param registry: the :class:`~aiengine.console.registry.CallRegistry`.
    :param engine: passed to every call as ``call.engine`` (has ``broker``).
    :param name: the listener's name; connections are ``<name>.<n>`` and
        logs go to namespace ``SocketServer::<name>``.
    :param maxSize: largest request document in bytes.
    :param maxPending: calls one connection may have running before the
        console stops reading its further requests.
    :param secret: bytes; when given, connections must call
        ``Engine.login(secret)`` first (see the module's docstring).
    :param maxMalformed: malformed requests in a row after which a
        connection is closed.

    Counters: ``connections`` (accepted so far), ``openConnections``,
    ``requests``, ``errors`` (Exception answers and internal failures),
    ``malformed`` (requests that were not well-formed or allowed XML),
    ``events`` (streamed), ``undelivered`` (answers for closed connections),
    ``discardedBytes`` (read after a connection was condemned), ``logins``
    and ``authFailures``.
    """

    # SocketServer::<name> logs its own start and stop lines.
    noisy = False

    def logPrefix(self):
        """Names the listener in Twisted's own port log lines."""
        return self.log.namespace

    protocol = ConsoleProtocol

    #: seconds a connection whose peer closed its sending side keeps its
    #: running calls, to answer them, before they are cancelled
    halfCloseTimeout = 30.0

    def __init__(self, registry, engine, name: str = "console", maxSize: int = 1000000,
                 maxPending: int = 100, secret: bytes | None = None,
                 maxMalformed: int = 100, showMessages: bool = False):
        self.registry = registry
        #: for timers: the engine's reactor (the global one when it has none)
        self.clock = getattr(engine, "reactor", None)
        if self.clock is None:
            from twisted.internet import reactor as clock
            self.clock = clock
        #: log every request and answer (the listener's protocol.showmessages)
        self.showMessages = showMessages
        self.engine = engine
        self.name = name
        self.maxSize = maxSize
        self.maxPending = maxPending
        self.maxMalformed = maxMalformed
        if isinstance(secret, str):
            secret = secret.encode("utf-8")
        #: what logins are compared with (None: no login needed); never logged
        self.sharedSecret = None if secret is None else SharedSecret(secret)
        #: the shared secret (bytes) or None; never logged
        self.secret = secret
        #: whether connections must log in
        self.authRequired = secret is not None
        self.log = PeerSafeLogger(namespace=f"SocketServer::{name}")
        self._numbers = itertools.count(1)
        self.connections = 0
        self.openConnections = 0
        self.requests = 0
        self.errors = 0
        self.events = 0
        self.undelivered = 0
        self.discardedBytes = 0
        self.malformed = 0
        self.logins = 0
        self.authFailures = 0
        #: logins refused unchecked because their address had to wait
        self.loginsThrottled = 0
        #: failed logins per address (see LoginThrottle)
        self.throttle = LoginThrottle(self.clock)
        #: the connections open now
        self.openProtocols: set = set()
        #: the open connections by session name
        self.sessions: dict = {}
        #: the console's topic-in and topic-out (a ConsoleTopics), when it has them
        self.topics = None

    def startFactory(self):
        """Listening: take calls from ``topic-in`` too, if it has one."""
        if self.topics is not None:
            self.topics.start()

    def stopFactory(self):
        if self.topics is not None:
            self.topics.stop()

    def buildProtocol(self, addr):
        """A new connection with the next session name."""
        protocol = self.protocol(self, f"{self.name}.{next(self._numbers)}")
        return protocol

    def connectionOpened(self, protocol):
        """Called by each connection when it is made."""
        self.connections += 1
        self.openConnections += 1
        self.openProtocols.add(protocol)
        self.sessions[protocol.session] = protocol

    def connectionClosed(self, protocol):
        """Called by each connection when it is lost."""
        self.openConnections -= 1
        self.openProtocols.discard(protocol)
        if self.sessions.get(protocol.session) is protocol:
            del self.sessions[protocol.session]

    def closeConnections(self) -> Deferred:
        """Close every open connection (at shutdown); fires when all are gone."""
        waits = []
        for protocol in list(self.openProtocols):
            if protocol.transport is not None:
                gone = Deferred()
                protocol.addCleanup(lambda gone=gone: gone.callback(None))
                waits.append(gone)
                protocol.transport.unregisterProducer()
                protocol.transport.loseConnection()
        return DeferredList(waits)

    def stats(self) -> dict:
        """The counters, by name (``topicCalls`` and the like: its topics')."""
        counters = {key: getattr(self, key) for key in (
            "connections", "openConnections", "requests", "errors", "malformed", "events",
            "undelivered", "discardedBytes", "logins", "authFailures",
            "loginsThrottled")}
        if self.topics is not None:
            for key, value in self.topics.stats().items():
                counters["topic" + key[0].upper() + key[1:]] = value
        return counters
