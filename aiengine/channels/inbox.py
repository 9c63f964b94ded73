"""What a channel has read and not yet handed over: the inbox of
``Media.receive`` and ``Media.receiveFixed``, and the readers waiting."""

from __future__ import annotations

from collections import deque
from typing import Optional

from twisted.internet.defer import Deferred, TimeoutError

from aiengine.broker import Message
from aiengine.logs import worthLogging

__all__ = ["Inbox"]

#: log the first drop and then every this many
DROP_LOG_EVERY = 100


def _withBody(message, body):
    return Message(message.topic, message.id, body, message.msgtype, message.source,
                   message.session, message.attributes)


class _Waiter:
    __slots__ = ("deferred", "size", "buf", "first", "timer", "done")

    def __init__(self, size):
        self.deferred = None
        self.size = size
        self.buf = bytearray()
        self.first = None
        self.timer = None
        #: answered or given up; it leaves the queue of waiters when it is
        #: at its head (a removal from the middle would cost O(n))
        self.done = False


class Inbox:
    """Inbound messages kept for :meth:`receive` (bounded: the oldest go
    first, counted in ``dropped``), and the readers waiting for them, served
    in the order they came.

    :param name: the channel's name (message ids are ``<name>-<n>``).
    :param limit: messages kept at most (``inbox-size``).
    :param clock: an ``IReactorTime``.
    :param log: the channel's logger.
    """

    # Empty until used: a deque costs about 600 bytes, and a daemon may run
    # tens of thousands of channels.
    _messages = _waiters = ()

    def __init__(self, name, limit, clock, log):
        self.name = name
        self.limit = limit
        self.clock = clock
        self.log = log
        #: messages dropped from a full inbox
        self.dropped = 0
        #: reads that timed out
        self.timeouts = 0
        self._seq = 0

    def __len__(self):
        return len(self._messages)

    @property
    def waiting(self) -> bool:
        """Whether a reader may be waiting."""
        return bool(self._waiters)

    def message(self, body, msgtype, attributes=None) -> Message:
        """A message read from the channel, with the inbox's next id."""
        self._seq += 1
        session = attributes.get("session") if attributes else None
        return Message(self.name, f"{self.name}-{self._seq}", body, msgtype, self.name,
                       session, attributes)

    def keep(self, message) -> None:
        """Keep ``message`` for the next reader (the oldest kept go first)."""
        messages = self._deque("_messages")
        if len(messages) >= self.limit:
            if not messages:
                self._dropped()
                return
            messages.popleft()
            self._dropped()
        messages.append(message)
        self._serve()

    def offer(self, message) -> None:
        """Hand ``message`` to the readers waiting now; keep nothing of it but
        what a fixed-size read leaves over."""
        self._deque("_messages").append(message)
        self._serve()
        if self._messages and self._messages[-1] is message:
            self._messages.pop()

    def receive(self, timeout: float) -> Deferred:
        """The oldest message kept, within ``timeout`` seconds."""
        return self._wait(_Waiter(None), timeout)

    def receiveFixed(self, size: int, timeout: float) -> Deferred:
        """Exactly ``size`` bytes, across messages, within ``timeout`` seconds."""
        return self._wait(_Waiter(size), timeout)

    def failAll(self, exception) -> None:
        """Every waiting reader fails with ``exception``."""
        waiters, self._waiters = self._waiters, ()
        for waiter in waiters:
            if not waiter.done:
                waiter.done = True
                self._endWaiter(waiter)
                waiter.deferred.errback(exception)

    # -- internals --------------------------------------------------------------

    def _deque(self, name) -> deque:
        value = self.__dict__.get(name)
        if value.__class__ is not deque:
            value = deque(value or ())
            setattr(self, name, value)
        return value

    def _dropped(self):
        self.dropped += 1
        if worthLogging(self.dropped, DROP_LOG_EVERY):
            self.log.warn("inbox full ({size} messages nobody received): dropped the "
                          "oldest; {dropped} dropped so far",
                          size=self.limit, dropped=self.dropped)

    def _wait(self, waiter, timeout: Optional[float]):
        timeout = max(0.0, float(timeout))

        def cancel(d):
            self._giveUp(waiter)

        waiter.deferred = Deferred(cancel)
        self._deque("_waiters").append(waiter)
        self._serve()
        if not waiter.deferred.called:
            waiter.timer = self.clock.callLater(timeout, self._timedOut, waiter, timeout)
        return waiter.deferred

    def _timedOut(self, waiter, timeout):
        waiter.timer = None
        if self._giveUp(waiter):
            self.timeouts += 1
            what = ("message" if waiter.size is None else f"{waiter.size} bytes")
            waiter.deferred.errback(TimeoutError(
                f"no {what} from channel {self.name} within {timeout:g} s"))

    def _giveUp(self, waiter):
        """Forget ``waiter``; put back the bytes it took.  False if it was done."""
        if waiter.done:
            return False
        waiter.done = True
        waiters = self._waiters
        while waiters and waiters[0].done:
            waiters.popleft()
        self._endWaiter(waiter)
        if waiter.buf:
            self._deque("_messages").appendleft(_withBody(waiter.first, bytes(waiter.buf)))
            waiter.buf = bytearray()
            self._serve()
        return True

    @staticmethod
    def _endWaiter(waiter):
        if waiter.timer is not None and waiter.timer.active():
            waiter.timer.cancel()
        waiter.timer = None

    def _serve(self):
        waiters, messages = self._waiters, self._messages
        while waiters and messages:
            waiter = waiters[0]
            if waiter.done:
                waiters.popleft()
                continue
            if waiter.size is None:
                waiters.popleft()
                waiter.done = True
                self._endWaiter(waiter)
                waiter.deferred.callback(messages.popleft())
                continue
            message = messages[0]
            if waiter.first is None:
                waiter.first = message
            need = waiter.size - len(waiter.buf)
            if len(message.body) <= need:
                messages.popleft()
                waiter.buf += message.body
            else:
                waiter.buf += message.body[:need]
                messages[0] = _withBody(message, message.body[need:])
            if len(waiter.buf) == waiter.size:
                waiters.popleft()
                waiter.done = True
                self._endWaiter(waiter)
                waiter.deferred.callback(bytes(waiter.buf))
