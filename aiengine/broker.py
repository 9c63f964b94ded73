"""The topic broker ("IO channels"): publish/subscribe by topic name.

Topics exist when first used.  Each publish is delivered to every current
subscriber of the topic, in publish order per topic, with an id
``<topic>-<n>``.

Sessions mean "reply to": a message that answers a request (it carries
``in-reply-to``, the request's id) and has session S reaches subscribers
without a session and subscribers of session S only.  Every other message
reaches every subscriber, whatever its session, so what one listener
connection publishes reaches the connections of another listener (a hub).

Request/reply (:meth:`Broker.request`): each reply is consumed by exactly
one waiting request, the one whose id it names in ``in-reply-to``; replies
that name none go to the waiting requests first come, first served, one
each.  A request whose caller gives up (timeout, cancel) is *withdrawn*: a
channel that has not written it yet drops it instead.

A subscriber is a callable taking a :class:`Message`.  One that raises is logged
and counted and does not disturb the others.  One that returns a Deferred is
*busy* until it fires: later messages for it wait in its own bounded queue (in
order), and while any subscriber of a topic is busy the topic pauses the
producers registered with it (``IPushProducer``, usually the transport of the
connection that publishes there), so a slow subscriber slows its publisher
down instead of making the daemon buffer without bound.

Nothing is lost in silence: per topic, messages that reached no subscriber
and no request are counted (``unrouted``) and logged, as are messages a full
queue drops (``dropped``) and messages whose ``ttl`` ran out while queued
(``expired``).

Topics cost memory, and their names come from the network: a name is at most
:data:`MAX_TOPIC_NAME` characters, and a topic that has no subscriber, no
waiting request and no producer is forgotten (*reclaimed*; its counters are
added to :attr:`Broker.reclaimed`), unless it is *pinned* by a component that
keeps it (a listener's or channel's ``topic-in``).  A reclaimed topic that is
used again continues its ids where it stopped (for the last
:data:`REMEMBERED_IDS` names reclaimed).
"""

from __future__ import annotations

from collections import OrderedDict, deque
from types import MappingProxyType
from typing import Any, Callable, Optional

from twisted.internet.defer import CancelledError, Deferred, TimeoutError
from twisted.python.failure import Failure

from aiengine.logs import PeerSafeLogger, worthLogging

__all__ = ["Broker", "Message", "Subscription", "Topic", "NoSubscriber",
           "DEFAULT_QUEUE_LIMIT", "DEFAULT_QUEUE_BYTES", "MAX_TOPIC_NAME", "REMEMBERED_IDS",
           "checkTopicName"]

#: Messages a busy subscriber may have waiting before new ones are dropped.
DEFAULT_QUEUE_LIMIT = 10000
#: Bytes of message bodies a busy subscriber may have waiting, likewise (one
#: message always fits into an empty queue).
DEFAULT_QUEUE_BYTES = 16 << 20
#: Longest topic name, in characters.
MAX_TOPIC_NAME = 256
#: Reclaimed topics whose last id is remembered, so that their ids go on.
REMEMBERED_IDS = 10000


def checkTopicName(name) -> str:
    """``name`` if it can name a topic; raises ``ValueError`` saying why not."""
    if not name:
        raise ValueError("a topic needs a name")
    if len(name) > MAX_TOPIC_NAME:
        raise ValueError(f"a topic name has at most {MAX_TOPIC_NAME} characters, "
                         f"not {len(name)}")
    return name

_log = PeerSafeLogger(namespace="Broker")


#: the attributes of a message published without any (read-only, shared)
_NO_ATTRIBUTES = MappingProxyType({})


class NoSubscriber(Exception):
    """A request reached no subscriber of its topic, so no reply can come."""


