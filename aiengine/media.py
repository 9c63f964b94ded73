"""The media API ("AIMedia"): program-level access to channels by name.

Every method returns a Deferred.  An unknown name fails with
:class:`UnknownChannel` ("Unable to find channel by name=<name>").  The same
operations are callable from the console as class ``Media``, next to the
original's test classes ``TestDirectChannels`` and ``TestEngineThreads``.
"""

from __future__ import annotations

import sys
import threading
import traceback

from lxml import etree
from twisted.internet import defer
from twisted.logger import Logger

from aiengine.broker import NoSubscriber
from aiengine.config import ConfigError, _bool
from aiengine.console.interfaces import CallError, ConsoleClass, Param, method, seconds
from aiengine.console.results import messageElement, setBody, xmlSafe

__all__ = ["Media", "UnknownChannel", "MediaConsole", "TestDirectChannels",
           "TestEngineThreads", "registerMedia"]


class UnknownChannel(CallError, KeyError):
    """No channel has the name asked for."""

    def __init__(self, name):
        super().__init__(f"Unable to find channel by name={name}")

    def __str__(self):
        return self.args[0]


class Media:
    """Channels by name, each operation a Deferred.

    :param channels: the engine's ``dict`` of name to
        :class:`~aiengine.channels.Channel` (read when called, so channels
        added later are found).
    """

    def __init__(self, channels):
        self.channels = channels

    def channel(self, name):
        """The channel called ``name``; raises :class:`UnknownChannel`."""
        try:
            return self.channels[name]
        except KeyError:
            raise UnknownChannel(name) from None

    def listChannels(self):
        """Deferred list of every channel's status dict, sorted by name."""
        return defer.succeed([self.channels[n].status() for n in sorted(self.channels)])

    def status(self, name):
        """Deferred status dict of one channel."""
        return defer.maybeDeferred(lambda: self.channel(name).status())

    def send(self, name, message, ttl=None):
        """Send ``message`` (bytes or str) to the channel; queued if not connected.

        With ``ttl`` seconds, a message still queued after that long is
        dropped (counted in the channel's ``expired``).
        """
        if isinstance(message, str):
            message = message.encode("utf-8")
        return defer.maybeDeferred(lambda: self.channel(name).send(message, ttl=ttl))

    def request(self, name, message, timeout=None):
        """Deferred of the reply to ``message`` from the channel (http, or
        ``replies=ordered``): each concurrent request gets its own reply."""
        if isinstance(message, str):
            message = message.encode("utf-8")
        return defer.maybeDeferred(lambda: self.channel(name).request(message, timeout))

    def receive(self, name, timeout=None):
        """Deferred of the oldest inbound message not yet received."""
        return defer.maybeDeferred(lambda: self.channel(name).receive(timeout))

    def receiveFixed(self, name, size, timeout=None):
        """Deferred of exactly ``size`` bytes from the channel's inbound stream."""
        return defer.maybeDeferred(lambda: self.channel(name).receiveFixed(size, timeout))

    def connect(self, name):
        """Connect (or resume connecting) the channel."""
        return defer.maybeDeferred(lambda: self.channel(name).connect())

    def disconnect(self, name):
        """Close the channel and keep it down until :meth:`connect`."""
        return defer.maybeDeferred(lambda: self.channel(name).disconnect())


def _plainFailure(failure):
    """Expected outcomes (a timeout, a refused size) answer with their plain
    message: no traceback in the log for a routine event."""
    failure.trap(ValueError, defer.TimeoutError)
    raise CallError(failure.getErrorMessage())


def _timeout(value):
    """The optional timeout parameter: None means the channel's default."""
    return None if value in (None, "") else seconds(value, allowZero=True)


def _channelElement(status):
    element = etree.Element("channel")
    for key, value in status.items():
        if value is None:
            continue
        if isinstance(value, bool):
            value = "true" if value else "false"
        # lastError quotes a peer's words: make sure XML can carry them.
        element.set(key, xmlSafe(str(value)))
    return element


