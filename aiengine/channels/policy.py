"""When a channel tries again, and what it says about failing: pure rules
that tests drive with a ``Clock``, apart from the channel that follows them."""

from __future__ import annotations

import random as _random
from typing import Optional

from twisted.internet import error

from aiengine.tls import describeFailure

__all__ = ["reconnectDelay", "failureNotice", "FailureStreak", "classifyEnd",
           "OURS", "IDLE_END", "DROPPED", "FAILED", "MIN_FAILED_DELAY",
           "BRIEF_CONNECTION", "REMIND_INTERVAL", "FIRST", "CHANGED", "REMINDER"]

#: shortest wait after a failed attempt, so a zero timeout cannot spin
MIN_FAILED_DELAY = 0.1
#: a connection proves itself by delivering a message or by staying up this
#: long without a protocol error; one that ends before that is a failed
#: attempt, so a server that accepts and hangs up at once is not hammered
BRIEF_CONNECTION = 1.0
#: seconds between "still failing" reminders while a channel keeps failing
REMIND_INTERVAL = 300.0

#: how a connection ended (:func:`classifyEnd`): closed by us, by its idle
#: timer, a working connection lost, or a failed attempt
OURS = "ours"
IDLE_END = "idle"
DROPPED = "dropped"
FAILED = "failed"

#: what :func:`failureNotice` asks to log
FIRST = "first"
CHANGED = "changed"
REMINDER = "reminder"


def classifyEnd(connection, reason, address: str, tlsName: Optional[str] = None,
                ours: bool = False) -> tuple:
    """How ``connection`` (a :class:`~aiengine.channels.connection.ChannelConnection`)
    ended, from what it recorded and the ``reason`` Failure: ``(kind,
    description)``, kind one of :data:`OURS`, :data:`IDLE_END`,
    :data:`DROPPED` (a working connection lost: retried soon) and
    :data:`FAILED` (an attempt that did not prove itself: retried after the
    reconnection timeout).  ``ours``: the channel was stopping.
    """
    clean = bool(reason.check(error.ConnectionDone))
    if ours or connection.closedByUs:
        return OURS, "closed" if clean else reason.getErrorMessage()
    if connection.idleClosed:
        return IDLE_END, "idle timeout"
    if connection.isProven(clean):
        if connection.protocolFailure is not None:
            return DROPPED, f"closed after a protocol error: {connection.protocolFailure}"
        return DROPPED, "closed by the server" if clean else reason.getErrorMessage()
    if connection.failReason is not None:
        why = f"failed: {connection.failReason}"
    elif not connection.up:
        why = "failed: " + describeFailure(reason, tlsName, connection.verifyResult)
    elif connection.protocolFailure is not None:
        return FAILED, f"protocol error from {address}: {connection.protocolFailure}"
    elif clean:
        why = "closed by the server right after it was made"
    elif connection.bytesIn:
        why = f"lost before a whole message arrived: {reason.getErrorMessage()}"
    else:
        why = f"lost right after it was made: {reason.getErrorMessage()}"
    return FAILED, f"connection to {address} {why}"


def reconnectDelay(timeout: float, failures: int, random=None) -> float:
    """Seconds to wait before the next connection attempt.

    ``failures`` counts attempts that failed in a row since the channel was
    last connected.  With none (a connection that was up has dropped) the
    channel retries soon: ``uniform(0, min(1, timeout))``.  After a failed
    attempt it waits about ``timeout`` (``uniform(0.9, 1.1) * timeout``, at
    least :data:`MIN_FAILED_DELAY`); the jitter keeps many channels from
    reconnecting in lock-step.  ``random`` is a ``random.Random`` (default:
    the module's).
    """
    rng = _random if random is None else random
    timeout = max(0.0, float(timeout))
    if failures <= 0:
        return rng.uniform(0.0, min(1.0, timeout))
    return max(MIN_FAILED_DELAY, rng.uniform(0.9, 1.1) * timeout)


def failureNotice(streak: int, reasonChanged: bool, sinceLogged: float,
                  interval: float = REMIND_INTERVAL) -> Optional[str]:
    """Whether a failed attempt is worth a log line, and which.

    ``streak`` is the number of failed attempts in a row including this one,
    ``reasonChanged`` whether its reason differs from the previous one's, and
    ``sinceLogged`` the seconds since the streak last logged.  Returns
    :data:`FIRST` for the first failure, :data:`CHANGED` when the reason
    changed, :data:`REMINDER` when ``interval`` seconds have passed, else None:
    a server that keeps refusing costs a line every ``interval`` seconds, not
    one per attempt.
    """
    if streak <= 1:
        return FIRST
    if reasonChanged:
        return CHANGED
    if sinceLogged >= interval:
        return REMINDER
    return None



class FailureStreak:
    """Failed connection attempts in a row, and the log lines they are worth
    (see :func:`failureNotice`): the first, a change of reason, a reminder
    every :data:`REMIND_INTERVAL` seconds, and the recovery.

    :param clock: an ``IReactorTime``.
    :param log: the channel's logger.
    """

    def __init__(self, clock, log, interval: float = REMIND_INTERVAL):
        self.clock = clock
        self.log = log
        self.interval = interval
        #: failed attempts since the channel last worked
        self.count = 0
        self._since = None
        self._reason = None
        self._lastNotice = None

    def failed(self, why: str, then: str = "") -> None:
        """One more failed attempt, for reason ``why``; ``then`` says what
        happens next (for the log line)."""
        now = self.clock.seconds()
        self.count += 1
        if self.count == 1:
            self._since = self._lastNotice = now
        notice = failureNotice(self.count, why != self._reason, now - self._lastNotice,
                               self.interval)
        previous, self._reason = self._reason, why
        if notice is None:
            return
        self._lastNotice = now
        if notice == FIRST:
            self.log.warn("{why}{then}", why=why, then=then)
        elif notice == CHANGED:
            self.log.warn("{why} (before: {previous}); {n} failed attempts in a row{then}",
                          why=why, previous=previous, n=self.count, then=then)
        else:
            self.log.warn("still failing after {n} attempts over {elapsed:.0f} s: "
                          "{why}{then}", n=self.count, elapsed=now - self._since, why=why,
                          then=then)

    def ended(self, where: str) -> None:
        """The channel works again (a connection proved itself to ``where``)."""
        if self.count:
            self.log.info("connected to {where} again after {n} failed attempt(s) over "
                          "{elapsed:.1f} s", where=where, n=self.count,
                          elapsed=self.clock.seconds() - self._since)
        self.count = 0
        self._reason = None
