"""TCP for listeners and channels: socket options, and transports that write through.

Twisted's TCP transport buffers every write and sends it on the next reactor
turn, once ``epoll`` says the socket is writable: each reply costs two
``epoll_ctl`` calls and one more turn of the loop before it leaves.  The
transports here (:func:`listenTCP`, :func:`connectTCP`) send a write at once
when nothing is buffered ahead of it, and buffer only what the socket does
not take (measured through an http channel: 20 % more requests/s one at a
time, 60 % more with eight in flight).  Writes made while one of these
transports handles a read leave together at its end, one send per
transport, as Twisted's buffer would have gathered them.  Everything else is
Twisted's.
"""

from __future__ import annotations

import socket

from twisted.internet import abstract, tcp
from twisted.internet.interfaces import IStreamServerEndpoint
from twisted.internet.posixbase import PosixReactorBase
from twisted.internet.defer import execute
from twisted.logger import Logger
from zope.interface import implementer

__all__ = ["setNoDelay", "tuneKeepAlive", "KEEPALIVE_IDLE", "KEEPALIVE_INTERVAL",
           "KEEPALIVE_PROBES", "listenTCP", "connectTCP", "ServerEndpoint"]

_log = Logger(namespace="aiengine.tcp")

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


# While one of our transports handles a read, writes to our transports are
# held (each transport's in order) and sent when the read is done: one send
# per transport for everything a packet caused (the answers to a pipelined
# batch, a fan-out), as Twisted's buffering would, without its loop turn.
_reading = False
_holding: list = []  # the transports with held writes, in order of first write


def _flushHeld():
    while _holding:
        transports = tuple(_holding)
        del _holding[:]
        for transport in transports:
            try:
                transport._flushHeld()
            except Exception:
                _log.failure("writing to {transport}", transport=transport)


class _WriteThrough:
    """A write with nothing buffered ahead of it goes to the socket at once
    (at the end of the read being handled, if any).

    What the socket does not take (it is full, or it failed) is handed to
    Twisted's buffered write, whose ``doWrite`` sends the rest in order, or
    reports the error and closes the connection as it always does.
    """

    _held = None  # the writes held during a read (a list of bytes), or None

    def write(self, data):
        held = self._held
        if held is not None:
            if not isinstance(data, bytes):
                raise TypeError("Data must be bytes")
            held.append(data)
            return
        if data and self._clear():
            if not isinstance(data, bytes):
                raise TypeError("Data must be bytes")
            if _reading:
                self._held = [data]
                _holding.append(self)
                return
            self._send(data)
            return
        super().write(data)

    def _clear(self) -> bool:
        """Open for writing, with nothing of Twisted's buffered ahead."""
        return (self.connected and not self._tempDataLen and not self.disconnected
                and self.offset == len(self.dataBuffer) and not self._writeDisconnected)

    def _send(self, data):
        try:
            sent = self.socket.send(data)
        except OSError:
            sent = 0  # full (EAGAIN) or failed: Twisted's path says which
        if sent == len(data):
            return
        if sent:
            data = data[sent:]
        super().write(data)

    def _flushHeld(self):
        held, self._held = self._held, None
        data = held[0] if len(held) == 1 else b"".join(held)
        if self._clear():
            self._send(data)
        else:
            super().write(data)  # gone meanwhile (dropped, as Twisted would) or buffered

    def doRead(self):
        global _reading
        if _reading:
            return super().doRead()
        _reading = True
        try:
            return super().doRead()
        finally:
            _reading = False
            if _holding:
                _flushHeld()


class _Server(_WriteThrough, tcp.Server):
    """An accepted connection that writes through."""


class _Client(_WriteThrough, tcp.Client):
    """An outgoing connection that writes through."""


class _Port(tcp.Port):
    """A listening port whose connections write through."""

    transport = _Server


class _Connector(tcp.Connector):
    """Makes outgoing connections that write through."""

    def _makeTransport(self):
        return _Client(self.host, self.port, self.bindAddress, self, self.reactor)


def _canWriteThrough() -> bool:
    # The write path reads Twisted's buffer state; a Twisted that keeps it
    # otherwise gets its own transports back, unchanged.
    probe = abstract.FileDescriptor()
    return all(hasattr(probe, name) for name in (
        "_tempDataLen", "dataBuffer", "offset", "_writeDisconnected", "connected",
        "disconnected"))


_WRITE_THROUGH = _canWriteThrough()


def _ownTransports(reactor) -> bool:
    # Only a reactor that polls file descriptors runs Twisted's tcp classes;
    # a test's MemoryReactor records the call instead.
    return _WRITE_THROUGH and isinstance(reactor, PosixReactorBase)


def listenTCP(reactor, port, factory, backlog=50, interface=""):
    """``reactor.listenTCP``, with connections that write through."""
    if not _ownTransports(reactor):
        return reactor.listenTCP(port, factory, backlog, interface)
    listening = _Port(port, factory, backlog, interface, reactor)
    listening.startListening()
    return listening


def connectTCP(reactor, host, port, factory, timeout=30.0, bindAddress=None):
    """``reactor.connectTCP``, with a connection that writes through."""
    if not _ownTransports(reactor):
        return reactor.connectTCP(host, port, factory, timeout, bindAddress)
    connector = _Connector(host, port, factory, timeout, bindAddress, reactor)
    connector.connect()
    return connector


@implementer(IStreamServerEndpoint)
class ServerEndpoint:
    """A TCP server endpoint (IPv4 or IPv6, by ``interface``) whose
    connections write through; as Twisted's ``TCP4ServerEndpoint``."""

    def __init__(self, reactor, port: int, backlog: int = 50, interface: str = ""):
        self._reactor = reactor
        self._port = port
        self._backlog = backlog
        self._interface = interface

    def listen(self, protocolFactory):
        """Listen; a Deferred firing with the ``IListeningPort``."""
        return execute(listenTCP, self._reactor, self._port, protocolFactory,
                       self._backlog, self._interface)
