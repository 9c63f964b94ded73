"""Console calls made from the dashboard (``POST /api/console``, ``/api/publish``).

A call goes through the console's own steps: the registry finds the method
and :func:`~aiengine.console.protocol.prepareCall` its parameters, the
method runs, and its value becomes the answer with
:func:`~aiengine.console.protocol.okResult` or its failure with
:func:`~aiengine.console.protocol.failureMessage`, counted in the registry's
call statistics as a console connection's are.  What differs is the
*connection*: a dashboard request has none to keep a login or a subscription
on, so ``Engine.login``, ``Topics.subscribe`` and ``Topics.unsubscribe``
answer an Exception saying that they need a console connection.  Calls are
made as an authenticated connection's (the admin listener checked the
request; see :mod:`aiengine.admin` for when the dashboard may make calls at
all).
"""

from __future__ import annotations

import itertools
from time import monotonic
from types import SimpleNamespace

from lxml import etree
from twisted.internet.defer import CancelledError, maybeDeferred, succeed

from aiengine.console.interfaces import CallError
from aiengine.console.protocol import (callLabel, failureMessage, logCallError, okResult,
                                       prepareCall)
from aiengine.console.results import TERMINATOR, frame, resultElement
from aiengine.protocols.xmlsplit import parseDocument

__all__ = ["DashboardCaller", "ConsoleAdapter", "CONNECTION_BOUND", "examples",
           "serialize"]

#: Calls that only make sense on a console connection.
CONNECTION_BOUND = frozenset(("Engine.login", "Topics.subscribe", "Topics.unsubscribe"))


def examples() -> list:
    """The example calls of ``Engine.help``'s usage text, one string each."""
    from aiengine.console.builtins import USAGE
    return [line.strip() for line in USAGE.splitlines() if line.startswith("  <xmlcall")]


def serialize(element) -> bytes:
    """An answer as a console connection gets it, without the frame's end."""
    return frame(element)[:-len(TERMINATOR)]


class DashboardCaller:
    """The ``connection`` of a dashboard call: a session name, and nothing to
    keep a login or a subscription on."""

    authRequired = False
    authenticated = True
    #: no stream to write events to
    sendEvent = None

    def __init__(self, session: str):
        self.session = session

    def login(self, secret):
        raise CallError("Engine.login needs a console connection")

    def addCleanup(self, function):
        raise CallError("this call needs a console connection")


class ConsoleAdapter:
    """Runs ``<xmlcall>`` documents for the dashboard of admin listener ``name``.

    :param engine: the engine (``registry``, and what the methods use).
    :param name: the admin listener's name, for session names
        (``<name>.web.<n>``) and log lines.
    :param log: where the callers' mistakes and the methods' bugs are logged,
        as the console logs them.
    :param maxSize: the largest request, in bytes.
    """

    def __init__(self, engine, name: str, log, maxSize: int = 1000000):
        self.engine = engine
        self.name = name
        self.log = log
        self.maxSize = maxSize
        # What prepareCall needs of a console factory.
        self._factory = SimpleNamespace(registry=engine.registry, engine=engine)
        self._numbers = itertools.count(1)

    def session(self) -> str:
        """A new session name for one request."""
        return f"{self.name}.web.{next(self._numbers)}"

    def runText(self, data: bytes, session: str):
        """Deferred ``<xmlcallresult>`` element for the request ``data``."""
        try:
            root = parseDocument(data.strip(b" \t\r\n\x01"), self.maxSize)
        except ValueError as e:
            message = f"malformed XML: {e}"
            logCallError(self.log, session, "?", None, message)
            return succeed(resultElement("Exception", error=message))
        return self.run(root, session)

    def run(self, root, session: str):
        """Deferred ``<xmlcallresult>`` element for the ``<xmlcall>`` element
        ``root``; never fails (cancelling it cancels the method's Deferred)."""
        requestId, name = root.get("requestId"), root.get("name")
        try:
            method, call, label = prepareCall(self._factory, root, DashboardCaller(session),
                                              True, requestId, name)
            if label in CONNECTION_BOUND:
                raise CallError(f"{label} needs a console connection: connect to the "
                                f"console (telnet, aiengine-console) to use it")
        except CallError as e:
            logCallError(self.log, session, callLabel(root), requestId, str(e))
            return succeed(resultElement("Exception", requestId, name, str(e)))
        registry = self.engine.registry
        started = monotonic()
        d = maybeDeferred(method.function, call)
        d.addBoth(registry.ended, method, started)

        def succeeded(value):
            try:
                return okResult(value, requestId, name)
            except TypeError as e:
                message = f"{label}: {e}"
                self.log.error("{session}: {label} answered what cannot be an answer: "
                               "{error}", session=session, label=label, error=message)
                return resultElement("Exception", requestId, name, message)

        def failed(failure):
            if failure.check(CancelledError):
                return resultElement("Exception", requestId, name,
                                     "cancelled: the request ended")
            return resultElement("Exception", requestId, name,
                                 failureMessage(failure, self.log, session, label,
                                                requestId))

        return d.addCallbacks(succeeded, failed)

    def publish(self, topic: str, message: str, msgtype: str, session: str):
        """Deferred answer of ``Topics.publish`` with these parameters."""
        root = etree.Element("xmlcall", {"class": "Topics", "method": "publish"})
        parameters = etree.SubElement(root, "parameters")
        try:
            for key, value in (("topic", topic), ("message", message), ("type", msgtype)):
                etree.SubElement(parameters, "property", name=key, value=value)
        except ValueError as e:
            # Text XML cannot carry (a NUL): no console call could carry it either.
            return succeed(resultElement("Exception", error=f"parameter '{key}': {e}"))
        return self.run(root, session)
