"""media.xml: the daemon's configuration, parsed with lxml and checked in full.

:func:`load` turns a file into a :class:`ServiceConfig` of typed, validated
settings, or raises :class:`ConfigError` with one plain message naming the
file, line, element and property.  Nothing here opens sockets.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

__all__ = [
    "ConfigError", "ProtocolSettings", "ProtocolConfig", "ListenerConfig",
    "ChannelConfig", "ServiceConfig", "load", "parse", "parseCString",
]


class ConfigError(Exception):
    """A broken configuration: says where (file, line, element, property) and why."""

    def __init__(self, message, path=None, line=None, element=None, prop=None):
        super().__init__(message)
        self.message = message
        self.path = path
        self.line = line
        self.element = element
        self.prop = prop

    def __str__(self):
        where = []
        if self.path is not None:
            where.append(str(self.path) + (f":{self.line}" if self.line else ""))
        if self.element:
            where.append(self.element)
        if self.prop:
            where.append(f"property '{self.prop}'")
        return (": ".join(where) + ": " if where else "") + self.message


@dataclass(frozen=True)
class ProtocolSettings:
    """Settings of one framing protocol (one direction of a connection)."""

    name: str  # text-messages, xml-messages, text-stream, binary-stream, http
    #: parsed from the C string literal; None when not configured
    delimiter: Optional[bytes] = None
    max_packet_size: int = 1000000
    max_read_size: int = 4096
    wait_time_sec: float = 30.0
    show_messages: bool = False
    show_packets: bool = False


@dataclass(frozen=True)
class ProtocolConfig:
    """The protocol of a connection: the same settings both ways unless asymmetric."""

    name: str  # as configured: one of the protocol names, or "asymmetric"
    inbound: ProtocolSettings
    outbound: ProtocolSettings

    @property
    def asymmetric(self) -> bool:
        return self.name == "asymmetric"


@dataclass(frozen=True)
class ListenerConfig:
    """A ``<listener>``: a TCP server whose connections are framed and routed."""

    name: str
    port: int
    protocol: ProtocolConfig
    interface: str = "127.0.0.1"
    direction: str = "duplex"  # in, out, duplex
    msgtype: str = "text"  # text, xml, xmlcall
    topic_in: Optional[str] = None
    topic_out: Optional[str] = None
    auth: bool = False
    auth_secret_file: Optional[str] = None
    run: bool = True
    line: Optional[int] = None


@dataclass(frozen=True)
class ChannelConfig:
    """A ``<channel>``: an outbound connection ("active socket")."""

    name: str
    host: str
    port: int
    protocol: ProtocolConfig
    msgtype: str = "text"  # text, xml
    permanent: bool = True
    redirect_in: bool = False
    redirect_out: bool = False
    topic_in: Optional[str] = None
    topic_out: Optional[str] = None
    reconnection_timeout: float = 10.0
    #: outbound messages kept while not connected; beyond it they are dropped and counted
    queue_size: int = 1000
    #: inbound messages kept for the media API's receive when not redirected in
    inbox_size: int = 1000
    #: seconds without traffic before closing; None means the default:
    #: 30 for permanent=false, off (0) for permanent=true
    idle_timeout: Optional[float] = None
    connect_timeout: float = 30.0
    keepalive: bool = True
    run: bool = True
    line: Optional[int] = None

    @property
    def effective_idle_timeout(self) -> float:
        if self.idle_timeout is not None:
            return self.idle_timeout
        return 0.0 if self.permanent else 30.0


@dataclass(frozen=True)
class ServiceConfig:
    """The whole file: every listener and channel, including ``run="false"`` ones."""

    path: str
    listeners: tuple = field(default_factory=tuple)
    channels: tuple = field(default_factory=tuple)


def parseCString(text: str) -> bytes:
    """Decode a C string literal body (``\\n``, ``\\x01``, ``\\1``...) into bytes."""
    raise NotImplementedError


def parse(data: bytes, path: str = "<string>") -> ServiceConfig:
    """Parse and validate media.xml content."""
    raise NotImplementedError


def load(path: str) -> ServiceConfig:
    """Read, parse and validate the media.xml at ``path``."""
    raise NotImplementedError
