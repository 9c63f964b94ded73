"""The topic broker ("IO channels"): publish/subscribe by topic name.

Topics exist when first used.  Each publish is delivered to every current
subscriber of the topic, in publish order per topic, with an id
``<topic>-<n>``.  Sessions restrict delivery: a message published with session
S reaches subscribers without a session and subscribers of session S; a
message without a session reaches every subscriber.

A subscriber is a callable taking a :class:`Message`.  One that raises is logged
and counted and does not disturb the others.  One that returns a Deferred is
*busy* until it fires: later messages for it wait in its own bounded queue (in
order), and while any subscriber of a topic is busy the topic pauses the
producers registered with it (``IPushProducer``, usually the transport of the
connection that publishes there), so a slow subscriber slows its publisher
down instead of making the daemon buffer without bound.  What a full queue
must drop is counted and logged.
"""

from __future__ import annotations

from collections import deque
from types import MappingProxyType
from typing import Any, Callable, Optional

from twisted.internet.defer import Deferred, TimeoutError
from twisted.logger import Logger
from twisted.python.failure import Failure

from aiengine.logs import worthLogging

__all__ = ["Broker", "Message", "Subscription", "Topic", "DEFAULT_QUEUE_LIMIT"]

#: Messages a busy subscriber may have waiting before new ones are dropped.
DEFAULT_QUEUE_LIMIT = 10000

_log = Logger(namespace="Broker")


#: the attributes of a message published without any (read-only, shared)
_NO_ATTRIBUTES = MappingProxyType({})


class Message:
    """One message on a topic.

    ``body`` is bytes (any byte is data); ``text`` decodes it as UTF-8.
    ``attributes`` carries protocol metadata, for example an HTTP response's
    status and headers, or ``in-reply-to`` naming the request message's id.
    ``id`` is ``<topic>-<n>``, built when first read (most never are).
    """

    __slots__ = ("topic", "_id", "_seq", "body", "msgtype", "source", "session",
                 "attributes")

    def __init__(self, topic, id, body, msgtype="text", source=None, session=None,
                 attributes=None, seq=None):
        self.topic = topic
        self._id = id
        self._seq = seq
        self.body = body
        self.msgtype = msgtype
        self.source = source
        self.session = session
        self.attributes = _NO_ATTRIBUTES if attributes is None else attributes

    @property
    def id(self) -> str:
        """``<topic>-<n>``: the topic's counter at publish time, from 1."""
        if self._id is None:
            self._id = f"{self.topic}-{self._seq}"
        return self._id

    @property
    def text(self) -> str:
        """The body decoded as UTF-8 (undecodable bytes replaced)."""
        return self.body.decode("utf-8", "replace")

    def __repr__(self):
        return (f"<Message {self.id} type={self.msgtype} source={self.source!r} "
                f"session={self.session!r} {len(self.body)} bytes>")


class Subscription:
    """A subscriber's registration on a topic; :meth:`cancel` ends it."""

    __slots__ = ("topic", "callback", "batchCallback", "session", "name", "queue",
                 "busy", "delivered", "dropped", "failed", "active", "_limit")

    def __init__(self, topic, callback, session, name, limit, batchCallback=None):
        self.topic = topic
        self.callback = callback
        self.batchCallback = batchCallback
        self.session = session
        self.name = name
        self.queue = deque()
        self.busy = False
        self.delivered = 0
        self.dropped = 0
        self.failed = 0
        self.active = True
        self._limit = limit

    def cancel(self):
        """Stop receiving messages; anything still queued is discarded."""
        if self.active:
            self.active = False
            self.topic._remove(self)

    def _enqueue(self, message):
        """Keep ``message`` until this busy subscriber is ready (bounded)."""
        if len(self.queue) >= self._limit:
            self.dropped += 1
            self.topic.dropped += 1
            if worthLogging(self.dropped):
                _log.warn(
                    "Topic {topic}: subscriber {name} is {n} messages behind; "
                    "dropped {dropped} so far",
                    topic=self.topic.name, name=self.name, n=len(self.queue),
                    dropped=self.dropped)
            return
        self.queue.append(message)

    def _call(self, message):
        self.delivered += 1
        try:
            result = self.callback(message)
        except Exception:
            self._failed(Failure(), message)
            return
        if result is not None and isinstance(result, Deferred):
            self._wait(result, message)

    def _wait(self, result, message):
        result.addErrback(self._failed, message)
        if not result.called:
            self.busy = True
            self.topic._busyChanged(+1)
            result.addBoth(self._done)

    def _failed(self, failure, message):
        self.failed += 1
        _log.failure("Topic {topic}: subscriber {name} failed on {id}", failure,
                     topic=self.topic.name, name=self.name, id=message.id)

    def _done(self, _):
        if not self.active:
            # Cancelled while busy: the topic has already accounted for it.
            self.queue.clear()
            return
        self.busy = False
        while self.active and self.queue and not self.busy:
            self._call(self.queue.popleft())
        # Balance the count taken when this subscriber became busy only now,
        # so that draining into another busy spell does not resume producers.
        self.topic._busyChanged(-1)


