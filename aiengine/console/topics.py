"""A console's ``topic-in`` and ``topic-out``: its calls on the broker.

As in the original, a console listener may name two topics:

- Every call made at one of its connections is published on ``topic-in``
  (type ``xml``, the connection's session and source), and its answer on
  ``topic-out`` as a reply to it (``in-reply-to`` names the call's message,
  the session is the connection's), so a subscriber can watch the console's
  traffic.  These copies are published only while someone other than the
  console watches the topic: unwatched, they would only be counted as
  unrouted.
- An ``<xmlcall>`` that anyone else publishes on ``topic-in`` (a listener
  connection, a channel, ``Topics.publish`` at a console, a program using
  the broker) is executed as if it had come from a console connection, and
  its ``<xmlcallresult>`` is published on ``topic-out`` with ``in-reply-to``
  set to the call's message id and the call's session: a listener
  connection that sent the call gets the answer back, and no other
  connection does.  A message there that is not a well-formed ``<xmlcall>``
  is answered with an Exception, as at the console.  A reply published
  there (a message with ``in-reply-to``) is not answered: answering answers
  would let two consoles feed each other for ever.

Authentication: a console with a secret executes a topic call only when the
message was published by one of its own connections that has logged in
(``Topics.publish`` there), or by the process itself (a message without a
source, from a program embedding the engine).  A listener connection's login
proves that listener's secret, not the console's; a channel's messages come
from a server that proved nothing; so everything else is answered "not
authenticated".  Without a secret the console runs every call, as it does for
anyone who can connect to it: media.xml refuses a configuration where a
listener open to other machines without authentication publishes to such a
console's ``topic-in``.
"""

from __future__ import annotations

from time import monotonic

from twisted.internet.defer import CancelledError, Deferred, fail
from twisted.python.failure import Failure

from aiengine.console.interfaces import CallError
from aiengine.console.protocol import failureMessage, okResult, prepareCall
from aiengine.console.results import TERMINATOR, frame, resultElement
from aiengine.logs import PeerSafeLogger, worthLogging
from aiengine.protocols.xmlsplit import parseDocument

__all__ = ["ConsoleTopics", "TopicCaller", "MIRRORED"]

#: Attribute of the copy of a call the console already executed: the
#: console's own executor leaves it alone.
MIRRORED = "console-call"

_TERMINATOR = len(TERMINATOR)


def _body(element) -> bytes:
    """``element`` as a message body: the console's serialisation, without
    the frame's terminator (the writer's protocol adds its own)."""
    return frame(element)[:-_TERMINATOR]


class TopicCaller:
    """The ``connection`` of a call read from ``topic-in``.

    It has the request's session, and no connection to keep anything on:
    a topic call cannot log in or subscribe (its caller would never see the
    events), and says so.
    """

    authRequired = False

    def __init__(self, session, authenticated):
        self.session = session
        self.authenticated = authenticated

    def login(self, secret):
        raise CallError("a topic call cannot log in: it has no connection to "
                        "remember the login; log in at a console connection")

    def addCleanup(self, function):
        raise CallError("this call needs a console connection; a call read "
                        "from topic-in has none")

    sendEvent = None


