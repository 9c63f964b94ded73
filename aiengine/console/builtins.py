"""The console classes every engine has: ``Engine`` and ``Topics``.

``Engine`` answers ``login``, ``ping``, ``help``, ``version``, ``reload`` and
``listeners``
(``help`` starts with how to write a call; ``listeners`` answers a text table
for a person with ``format=table``).
``Topics`` gives the console the topic broker: publish, request/reply,
subscribe (messages are streamed to the connection as ``<xmlevent>``
documents) and a list of the topics with their counters.
"""

from __future__ import annotations

from lxml import etree
from twisted.internet.defer import TimeoutError

import aiengine
from aiengine.broker import NoSubscriber, checkTopicName
from aiengine.config import ConfigError
from aiengine.console.interfaces import (FORMAT, CallError, CallTimeout, ConsoleClass,
                                         Param, method, seconds, wantsTable)
from aiengine.console.results import (hostPort, messageElement, textBlock, textTable,
                                      xmlSafe)
from aiengine.logs import PeerSafeLogger
from aiengine.protocols.xmlsplit import parseDocument

__all__ = ["Engine", "Topics", "registerBuiltins", "MESSAGE_TYPES", "USAGE",
           "listenerTable", "LISTENER_COLUMNS"]

_log = PeerSafeLogger(namespace="Console::Topics")

#: Message types the console may publish; xml types must be well-formed.
MESSAGE_TYPES = ("text", "xml", "xmlcall")


#: How to write a call, for a person reading ``Engine.help`` at telnet; the
#: examples are real calls (the tests make them).
USAGE = """\
A call is one <xmlcall> document: the class and the method are its attributes, and so
are requestId and name, both optional and copied into the answer. Type it and press
Enter. A call without parameters:

  <xmlcall class="Engine" method="ping" requestId="1"/>

Parameters are <property> children of <parameters>, the value in the value attribute:

  <xmlcall class="Topics" method="publish" requestId="2"><parameters><property name="topic" value="demo"/><property name="message" value="hello"/></parameters></xmlcall>

or as the property's content, where XML may be written as it is:

  <xmlcall class="Topics" method="publish" requestId="3"><parameters><property name="topic">demo</property><property name="message"><note>hello</note></property></parameters></xmlcall>

For a person, some lists come as a text table:

  <xmlcall class="Media" method="listChannels"><parameters><property name="format" value="table"/></parameters></xmlcall>

Below: every class, its methods, and their parameters (required="false": optional)."""


#: The columns of ``Engine.listeners format=table``; the numbers on the right.
LISTENER_COLUMNS = ("NAME", "ADDRESS", "OPEN", "ACCEPTED", "REFUSED", "IN", "OUT")
_NUMBERS = frozenset(LISTENER_COLUMNS[2:])


def _listenerRows(engine):
    """``(name, address or None, counters)`` for each of the engine's
    listeners, sorted by name: what both answers of ``Engine.listeners``
    show."""
    rows = []
    services = getattr(engine, "listeners", {})
    for name in sorted(services):
        service = services[name]
        # An admin listener's web site counts nothing of its own: the guard's
        # counters are all it has.
        stats = getattr(service.factory, "stats", None)
        counters = dict(stats()) if stats is not None else {}
        guard = getattr(service, "guard", None)
        if guard is not None:
            counters.update(accepted=guard.accepted, refused=guard.refused,
                            timedOut=guard.timedOut, aborted=guard.aborted,
                            handshakeTimeouts=guard.handshakeTimeouts)
            counters.setdefault("openConnections", len(guard.protocols))
        rows.append((name, service.address, counters))
    return rows


def listenerTable(rows) -> str:
    """Listener rows (see ``_listenerRows``) as an aligned text table.

    ``IN`` and ``OUT`` are the messages a listener's connections sent and
    were sent; a console counts no messages: its ``IN`` is its requests,
    its ``OUT`` is ``-`` (one answer per request, and events).
    """
    lines = []
    for name, address, counters in rows:
        messagesIn = counters.get("messagesIn", counters.get("requests"))
        lines.append((name, hostPort(address[0], address[1]) if address else "-",
                      counters.get("openConnections"), counters.get("accepted"),
                      counters.get("refused"), messagesIn, counters.get("messagesOut")))
    return textTable(LISTENER_COLUMNS, lines, right=_NUMBERS)


def _element(tag, text=None, **attributes):
    element = etree.Element(tag)
    for key, value in attributes.items():
        element.set(key, str(value))
    if text is not None:
        element.text = text
    return element


