"""One connection attempt of a channel, over every address its host has.

A host name is resolved through the reactor's name resolver
(``IReactorPluggableNameResolver.nameResolver``), which gives IPv6 and IPv4
addresses alike.  The addresses are tried as RFC 8305 ("happy eyeballs")
says, and as Twisted's ``HostnameEndpoint`` does: families interleaved, IPv6
first; a new attempt starts every :data:`ATTEMPT_DELAY` seconds while none
has connected, or at once when the previous one fails; the first to connect
wins and the others are abandoned.  Only when every address has failed does
the channel see one failed attempt (and wait before the next, by its
policy), with every address and why it failed in the reason.

An IP literal is not resolved: it is the one address.  With one address, the
failure is reported exactly as Twisted reports it.

:class:`Dialer` stands in for the ``IConnector`` of ``reactor.connectTCP``:
the channel's factory gets ``clientConnectionFailed`` once when the attempt
fails, ``clientConnectionLost`` when the winning connection ends, and
:meth:`Dialer.stopConnecting` cancels the attempt as a connector's does.
"""

from __future__ import annotations

import ipaddress
from functools import lru_cache
from typing import Optional

from twisted.internet import error
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.interfaces import IResolutionReceiver
from twisted.python.failure import Failure
from zope.interface import implementer

from aiengine.tcp import connectTCP

__all__ = ["Dialer", "AddressesFailed", "ATTEMPT_DELAY", "ip_families"]

#: seconds between the starts of attempts to successive addresses (RFC 8305
#: recommends 250 ms)
ATTEMPT_DELAY = 0.25

#: the address types a channel's ``ip-version`` asks the resolver for
ip_families = {
    "any": (IPv6Address, IPv4Address),
    "4": (IPv4Address,),
    "6": (IPv6Address,),
}


class AddressesFailed(error.ConnectError):
    """Every address of a host failed; the message says each one's reason."""

    MESSAGE = "Every address failed"


@lru_cache(maxsize=4096)
def _literalFamily(host: str) -> Optional[type]:
    # Cached: thousands of channels often name the same few hosts, and every
    # attempt asks.
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return None
    return IPv6Address if address.version == 6 else IPv4Address


def _interleave(addresses: list) -> list:
    """IPv6 and IPv4 alternating, IPv6 first, each family in resolver order."""
    six = [a for a in addresses if a[0] is IPv6Address]
    four = [a for a in addresses if a[0] is IPv4Address]
    ordered = []
    for i in range(max(len(six), len(four))):
        ordered.extend(family[i] for family in (six, four) if i < len(family))
    return ordered


def _show(host: str) -> str:
    return f"[{host}]" if ":" in host else host


@implementer(IResolutionReceiver)
class _Resolution:
    """Collects what the resolver finds for the dialer."""

    def __init__(self, dialer):
        self.dialer = dialer
        self.addresses = []

    def resolutionBegan(self, resolution):
        """Nothing to keep: a resolution cannot be cancelled (see Dialer)."""

    def addressResolved(self, address):
        if (type(address), address.host) not in self.addresses:
            self.addresses.append((type(address), address.host))

    def resolutionComplete(self):
        self.dialer._resolved(self.addresses)


class _Leg:
    """The factory of the attempt to one address (a ``ClientFactory`` for
    the connector; slotted: each channel keeps its winning one)."""

    __slots__ = ("dialer", "host", "connector")

    noisy = False

    def __init__(self, dialer, host):
        self.dialer = dialer
        self.host = host
        self.connector = None

    @property
    def channel(self):
        """The channel whose attempt this is (aiengine.testing finds the
        attempts of a channel by it)."""
        return getattr(self.dialer.factory, "channel", None)

    def doStart(self):
        """Nothing to count: one leg makes one connection."""

    doStop = doStart

    def startedConnecting(self, connector):
        """Nothing to do: the dialer knows."""

    def logPrefix(self):
        """As a factory's: its class name."""
        return self.__class__.__name__

    def buildProtocol(self, addr):
        return self.dialer._connected(self, addr)

    def clientConnectionFailed(self, connector, reason):
        self.dialer._legFailed(self, reason)

    def clientConnectionLost(self, connector, reason):
        self.dialer._legLost(self, reason)


