"""Logging helpers shared by the components."""

__all__ = ["worthLogging", "describeAddress", "peerOf"]


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
