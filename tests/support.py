"""Helpers shared by the tests, so that none of them depends on luck or speed.

- :func:`waitFor`: wait until a condition holds (instead of sleeping a fixed
  time and hoping it did).
- :func:`pendingCalls`: the timers aiengine code has scheduled on a reactor;
  none pending proves that nothing more happens without outside input,
  which a negative check ("no reconnect") needs besides a short wait.
- :class:`ReservedPort`: a loopback TCP port held by the test from the
  start, refused until the test makes a server listen on it: no
  free-then-reuse race with other processes.
- :class:`FakeResolver` and :func:`fakeDNS`: host-name lookups answered by
  the test, through the reactor's own resolver hook, so that no test
  touches real DNS.
"""

from __future__ import annotations

import functools
import socket
import time

from twisted.internet import defer, reactor, task
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.interfaces import IHostnameResolver, IHostResolution
from zope.interface import implementer

__all__ = ["waitFor", "pendingCalls", "ReservedPort", "FakeResolver", "fakeDNS"]


@defer.inlineCallbacks
def waitFor(predicate, timeout=5.0, what="condition", interval=0.01):
    """Poll ``predicate`` every ``interval`` seconds; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        yield task.deferLater(reactor, interval, lambda: None)


def _owner(func) -> str:
    """The module a delayed call belongs to: its bound object's class's
    (a timer of a ``TimeoutMixin`` belongs to the protocol using it), else
    its function's."""
    while isinstance(func, functools.partial):
        func = func.func
    bound = getattr(func, "__self__", None)
    if bound is not None:
        return type(bound).__module__
    return getattr(func, "__module__", None) or ""


def pendingCalls(clock=reactor, package="aiengine"):
    """The active delayed calls on ``clock`` that code of ``package`` scheduled."""
    return [call for call in clock.getDelayedCalls()
            if call.active() and _owner(call.func).split(".")[0] == package]


class ReservedPort:
    """A TCP port on 127.0.0.1 that the test holds from the start.

    It is bound at once (port 0: the kernel picks a free one) and not
    listening: a connection to it is refused (ECONNREFUSED), as to a server
    that is down, and no other socket can bind it meanwhile -- not even with
    ``SO_REUSEADDR``, which Linux honours only when both sockets set it.
    :meth:`listen` then starts a server on it (the reactor adopts a
    listening socket); :meth:`close` stops the servers and releases the port.

    By default the port can listen once: the held socket itself starts
    listening.  With ``restartable`` a server may stop and another start on
    the same port as often as the test likes: the held socket never listens
    and keeps the port (with ``SO_REUSEPORT``, which only sockets of this
    user that set it too may share) while each server binds its own socket
    beside it; between servers, connections are refused again.
    """

    def __init__(self, restartable=False, interface="127.0.0.1"):
        self.interface = interface
        self.restartable = restartable
        holder = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if restartable:
            holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        holder.bind((interface, 0))
        self._holder = holder
        #: the port number
        self.port = holder.getsockname()[1]
        #: every server started on it (``IListeningPort``)
        self.servers = []

    def listen(self, factory, backlog=50):
        """Serve ``factory`` on the port; returns the ``IListeningPort``."""
        if self.restartable:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            # As listenTCP does: TIME_WAIT connections of an earlier server
            # must not stop this one.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            try:
                sock.bind((self.interface, self.port))
            except OSError:
                sock.close()
                raise
        else:
            if self._holder is None:
                raise RuntimeError("this port served once; reserve it with "
                                   "restartable=True to serve it again")
            sock, self._holder = self._holder, None
        try:
            sock.listen(backlog)
            sock.setblocking(False)
            server = reactor.adoptStreamPort(sock.fileno(), socket.AF_INET, factory)
        finally:
            sock.close()  # the reactor listens on its own duplicate
        self.servers.append(server)
        return server

    def close(self):
        """Stop every server and release the port; fires when they have stopped."""
        if self._holder is not None:
            self._holder.close()
            self._holder = None
        return defer.gatherResults([defer.maybeDeferred(server.stopListening)
                                    for server in self.servers])


@implementer(IHostResolution)
class _Resolution:
    def __init__(self, name):
        self.name = name

    def cancel(self):
        """Nothing to cancel: the answer is already scheduled."""


@implementer(IHostnameResolver)
class FakeResolver:
    """An ``IHostnameResolver`` whose answers come from ``answer(name)``: an
    address (IPv4 or IPv6), a list of them, or None for "no such name".

    Answers come in a later reactor turn, as a real resolver's do.
    ``lookups`` records every name asked for.
    """

    def __init__(self, answer, clock=reactor):
        self.answer = answer
        self.clock = clock
        self.lookups = []

    def resolveHostName(self, resolutionReceiver, hostName, portNumber=0,
                        addressTypes=None, transportSemantics="TCP"):
        self.lookups.append(hostName)
        resolution = _Resolution(hostName)
        resolutionReceiver.resolutionBegan(resolution)

        def done():
            answer = self.answer(hostName)
            for address in [answer] if isinstance(answer, str) else answer or ():
                kind = IPv6Address if ":" in address else IPv4Address
                if addressTypes is None or kind in addressTypes:
                    resolutionReceiver.addressResolved(
                        kind(transportSemantics, address, portNumber))
            resolutionReceiver.resolutionComplete()

        self.clock.callLater(0, done)
        return resolution


def fakeDNS(case, answer):
    """Install a :class:`FakeResolver` answering with ``answer`` on the global
    reactor for the rest of the test ``case``; returns it.

    ``connectTCP`` (and ``connectSSL``) with a host name resolve through the
    reactor's installed name resolver, so the code under test takes its
    real path to a DNS failure or success, without any real lookup.
    """
    fake = FakeResolver(answer)
    previous = reactor.installNameResolver(fake)
    case.addCleanup(reactor.installNameResolver, previous)
    return fake