class Message:
    """One message on a topic.

    ``body`` is bytes (any byte is data); ``text`` decodes it as UTF-8.
    ``attributes`` carries protocol metadata, for example an HTTP response's
    status and headers, or ``in-reply-to`` naming the request message's id
    (also in ``inReplyTo``: a message that has it is a reply, and its
    ``session`` says whom it is for).  ``id`` is ``<topic>-<n>``, built when
    first read (most never are).  ``expires`` (reactor seconds) is when a
    message that is still queued is dropped; ``withdrawn`` is set when the
    request it is has been given up by its caller.
    """

    __slots__ = ("topic", "_id", "_seq", "body", "msgtype", "source", "session",
                 "attributes", "inReplyTo", "expires", "withdrawn")

    def __init__(self, topic, id, body, msgtype="text", source=None, session=None,
                 attributes=None, seq=None):
        self.topic = topic
        self._id = id
        self._seq = seq
        self.body = body
        self.msgtype = msgtype
        self.source = source
        self.session = session
        if attributes is None:
            self.attributes = _NO_ATTRIBUTES
            self.inReplyTo = None
        else:
            self.attributes = attributes
            self.inReplyTo = attributes.get("in-reply-to")
        self.expires = None
        self.withdrawn = False

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

    def isStale(self, now) -> bool:
        """Whether this message should no longer be sent: its caller gave it
        up, or its ``expires`` time has come."""
        return self.withdrawn or (self.expires is not None and now >= self.expires)

    def __repr__(self):
        return (f"<Message {self.id} type={self.msgtype} source={self.source!r} "
                f"session={self.session!r} {len(self.body)} bytes>")


class Subscription:
    """A subscriber's registration on a topic; :meth:`cancel` ends it.

    Counters: ``delivered`` (messages handed to the callback), ``dropped``
    (its queue was full), ``expired`` (their ``ttl`` ran out in its queue),
    ``failed`` (the callback raised or its Deferred failed); ``queued`` is
    what waits in its queue now.
    """

    __slots__ = ("topic", "callback", "batchCallback", "session", "name", "queue",
                 "busy", "delivered", "dropped", "expired", "failed", "active",
                 "_limit", "_byteLimit", "queuedBytes")

    def __init__(self, topic, callback, session, name, limit, batchCallback=None,
                 byteLimit=DEFAULT_QUEUE_BYTES):
        self.topic = topic
        self.callback = callback
        self.batchCallback = batchCallback
        self.session = session
        self.name = name
        self.queue = deque()
        self.busy = False
        self.delivered = 0
        self.dropped = 0
        self.expired = 0
        self.failed = 0
        self.active = True
        self._limit = limit
        self._byteLimit = byteLimit
        #: bytes of the message bodies in the queue
        self.queuedBytes = 0

    @property
    def queued(self) -> int:
        """Messages waiting for this busy subscriber."""
        return len(self.queue)

    def cancel(self):
        """Stop receiving messages; anything still queued is discarded (and counted
        as dropped)."""
        if self.active:
            self.active = False
            self.topic._remove(self)

    def _enqueue(self, message):
        """Keep ``message`` until this busy subscriber is ready (bounded in
        messages and in bytes)."""
        size = len(message.body)
        if self.queue and (len(self.queue) >= self._limit
                           or self.queuedBytes + size > self._byteLimit):
            self.dropped += 1
            self.topic.dropped += 1
            if worthLogging(self.dropped):
                _log.warn(
                    "Topic {topic}: subscriber {name} is {n} messages ({size} bytes) "
                    "behind; dropped {dropped} so far",
                    topic=self.topic.name, name=self.name, n=len(self.queue),
                    size=self.queuedBytes, dropped=self.dropped)
            return
        self.queue.append(message)
        self.queuedBytes += size

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
            return
        self.busy = False
        queue = self.queue
        now = None
        while self.active and queue and not self.busy:
            message = queue.popleft()
            self.queuedBytes -= len(message.body)
            if message.expires is not None or message.withdrawn:
                if now is None:
                    now = self.topic.clock.seconds()
                if message.isStale(now):
                    self._expire(message)
                    continue
            self._call(message)
        # Balance the count taken when this subscriber became busy only now,
        # so that draining into another busy spell does not resume producers.
        self.topic._busyChanged(-1)

    def _expire(self, message):
        self.expired += 1
        self.topic.expired += 1
        if worthLogging(self.expired):
            _log.info("Topic {topic}: {id} expired in the queue of {name} ({n} so far)",
                      topic=self.topic.name, id=message.id, name=self.name,
                      n=self.expired)


