"""The media API ("AIMedia"): program-level access to channels by name.

Every method returns a Deferred.  An unknown name fails with
:class:`UnknownChannel` ("Unable to find channel by name=<name>", then the
nearest name and the known ones).  The same operations are callable from the
console as class ``Media``; :func:`registerMedia` registers it with the
original's test classes (:mod:`aiengine.console.original`).
"""

from __future__ import annotations

from lxml import etree
from twisted.internet import defer
from twisted.internet.error import ConnectError

from aiengine.channels import ChannelStopped
from aiengine.console.interfaces import (FORMAT, CallError, CallTimeout, ConsoleClass,
                                         Param, method, seconds, wantsTable)
from aiengine.console.original import TestDirectChannels, TestEngineThreads
from aiengine.console.registry import suggest
from aiengine.console.results import (duration, hostPort, listNames, messageElement,
                                      textBlock, textElement, textTable, xmlSafe)

__all__ = ["Media", "UnknownChannel", "MediaConsole", "TestDirectChannels",
           "TestEngineThreads", "registerMedia", "channelTable", "CHANNEL_COLUMNS"]


#: Beyond this many channels, an unknown name gets no "did you mean":
#: comparing it with every name would make each typo cost milliseconds.
_SUGGEST_MAX = 1000


class UnknownChannel(CallError, KeyError):
    """No channel has the name asked for.

    The message starts as the original's, "Unable to find channel by
    name=<name>", and goes on with the nearest name and the known ones (the
    first 20 in order, then how many more), for the person who mistyped.
    """

    def __init__(self, name, known=()):
        message = f"Unable to find channel by name={name}"
        if not known:
            message += "; there are no channels"
        else:
            near = suggest(name, known) if len(known) <= _SUGGEST_MAX else None
            if near is not None:
                message += f" (did you mean '{near}'?)"
            message += f"; known channels: {listNames(known)}"
        super().__init__(message)

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
            raise UnknownChannel(name, self.channels) from None

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
    """Expected outcomes answer as a :class:`CallError`, which the console
    logs as the caller's business, without a traceback: a timeout the caller
    asked for (:class:`CallTimeout`, debug), a refused size, a channel
    stopped while the call waited, a failed connection attempt (the channel
    logs that one itself).  Anything else goes on: a bug, logged as an
    error with its traceback."""
    if failure.check(defer.TimeoutError):
        raise CallTimeout(failure.getErrorMessage())
    if failure.check(ValueError):
        raise CallError(failure.getErrorMessage())
    failure.trap(ChannelStopped, ConnectError)
    # The answer keeps the words it had before these became expected.
    raise CallError(f"{failure.type.__name__}: {failure.value}")


def _timeout(value):
    """The optional timeout parameter: None means the channel's default."""
    return None if value in (None, "") else seconds(value, allowZero=True)


#: The columns of ``Media.listChannels format=table``; the numbers on the right.
CHANNEL_COLUMNS = ("NAME", "STATE", "PEER", "AGE", "IN", "OUT", "QUEUED", "DROPPED")
_NUMBERS = frozenset(("IN", "OUT", "QUEUED", "DROPPED"))


def channelTable(statuses, now) -> str:
    """The channels' status dicts (as :meth:`Media.listChannels` gives them)
    as an aligned text table, one row per channel.

    ``AGE`` is the time spent in the current state: ``now`` minus the
    status's ``stateSince`` (the reactor's clock), ``-`` while channels do
    not report it.  ``IN`` and ``OUT`` count messages.
    """
    rows = []
    for status in statuses:
        since = status.get("stateSince")
        rows.append((status["name"], status["state"],
                     hostPort(status["host"], status["port"]),
                     duration(None if since is None else now - since),
                     status["messagesIn"], status["messagesOut"], status["queued"],
                     status["dropped"]))
    return textTable(CHANNEL_COLUMNS, rows, right=_NUMBERS)


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


class MediaConsole(ConsoleClass):
    """Console class ``Media``: the media API."""

    name = "Media"
    description = "Channels (active sockets) by name: state, counters, send, receive."

    channel = Param("channel", "Name of a configured channel.")
    timeout = Param("timeout", "Seconds to wait (default: the channel's "
                    "protocol.wait-time-sec).", required=False)

    @method("Every channel with its state and counters; format=table: name, state, "
            "peer, time in the state, messages in and out, queued and dropped, as a "
            "text table.", FORMAT)
    def listChannels(self, call):
        # Both answers from the same status dicts: one set of counters.
        if wantsTable(call):
            return call.engine.media.listChannels().addCallback(
                lambda statuses: textBlock("table", channelTable(
                    statuses, call.engine.reactor.seconds())))
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
        return call.engine.media.connect(call.params["channel"]).addCallbacks(
            lambda _: None, _plainFailure)

    @method("Close the channel and keep it down until connect.", channel)
    def disconnect(self, call):
        return call.engine.media.disconnect(call.params["channel"]).addCallbacks(
            lambda _: None, _plainFailure)


def registerMedia(registry):
    """Register ``Media``, ``TestDirectChannels`` and ``TestEngineThreads``."""
    for consoleClass in (MediaConsole(), TestDirectChannels(), TestEngineThreads()):
        registry.register(consoleClass)