class Engine(ConsoleClass):
    """``Engine``: log in, is the console alive, what can it do, which version."""

    name = "Engine"
    description = ("The engine itself: login, liveness, version and the list of "
                   "callable methods.")

    def __init__(self, registry):
        self.registry = registry

    @method("Authenticate this connection with the console's shared secret; the first "
            "call when the console requires authentication.  A wrong secret closes "
            "the connection.  Answers <authenticated required=\"true|false\"/>.",
            Param("secret", "The shared secret (surrounding whitespace is ignored)."))
    def login(self, call):
        connection = call.connection
        required = bool(getattr(connection, "authRequired", False))
        if not connection.login(call.params["secret"]):
            # login() logged it, as a warning naming the peer.
            raise CallError("authentication failed", logged=True)
        return _element("authenticated", required="true" if required else "false")

    @method("Answer <pong/>: shows that the console is alive.")
    def ping(self, call):
        return etree.Element("pong")

    @method("How to write a call (<usage>), then every callable class, method and "
            "parameter.", Param("class", "Describe only this class.", required=False))
    def help(self, call):
        only = call.params.get("class")
        classes = [self.registry.get(only)] if only else self.registry.classes()
        result = [textBlock("usage", USAGE)]
        for consoleClass in classes:
            classElement = _element("class", name=consoleClass.name,
                                    description=consoleClass.description or "")
            methods = consoleClass.methods()
            for mname in sorted(methods):
                consoleMethod = methods[mname]
                methodElement = etree.SubElement(classElement, "method")
                methodElement.set("name", mname)
                methodElement.set("description", consoleMethod.description or "")
                for param in consoleMethod.params:
                    required = param.required and param.default is None
                    paramElement = etree.SubElement(methodElement, "param")
                    paramElement.set("name", param.name)
                    paramElement.set("description", param.description or "")
                    paramElement.set("required", "true" if required else "false")
                    if param.default is not None:
                        paramElement.set("default", str(param.default))
            result.append(classElement)
        return result

    @method("Re-read media.xml and apply the difference: unchanged listeners and "
            "channels keep their connections, changed ones restart, removed ones "
            "stop, new ones start.  Answers <reload> with one <added>, <changed>, "
            "<removed>, <kept> or <failed> element per listener or channel; a file "
            "that does not load changes nothing and answers Exception with its "
            "file and line.")
    def reload(self, call):
        def answer(result):
            element = _element("reload")
            for label in ("added", "changed", "removed", "kept"):
                for kind, name in getattr(result, label):
                    etree.SubElement(element, label, kind=kind, name=name)
            for kind, name, reason in result.failed:
                etree.SubElement(element, "failed", kind=kind, name=name, reason=reason)
            return element

        from aiengine.engine import ReloadError  # (engine imports this module)

        def refused(failure):
            failure.trap(ConfigError, ReloadError)
            # Engine.reload has logged it.
            raise CallError(f"reload refused, nothing changed: "
                            f"{failure.getErrorMessage()}", logged=True)

        return call.engine.reload().addCallbacks(answer, refused)

    @method("The version of aiengine.")
    def version(self, call):
        return _element("version", aiengine.__version__)

    @method("Every listener with its address and counters (connections accepted, "
            "refused and timed out; messages in and out; what was dropped); "
            "format=table: name, address, open connections, accepted, refused, "
            "messages in and out, as a text table.", FORMAT)
    def listeners(self, call):
        rows = _listenerRows(call.engine)
        if wantsTable(call):
            return textBlock("table", listenerTable(rows))
        result = []
        for name, address, counters in rows:
            element = _element("listener", name=name,
                               state="listening" if address else "stopped")
            if address:
                element.set("host", str(address[0]))
                element.set("port", str(address[1]))
            for key in sorted(counters):
                element.set(key, str(counters[key]))
            result.append(element)
        return result


def _topicName(call, key):
    name = call.params[key]
    if not name or not name.strip():
        raise CallError(f"parameter '{key}' must name a topic")
    try:
        return checkTopicName(name)
    except ValueError as e:
        raise CallError(f"parameter '{key}': {e}") from None


