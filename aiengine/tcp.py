"""TCP socket options that listeners and channels set on their connections."""

from __future__ import annotations

import socket

__all__ = ["setNoDelay", "tuneKeepAlive", "KEEPALIVE_IDLE", "KEEPALIVE_INTERVAL",
           "KEEPALIVE_PROBES"]

#: TCP keepalive timing: the first probe after this many idle seconds, then
#: one every KEEPALIVE_INTERVAL, giving up after KEEPALIVE_PROBES.  The
#: system's default waits two hours before the first probe; a server that
#: vanished without closing is noticed within about two minutes instead.
KEEPALIVE_IDLE = 60
KEEPALIVE_INTERVAL = 15
KEEPALIVE_PROBES = 4


def setNoDelay(transport) -> None:
    """TCP_NODELAY on ``transport``'s socket, where it has one.

    Without it, Nagle's algorithm holds a small write back until the peer
    acknowledges the previous one, and the peer's delayed ACK waits up to
    40 ms for that: a reply or event of a few bytes arrived tens of
    milliseconds late.  Twisted already gathers a reactor turn's writes into
    one send, so the cost is at most a few more small packets.
    """
    setTcpNoDelay = getattr(transport, "setTcpNoDelay", None)
    if setTcpNoDelay is not None:
        try:
            setTcpNoDelay(True)
        except OSError:
            pass  # the socket is already gone: nothing to tune


def tuneKeepAlive(transport) -> None:
    """Shorten the keepalive timing of ``transport``'s socket where the
    system lets us (Linux has all three options; others may lack some)."""
    getHandle = getattr(transport, "getHandle", None)
    if getHandle is None:
        return
    try:
        sock = getHandle()
        for name, value in (("TCP_KEEPIDLE", KEEPALIVE_IDLE),
                            ("TCP_KEEPINTVL", KEEPALIVE_INTERVAL),
                            ("TCP_KEEPCNT", KEEPALIVE_PROBES)):
            option = getattr(socket, name, None)
            if option is not None:
                sock.setsockopt(socket.IPPROTO_TCP, option, value)
    except (OSError, AttributeError):
        pass  # not a TCP socket (a test transport, TLS wrapper...): keep defaults
