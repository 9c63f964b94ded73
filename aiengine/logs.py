"""Logging helpers shared by the components."""

import re

from twisted.logger import Logger

__all__ = ["worthLogging", "describeAddress", "peerOf", "peerHost", "logSafe",
           "PeerSafeLogger"]

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
