"""Logging helpers shared by the components, and the daemon's log observer.

:func:`daemonObserver` makes the observer of ``twistd aiengine``: the
destination twistd would choose, the ``--log-format`` (``text``: twistd's
usual lines; ``json``: :func:`formatJSONLine`) and the ``--log-level``
filter.
"""

import json
import re
import signal
import sys
from datetime import datetime, timezone

from twisted.logger import (FileLogObserver, FilteringLogObserver, ILogFilterPredicate,
                            LegacyLogObserverWrapper, Logger, LogLevel,
                            LogLevelFilterPredicate, PredicateResult, formatEvent,
                            textFileLogObserver)
from twisted.python import log as legacyLog
from twisted.python.logfile import LogFile
from zope.interface import implementer

__all__ = ["worthLogging", "describeAddress", "peerOf", "peerHost", "logSafe",
           "PeerSafeLogger", "LOG_LEVELS", "LOG_FORMATS", "formatJSONLine",
           "jsonLineObserver", "filteredObserver", "daemonObserver", "quietly"]

# Characters that would let a logged value start a line of its own, or
# otherwise change how a log line reads: C0 (but tab), DEL, C1, and the
# Unicode line and paragraph separators.
_CONTROL = re.compile("[\x00-\x08\x0a-\x1f\x7f-\x9f\u2028\u2029]")


def logSafe(text: str) -> str:
    """``text`` with control characters written as ``\\xNN`` (``\\uNNNN``)."""
    return _CONTROL.sub(lambda m: (f"\\x{ord(m.group()):02x}" if ord(m.group()) < 0x100
                                   else f"\\u{ord(m.group()):04x}"), text)


class PeerSafeLogger(Logger):
    """A ``Logger`` for components whose log lines carry what peers sent
    (request ids, topic names, error texts): every text field of an event is
    escaped with :func:`logSafe`, so that no peer can forge a log line."""

    def emit(self, level, format=None, **kwargs):
        """Emit the event with its text fields made safe."""
        for key, value in kwargs.items():
            if value.__class__ is str and _CONTROL.search(value):
                kwargs[key] = logSafe(value)
        Logger.emit(self, level, format, **kwargs)


def worthLogging(count: int, period: int = 1000) -> bool:
    """Whether the ``count``-th occurrence of something gets a log line: the
    first and every ``period``-th, so that a flood of events cannot flood the
    log too (the counters keep the exact numbers)."""
    return count == 1 or count % period == 0


def describeAddress(address) -> str:
    """``host:port`` of a Twisted address (``[v6]:port`` for IPv6), else ``str``."""
    host, port = getattr(address, "host", None), getattr(address, "port", None)
    if host is None or port is None:
        return str(address)
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def peerOf(transport) -> str:
    """The peer of ``transport`` for a log line, or ``?`` when it has none."""
    try:
        return describeAddress(transport.getPeer())
    except Exception:
        return "?"


def peerHost(transport) -> str:
    """The peer's host (address without port) of ``transport``, or ``?``."""
    try:
        return str(transport.getPeer().host)
    except Exception:
        return "?"


# -- the daemon's log: level, format and destination ---------------------------------

#: ``--log-level`` names and the least level each lets through
LOG_LEVELS = {"debug": LogLevel.debug, "info": LogLevel.info, "warn": LogLevel.warn,
              "error": LogLevel.error}

#: ``--log-format`` names
LOG_FORMATS = ("text", "json")

# Key marking the events logged by Twisted itself while a listener binds
# ("<prefix> starting on <port>"): the listener logs its own line for that.
_QUIET = "aiengine_quiet"


def quietly(func, *args, **kwargs):
    """Call ``func``; the legacy log lines it emits meanwhile are dropped by
    :func:`daemonObserver`'s observers."""
    return legacyLog.callWithContext({_QUIET: True}, func, *args, **kwargs)


@implementer(ILogFilterPredicate)
class _NotQuiet:
    def __call__(self, event):
        return PredicateResult.no if event.get(_QUIET) else PredicateResult.maybe


def formatJSONLine(event) -> str | None:
    """One JSON object and a newline for ``event``: ``time`` (ISO 8601, UTC),
    ``level``, ``namespace``, ``text`` (the formatted message) and, when it
    carries a failure, ``failure`` (its traceback)."""
    when = event.get("log_time")
    level = event.get("log_level")
    failure = event.get("log_failure")
    legacy = event.get("log_namespace") == "log_legacy"
    if failure is None and legacy and event.get("isError"):
        failure = event.get("failure")
    if failure is not None and legacy:
        # A legacy log.err's text is its traceback already; keep its reason.
        text = event.get("why") or "Unhandled Error"
    else:
        text = formatEvent(event)
    record = {
        "time": (datetime.fromtimestamp(when, timezone.utc)
                 .isoformat(timespec="milliseconds").replace("+00:00", "Z")
                 if when is not None else None),
        "level": level.name if level is not None else None,
        "namespace": event.get("log_namespace", "-"),
        "text": text,
    }
    if failure is not None:
        try:
            record["failure"] = failure.getTraceback()
        except Exception:
            record["failure"] = repr(failure)
    return json.dumps(record, ensure_ascii=False) + "\n"


def jsonLineObserver(outFile) -> FileLogObserver:
    """An observer writing each event to ``outFile`` as :func:`formatJSONLine`."""
    return FileLogObserver(outFile, formatJSONLine)


def filteredObserver(observer, level="info") -> FilteringLogObserver:
    """``observer`` behind the ``--log-level`` filter ``level`` (a name of
    :data:`LOG_LEVELS`); Twisted's bind chatter (see :func:`quietly`) is dropped."""
    return FilteringLogObserver(observer, [
        _NotQuiet(), LogLevelFilterPredicate(defaultLogLevel=LOG_LEVELS[level])])


def daemonObserver(serverOptions, level="info", format="text"):
    """The observer of a ``twistd`` run with ``serverOptions``
    (``ServerOptions``: ``--logfile``, ``--syslog``, ``--nodaemon``): the
    destination twistd itself would choose, written as ``format``, behind
    the ``level`` filter.

    As twistd: ``--syslog`` logs to syslog (text only); ``--logfile=-`` or
    no ``--logfile`` with ``-n`` to stdout; else ``--logfile`` (default
    ``twistd.log``) through Twisted's ``LogFile``, which rotates at 1 MB and on
    SIGUSR1.
    """
    if serverOptions.get("syslog"):
        from twisted.python.syslog import SyslogObserver
        observer = LegacyLogObserverWrapper(
            SyslogObserver(serverOptions.get("prefix") or "twisted").emit)
        return filteredObserver(observer, level)
    name = serverOptions.get("logfile") or ""
    nodaemon = serverOptions.get("nodaemon")
    if name == "-" or (nodaemon and not name):
        if not nodaemon:
            sys.exit("Daemons cannot log to stdout, exiting!")
        outFile = sys.stdout
    else:
        outFile = LogFile.fromFullPath(name or "twistd.log")
        _rotateOnSIGUSR1(outFile)
    observer = (jsonLineObserver(outFile) if format == "json"
                else textFileLogObserver(outFile))
    return filteredObserver(observer, level)


def _rotateOnSIGUSR1(logFile):
    # As twistd: a handler someone else installed is left alone.
    if not signal.getsignal(signal.SIGUSR1):
        def rotate(signum, frame):
            from twisted.internet import reactor
            reactor.callFromThread(logFile.rotate)
        signal.signal(signal.SIGUSR1, rotate)