class ConsoleTopics:
    """The topics of one console listener (see the module's docstring).

    :param factory: the console's ``ConsoleFactory`` (registry, engine,
        secret, size limit, log).
    :param broker: the engine's broker.
    :param topicIn: name of ``topic-in`` or None.
    :param topicOut: name of ``topic-out`` or None.
    """

    def __init__(self, factory, broker, topicIn, topicOut):
        self.factory = factory
        self.broker = broker
        self.topicIn = broker.topic(topicIn, pin=True) if topicIn else None
        self.topicOut = broker.topic(topicOut, pin=True) if topicOut else None
        self.log = PeerSafeLogger(namespace=f"SocketServer::{factory.name}")
        self._subscription = None
        self._running: set[Deferred] = set()
        self._scheduled: dict = {}  # message -> DelayedCall of a call not yet run
        self._source = f"console:{factory.name}"
        #: calls read from topic-in and executed (answered OK or Exception)
        self.calls = 0
        #: of those, answered Exception
        self.errors = 0
        #: calls refused because their publisher is not trusted (see above)
        self.refused = 0
        #: replies read on topic-in, left unanswered
        self.ignored = 0
        #: answers with no topic-out to go to (logged)
        self.unanswered = 0
        #: copies of connection calls and answers published
        self.mirrored = 0

    # -- life ----------------------------------------------------------------

    def start(self):
        """Take calls from ``topic-in``."""
        if self.topicIn is not None and self._subscription is None:
            self._subscription = self.topicIn.subscribe(
                self._received, name=self._source)

    def stop(self):
        """Stop taking calls; the calls still running are cancelled."""
        if self._subscription is not None:
            self._subscription.cancel()
            self._subscription = None
        for message, delayed in list(self._scheduled.items()):
            delayed.cancel()
            del self._scheduled[message]
            self._cancelled(message)
        for d in list(self._running):
            d.cancel()

    def stats(self) -> dict:
        """The counters, by name."""
        return {key: getattr(self, key) for key in (
            "calls", "errors", "refused", "ignored", "unanswered", "mirrored")}

    # -- copies of a connection's calls ---------------------------------------

    def _watched(self, topic) -> bool:
        if topic is None:
            return False
        watchers = len(topic.subscriptions) + topic.waiting
        if topic is self.topicIn and self._subscription is not None:
            watchers -= 1
        return watchers > 0

    def mirrorCall(self, connection, data: bytes):
        """Publish a copy of a call read at ``connection``; returns what its
        answer's copy names in ``in-reply-to`` (None: no copies at all)."""
        if not (self._watched(self.topicIn) or self._watched(self.topicOut)):
            return None
        if self.topicIn is None:
            return ""
        topic = self.topicIn
        message = topic.message(data, "xml", connection.session, connection.session,
                                {MIRRORED: self.factory.name})
        topic.publish(message)
        self.mirrored += 1
        return message.id

    def mirrorAnswer(self, connection, element, inReplyTo: str):
        """Publish a copy of the answer ``element`` to a connection's call."""
        topic = self.topicOut
        if not self._watched(topic):
            return
        topic.publish(topic.message(_body(element), "xml", self._source,
                                    connection.session, {"in-reply-to": inReplyTo}))
        self.mirrored += 1

    # -- calls read from topic-in --------------------------------------------

    def _received(self, message):
        if MIRRORED in message.attributes:
            return  # a connection's call, executed there already
        if message.inReplyTo is not None:
            self.ignored += 1
            if worthLogging(self.ignored):
                self.log.info("{topic}: {id} is a reply, not a call: not answered "
                              "({n} so far)", topic=message.topic, id=message.id,
                              n=self.ignored)
            return
        self.calls += 1
        # Run on a turn of its own, as a console connection's request is:
        # every subscriber sees the call before anyone sees its answer.
        self._scheduled[message] = self.factory.clock.callLater(0, self._run, message)

    def _run(self, message):
        del self._scheduled[message]
        try:
            root = parseDocument(message.body.strip(b" \t\r\n\x01"),
                                 self.factory.maxSize)
        except ValueError as e:
            self._answer(message, resultElement(
                "Exception", error=f"malformed request: {e}"), failed=True)
            return
        requestId, name = root.get("requestId"), root.get("name")
        if not self._trusted(message):
            self.refused += 1
            self._answer(message, resultElement(
                "Exception", requestId, name,
                f"not authenticated: console '{self.factory.name}' requires a login, "
                "and takes topic calls only from its own logged-in connections"),
                failed=True)
            return
        caller = TopicCaller(message.session or message.source, True)
        try:
            method, call, label = prepareCall(self.factory, root, caller, True,
                                              requestId, name)
        except CallError as e:
            self._answer(message, resultElement("Exception", requestId, name, str(e)),
                         failed=True)
            return
        registry = self.factory.registry
        started = monotonic()
        try:
            result = method.function(call)
        except Exception:
            result = fail()
        if not isinstance(result, Deferred):
            registry.called(method, True, monotonic() - started)
            self._done(result, message, requestId, name, label)
            return
        result.addBoth(registry.ended, method, started)
        self._running.add(result)

        def ended(outcome):
            self._running.discard(result)
            return outcome

        result.addBoth(ended)
        result.addBoth(self._done, message, requestId, name, label)

    def _done(self, outcome, message, requestId, name, label):
        if isinstance(outcome, Failure):
            if outcome.check(CancelledError):
                self._cancelled(message, requestId, name)
                return
            text = failureMessage(outcome, self.log, message.topic, label, requestId)
            self._answer(message, resultElement("Exception", requestId, name, text),
                         failed=True)
            return
        try:
            answer = okResult(outcome, requestId, name)
        except TypeError as e:
            self._answer(message, resultElement("Exception", requestId, name,
                                                f"{label}: {e}"), failed=True)
            return
        self._answer(message, answer)

    def _cancelled(self, message, requestId=None, name=None):
        if requestId is None:
            try:
                root = parseDocument(message.body.strip(b" \t\r\n\x01"),
                                     self.factory.maxSize)
                requestId, name = root.get("requestId"), root.get("name")
            except ValueError:
                pass
        self._answer(message, resultElement("Exception", requestId, name,
                                            "cancelled: the console stopped"),
                     failed=True)

    def _trusted(self, message) -> bool:
        if not self.factory.authRequired or message.source is None:
            return True
        connection = self.factory.sessions.get(message.source)
        return connection is not None and connection.authenticated

    def _answer(self, message, element, failed=False):
        if failed:
            self.errors += 1
            self.log.warn("{topic}: call {id} from {source} failed: {error}",
                          topic=message.topic, id=message.id, source=message.source,
                          error=element.findtext("exception"))
        topic = self.topicOut
        if topic is None:
            self.unanswered += 1
            if worthLogging(self.unanswered):
                self.log.info("{id}: answered, but console {name} has no topic-out to "
                              "publish the answer on ({n} so far)", id=message.id,
                              name=self.factory.name, n=self.unanswered)
            return
        topic.publish(topic.message(
            _body(element), "xml", self._source, message.session,
            {"in-reply-to": message.id}))