class Topic:
    """A named topic: its subscribers, counters and registered producers."""

    def __init__(self, name, queueLimit=DEFAULT_QUEUE_LIMIT):
        self.name = name
        # A tuple, replaced on (un)subscribe, so delivery iterates it without
        # copying while subscribers may (un)subscribe from their callbacks.
        self.subscriptions: tuple = ()
        self.published = 0
        self.dropped = 0
        self._pending: deque = deque()
        self._delivering = False
        self._busy = 0
        self._producers: list = []
        self._paused = False
        self._queueLimit = queueLimit

    def message(self, body, msgtype="text", source=None, session=None,
                attributes=None) -> Message:
        """A message for this topic carrying the next id (not yet published)."""
        if body.__class__ is str:
            body = body.encode("utf-8")
        return Message(self.name, None, body, msgtype, source, session, attributes,
                       self.published + 1)

    def messages(self, bodies, msgtype="text", source=None, session=None,
                 attributes=None) -> list:
        """Messages for ``bodies`` (bytes), with consecutive ids, not yet published."""
        name = self.name
        first = self.published + 1
        return [Message(name, None, body, msgtype, source, session, attributes, seq)
                for seq, body in enumerate(bodies, first)]

    def publishBatch(self, messages) -> None:
        """Publish ``messages`` (from :meth:`messages`, all of one session) in order.

        A subscriber with a ``batchCallback`` gets them in one call; the
        others one by one, exactly as :meth:`publish` would.
        """
        if not messages:
            return
        if self._delivering:
            for message in messages:
                self.publish(message)
            return
        self.published += len(messages)
        self._run(self._deliverBatch, messages)

    def _deliverBatch(self, messages):
        session = messages[0].session
        for sub in self.subscriptions:
            if not sub.active:
                continue
            if session is not None and sub.session is not None and sub.session != session:
                continue
            batch = sub.batchCallback
            if batch is None or sub.busy:
                for message in messages:
                    if not sub.active:
                        break
                    if sub.busy:
                        sub._enqueue(message)
                    else:
                        sub._call(message)
                continue
            sub.delivered += len(messages)
            try:
                result = batch(messages)
            except Exception:
                sub._failed(Failure(), messages[0])
                continue
            if result is not None and isinstance(result, Deferred):
                sub._wait(result, messages[-1])

    def publish(self, message: Message) -> None:
        """Deliver ``message`` to every current subscriber, in order."""
        self.published += 1
        if self._delivering:
            # A subscriber published here while being called: finish
            # delivering the earlier message first to keep per-topic order.
            self._pending.append(message)
            return
        self._run(self._deliver, message)

    def _run(self, deliver, first):
        """``deliver(first)``, then what subscribers published meanwhile."""
        self._delivering = True
        try:
            deliver(first)
            while self._pending:
                self._deliver(self._pending.popleft())
        finally:
            self._delivering = False

    def _deliver(self, message):
        # The hot path: Subscription._call inlined.
        session = message.session
        for sub in self.subscriptions:
            if not sub.active:
                continue
            if session is not None and sub.session is not None and sub.session != session:
                continue
            if sub.busy:
                sub._enqueue(message)
                continue
            sub.delivered += 1
            try:
                result = sub.callback(message)
            except Exception:
                sub._failed(Failure(), message)
                continue
            if result is not None and isinstance(result, Deferred):
                sub._wait(result, message)

    def subscribe(self, callback, session=None, name=None,
                  batchCallback=None) -> Subscription:
        """Register a subscriber (see :meth:`Broker.subscribe`)."""
        sub = Subscription(self, callback, session, name or repr(callback),
                           self._queueLimit, batchCallback)
        self.subscriptions += (sub,)
        return sub

    def _remove(self, sub):
        self.subscriptions = tuple(s for s in self.subscriptions if s is not sub)
        if sub.busy:
            sub.busy = False
            self._busyChanged(-1)

    def registerProducer(self, producer) -> None:
        """Pause ``producer`` (an ``IPushProducer``) while a subscriber is busy."""
        self._producers.append(producer)
        if self._paused:
            producer.pauseProducing()

    def unregisterProducer(self, producer) -> None:
        """Forget ``producer``; it is resumed if this topic had paused it."""
        try:
            self._producers.remove(producer)
        except ValueError:
            return
        if self._paused:
            producer.resumeProducing()

    def _busyChanged(self, delta):
        self._busy += delta
        if self._busy > 0 and not self._paused:
            self._paused = True
            for producer in tuple(self._producers):
                producer.pauseProducing()
        elif self._busy <= 0 and self._paused:
            self._busy = 0
            self._paused = False
            for producer in tuple(self._producers):
                producer.resumeProducing()