class Topics(ConsoleClass):
    """``Topics``: the topic broker seen from the console.

    The console's own publishes carry no session (they reach every
    subscriber) and name the console connection as their source; its
    subscriptions see every message of their topic, whatever the session.
    Subscribing twice to one topic on one connection is an error (the
    connection already receives that topic's events); subscriptions end when
    the connection closes.
    """

    name = "Topics"
    description = "Publish to, request through, subscribe to and list broker topics."

    def __init__(self):
        # connection -> {topic name: Subscription}
        self._subscriptions: dict = {}

    @method("Publish a message on a topic; answers <messageId>.",
            Param("topic", "Topic to publish on."),
            Param("message", "The message text (XML may be written inline)."),
            Param("type", "Message type: text, xml or xmlcall.", default="text"),
            Param("ttl", "Seconds after which the message, where it still waits in a "
                  "queue, is dropped (counted as expired).", required=False))
    def publish(self, call):
        topic = _topicName(call, "topic")
        msgtype = self._messageType(call)
        ttl = call.params.get("ttl")
        message = call.engine.broker.publish(
            topic, call.params["message"], msgtype=msgtype,
            source=call.connection.session, session=None,
            ttl=None if ttl in (None, "") else seconds(ttl, "ttl"))
        return _element("messageId", message.id)

    @method("Publish a message on topic-out and answer its reply on topic-in as "
            "<message id topic>: the message naming the request in in-reply-to, or "
            "else the next one naming no request, each reply to one request only.",
            Param("topic-out", "Topic to publish the request on."),
            Param("topic-in", "Topic the reply comes on."),
            Param("message", "The request text."),
            Param("timeout", "Seconds to wait for the reply.", default="30"))
    def request(self, call):
        topicOut = _topicName(call, "topic-out")
        topicIn = _topicName(call, "topic-in")
        timeout = seconds(call.params["timeout"])
        d = call.engine.broker.request(topicOut, topicIn, call.params["message"],
                                       timeout=timeout, source=call.connection.session)

        def noReply(failure):
            if failure.check(NoSubscriber):
                raise CallError(failure.getErrorMessage())
            failure.trap(TimeoutError)
            raise CallTimeout(f"no reply on {topicIn} within {timeout:g} s")

        d.addCallbacks(lambda reply: messageElement("message", reply), noReply)
        return d

    @method("Stream every message of a topic to this connection as "
            "<xmlevent topic id>text</xmlevent>, until unsubscribe or disconnect.",
            Param("topic", "Topic to follow."))
    def subscribe(self, call):
        topic = _topicName(call, "topic")
        connection = call.connection
        if connection.sendEvent is None:
            raise CallError("subscribe streams events to a console connection; a call "
                            "read from topic-in has none")
        subscriptions = self._subscriptions.get(connection)
        if subscriptions is not None and topic in subscriptions:
            raise CallError(f"already subscribed to {topic}")
        subscription = call.engine.broker.subscribe(
            topic, connection.sendEvent, session=None, name=f"console:{connection.session}")
        if subscriptions is None:
            subscriptions = self._subscriptions[connection] = {}
            subscriptions[topic] = subscription
            # Registered after the subscription so that a connection already
            # gone (cleanup runs at once) still cancels it.
            connection.addCleanup(lambda: self._connectionClosed(connection))
        else:
            subscriptions[topic] = subscription
        _log.info("{session} subscribed to {topic}", session=connection.session, topic=topic)
        return _element("subscribed", topic=topic)

    @method("Stop streaming a topic to this connection.",
            Param("topic", "Topic to stop following."))
    def unsubscribe(self, call):
        topic = _topicName(call, "topic")
        connection = call.connection
        subscription = self._subscriptions.get(connection, {}).pop(topic, None)
        if subscription is None:
            raise CallError(f"not subscribed to {topic}")
        subscription.cancel()
        _log.info("{session} unsubscribed from {topic}", session=connection.session,
                  topic=topic)
        return _element("unsubscribed", topic=topic)

    @method("List the topics in use, sorted by name, with their counters (published, "
            "delivered, unrouted: reached no subscriber, dropped, expired, replies taken "
            "by requests, requests waiting) and each subscriber's (delivered, queued, "
            "dropped); then <more> when the limit cut the list, and <reclaimed>: what "
            "the topics forgotten when idle had counted.",
            Param("prefix", "Only topics whose name starts with this.", default=""),
            Param("limit", "At most this many topics.", default="1000"))
    def list(self, call):
        prefix = call.params["prefix"]
        try:
            limit = int(call.params["limit"])
        except ValueError:
            limit = -1
        if limit < 1:
            raise CallError(f"parameter 'limit' must be a positive whole number, got "
                            f"{call.params['limit']!r}")
        broker = call.engine.broker
        topics = [t for t in broker.topics() if t.name.startswith(prefix)]
        result = []
        for topic in topics[:limit]:
            element = _element("topic", name=topic.name,
                               subscribers=len(topic.subscriptions),
                               published=topic.published, delivered=topic.delivered,
                               unrouted=topic.unrouted, dropped=topic.dropped,
                               expired=topic.expired, replies=topic.replies,
                               waiting=topic.waiting)
            for sub in topic.subscriptions:
                element.append(_element("subscriber", name=xmlSafe(str(sub.name)),
                                        delivered=sub.delivered, queued=sub.queued,
                                        dropped=sub.dropped, expired=sub.expired,
                                        failed=sub.failed))
            result.append(element)
        if len(topics) > limit:
            result.append(_element("more", topics=len(topics) - limit))
        result.append(_element("reclaimed", **broker.reclaimed))
        return result

    def _connectionClosed(self, connection):
        for subscription in self._subscriptions.pop(connection, {}).values():
            subscription.cancel()

    @staticmethod
    def _messageType(call):
        msgtype = call.params["type"]
        if msgtype not in MESSAGE_TYPES:
            raise CallError(f"parameter 'type' must be one of {', '.join(MESSAGE_TYPES)}, "
                            f"got {msgtype!r}")
        if msgtype != "text":
            try:
                parseDocument(call.params["message"].encode("utf-8", "surrogateescape"))
            except ValueError as e:
                raise CallError(f"message of type {msgtype} is not well-formed XML: {e}")
        return msgtype


def registerBuiltins(registry) -> None:
    """Register ``Engine`` and ``Topics`` in ``registry``."""
    registry.register(Engine(registry))
    registry.register(Topics())