def textElement(tag, data):
    """``<tag>`` holding ``data`` as text (base64 when XML cannot carry it)."""
    element = etree.Element(tag)
    setBody(element, data)
    return element


class MediaConsole(ConsoleClass):
    """Console class ``Media``: the media API."""

    name = "Media"
    description = "Channels (active sockets) by name: state, counters, send, receive."

    channel = Param("channel", "Name of a configured channel.")
    timeout = Param("timeout", "Seconds to wait (default: the channel's "
                    "protocol.wait-time-sec).", required=False)

    @method("Every channel with its state and counters.")
    def listChannels(self, call):
        return call.engine.media.listChannels().addCallback(
            lambda statuses: [_channelElement(s) for s in statuses])

    @method("One channel's state and counters.", channel)
    def status(self, call):
        return call.engine.media.status(call.params["channel"]).addCallback(_channelElement)

    @method("Send a message to the channel (queued while it is not connected).",
            channel, Param("message", "The message text."),
            Param("ttl", "Seconds after which the message, if still queued, is "
                  "dropped (counted as expired).", required=False))
    def send(self, call):
        ttl = call.params.get("ttl")
        return call.engine.media.send(call.params["channel"], call.params["message"],
                                      None if ttl in (None, "") else seconds(ttl, "ttl"))

    @method("Send a message to the channel and answer its reply as <message>: for "
            "http channels and channels with replies=ordered, whose replies are "
            "paired with their requests.",
            channel, Param("message", "The request text."), timeout)
    def request(self, call):
        d = call.engine.media.request(call.params["channel"], call.params["message"],
                                      _timeout(call.params.get("timeout")))

        return d.addCallbacks(lambda message: messageElement("message", message),
                              _plainFailure)

    @method("The oldest inbound message of the channel not yet received.",
            channel, timeout)
    def receive(self, call):
        d = call.engine.media.receive(call.params["channel"],
                                      _timeout(call.params.get("timeout")))
        return d.addCallbacks(lambda message: messageElement("message", message),
                              _plainFailure)

    @method("Exactly `size` bytes from the channel's inbound stream.",
            channel, Param("size", "Number of bytes."), timeout)
    def receiveFixed(self, call):
        # The size rules are the channel's (Channel.receiveFixed), in one place.
        d = call.engine.media.receiveFixed(call.params["channel"], call.params["size"],
                                           _timeout(call.params.get("timeout")))

        return d.addCallbacks(lambda data: textElement("data", data), _plainFailure)

    @method("Connect the channel (after disconnect, or an on-demand channel now).", channel)
    def connect(self, call):
        return call.engine.media.connect(call.params["channel"]).addCallback(lambda _: None)

    @method("Close the channel and keep it down until connect.", channel)
    def disconnect(self, call):
        return call.engine.media.disconnect(call.params["channel"]).addCallback(
            lambda _: None)


class TestDirectChannels(ConsoleClass):
    """The original's test class: read a page through the channel that
    subscribes to ``http.request`` (``google`` in the original's media.xml)."""

    name = "TestDirectChannels"
    description = "The original's channel tests."

    requestTopic = "http.request"
    responseTopic = "http.response"
    timeout = 5.0

    @staticmethod
    def _takers(broker, topic):
        """Who a message published on ``topic`` now reaches, for a person:
        the channels that subscribe to it, else its other subscribers."""
        names = [sub.name for sub in broker.topic(topic).subscriptions if sub.active]
        channels = [n[len("channel:"):] for n in names if n.startswith("channel:")]
        return channels or names

    @method("Publish a page address to http.request and answer the body of its "
            "response on http.response (5 s).", Param("page", "Address of the page."))
    def testRequestPage(self, call):
        page = call.params["page"]
        broker = call.engine.broker
        # The channels the request reaches, named when none answers.
        takers = self._takers(broker, self.requestTopic)
        d = broker.request(self.requestTopic, self.responseTopic, page,
                           timeout=self.timeout, source=call.connection.session)

        def answer(reply):
            body = textElement("body", reply.body)
            status = reply.attributes.get("status")
            if status is not None:
                body.set("status", str(status))
            return [textElement("page", page), body]

        def noAnswer(failure):
            who = ", ".join(takers) or "any channel"
            if failure.check(NoSubscriber):
                raise CallError(f"No response from {who} page={page}: "
                                f"{failure.getErrorMessage()}")
            failure.trap(defer.TimeoutError)
            raise CallError(f"No response from {who} page={page}")

        return d.addCallbacks(answer, noAnswer)


