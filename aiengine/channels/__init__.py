"""Outbound channels ("active sockets"): connections aiengine opens to other servers.

The pieces, each in a module of its own:

- :mod:`~aiengine.channels.channel`: :class:`Channel`, which composes them
  and is the framer's receiver;
- :mod:`~aiengine.channels.machine`: the channel's states and transitions;
- :mod:`~aiengine.channels.policy`: when to try again (:func:`reconnectDelay`)
  and what to log of failures (:func:`failureNotice`, :class:`FailureStreak`);
- :mod:`~aiengine.channels.connection`: one connection, around its framer;
- :mod:`~aiengine.channels.outbox` and :mod:`~aiengine.channels.inbox`: what
  waits to be written, and what waits to be read.
"""

from aiengine.channels.channel import (
    CONNECTED, CONNECTING, IDLE, STATES, STOPPED, WAITING, Channel, ChannelStopped)
from aiengine.channels.connection import CLOSE_GRACE, KEEPALIVE_IDLE
from aiengine.channels.policy import (
    BRIEF_CONNECTION, CHANGED, FIRST, MIN_FAILED_DELAY, REMIND_INTERVAL, REMINDER,
    failureNotice, reconnectDelay)

__all__ = [
    "Channel", "ChannelStopped", "reconnectDelay", "failureNotice",
    "CONNECTED", "CONNECTING", "WAITING", "IDLE", "STOPPED", "STATES",
    "FIRST", "CHANGED", "REMINDER", "BRIEF_CONNECTION", "CLOSE_GRACE", "KEEPALIVE_IDLE",
    "MIN_FAILED_DELAY", "REMIND_INTERVAL",
]