class Broker:
    """Topics by name, created on first use.

    :param clock: an ``IReactorTime`` for timeouts (the reactor, or a ``Clock``
        in tests).
    """

    def __init__(self, clock=None, queueLimit=DEFAULT_QUEUE_LIMIT):
        if clock is None:
            from twisted.internet import reactor as clock
        self.clock = clock
        self.queueLimit = queueLimit
        self._topics: dict[str, Topic] = {}

    def topic(self, name: str) -> Topic:
        """The topic called ``name``, created if new."""
        topic = self._topics.get(name)
        if topic is None:
            if not name:
                raise ValueError("a topic needs a name")
            topic = self._topics[name] = Topic(name, self.queueLimit)
        return topic

    def topics(self) -> list[Topic]:
        """Every topic used so far, sorted by name."""
        return [self._topics[name] for name in sorted(self._topics)]

    def publish(self, topic: str, body, msgtype: str = "text", source=None,
                session=None, attributes=None) -> Message:
        """Publish ``body`` (bytes, or str encoded as UTF-8) on ``topic``.

        Returns the :class:`Message`, already delivered to every subscriber
        that was not busy.
        """
        t = self._topics.get(topic) or self.topic(topic)
        message = t.message(body, msgtype, source, session, attributes)
        t.publish(message)
        return message

    def subscribe(self, topic: str, callback: Callable[[Message], Any],
                  session=None, name: Optional[str] = None,
                  batchCallback: Optional[Callable[[list], Any]] = None) -> Subscription:
        """Call ``callback(message)`` for each message published on ``topic``.

        With ``session`` set, messages of other sessions are not delivered.
        ``batchCallback(messages)``, when given, takes the messages of a
        :meth:`Topic.publishBatch` in one call (a relay writes them in one
        go); it may return a Deferred like ``callback``.
        """
        return self.topic(topic).subscribe(callback, session, name, batchCallback)

    def nextMessage(self, topic: str, timeout: Optional[float] = None,
                    match: Optional[Callable[[Message], bool]] = None,
                    session=None) -> Deferred:
        """A Deferred firing with the next message on ``topic``.

        ``match`` picks which message counts (default: any).  With ``timeout``
        seconds the Deferred fails with ``TimeoutError`` when none came.
        Cancelling the Deferred ends the wait.
        """
        sub = None
        delayed = None

        def cancel(d):
            cleanup()

        d = Deferred(cancel)

        def cleanup():
            if sub is not None:
                sub.cancel()
            if delayed is not None and delayed.active():
                delayed.cancel()

        def onMessage(message):
            if d.called:
                return
            if match is not None and not match(message):
                return
            cleanup()
            d.callback(message)

        def onTimeout():
            if not d.called:
                cleanup()
                d.errback(Failure(TimeoutError(f"no message on {topic} within {timeout} s")))

        sub = self.subscribe(topic, onMessage, session=session, name=f"wait:{topic}")
        if timeout is not None:
            delayed = self.clock.callLater(timeout, onTimeout)
        return d

    def request(self, topicOut: str, topicIn: str, body, timeout: Optional[float] = None,
                match: Optional[Callable[[Message], bool]] = None, msgtype: str = "text",
                source=None, session=None) -> Deferred:
        """Publish ``body`` on ``topicOut`` and wait for the reply on ``topicIn``.

        ``match`` is called with ``(request, reply)`` and picks the reply
        (default: the next message on ``topicIn``).  The wait starts before
        the publish, so a synchronous reply is not missed.
        """
        t = self.topic(topicOut)
        request = t.message(body, msgtype, source, session)
        picker = None if match is None else (lambda reply: match(request, reply))
        d = self.nextMessage(topicIn, timeout=timeout, match=picker)
        t.publish(request)
        return d
