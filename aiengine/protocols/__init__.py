"""Framing protocols: cut a connection's bytes into messages and back.

:func:`buildFramer` makes the :class:`~aiengine.protocols.base.FramingProtocol`
for a configured protocol (SPEC section 3).
"""

from __future__ import annotations

from aiengine.config import PROTOCOLS
from aiengine.protocols.asymmetric import AsymmetricProtocol
from aiengine.protocols.base import FramingProtocol, IMessageReceiver
from aiengine.protocols.stream import BinaryStreamProtocol, TextStreamProtocol
from aiengine.protocols.text import TextMessagesProtocol
from aiengine.protocols.xmlmessages import XmlMessagesProtocol

__all__ = ["PROTOCOL_NAMES", "FRAMERS", "buildFramer", "framerForSettings",
           "FramingProtocol", "IMessageReceiver"]

#: framer classes taking ``(settings, receiver, log)``; ``http`` is added lazily
FRAMERS = {
    "text-messages": TextMessagesProtocol,
    "xml-messages": XmlMessagesProtocol,
    "text-stream": TextStreamProtocol,
    "binary-stream": BinaryStreamProtocol,
}

#: every valid value of the ``protocol`` property (the configuration's list)
PROTOCOL_NAMES = PROTOCOLS


def framerForSettings(settings, receiver, log=None, host=None, port=None) -> FramingProtocol:
    """The framer for one direction's :class:`~aiengine.config.ProtocolSettings`."""
    if settings.name == "http":
        # Imported here so that this package works without the http module.
        from aiengine.protocols.http import HttpClientProtocol
        return HttpClientProtocol(settings, receiver, log=log, host=host, port=port)
    try:
        cls = FRAMERS[settings.name]
    except KeyError:
        raise ValueError(f"unknown protocol {settings.name!r}; expected one of "
                         f"{', '.join(n for n in PROTOCOL_NAMES if n != 'asymmetric')}")
    return cls(settings, receiver, log)


def buildFramer(protocol, receiver, log=None, host=None, port=None) -> FramingProtocol:
    """The framer for a connection's :class:`~aiengine.config.ProtocolConfig`.

    ``host`` and ``port`` are the peer's, for protocols that need them (http).
    """
    if protocol.asymmetric:
        return AsymmetricProtocol(protocol, receiver, log, host, port)
    return framerForSettings(protocol.inbound, receiver, log, host, port)
