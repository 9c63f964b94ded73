"""A channel's states and the moves between them, in one table.

Every change of :attr:`ChannelMachine.state` goes through
:meth:`ChannelMachine.move`, which refuses a move the table does not have:
a bug shows at once instead of leaving a channel half in one state and half
in another.  What each move does is the channel's business; what may follow
what is written here.
"""

from __future__ import annotations

__all__ = ["CONNECTED", "CONNECTING", "WAITING", "IDLE", "STOPPED", "STATES",
           "TRANSITIONS", "ChannelMachine", "InvalidTransition"]

CONNECTED = "connected"
CONNECTING = "connecting"
#: waiting for the next connection attempt (permanent channels)
WAITING = "waiting"
#: on-demand channel without a connection
IDLE = "idle"
#: not started, stopped, or disconnected on request: it does not connect
STOPPED = "stopped"
STATES = (CONNECTED, CONNECTING, WAITING, IDLE, STOPPED)

#: (from, to): what makes a channel move so
TRANSITIONS = {
    (STOPPED, CONNECTING): "start() of a permanent channel, or connect()",
    (STOPPED, IDLE): "start() of an on-demand channel",
    (IDLE, CONNECTING): "something to send, connect(), or a stop that flushes",
    (WAITING, CONNECTING): "the retry timer, connect(), or a stop that flushes",
    (CONNECTING, CONNECTED): "the connection is up (its TLS handshake done)",
    (CONNECTING, WAITING): "an attempt of a permanent channel failed",
    (CONNECTING, IDLE): "an attempt of an on-demand channel failed",
    (CONNECTED, WAITING): "the connection of a permanent channel ended",
    (CONNECTED, IDLE): "the connection of an on-demand channel ended",
    (CONNECTED, STOPPED): "stop() or disconnect()",
    (CONNECTING, STOPPED): "stop() or disconnect()",
    (WAITING, STOPPED): "stop() or disconnect()",
    (IDLE, STOPPED): "stop() or disconnect()",
    (STOPPED, STOPPED): "stop() or disconnect() again, or the old connection's end",
}


class InvalidTransition(RuntimeError):
    """A move the table does not have: a bug in the channel."""


class ChannelMachine:
    """The state of one channel (starts :data:`STOPPED`)."""

    __slots__ = ("state", "since", "_clock")

    def __init__(self, clock=None):
        self.state = STOPPED
        self._clock = clock
        #: when the current state began (the clock's seconds), None without a clock
        self.since = clock.seconds() if clock is not None else None

    def move(self, to: str) -> None:
        """Go to state ``to``; raises :class:`InvalidTransition` if the table
        does not allow it from here."""
        if (self.state, to) not in TRANSITIONS:
            raise InvalidTransition(f"a channel cannot go from {self.state} to {to}")
        if to != self.state and self._clock is not None:
            self.since = self._clock.seconds()
        self.state = to