class _ReplyWait:
    """A request waiting for its reply on a topic (see :meth:`Topic.waitReply`)."""

    __slots__ = ("request", "deferred", "timer")

    def __init__(self, request):
        self.request = request
        self.deferred = None
        self.timer = None


class Topic:
    """A named topic: its subscribers, waiting requests, counters and producers.

    Counters: ``published``, ``unrouted`` (reached no subscriber and no
    request), ``dropped`` and ``expired`` (in subscribers' queues),
    ``replies`` (taken by waiting requests); :attr:`delivered` adds up what
    every subscriber, past and present, was handed.
    """

    def __init__(self, name, queueLimit=DEFAULT_QUEUE_LIMIT, clock=None, owner=None):
        self.name = name
        self.clock = clock
        #: the Broker that forgets this topic once it is idle (see _reclaimIfIdle)
        self._owner = owner
        #: kept by a component that holds this object: never reclaimed
        self.pinned = False
        # Ids continue where a reclaimed topic of the same name stopped.
        self._idBase = 0
        # Subscriptions in subscribe order (a dict: adding and removing one
        # is O(1)), and a tuple of them that delivery iterates, so that
        # subscribers may (un)subscribe from their callbacks; it is made
        # again, once, at the first delivery after a change.
        self._subs: dict = {}
        self._snapshot: tuple = ()
        self.published = 0
        self.dropped = 0
        self.expired = 0
        self.unrouted = 0
        self.replies = 0
        # What subscribers that have gone were handed (see delivered).
        self._delivered = 0
        self._pending: deque = deque()
        self._delivering = False
        self._busy = 0
        self._producers: list = []
        self._paused = False
        self._queueLimit = queueLimit
        # Waiting requests, oldest first (OrderedDict: O(1) removal anywhere
        # and at the front), and the same by request id.
        self._waiting: OrderedDict = OrderedDict()
        self._waitingById: dict = {}

    @property
    def subscriptions(self) -> tuple:
        """The current subscriptions, in subscribe order."""
        snapshot = self._snapshot
        if snapshot is None:
            snapshot = self._snapshot = tuple(self._subs)
        return snapshot

    @property
    def delivered(self) -> int:
        """Messages handed to subscribers (each subscriber counts), and replies
        taken by requests."""
        return (self._delivered + self.replies
                + sum(sub.delivered for sub in self.subscriptions))

    @property
    def waiting(self) -> int:
        """Requests waiting for their reply on this topic."""
        return len(self._waiting)

    def message(self, body, msgtype="text", source=None, session=None,
                attributes=None) -> Message:
        """A message for this topic carrying the next id (not yet published)."""
        if body.__class__ is str:
            body = body.encode("utf-8")
        return Message(self.name, None, body, msgtype, source, session, attributes,
                       self._idBase + self.published + 1)

    def messages(self, bodies, msgtype="text", source=None, session=None) -> list:
        """Messages for ``bodies`` (bytes), with consecutive ids, not yet published.

        They are no replies (no attributes): what a connection reads.
        """
        name = self.name
        first = self._idBase + self.published + 1
        return [Message(name, None, body, msgtype, source, session, None, seq)
                for seq, body in enumerate(bodies, first)]

    def batch(self, items, source=None) -> list:
        """Messages for ``items`` of ``(body, msgtype, attributes)`` (bytes,
        str, dict or None), with consecutive ids, not yet published.

        None of them may be a reply (no ``in-reply-to`` attribute): they go
        to :meth:`publishBatch`, which routes no replies.
        """
        name = self.name
        first = self._idBase + self.published + 1
        return [Message(name, None, body, msgtype, source, None, attributes, seq)
                for seq, (body, msgtype, attributes) in enumerate(items, first)]

    def publishBatch(self, messages) -> None:
        """Publish ``messages`` (from :meth:`messages`: no replies) in order.

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
        routed = False
        subs = self._snapshot
        for sub in self.subscriptions if subs is None else subs:
            if not sub.active:
                continue
            routed = True
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
        if routed and not self._waiting:
            return
        for message in messages:
            if not (self._waiting and self._reply(message)) and not routed:
                self._unrouted(message)

    def publish(self, message: Message) -> bool:
        """Deliver ``message`` to every current subscriber, in order.

        Returns False when it reached no subscriber and no request (it is
        then counted in ``unrouted``), True otherwise (also when it waits
        behind a message being delivered).
        """
        self.published += 1
        if self._delivering:
            # A subscriber published here while being called: finish
            # delivering the earlier message first to keep per-topic order.
            self._pending.append(message)
            return True
        return self._run(self._deliver, message)

    def _run(self, deliver, first):
        """``deliver(first)``, then what subscribers published meanwhile."""
        self._delivering = True
        try:
            routed = deliver(first)
            while self._pending:
                self._deliver(self._pending.popleft())
        finally:
            self._delivering = False
        if not self._subs:
            self._reclaimIfIdle()
        return routed

    def _deliver(self, message):
        # The hot path: Subscription._call inlined.
        session = message.session if message.inReplyTo is not None else None
        routed = False
        subs = self._snapshot
        for sub in self.subscriptions if subs is None else subs:
            if not sub.active:
                continue
            if session is not None and sub.session is not None and sub.session != session:
                continue
            routed = True
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
        if self._waiting and self._reply(message):
            return True
        if not routed:
            self._unrouted(message)
        return routed

    def _unrouted(self, message):
        self.unrouted += 1
        # Counted over every topic for the log: topics come and go, and each
        # new one must not buy a log line.
        owner = self._owner
        if owner is not None:
            owner.unrouted += 1
            n = owner.unrouted
        else:
            n = self.unrouted
        if worthLogging(n):
            _log.warn("Topic {topic}: {id} reached no subscriber; {n} unrouted so far "
                      "on all topics", topic=self.name, id=message.id, n=n)

    # -- request/reply -----------------------------------------------------------

    def waitReply(self, request: Message, timeout: Optional[float] = None) -> Deferred:
        """A Deferred firing with the reply to ``request`` published here.

        The reply is the first message naming ``request``'s id in
        ``in-reply-to``, or, failing that, a message naming no request that
        comes while this is the oldest request waiting.  With ``timeout``
        seconds it fails with ``TimeoutError``.  A timeout or a cancel
        withdraws ``request`` (see :attr:`Message.withdrawn`).
        """
        wait = _ReplyWait(request)

        def cancel(d):
            self._giveUp(wait)

        wait.deferred = Deferred(cancel)
        self._waiting[wait] = None
        self._waitingById[request.id] = wait
        if timeout is not None:
            wait.timer = self.clock.callLater(timeout, self._timedOut, wait, timeout)
        return wait.deferred

    def _reply(self, message) -> bool:
        """Hand ``message`` to the request it answers, if one waits."""
        if message.inReplyTo is not None:
            wait = self._waitingById.pop(message.inReplyTo, None)
            if wait is None:
                return False  # a reply to someone else's request
            del self._waiting[wait]
        else:
            wait = next(iter(self._waiting))
            if wait.request is message:
                return False  # a request published where its reply comes
            del self._waiting[wait]
            del self._waitingById[wait.request.id]
        self.replies += 1
        if wait.timer is not None:
            wait.timer.cancel()
            wait.timer = None
        wait.deferred.callback(message)
        # Reclaimed, if idle, once the message being delivered is done.
        return True

    def _forget(self, wait) -> bool:
        if self._waiting.pop(wait, False) is not False:
            del self._waitingById[wait.request.id]
            wait.request.withdrawn = True
            if wait.timer is not None and wait.timer.active():
                wait.timer.cancel()
            wait.timer = None
            return True
        return False

    def _giveUp(self, wait):
        self._forget(wait)
        self._reclaimIfIdle()

    def _timedOut(self, wait, timeout):
        wait.timer = None
        if self._forget(wait):
            wait.deferred.errback(Failure(TimeoutError(
                f"no reply on {self.name} within {timeout:g} s")))
            self._reclaimIfIdle()

    # -- subscribers -------------------------------------------------------------

    def subscribe(self, callback, session=None, name=None,
                  batchCallback=None) -> Subscription:
        """Register a subscriber (see :meth:`Broker.subscribe`)."""
        sub = Subscription(self, callback, session, name or repr(callback),
                           self._queueLimit, batchCallback)
        self._subs[sub] = None
        self._snapshot = None
        return sub

    def _remove(self, sub):
        del self._subs[sub]
        self._snapshot = None
        self._delivered += sub.delivered
        if sub.queue:
            # What it will never get is dropped: counted, not lost in silence.
            self.dropped += len(sub.queue)
            sub.dropped += len(sub.queue)
            sub.queue.clear()
            sub.queuedBytes = 0
        if sub.busy:
            sub.busy = False
            self._busyChanged(-1)
        self._reclaimIfIdle()

    def _reclaimIfIdle(self):
        """Forget this topic if nothing holds it any more."""
        if (not self._subs and not self._waiting and not self._producers
                and not self.pinned and not self._delivering and self._owner is not None):
            self._owner._reclaim(self)

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
        self._reclaimIfIdle()

    def _busyChanged(self, delta):
        self._busy += delta
        if self._busy > 0 and not self._paused:
            self._paused = True
            for producer in tuple(self._producers):
                producer.pauseProducing()
        elif self._busy <= 0 and self._paused:
            self._busy = 0
            self._paused = False
            producers = self._producers
            if len(producers) > 1:
                # Each resume starts with the next producer: what the first
                # publishes may make a subscriber busy again, and the same one
                # must not go first every time.
                producers.append(producers.pop(0))
            for producer in tuple(producers):
                if self._paused:
                    # Busy again: the producers not resumed yet stay paused
                    # (resumed now, none would be paused again, and each
                    # would fill the busy subscriber's queue until it drops).
                    break
                producer.resumeProducing()


class Broker:
    """Topics by name, created on first use.

    :param clock: an ``IReactorTime`` for timeouts and ``ttl`` (the reactor,
        or a ``Clock`` in tests).
    """

    def __init__(self, clock=None, queueLimit=DEFAULT_QUEUE_LIMIT):
        if clock is None:
            from twisted.internet import reactor as clock
        self.clock = clock
        self.queueLimit = queueLimit
        self._topics: dict[str, Topic] = {}
        #: what the topics forgotten so far had counted, and how many they were
        self.reclaimed = dict.fromkeys(
            ("topics", "published", "delivered", "unrouted", "dropped", "expired"), 0)
        # name -> last id of recently reclaimed topics (bounded, oldest out)
        self._lastIds: OrderedDict = OrderedDict()
        #: messages that reached no subscriber and no request, on every topic
        self.unrouted = 0

    def topic(self, name: str, pin: bool = False) -> Topic:
        """The topic called ``name``, created if new.

        ``pin`` it when you keep the object: an idle topic that is not
        pinned is forgotten, and the name then leads to a new one.  Raises
        ``ValueError`` for a name that is empty or too long.
        """
        topic = self._topics.get(name)
        if topic is None:
            checkTopicName(name)
            topic = self._topics[name] = Topic(name, self.queueLimit, self.clock, self)
            topic._idBase = self._lastIds.pop(name, 0)
        if pin:
            topic.pinned = True
        return topic

    def _reclaim(self, topic):
        if self._topics.get(topic.name) is topic:
            del self._topics[topic.name]
            totals = self.reclaimed
            totals["topics"] += 1
            for key in ("published", "delivered", "unrouted", "dropped", "expired"):
                totals[key] += getattr(topic, key)
            lastIds = self._lastIds
            lastIds[topic.name] = topic._idBase + topic.published
            if len(lastIds) > REMEMBERED_IDS:
                lastIds.popitem(last=False)

    def topics(self) -> list[Topic]:
        """Every topic used so far, sorted by name."""
        return [self._topics[name] for name in sorted(self._topics)]

    def publish(self, topic: str, body, msgtype: str = "text", source=None,
                session=None, attributes=None, ttl: Optional[float] = None) -> Message:
        """Publish ``body`` (bytes, or str encoded as UTF-8) on ``topic``.

        Returns the :class:`Message`, already delivered to every subscriber
        that was not busy.  With ``ttl`` seconds, a copy still queued (for a
        busy subscriber, or in a channel that is not connected) after that
        long is dropped and counted as ``expired``.
        """
        t = self._topics.get(topic) or self.topic(topic)
        message = t.message(body, msgtype, source, session, attributes)
        if ttl is not None:
            message.expires = self.clock.seconds() + ttl
        t.publish(message)
        return message

    def subscribe(self, topic: str, callback: Callable[[Message], Any],
                  session=None, name: Optional[str] = None,
                  batchCallback: Optional[Callable[[list], Any]] = None) -> Subscription:
        """Call ``callback(message)`` for each message published on ``topic``.

        With ``session`` set, replies for other sessions are not delivered
        (every message that is not a reply is).
        ``batchCallback(messages)``, when given, takes the messages of a
        :meth:`Topic.publishBatch` in one call (a relay writes them in one
        go); it may return a Deferred like ``callback``.
        """
        return self.topic(topic).subscribe(callback, session, name, batchCallback)

    def nextMessage(self, topic: str, timeout: Optional[float] = None,
                    match: Optional[Callable[[Message], bool]] = None,
                    session=None) -> Deferred:
        """A Deferred firing with the next message on ``topic``.

        It only looks: every subscriber still gets the message (use
        :meth:`request` to consume a reply).  ``match`` picks which message
        counts (default: any).  With ``timeout`` seconds the Deferred fails
        with ``TimeoutError`` when none came.  Cancelling the Deferred ends
        the wait.
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
                msgtype: str = "text", source=None, session=None,
                ttl: Optional[float] = None) -> Deferred:
        """Publish ``body`` on ``topicOut`` and wait for its reply on ``topicIn``.

        The reply is consumed by this request alone (see
        :meth:`Topic.waitReply`): the one naming the request in
        ``in-reply-to``, else the next reply naming no request while this
        is the oldest request waiting.  The wait starts before the publish,
        so a synchronous reply is not missed.  Fails at once with
        :class:`NoSubscriber` when nothing subscribes to ``topicOut``, and
        with ``TimeoutError`` after ``timeout`` seconds; either way, and on
        cancel, the request is withdrawn from channel queues it still waits
        in.  ``ttl`` defaults to ``timeout``.
        """
        t = self.topic(topicOut)
        request = t.message(body, msgtype, source, session)
        if ttl is None:
            ttl = timeout
        if ttl is not None:
            request.expires = self.clock.seconds() + ttl
        d = self.topic(topicIn).waitReply(request, timeout)
        if not t.publish(request) and not d.called:

            def noSubscriber(failure):
                failure.trap(CancelledError)
                raise NoSubscriber(f"nothing subscribes to {topicOut}: the request "
                                   f"reached no one")

            d.addErrback(noSubscriber)
            d.cancel()
        return d