class Dialer:
    """Connect ``factory`` to ``host:port`` by the first address that answers.

    :param tlsOptions: client TLS options (``connectSSL``), or None.
    :param family: ``ip_families`` key: which address types to use.
    :param addressesSeen: called with the addresses to try once they are
        known (for the channel's status).
    """

    __slots__ = ("reactor", "host", "port", "factory", "timeout", "tlsOptions", "types",
                 "family", "attemptDelay", "_addressesSeen", "_pending", "_legs",
                 "_failures", "_next", "_winner", "_over")

    def __init__(self, reactor, host, port, factory, timeout=30.0, tlsOptions=None,
                 family="any", attemptDelay=ATTEMPT_DELAY, addressesSeen=None):
        self.reactor = reactor
        self.host = host
        self.port = port
        self.factory = factory
        self.timeout = timeout
        self.tlsOptions = tlsOptions
        self.types = ip_families[family]
        self.family = family
        self.attemptDelay = attemptDelay
        self._addressesSeen = addressesSeen
        self._pending: list = []  # addresses not tried yet
        self._legs: list = []  # attempts under way
        self._failures: list = []  # (address, reason) of the attempts that failed
        self._next = None  # the DelayedCall starting the next attempt
        self._winner: Optional[_Leg] = None
        self._over = False  # failed, cancelled, or connected

    def start(self) -> "Dialer":
        """Resolve (unless ``host`` is an address) and begin; returns self."""
        literal = _literalFamily(self.host)
        if literal is not None:
            self._resolved([(literal, self.host)])
        else:
            resolver = self.reactor.nameResolver
            resolver.resolveHostName(_Resolution(self), self.host, portNumber=self.port,
                                     addressTypes=self.types)
        return self

    def _resolved(self, addresses):
        if self._over:
            # Cancelled or connected meanwhile: a resolution under way is not
            # cancelled (Twisted's resolver cannot: its cancel raises
            # NotImplementedError), its answer is ignored.
            return
        usable = [a for a in addresses if a[0] in self.types]
        if not usable:
            wanted = {"4": "IPv4 ", "6": "IPv6 "}.get(self.family, "")
            reason = (f"{self.host!r} has no {wanted}address"
                      + (f" ({', '.join(h for _, h in addresses)} not IPv{self.family})"
                         if addresses else ""))
            self._fail(Failure(error.DNSLookupError(reason)))
            return
        self._pending = _interleave(usable)
        if self._addressesSeen is not None:
            self._addressesSeen(tuple(host for _, host in self._pending))
        self._attemptNext()

    def _attemptNext(self):
        self._next = None
        if self._over or not self._pending:
            return
        _, host = self._pending.pop(0)
        leg = _Leg(self, host)
        self._legs.append(leg)
        if self.tlsOptions is not None:
            leg.connector = self.reactor.connectSSL(host, self.port, leg, self.tlsOptions,
                                                    timeout=self.timeout)
        else:
            leg.connector = connectTCP(self.reactor, host, self.port, leg,
                                       timeout=self.timeout)
        if self._pending and not self._over and leg in self._legs:
            self._next = self.reactor.callLater(self.attemptDelay, self._attemptNext)

    def _connected(self, leg, addr):
        if self._over:
            return None  # another address won meanwhile: this one is closed
        self._over = True
        self._winner = leg
        self._cancelOthers(leg)
        # What stays with the channel for its connection's life: the winner only.
        self._legs = [leg]
        self._pending = self._failures = ()
        return self.factory.buildProtocol(addr)

    def _cancelOthers(self, keep=None):
        if self._next is not None:
            if self._next.active():
                self._next.cancel()
            self._next = None
        for leg in list(self._legs):
            if leg is not keep:
                self._legs.remove(leg)
                try:
                    leg.connector.stopConnecting()
                except error.NotConnectingError:
                    pass

    def _legFailed(self, leg, reason):
        if leg not in self._legs:
            return  # abandoned by us
        self._legs.remove(leg)
        if self._over:
            return
        self._failures.append((leg.host, reason))
        if self._pending:
            # No waiting for the timer: the next address now.
            if self._next is not None and self._next.active():
                self._next.cancel()
            self._attemptNext()
        elif not self._legs:
            self._fail(self._combined())

    def _legLost(self, leg, reason):
        if leg is self._winner:
            self.factory.clientConnectionLost(self, reason)

    def _combined(self) -> Failure:
        if len(self._failures) == 1:
            return self._failures[0][1]
        text = "; ".join(f"{_show(host)} {reason.getErrorMessage()}"
                         for host, reason in self._failures)
        return Failure(AddressesFailed(string=text))

    def _fail(self, reason):
        self._over = True
        self.factory.clientConnectionFailed(self, reason)

    def stopConnecting(self):
        """Cancel the attempt; the factory hears of it as a failed one
        (``UserError``), at once, as from a connector."""
        if self._over:
            raise error.NotConnectingError("not connecting")
        self._over = True
        self._cancelOthers()
        self.factory.clientConnectionFailed(self, Failure(error.UserError()))

    def getDestination(self):
        """The address that connected, or the host asked for."""
        host = self._winner.host if self._winner is not None else self.host
        kind = IPv6Address if ":" in host else IPv4Address
        return kind("TCP", host, self.port)