class TestEngineThreads(ConsoleClass):
    """The original's thread test class.

    The original's engine ran each of its services in threads it named
    itself.  Here a thread is a Python thread of the daemon's process, as
    :func:`threading.enumerate` lists them: ``MainThread`` runs the reactor
    (every listener, channel and console call), the others are the ones
    Twisted's thread pool (name resolution, ``deferToThread``) or a library
    started.  A stack, asked for with ``showStack=true``, is the thread's
    Python stack at the moment of the call (:func:`sys._current_frames`);
    the calling thread's own stack ends in the console method.  What the
    original only wrote to its log is both logged and answered here.
    """

    name = "TestEngineThreads"
    description = "The original's engine thread tests."
    log = Logger(namespace="TestEngineThreads")

    showStack = Param("showStack", "true: also each thread's stack (as the "
                      "<thread> element's text); default false.", default="false")

    @staticmethod
    def _flag(call, key):
        """A boolean parameter: true or false, as in media.xml."""
        try:
            return _bool(call.params[key].strip())
        except ConfigError as e:
            raise CallError(f"parameter '{key}': {e.message}") from None

    def _describe(self, threads, showStack):
        frames = sys._current_frames() if showStack else {}
        answer = []
        for thread in threads:
            element = etree.Element("thread")
            element.set("name", xmlSafe(thread.name))
            element.set("id", str(thread.ident))
            element.set("daemon", "true" if thread.daemon else "false")
            if showStack:
                frame = frames.get(thread.ident)
                stack = "".join(traceback.format_stack(frame)) if frame else ""
                setBody(element, stack)
                self.log.info("thread {name} (id {id}):\n{stack}", name=thread.name,
                              id=thread.ident, stack=stack)
            else:
                self.log.info("thread {name} (id {id})", name=thread.name,
                              id=thread.ident)
            answer.append(element)
        return answer

    @method("Log every thread of the daemon, with its stack when showStack is "
            "true; answer one <thread name id daemon> per thread (its stack as "
            "text with showStack).", showStack)
    def testThreadDump(self, call):
        threads = threading.enumerate()
        self.log.info("thread dump: {n} thread(s)", n=len(threads))
        return self._describe(threads, self._flag(call, "showStack"))

    @method("Log the thread called threadName, with its stack when showStack is "
            "true, and answer it as testThreadDump does.  'main', the original's "
            "name for it, is MainThread unless a thread has that name.",
            Param("threadName", "Name of the thread (MainThread is the reactor's)."),
            showStack)
    def testShowThread(self, call):
        wanted = call.params["threadName"]
        showStack = self._flag(call, "showStack")
        threads = threading.enumerate()
        found = [t for t in threads if t.name == wanted]
        if not found and wanted == "main":
            found = [t for t in threads if t is threading.main_thread()]
        if not found:
            known = ", ".join(sorted({t.name for t in threads}))
            raise CallError(f"Unknown thread name={wanted}; the threads are: {known}")
        return self._describe(found, showStack)


def registerMedia(registry):
    """Register ``Media``, ``TestDirectChannels`` and ``TestEngineThreads``."""
    for consoleClass in (MediaConsole(), TestDirectChannels(), TestEngineThreads()):
        registry.register(consoleClass)
