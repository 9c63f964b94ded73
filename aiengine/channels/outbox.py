"""What a channel has to write and cannot yet: a bounded queue, kept in
order, whose stale entries are dropped and counted, and the backpressure
that holds topic-out's publishers meanwhile."""

from __future__ import annotations

from collections import deque
from typing import Optional

from twisted.internet.defer import Deferred

from aiengine.logs import worthLogging

__all__ = ["Outbox", "Deadline"]

#: log the first drop and then every this many
DROP_LOG_EVERY = 100


class Deadline:
    """When a message sent without a broker message (the media API) goes
    stale: at ``expires`` (reactor seconds), or once ``withdrawn``."""

    __slots__ = ("expires", "withdrawn")

    def __init__(self, expires):
        self.expires = expires
        self.withdrawn = False


class Outbox:
    """Messages waiting to be written, in order, at most ``limit`` of them.

    Each entry is ``(body, attributes, ticket)``; ``ticket`` (a broker
    ``Message`` or a :class:`Deadline`, or None) says when it goes stale:
    withdrawn (its caller gave up) or past its ``expires``.  A stale entry is
    dropped when its turn comes, or to make room, and counted in
    ``withdrawn`` or ``expired``; an entry a full queue cannot take is
    counted in ``dropped``; what is left when the channel stops, in
    ``unsent``.

    :param clock: an ``IReactorTime``.
    :param log: the channel's logger.
    """

    # Empty until used: a deque costs about 600 bytes, and a daemon may run
    # tens of thousands of channels.
    _queue = ()
    dropped = expired = withdrawn = unsent = 0

    def __init__(self, limit, clock, log):
        self.limit = limit
        self.clock = clock
        self.log = log
        self._drained: Optional[Deferred] = None

    def __len__(self):
        return len(self._queue)

    def add(self, body, attributes, ticket, why) -> bool:
        """Queue an entry; False when the queue is full (stale entries are
        dropped first), in which case it is counted and, now and then,
        logged with ``why()`` (why nothing is written)."""
        queue = self._queue
        if len(queue) >= self.limit:
            self.purgeStale()
            queue = self._queue
        if len(queue) >= self.limit:
            self.dropped += 1
            if worthLogging(self.dropped, DROP_LOG_EVERY):
                self.log.warn("{why} and {n} message(s) already queued: dropped a "
                              "message; {dropped} dropped so far",
                              why=why(), n=len(queue), dropped=self.dropped)
            return False
        if queue.__class__ is not deque:
            queue = self._queue = deque()
        queue.append((body, attributes, ticket))
        return True

    def take(self):
        """The oldest entry that is still to be written, or None."""
        queue = self._queue
        now = None
        while queue:
            entry = queue.popleft()
            ticket = entry[2]
            if ticket is not None:
                if now is None:
                    now = self.clock.seconds()
                if self._stale(ticket, now):
                    continue
            return entry
        return None

    def purgeStale(self) -> None:
        """Drop the entries that went stale (counted)."""
        queue = self._queue
        if not queue:
            return
        now = self.clock.seconds()
        kept = [entry for entry in queue
                if entry[2] is None or not self._stale(entry[2], now)]
        if len(kept) != len(queue):
            queue.clear()
            queue.extend(kept)

    def discard(self) -> int:
        """Forget every entry, counted in ``unsent``; returns how many."""
        n = len(self._queue)
        if n:
            self.unsent += n
            self._queue.clear()
        return n

    def _stale(self, ticket, now) -> bool:
        if ticket.withdrawn:
            self.withdrawn += 1
            if worthLogging(self.withdrawn, DROP_LOG_EVERY):
                self.log.info("dropped a queued request its caller gave up on; {n} so "
                              "far", n=self.withdrawn)
            return True
        if ticket.expires is not None and now >= ticket.expires:
            self.expired += 1
            if worthLogging(self.expired, DROP_LOG_EVERY):
                self.log.info("dropped a queued message whose ttl ran out; {n} so far",
                              n=self.expired)
            return True
        return False

    # -- backpressure on topic-out's publishers ---------------------------------

    def holdPublishers(self) -> Deferred:
        """A Deferred for topic-out's subscription to return: the broker
        pauses its publishers until :meth:`releasePublishers`."""
        if self._drained is None:
            self._drained = Deferred()
        return self._drained

    @property
    def holdingPublishers(self) -> bool:
        """Whether publishers wait for :meth:`releasePublishers`."""
        return self._drained is not None

    def releasePublishers(self) -> None:
        """The channel can take messages again."""
        drained, self._drained = self._drained, None
        if drained is not None:
            drained.callback(None)
