"""systemd's notification protocol (``sd_notify``), spoken directly.

A service of ``Type=notify`` tells systemd how it is doing with datagrams of
``KEY=value`` lines sent to the unix socket named by ``$NOTIFY_SOCKET``
(a leading ``@`` names a socket in the abstract namespace):
``READY=1`` once it serves, ``RELOADING=1`` and ``READY=1`` around a
reload, ``STOPPING=1`` when it begins to stop, ``STATUS=...`` for
``systemctl status``, and ``WATCHDOG=1`` at least every ``$WATCHDOG_USEC``
microseconds when the unit sets ``WatchdogSec=``.

Without ``$NOTIFY_SOCKET`` (not started by systemd) every function here does
nothing.  A notification that cannot be sent is logged, never raised: systemd
being away must not stop the daemon.

:func:`fromEnvironment` gives a :class:`Notifier` for an environment;
:func:`notifyReady`, :func:`notifyReloading`, :func:`notifyStopping` and
:func:`notifyStatus` use the process's own one.
"""

from __future__ import annotations

import os
import socket
import time

from twisted.internet import task
from twisted.logger import Logger

from aiengine.logs import worthLogging

__all__ = ["Notifier", "Watchdog", "fromEnvironment", "watchdogInterval",
           "processNotifier", "notifyReady", "notifyReloading", "notifyStopping",
           "notifyStatus"]

_log = Logger(namespace="aiengine.systemd")


def _socketAddress(value: str):
    """The ``sendto`` address of a ``$NOTIFY_SOCKET`` value, or None."""
    if value.startswith("@"):
        return "\0" + value[1:]  # Linux abstract namespace
    if value.startswith("/"):
        return value
    return None  # vsock:... and the like: not spoken here


class Notifier:
    """Sends notifications to systemd's socket at ``address`` (as in
    ``$NOTIFY_SOCKET``).  Counts ``sent`` and ``failed`` datagrams."""

    def __init__(self, address: str):
        self.address = address
        self._target = _socketAddress(address)
        self._socket = None
        self.sent = 0
        self.failed = 0
        if self._target is None:
            _log.warn("NOTIFY_SOCKET={address!r} is not a unix socket path; systemd "
                      "will not hear from aiengine", address=address)

    def notify(self, *fields: str) -> bool:
        """Send one datagram of ``fields`` (``"READY=1"``, ...); whether it went."""
        if self._target is None:
            return False
        message = "\n".join(fields).encode("utf-8")
        try:
            if self._socket is None:
                self._socket = socket.socket(socket.AF_UNIX,
                                             socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                # A full receive queue must not block the reactor: that
                # datagram is lost instead (and logged).
                self._socket.setblocking(False)
            self._socket.sendto(message, self._target)
        except OSError as e:
            self.failed += 1
            if worthLogging(self.failed, 100):
                _log.warn("could not notify systemd at {address} ({fields}): {error}; "
                          "{n} notification(s) lost so far", address=self.address,
                          fields=" ".join(fields), error=e.strerror or e, n=self.failed)
            return False
        self.sent += 1
        return True

    def ready(self, status: str | None = None) -> bool:
        """``READY=1``: start-up (or a reload) is over."""
        return self.notify("READY=1", *_status(status))

    def reloading(self, status: str | None = None) -> bool:
        """``RELOADING=1``: a reload begins (``READY=1`` ends it)."""
        # systemd 253+ wants to know when, to tell this reload from a later one.
        now = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        return self.notify("RELOADING=1", f"MONOTONIC_USEC={now}", *_status(status))

    def stopping(self, status: str | None = None) -> bool:
        """``STOPPING=1``: the daemon begins to stop."""
        return self.notify("STOPPING=1", *_status(status))

    def status(self, text: str) -> bool:
        """``STATUS=``: one line for ``systemctl status``."""
        return self.notify(*_status(text))

    def watchdog(self) -> bool:
        """``WATCHDOG=1``: still alive."""
        return self.notify("WATCHDOG=1")

    def close(self):
        """Close the socket (a later notification opens it again)."""
        if self._socket is not None:
            self._socket.close()
            self._socket = None


def _status(text):
    if text is None:
        return ()
    # One datagram line per field: a newline would start a field of its own.
    return ("STATUS=" + " ".join(str(text).split()),)


def fromEnvironment(environ=None) -> Notifier | None:
    """A :class:`Notifier` for ``environ``'s (default ``os.environ``)
    ``NOTIFY_SOCKET``, or None when it is not set."""
    if environ is None:
        environ = os.environ
    address = environ.get("NOTIFY_SOCKET")
    return Notifier(address) if address else None


def watchdogInterval(environ=None, pid=None) -> float | None:
    """Seconds between two ``WATCHDOG=1``: half of ``$WATCHDOG_USEC``, as
    systemd advises; None when no watchdog is asked of this process (unset,
    invalid, or ``$WATCHDOG_PID`` naming another process than ``pid``,
    default ours)."""
    if environ is None:
        environ = os.environ
    try:
        usec = int(environ.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    if usec <= 0:
        return None
    owner = environ.get("WATCHDOG_PID")
    if owner:
        try:
            if int(owner) != (os.getpid() if pid is None else pid):
                return None
        except ValueError:
            return None
    return usec / 2 / 1e6


class Watchdog:
    """Sends ``WATCHDOG=1`` through ``notifier`` every ``interval`` seconds
    on ``clock`` (a reactor) between :meth:`start` and :meth:`stop`.

    A reactor so busy that it cannot run this timer also misses its
    notification, which is the point: systemd restarts a stuck daemon.
    """

    def __init__(self, notifier: Notifier, interval: float, clock=None):
        if clock is None:
            from twisted.internet import reactor as clock
        self.notifier = notifier
        self.interval = interval
        self._loop = task.LoopingCall(notifier.watchdog)
        self._loop.clock = clock

    @property
    def running(self) -> bool:
        """Whether notifications are being sent."""
        return self._loop.running

    def start(self):
        """Notify now, then every ``interval`` seconds."""
        if not self._loop.running:
            self._loop.start(self.interval, now=True)

    def stop(self):
        """Stop notifying."""
        if self._loop.running:
            self._loop.stop()


_UNSET = object()
_processNotifier = _UNSET


def processNotifier() -> Notifier | None:
    """This process's :class:`Notifier` (from ``os.environ``, made once), or None."""
    global _processNotifier
    if _processNotifier is _UNSET:
        _processNotifier = fromEnvironment()
    return _processNotifier


def notifyReady(status: str | None = None) -> bool:
    """Send ``READY=1`` (with an optional status) to this process's systemd."""
    notifier = processNotifier()
    return notifier is not None and notifier.ready(status)


def notifyReloading(status: str | None = None) -> bool:
    """Send ``RELOADING=1`` to this process's systemd; follow with
    :func:`notifyReady` when the reload is over, whatever its outcome."""
    notifier = processNotifier()
    return notifier is not None and notifier.reloading(status)


def notifyStopping(status: str | None = None) -> bool:
    """Send ``STOPPING=1`` to this process's systemd."""
    notifier = processNotifier()
    return notifier is not None and notifier.stopping(status)


def notifyStatus(text: str) -> bool:
    """Send ``STATUS=text`` to this process's systemd."""
    notifier = processNotifier()
    return notifier is not None and notifier.status(text)
