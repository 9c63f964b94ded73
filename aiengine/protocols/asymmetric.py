"""``asymmetric``: one protocol for inbound messages, another for outbound."""

from __future__ import annotations

from zope.interface import implementer

from aiengine.protocols.base import FramingProtocol, IMessageReceiver

__all__ = ["AsymmetricProtocol"]


@implementer(IMessageReceiver)
class AsymmetricProtocol(FramingProtocol):
    """Two framers over one transport: ``inbound`` cuts what arrives,
    ``outbound`` encodes what is sent.  The receiver sees a single framer
    (this one), connected and disconnected once.

    Each inner framer reports to this object, which passes its messages and
    errors on; logging (``showpackets``/``showmessages``) follows each
    direction's own settings.
    """

    def __init__(self, protocol, receiver, log=None, host=None, port=None):
        from aiengine.protocols import framerForSettings
        super().__init__(protocol.inbound, receiver, log)
        self.protocol = protocol
        self.inbound = framerForSettings(protocol.inbound, self, log, host, port)
        self.outbound = framerForSettings(protocol.outbound, self, log, host, port)

    # -- Protocol: share the transport, route each direction -------------

    def makeConnection(self, transport):
        self.inbound.makeConnection(transport)
        self.outbound.makeConnection(transport)
        super().makeConnection(transport)

    def dataReceived(self, data):
        self.inbound.dataReceived(data)

    def connectionLost(self, reason):
        self.inbound.connectionLost(reason)
        self.outbound.connectionLost(reason)
        super().connectionLost(reason)

    def sendMessage(self, message, attributes=None):
        """Write one message with the outbound protocol."""
        return self.outbound.sendMessage(message, attributes)

    def sendMessages(self, messages):
        """Write several messages with the outbound protocol."""
        return self.outbound.sendMessages(messages)

    # -- IMessageReceiver, for the inner framers --------------------------

    def framerConnected(self, framer):
        """An inner framer is up; the receiver hears of this framer instead."""

    def framerDisconnected(self, reason):
        """An inner framer is down; the receiver hears of this framer instead."""

    def messageReceived(self, message, attributes):
        """Pass an inbound message on."""
        self.receiver.messageReceived(message, attributes)

    def messagesReceived(self, messages):
        """Pass several inbound messages on."""
        self.receiver.messagesReceived(messages)

    def protocolError(self, description):
        """Pass a framing error (of either direction) on."""
        self.receiver.protocolError(description)
