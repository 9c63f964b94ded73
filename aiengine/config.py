"""media.xml: the daemon's configuration, parsed with lxml and checked in full.

:func:`load` turns a file into a :class:`ServiceConfig` of typed, validated
settings, or raises :class:`ConfigError` with one plain message naming the
file, line, element and property.  Nothing here opens sockets.
"""

from __future__ import annotations

import difflib
import functools
import ipaddress
import os
import re
import sys
from dataclasses import dataclass, field
from typing import Optional

from lxml import etree

from aiengine.broker import MAX_TOPIC_NAME

__all__ = [
    "ConfigError", "ProtocolSettings", "ProtocolConfig", "ListenerConfig",
    "checkListener", "checkChannel", "checkService",
    "ChannelConfig", "ServiceConfig", "load", "parse", "parseCString",
    "BridgeConfig", "BridgeTopic", "checkBridge",
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


@dataclass(frozen=True, slots=True)
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


@dataclass(frozen=True, slots=True)
class ProtocolConfig:
    """The protocol of a connection: the same settings both ways unless asymmetric."""

    name: str  # as configured: one of the protocol names, or "asymmetric"
    inbound: ProtocolSettings
    outbound: ProtocolSettings

    @property
    def asymmetric(self) -> bool:
        """Whether each direction has a protocol of its own."""
        return self.name == "asymmetric"

    @classmethod
    def of(cls, name: str, **settings) -> "ProtocolConfig":
        """Protocol ``name`` both ways, with :class:`ProtocolSettings`
        ``settings``: ``ProtocolConfig.of("text-messages", delimiter=b"\\r\\n")``."""
        both = ProtocolSettings(name=name, **settings)
        return cls(name, both, both)


@dataclass(frozen=True, slots=True)
class ListenerConfig:
    """A ``<listener>``: a TCP server whose connections are framed and routed."""

    name: str
    port: int
    protocol: ProtocolConfig
    interface: str = "127.0.0.1"
    direction: str = "duplex"  # in, out, duplex
    msgtype: str = "text"  # text, xml, xmlcall, admin
    topic_in: Optional[str] = None
    topic_out: Optional[str] = None
    auth: bool = False
    auth_secret_file: Optional[str] = None
    #: connections open at once; more are refused (accepted and closed at once)
    max_connections: int = 1000
    #: seconds without traffic either way before a connection is closed; 0 = never
    idle_timeout: float = 3600.0
    #: PEM files: with both, the listener speaks TLS
    tls_certificate: Optional[str] = None
    tls_key: Optional[str] = None
    #: when a connection's outbound queue is full: "pause" the topic's
    #: publishers (and disconnect a connection full for slow_consumer_timeout
    #: seconds) or "drop" the message for that connection
    overflow: str = "pause"
    slow_consumer_timeout: float = 30.0
    #: TCP_NODELAY on accepted sockets: small messages go out at once
    tcp_nodelay: bool = True
    run: bool = True
    line: Optional[int] = None

    @property
    def tls(self) -> bool:
        """Whether the listener speaks TLS."""
        return self.tls_certificate is not None


@dataclass(frozen=True, slots=True)
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
    #: TCP_NODELAY on the socket: small messages go out at once
    tcp_nodelay: bool = True
    #: the address family of host's addresses to use: "any", "4" or "6"
    ip_version: str = "any"
    #: connect with TLS, verifying the server against tls_ca (PEM file; the
    #: system's trust store when None) and tls_hostname (default: host)
    tls: bool = False
    tls_ca: Optional[str] = None
    tls_hostname: Optional[str] = None
    tls_verify: bool = True
    #: seconds a stopping daemon spends trying to send queued messages
    flush_timeout: float = 5.0
    #: "ordered": the server answers every message, in order, and the channel
    #: pairs each reply with its request; "none": replies are not paired
    replies: str = "none"
    #: http or replies=ordered: requests written and not yet answered, at most
    max_in_flight: int = 1000
    #: http or replies=ordered: seconds a reply may take to complete (from
    #: when it is the oldest one owed); then the connection is closed; 0 = off
    response_timeout: float = 30.0
    run: bool = True
    line: Optional[int] = None

    @property
    def effective_idle_timeout(self) -> float:
        """``idle_timeout``, or its default for the kind of channel."""
        if self.idle_timeout is not None:
            return self.idle_timeout
        return 0.0 if self.permanent else 30.0


@dataclass(frozen=True, slots=True)
class BridgeTopic:
    """A ``<topic>`` of a bridge: local topic ``local`` shared as MQTT topic
    ``remote``; ``direction`` in (remote to local), out or both."""

    local: str
    remote: str
    direction: str  # in, out, both
    qos: int = 0
    line: Optional[int] = None


@dataclass(frozen=True, slots=True)
class BridgeConfig:
    """A ``<bridge>``: topics shared with other daemons through an MQTT 5 broker."""

    name: str
    host: str
    node_id: str
    topics: tuple = ()
    engine: str = "mqtt"
    port: int = 1883
    #: None means ``aiengine-<node-id>-<name>``
    client_id: Optional[str] = None
    keepalive: int = 60
    #: seconds the broker keeps the session after a disconnection; 0 = none
    session_expiry: int = 0
    username: Optional[str] = None
    password_file: Optional[str] = None
    tls: bool = False
    tls_ca: Optional[str] = None
    tls_hostname: Optional[str] = None
    reconnection_timeout: float = 10.0
    #: outbound messages kept while not connected (or beyond the window of
    #: unacknowledged ones); when full, publishers are paused
    queue_size: int = 10000
    #: MQTT 5 Receive Maximum: QoS 1 messages the broker may send before
    #: they are acknowledged (acks are held while a local subscriber is busy)
    receive_maximum: int = 1000
    run: bool = True
    line: Optional[int] = None

    @property
    def effective_client_id(self) -> str:
        """``client_id``, or its default from the node id and the bridge name."""
        return self.client_id or f"aiengine-{self.node_id}-{self.name}"


@dataclass(frozen=True, slots=True)
class ServiceConfig:
    """The whole file: every listener, channel and bridge, including
    ``run="false"`` ones."""

    path: str
    listeners: tuple = field(default_factory=tuple)
    channels: tuple = field(default_factory=tuple)
    bridges: tuple = field(default_factory=tuple)



# -- C string literals ------------------------------------------------------

_SIMPLE_ESCAPES = {
    "n": b"\n", "t": b"\t", "v": b"\v", "b": b"\b", "r": b"\r", "f": b"\f",
    "a": b"\a", "\\": b"\\", "?": b"?", "'": b"'", '"': b'"',
}
_HEX_ESCAPE = re.compile(r"[0-9A-Fa-f]{1,2}")
_OCTAL_ESCAPE = re.compile(r"[0-7]{1,3}")


def parseCString(text: str) -> bytes:
    """Decode a C string literal body (``\\n``, ``\\x01``, ``\\1``...) into bytes.

    Escapes: ``\\n \\t \\v \\b \\r \\f \\a \\\\ \\? \\' \\"``, ``\\xH`` or
    ``\\xHH`` (at most two hex digits) and octal ``\\N`` to ``\\NNN``.  Other
    characters stand for their UTF-8 bytes.  Any other escape raises
    :class:`ConfigError` (without a location; the caller adds it).
    """
    out = bytearray()
    i = 0
    while i < len(text):
        backslash = text.find("\\", i)
        if backslash < 0:
            out += text[i:].encode("utf-8")
            break
        out += text[i:backslash].encode("utf-8")
        i = backslash + 1
        if i == len(text):
            raise ConfigError("backslash at the end of the string")
        char = text[i]
        if char in _SIMPLE_ESCAPES:
            out += _SIMPLE_ESCAPES[char]
            i += 1
        elif char == "x":
            digits = _HEX_ESCAPE.match(text, i + 1)
            if digits is None:
                raise ConfigError(f"'\\x' without hex digits at position {backslash}")
            out.append(int(digits.group(), 16))
            i = digits.end()
        elif char in "01234567":
            digits = _OCTAL_ESCAPE.match(text, i)
            value = int(digits.group(), 8)
            if value > 0xFF:
                raise ConfigError(
                    f"octal escape '\\{digits.group()}' at position {backslash} "
                    "is larger than a byte (\\377)")
            out.append(value)
            i = digits.end()
        else:
            raise ConfigError(f"unknown escape '\\{char}' at position {backslash}")
    return bytes(out)


# -- property values ----------------------------------------------------------
#
# A converter takes the property's text and returns the typed value, or raises
# ConfigError with only a message; _Element adds file, line, element and name.

#: the values ``protocol`` accepts
PROTOCOLS = ("text-messages", "xml-messages", "text-stream", "binary-stream",
             "http", "asymmetric")
#: protocols that deliver arbitrary chunks, not whole messages
_STREAMS = ("text-stream", "binary-stream")


def _closest(word, candidates):
    """The known name nearest to a misspelt one, or None."""
    close = difflib.get_close_matches(word, list(candidates), n=1)
    return close[0] if close else None


def _choice(*options):
    def convert(raw):
        if raw in options:
            return raw
        message = f"{raw!r} is not one of {', '.join(options)}"
        close = _closest(raw.lower(), options)
        if close:
            message += f"; did you mean '{close}'?"
        raise ConfigError(message)
    return convert


def _bool(raw):
    lowered = raw.lower()
    if lowered == "true":
        return True
    if lowered == "false":
        return False
    raise ConfigError(f"expected true or false, got {raw!r}")


_INTEGER = re.compile(r"[+-]?[0-9]+")
_DECIMAL = re.compile(r"[+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][+-]?[0-9]+)?")


def _integer(low, high=None):
    def convert(raw):
        # int() alone would also take "1_000" and non-ASCII digits
        if not _INTEGER.fullmatch(raw):
            raise ConfigError(f"expected an integer, got {raw!r}")
        value = int(raw)
        if high is None and value < low:
            raise ConfigError(f"must be at least {low}, got {value}")
        if high is not None and not low <= value <= high:
            raise ConfigError(f"out of range: {value} (allowed {low} to {high})")
        return value
    return convert


def _seconds(positive):
    def convert(raw):
        # float() alone would also take "nan", "inf" and "1_0"
        if not _DECIMAL.fullmatch(raw):
            raise ConfigError(f"expected a number of seconds, got {raw!r}")
        value = float(raw)
        if positive and not value > 0:
            raise ConfigError(f"must be greater than 0, got {raw}")
        if value < 0:
            raise ConfigError(f"must not be negative, got {raw}")
        return value
    return convert


def _text(raw):
    if not raw:
        raise ConfigError("must not be empty")
    return raw


def _topic(raw):
    name = _text(raw)
    if len(name) > MAX_TOPIC_NAME:
        raise ConfigError(f"a topic name has at most {MAX_TOPIC_NAME} characters, not "
                        f"{len(name)}")
    return name


def _unbracket(raw):
    if raw.startswith("[") and raw.endswith("]"):
        return raw[1:-1]
    return raw


def _interface(raw):
    try:
        return str(ipaddress.ip_address(_unbracket(raw)))
    except ValueError:
        raise ConfigError(
            f"{raw!r} is not an IPv4 or IPv6 address (e.g. 127.0.0.1, ::1, 0.0.0.0)"
        ) from None


_HOST_LABEL = re.compile(r"(?!-)[A-Za-z0-9_-]{1,63}(?<!-)")


@functools.lru_cache(maxsize=4096)
def _host(raw):
    # Cached: a large media.xml names the same few servers thousands of times.
    if not raw:
        raise ConfigError("must not be empty")
    bare = _unbracket(raw)
    if ":" in bare:
        try:
            return str(ipaddress.IPv6Address(bare))
        except ValueError:
            pass
        name, _, port = raw.rpartition(":")
        if port.isdigit() and ":" not in name:
            raise ConfigError(
                f"{raw!r} includes a port; give the host alone and put {port} "
                "in property 'port'")
        raise ConfigError(f"{raw!r} is not a valid IPv6 address")
    if re.fullmatch(r"[0-9.]+", bare):
        try:
            return str(ipaddress.IPv4Address(bare))
        except ValueError:
            raise ConfigError(f"{raw!r} is not a valid IPv4 address") from None
    try:
        ascii_name = bare.encode("idna").decode("ascii")
    except UnicodeError:
        raise ConfigError(f"{raw!r} is not a valid host name") from None
    labels = ascii_name[:-1] if ascii_name.endswith(".") else ascii_name
    if len(labels) > 253 or not all(
            _HOST_LABEL.fullmatch(label) for label in labels.split(".")):
        raise ConfigError(f"{raw!r} is not a valid host name")
    return bare


#: protocol.<key>: converter and ProtocolSettings field
_SETTINGS = {
    "delimiter": (parseCString, "delimiter"),
    "max-packet-size": (_integer(1), "max_packet_size"),
    "max-read-size": (_integer(1), "max_read_size"),
    "wait-time-sec": (_seconds(positive=False), "wait_time_sec"),
    "showmessages": (_bool, "show_messages"),
    "showpackets": (_bool, "show_packets"),
}
_SIDES = ("protocol-inbound", "protocol-outbound")
#: "<prefix>.<key>" of every protocol setting -> its ProtocolSettings field
_SETTING_FIELDS = {f"{prefix}.{key}": fieldName
                   for prefix in ("protocol",) + _SIDES
                   for key, (_, fieldName) in _SETTINGS.items()}


def _protocolProperties():
    props = {"protocol": _choice(*PROTOCOLS)}
    for side in _SIDES:
        props[side] = _choice(*PROTOCOLS)
    for prefix in ("protocol",) + _SIDES:
        for key, (convert, _) in _SETTINGS.items():
            props[f"{prefix}.{key}"] = convert
    return props


_CHANNEL_PROPERTIES = {
    "host": _host,
    "port": _integer(1, 65535),
    **_protocolProperties(),
    "msgtype": _choice("text", "xml"),
    "permanent": _bool,
    "redirect-in": _bool,
    "redirect-out": _bool,
    "topic-in": _topic,
    "topic-out": _topic,
    "reconnectionTimeout": _seconds(positive=False),
    "queue-size": _integer(1),
    "inbox-size": _integer(1),
    "idle-timeout": _seconds(positive=False),
    "connect-timeout": _seconds(positive=True),
    "keepalive": _bool,
    "tcp.nodelay": _bool,
    "ip-version": _choice("any", "4", "6"),
    "tls": _bool,
    "tls.ca": _text,
    "tls.hostname": _text,
    "tls.verify": _bool,
    "flush-timeout": _seconds(positive=False),
    "replies": _choice("none", "ordered"),
    "max-in-flight": _integer(1),
    "response-timeout": _seconds(positive=False),
}

_LISTENER_PROPERTIES = {
    # 0 asks the system for any free port
    "port": _integer(0, 65535),
    "interface": _interface,
    "direction": _choice("in", "out", "duplex"),
    **_protocolProperties(),
    "msgtype": _choice("text", "xml", "xmlcall", "admin"),
    "topic-in": _topic,
    "topic-out": _topic,
    "auth": _bool,
    "auth.secret-file": _text,
    "max-connections": _integer(1),
    "idle-timeout": _seconds(positive=False),
    "tls.certificate": _text,
    "tls.key": _text,
    "overflow": _choice("pause", "drop"),
    "slow-consumer-timeout": _seconds(positive=True),
    "tcp.nodelay": _bool,
}

_BRIDGE_PROPERTIES = {
    "engine": _choice("mqtt"),
    "host": _host,
    "port": _integer(1, 65535),
    "node-id": _text,
    "client-id": _text,
    # MQTT's keep alive is a two-byte number of seconds
    "keepalive": _integer(0, 65535),
    "session-expiry": _integer(0, 4294967295),
    "username": _text,
    "password-file": _text,
    "tls": _bool,
    "tls.ca": _text,
    "tls.hostname": _text,
    "reconnectionTimeout": _seconds(positive=False),
    "queue-size": _integer(1),
    "receive-maximum": _integer(1, 65535),
}
#: <topic> attributes of a bridge
_BRIDGE_TOPIC_ATTRIBUTES = ("local", "remote", "direction", "qos")

_KINDS = {"listener": _LISTENER_PROPERTIES, "channel": _CHANNEL_PROPERTIES,
          "bridge": _BRIDGE_PROPERTIES}
_SECTIONS = {"listeners": "listener", "directchannels": "channel",
             "bridges": "bridge"}


# -- the original's spellings -------------------------------------------------------
# Files written for the original use names its code and wiki read.  An alias
# is read as the property it stands for: errors name the spelling the file
# used, and giving two spellings of one setting is an error.  A name whose
# meaning does not map onto ours is refused with what to write instead.

def _sideAliases():
    # trunk_HLAv3 (SocketProtocol::create) named the sides of an asymmetric
    # protocol protocol.inbound and protocol.outbound, their settings
    # protocol.inbound.delimiter and so on
    aliases = {}
    for old, new in (("protocol.inbound", "protocol-inbound"),
                     ("protocol.outbound", "protocol-outbound")):
        aliases[old] = new
        for key in _SETTINGS:
            aliases[f"{old}.{key}"] = f"{new}.{key}"
    return aliases


_PROTOCOL_ALIASES = {
    # trunk and trunk_HLAv2 (SocketProtocol::create) and the MediaProtocols
    # wiki page read these unprefixed, for the whole connection
    "max-packet-size": "protocol.max-packet-size",
    "max-read-size": "protocol.max-read-size",
    "wait-time-sec": "protocol.wait-time-sec",
    **_sideAliases(),
}
#: other spelling -> the property it is read as
_ALIASES = {
    "listener": _PROTOCOL_ALIASES,
    "channel": {
        **_PROTOCOL_ALIASES,
        # what ActiveSocket::configure read; the wiki wrote reconnectionTimeout
        "reconnectionTimeoutSec": "reconnectionTimeout",
    },
    "bridge": {},
}
#: trunk_HLAv3 channels: one property gave the topic and switched the
#: redirection on (ActiveSocket::configure); read as the topic property and
#: its redirect property set to true
_REDIRECT_TOPICS = {"redirect-in-topic": ("topic-in", "redirect-in"),
                    "redirect-out-topic": ("topic-out", "redirect-out")}


def _earlyTopic(new):
    def message(value):
        return (f"the early layout's spelling of {new}: write "
                f'<property name="{new}" value="{value}"/> instead')
    return message


def _connectionMode(value):
    # trunk_HLAv3 ActiveSocket::configure: connection = single, permanent, multiple
    instead = {
        "permanent": "permanent=true (connect at start-up, reconnect when dropped)",
        "single": "permanent=false (connect when there is something to send)",
    }.get(value)
    if instead is not None:
        return f"the original's connection mode: write {instead} instead"
    if value == "multiple":
        return ("connection=multiple (a connection per address) has no equivalent: "
                "declare one channel per server, each with permanent=true or false")
    return ("the original's connection mode (single, permanent or multiple): write "
            "permanent=true or permanent=false instead")


def _sessionMode(value):
    # trunk_HLAv3 ActiveSocket::configure: session = permanent,
    # request-response, request
    return ("the original's session mode has no equivalent here: remove it (to "
            "pair each reply with its request on a server that answers in order, "
            "use replies=ordered)")


#: names the original read that do not map onto ours: value -> what to write
_REFUSED = {
    "listener": {"topic.in": _earlyTopic("topic-in"),
                 "topic.out": _earlyTopic("topic-out")},
    "channel": {"topic.in": _earlyTopic("topic-in"),
                "topic.out": _earlyTopic("topic-out"),
                "connection": _connectionMode, "session": _sessionMode},
    "bridge": {},
}
#: attributes of the early layout (trunk/aiengine/etc/media.xml:
#: <listener name="debug" type="tcp" direction="duplex" auth="false">)
_EARLY_ATTRIBUTES = ("type", "direction", "auth")


def _earlyAttributes(node):
    """What to write instead of the early layout's attributes on ``node``."""
    found = [a for a in _EARLY_ATTRIBUTES if a in node.attrib]
    named = " and ".join(", ".join(found).rsplit(", ", 1))
    todo = []
    if "type" in found:
        todo.append(f"remove type=\"{node.get('type')}\" (every listener and channel "
                    "is TCP)")
    properties = [f'<property name="{a}" value="{node.get(a).strip()}"/>'
                  for a in found if a != "type"]
    if properties:
        todo.append("write " + " and ".join(properties) + " instead")
    return (f"attribute{'s' if len(found) > 1 else ''} {named} of the early layout: "
            + "; ".join(todo))


# -- rules on the settings themselves --------------------------------------------
# The same for media.xml (the reader adds file and line) and for a
# configuration built in code.  They raise ConfigError naming the property.

#: a listener's protocol when its msgtype makes it optional: the console frames
#: requests itself, and an admin listener speaks HTTP whatever it says
_DEFAULT_PROTOCOL = {"xmlcall": "xml-messages", "admin": "text-messages"}


def _checkMsgtype(msgtype, protocol):
    # a stream chunk is not a message: it cannot be parsed as one
    if msgtype in ("xml", "xmlcall") and protocol.inbound.name in _STREAMS:
        raise ConfigError(f"msgtype {msgtype} needs whole messages, but protocol "
                          f"{protocol.inbound.name} delivers arbitrary chunks",
                          prop="msgtype")


def _checkTopics(*names):
    for prop, name in zip(("topic-in", "topic-out"), names):
        if name is not None and len(name) > MAX_TOPIC_NAME:
            raise ConfigError(f"a topic name has at most {MAX_TOPIC_NAME} characters, "
                              f"not {len(name)}", prop=prop)


def _checkRouting(msgtype, direction, topicIn, topicOut, protocol):
    """A listener's msgtype, direction and topics fit together."""
    if msgtype == "admin":
        # It serves HTTP itself (dashboard, metrics, health): nothing goes
        # through the broker, and its protocol settings are not used.
        for prop, topic in (("topic-in", topicIn), ("topic-out", topicOut)):
            if topic is not None:
                raise ConfigError("an admin listener serves the dashboard, /metrics and "
                                  "/health over HTTP and routes no messages: remove it",
                                  prop=prop)
        if direction != "duplex":
            raise ConfigError("an admin listener routes no messages, so it has no "
                              "direction: remove it", prop="direction")
        return
    if "http" in (protocol.inbound.name, protocol.outbound.name):
        raise ConfigError("http is a client protocol: only a channel can use it",
                          prop="protocol")
    _checkMsgtype(msgtype, protocol)
    if msgtype == "xmlcall":
        # The console answers its connections itself; its topics, both
        # optional, mirror its traffic and take calls from the broker.
        if direction != "duplex":
            raise ConfigError("msgtype xmlcall answers calls, so direction must be "
                              "duplex", prop="direction")
        if topicIn is not None and topicIn == topicOut:
            raise ConfigError("must differ from topic-in: the console would read its "
                              "own answers as calls", prop="topic-out")
    elif direction == "in":
        if topicIn is None:
            raise ConfigError("missing required property (direction in publishes to it)",
                              prop="topic-in")
        if topicOut is not None:
            raise ConfigError("not used with direction in", prop="topic-out")
    elif direction == "out":
        if topicOut is None:
            raise ConfigError("missing required property (direction out sends from it)",
                              prop="topic-out")
        if topicIn is not None:
            raise ConfigError("not used with direction out", prop="topic-in")
    elif topicIn is None and topicOut is None:
        raise ConfigError("direction duplex needs topic-in, topic-out or both")
    _checkTopics(topicIn, topicOut)


def checkListener(config: ListenerConfig) -> ListenerConfig:
    """Raise :class:`ConfigError` if the listener's settings do not fit
    together, as media.xml's reader would; return ``config``."""
    _checkRouting(config.msgtype, config.direction, config.topic_in, config.topic_out,
                  config.protocol)
    if config.auth and config.auth_secret_file is None:
        raise ConfigError("missing required property (auth is true)",
                          prop="auth.secret-file")
    if (config.msgtype in ("xmlcall", "admin") and not config.auth and config.run
            and not ipaddress.ip_address(config.interface).is_loopback):
        what = "a console" if config.msgtype == "xmlcall" else "an admin listener"
        raise ConfigError(
            f"{what} reachable from other machines ({config.interface}) must "
            "require authentication: set auth=true and auth.secret-file, or bind a "
            "loopback interface", prop="interface")
    if (config.tls_certificate is None) != (config.tls_key is None):
        present, absent = (("tls.certificate", "tls.key") if config.tls_key is None
                           else ("tls.key", "tls.certificate"))
        raise ConfigError(f"missing required property ({present} is set: TLS needs "
                          f"both)", prop=absent)
    return config


def checkChannel(config: ChannelConfig) -> ChannelConfig:
    """Raise :class:`ConfigError` if the channel's settings do not fit
    together, as media.xml's reader would; return ``config``."""
    protocol = config.protocol
    _checkMsgtype(config.msgtype, protocol)
    for redirect, prop, topic in (("redirect-in", "topic-in", config.topic_in),
                                  ("redirect-out", "topic-out", config.topic_out)):
        if getattr(config, redirect.replace("-", "_")) and topic is None:
            raise ConfigError(f"missing required property ({redirect} is true)",
                              prop=prop)
    _checkTopics(config.topic_in, config.topic_out)
    if not config.tls:
        for prop, stray in (("tls.ca", config.tls_ca is not None),
                            ("tls.hostname", config.tls_hostname is not None),
                            ("tls.verify", not config.tls_verify)):
            if stray:
                raise ConfigError("only used with tls=true", prop=prop)
    if config.replies == "ordered":
        if "http" in (protocol.inbound.name, protocol.outbound.name):
            raise ConfigError("http pairs each response with its request itself: "
                              "leave replies out", prop="replies")
        if protocol.inbound.name in _STREAMS:
            raise ConfigError(f"protocol {protocol.inbound.name} delivers arbitrary "
                              "chunks, not one reply per message", prop="replies")
    return config


def checkBridge(config: BridgeConfig) -> BridgeConfig:
    """Raise :class:`ConfigError` if the bridge's settings do not fit
    together, as media.xml's reader would; return ``config``."""
    if config.engine != "mqtt":
        raise ConfigError(f"{config.engine!r} is not one of mqtt", prop="engine")
    for prop, value in (("host", config.host), ("node-id", config.node_id)):
        if not value:
            raise ConfigError("missing required property", prop=prop)
    if not config.tls:
        for prop, stray in (("tls.ca", config.tls_ca is not None),
                            ("tls.hostname", config.tls_hostname is not None)):
            if stray:
                raise ConfigError("only used with tls=true", prop=prop)
    if config.password_file is not None and config.username is None:
        raise ConfigError("missing required property (password-file is set)",
                          prop="username")
    if not config.topics:
        raise ConfigError("a bridge needs at least one <topic local=\"..\" "
                          "remote=\"..\" direction=\"in|out|both\"/>")
    remotes = {}
    for topic in config.topics:
        where = f"<topic local={topic.local!r} remote={topic.remote!r}>"
        if topic.direction not in ("in", "out", "both"):
            raise ConfigError(f"{where}: direction {topic.direction!r} is not one of "
                              "in, out, both", line=topic.line)
        if topic.qos not in (0, 1):
            raise ConfigError(f"{where}: qos {topic.qos!r} is not one of 0, 1", line=topic.line)
        if not topic.local or len(topic.local) > MAX_TOPIC_NAME:
            raise ConfigError(f"{where}: local must be a topic name of 1 to "
                              f"{MAX_TOPIC_NAME} characters", line=topic.line)
        # wildcards would make one remote topic feed several messages to one
        # local name with no way back: not in this stage
        if not topic.remote or "+" in topic.remote or "#" in topic.remote:
            raise ConfigError(f"{where}: remote must be an MQTT topic name without "
                              "wildcards (+ and #)", line=topic.line)
        if topic.remote in remotes:
            raise ConfigError(f"{where}: remote topic already shared by the <topic> "
                              f"of local {remotes[topic.remote]!r}", line=topic.line)
        remotes[topic.remote] = topic.local
    return config


def checkService(config: ServiceConfig) -> ServiceConfig:
    """Every listener, channel and bridge checked, names unique, no two
    running listeners on one address and port; raises :class:`ConfigError`."""
    seen = {}
    for kind, items, check in (("listener", config.listeners, checkListener),
                               ("channel", config.channels, checkChannel),
                               ("bridge", config.bridges, checkBridge)):
        for item in items:
            label = _label(kind, item.name)
            if not item.name:
                raise ConfigError("empty 'name' attribute", element=kind)
            if item.name in seen:
                raise ConfigError(f"name already used by {seen[item.name]}",
                                  element=label)
            seen[item.name] = label
            try:
                check(item)
            except ConfigError as e:
                if e.element is None:
                    e.element = label
                raise
    bound = {}
    for listener in config.listeners:
        if not listener.run or listener.port == 0:
            continue
        address = ipaddress.ip_address(listener.interface)
        for other, otherAddress in bound.get(listener.port, ()):
            if address.version == otherAddress.version and (
                    address == otherAddress or address.is_unspecified
                    or otherAddress.is_unspecified):
                where = f" (line {other.line})" if other.line else ""
                raise ConfigError(f"port {listener.port} on {listener.interface} is "
                                  f"already used by listener '{other.name}'{where}",
                                  element=_label("listener", listener.name), prop="port")
        bound.setdefault(listener.port, []).append((listener, address))
    _checkConsoleTopics(config)
    return config


def _checkConsoleTopics(config):
    """No peer reaches a console's calls through its topic-in that could not
    reach the console itself: a console without authentication takes topic
    calls, so no listener open to other machines without authentication may
    publish there."""
    for console in config.listeners:
        if (console.msgtype != "xmlcall" or not console.run or console.auth
                or console.topic_in is None):
            continue
        for listener in config.listeners:
            if (listener is console or not listener.run or listener.auth
                    or listener.topic_in != console.topic_in
                    or listener.direction == "out"
                    or ipaddress.ip_address(listener.interface).is_loopback):
                continue
            raise ConfigError(
                f"publishes to '{console.topic_in}', the topic-in of console "
                f"'{console.name}', which executes the calls it reads there; a "
                f"listener on {listener.interface} without authentication would "
                "open the console to other machines: set auth on one of them, or "
                "bind a loopback interface",
                element=_label("listener", listener.name), prop="topic-in")
        for bridge in config.bridges:
            if not bridge.run or bridge.username is not None \
                    or _loopbackHost(bridge.host):
                continue
            for topic in bridge.topics:
                if topic.local != console.topic_in or topic.direction == "out":
                    continue
                raise ConfigError(
                    f"<topic local={topic.local!r} remote={topic.remote!r}>: brings "
                    f"'{topic.remote}' in to '{console.topic_in}', the topic-in of "
                    f"console '{console.name}', which executes the calls it reads "
                    f"there; a broker on {bridge.host} that takes anonymous clients "
                    "would open the console to anyone who can reach it: set "
                    "username (and password-file, tls, and an ACL on the broker "
                    "for who may publish there), auth on the console (it then "
                    "refuses bridged calls), or use a broker on loopback",
                    element=_label("bridge", bridge.name), line=topic.line)


def _loopbackHost(host) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


# -- the document ---------------------------------------------------------------


def _default(cls, field):
    """The default of dataclass ``cls``'s ``field``: defaults are written once."""
    return cls.__dataclass_fields__[field].default


def _given(element, fields):
    """The values ``element`` gives for ``fields`` (property -> field name)."""
    return {field: element.get(prop) for prop, field in fields.items() if prop in element}


#: channel properties read as they are (property -> ChannelConfig field)
_CHANNEL_FIELDS = {
    "msgtype": "msgtype", "permanent": "permanent", "redirect-in": "redirect_in",
    "redirect-out": "redirect_out", "topic-in": "topic_in", "topic-out": "topic_out",
    "reconnectionTimeout": "reconnection_timeout", "queue-size": "queue_size",
    "inbox-size": "inbox_size", "idle-timeout": "idle_timeout",
    "connect-timeout": "connect_timeout", "keepalive": "keepalive", "tls": "tls",
    "tcp.nodelay": "tcp_nodelay", "ip-version": "ip_version",
    "tls.hostname": "tls_hostname", "tls.verify": "tls_verify",
    "flush-timeout": "flush_timeout", "replies": "replies",
    "max-in-flight": "max_in_flight", "response-timeout": "response_timeout",
}


#: bridge properties read as they are (property -> BridgeConfig field)
_BRIDGE_FIELDS = {
    "engine": "engine", "port": "port", "client-id": "client_id",
    "keepalive": "keepalive", "session-expiry": "session_expiry",
    "username": "username", "tls": "tls", "tls.hostname": "tls_hostname",
    "reconnectionTimeout": "reconnection_timeout", "queue-size": "queue_size",
    "receive-maximum": "receive_maximum",
}


def _label(kind, name):
    return f"{kind} '{name}'"


@dataclass(slots=True)
class _Property:
    value: object
    line: Optional[int]
    #: the name the file used (an alias, or the property's own)
    name: str


class _Element:
    """One ``<listener>`` or ``<channel>``: its name, and its typed properties.

    Errors raised through it carry the file, the line (the property's when
    there is one), the element and the property name.
    """

    def __init__(self, reader, kind, name, run, line):
        self.reader = reader
        self.kind = kind
        self.name = name
        self.run = run
        self.label = _label(kind, name)
        self.line = line
        self.properties = {}
        self.topics = []  # a bridge's BridgeTopic, in order

    def error(self, message, prop=None):
        found = self.properties.get(prop)
        if found is None:
            return ConfigError(message, path=self.reader.path, line=self.line,
                               element=self.label, prop=prop)
        # named as the file spelt it
        return ConfigError(message, path=self.reader.path, line=found.line,
                           element=self.label, prop=found.name)

    def locate(self, error):
        """Give ``error`` (a ConfigError naming a property by its own name)
        the line of that property, else the element's, and the spelling
        the file used."""
        found = self.properties.get(error.prop)
        if found is None:
            # a bridge's <topic> rule gives the topic's own line
            error.line = error.line or self.line
        else:
            error.line, error.prop = found.line, found.name

    def missing(self, prop, why=""):
        return self.error("missing required property" + why, prop)

    def __contains__(self, prop):
        return prop in self.properties

    def get(self, prop, default=None):
        found = self.properties.get(prop)
        return default if found is None else found.value

    def require(self, prop, why=""):
        if prop not in self.properties:
            raise self.missing(prop, why)
        return self.properties[prop].value

    def first(self, *patterns):
        """The first property (document order) matching a pattern: ``"p."``
        matches ``p.*``; ``"p"`` matches ``p`` and ``p.*``."""
        for name in self.properties:
            for p in patterns:
                if name.startswith(p if p.endswith(".") else p + ".") or name == p:
                    return name
        return None

    def add(self, node):
        """Read one ``<property name value/>``, check it and convert its value."""
        line = node.sourceline

        def fail(message, prop=None):
            return ConfigError(message, path=self.reader.path, line=line,
                               element=self.label, prop=prop)

        self.reader.checkEmpty(node, "<property>")
        for attribute in node.attrib:
            if attribute not in ("name", "value"):
                raise fail(f"unknown attribute '{attribute}' on <property>; "
                           "expected name and value")
        name = (node.get("name") or "").strip()
        if not name:
            raise fail("<property> without a 'name' attribute")
        known = _KINDS[self.kind]
        refused = _REFUSED[self.kind].get(name)
        if refused is not None:
            raise fail(refused((node.get("value") or "").strip()), name)
        # an alias is kept under the property it stands for
        prop, implied = _ALIASES[self.kind].get(name, name), None
        if self.kind == "channel" and name in _REDIRECT_TOPICS:
            prop, implied = _REDIRECT_TOPICS[name]
        if prop not in known:
            raise fail(self._unknown(name), name)
        for key in (prop, implied):
            if key in self.properties:
                raise fail(self._conflict(name, key), name)
        raw = node.get("value")
        if raw is None:
            raise fail("missing 'value' attribute", name)
        if not prop.endswith(".delimiter"):
            raw = raw.strip()
        if implied is not None and not raw:
            raise fail(f"must not be empty (leave {name} out for no redirection)", name)
        try:
            value = known[prop](raw)
        except ConfigError as e:
            raise fail(e.message, name) from None
        self.properties[prop] = _Property(value, line, name)
        if implied is not None:
            self.properties[implied] = _Property(True, line, name)

    def _conflict(self, name, prop):
        """Why ``name`` may not be given: ``prop``, which it sets, is set already."""
        first = self.properties[prop]
        if first.name == name:
            return f"given twice (first at line {first.line})"
        both = next((n for n in (name, first.name) if n in _REDIRECT_TOPICS), None)
        if both is not None:
            topic, redirect = _REDIRECT_TOPICS[both]
            return (f"given together with '{first.name}' (line {first.line}); {both} "
                    f"sets both {redirect} and {topic}: give {both} alone, or "
                    f"{redirect} and {topic}")
        return (f"given together with '{first.name}' (line {first.line}), which is "
                "the same setting")

    def _unknown(self, name):
        def names(kind):
            spelt = set(_KINDS[kind]) | set(_ALIASES[kind])
            return spelt | set(_REDIRECT_TOPICS) if kind == "channel" else spelt

        for kind in _KINDS:
            if kind != self.kind and name in names(kind):
                return f"unknown property; only a {kind} has it"
        close = _closest(name, names(self.kind))
        if close:
            return f"unknown property; did you mean '{close}'?"
        return "unknown property"


class _Reader:
    """Turns one media.xml document into a :class:`ServiceConfig`."""

    def __init__(self, path):
        self.path = path
        # relative paths in the file (auth.secret-file) are relative to it
        self.basedir = os.path.dirname(os.path.abspath(path))
        self.owners = {}  # element name -> _Element that has it
        self._shared = {}  # each distinct ProtocolConfig, once

    def shared(self, value):
        """``value``, or an equal one made before: thousands of channels with
        the same protocol share one object."""
        return self._shared.setdefault(value, value)

    def error(self, message, line=None, element=None, prop=None):
        return ConfigError(message, path=self.path, line=line, element=element,
                           prop=prop)

    # -- XML structure ------------------------------------------------------

    def document(self, data):
        # Here, not at the top: aiengine.protocols reads this module's PROTOCOLS.
        from aiengine.protocols.xmlsplit import safeParser
        parser = safeParser()
        try:
            root = etree.fromstring(data, parser)
        except etree.XMLSyntaxError as e:
            message = re.sub(r", line \d+, column \d+$", "", e.msg or str(e))
            column = f" (column {e.position[1]})" if e.position else ""
            raise self.error(f"not well-formed XML: {message}{column}",
                             line=e.lineno or None) from None
        # without a DOCTYPE no entity can be declared, so the tree holds
        # only elements, text, comments and processing instructions
        if root.getroottree().docinfo.internalDTD is not None:
            raise self.error("a DOCTYPE is not allowed in media.xml", line=1)
        return root

    def checkEmpty(self, node, where):
        """``node`` (a ``<property>``) must hold no elements or text."""
        if len(node) or node.text:
            # Rare: let children() say what is wrong (comments are allowed).
            for _ in self.children(node, where, ()):
                pass

    def children(self, node, where, allowed, element=None):
        """The child elements of ``node``: comments and processing
        instructions skipped, text and unknown elements refused."""
        if node.text and node.text.strip():
            raise self.error(f"unexpected text {node.text.strip()[:40]!r} in {where}",
                             line=node.sourceline, element=element)
        for child in node:
            if isinstance(child.tag, str):
                if child.tag not in allowed:
                    raise self.error(self._unexpected(child.tag, where, allowed),
                                     line=child.sourceline, element=element)
                yield child
            if child.tail and child.tail.strip():
                raise self.error(
                    f"unexpected text {child.tail.strip()[:40]!r} in {where}",
                    line=child.sourceline, element=element)

    @staticmethod
    def _unexpected(tag, where, allowed):
        if not allowed:
            return f"unexpected element <{tag}> in {where}"
        expected = " or ".join(f"<{a}>" for a in allowed)
        close = _closest(tag, allowed)
        hint = f"; did you mean <{close}>?" if close else ""
        return f"unknown element <{tag}> in {where}; expected {expected}{hint}"

    # -- the whole file --------------------------------------------------------

    def service(self, data):
        root = self.document(data)
        if root.tag != "service":
            raise self.error(f"root element is <{root.tag}>; expected <service>",
                             line=root.sourceline)
        built = {"listener": [], "channel": [], "bridge": []}
        seen = {}
        for section in self.children(root, "<service>", tuple(_SECTIONS)):
            if section.tag in seen:
                raise self.error(
                    f"<{section.tag}> given twice (first at line {seen[section.tag]}); "
                    "put all its elements in one", line=section.sourceline)
            seen[section.tag] = section.sourceline
            if section.attrib:
                raise self.error(
                    f"unknown attribute '{next(iter(section.attrib))}' on "
                    f"<{section.tag}>", line=section.sourceline)
            kind = _SECTIONS[section.tag]
            for node in self.children(section, f"<{section.tag}>", (kind,)):
                element = self.element(kind, node)
                build = {"listener": self.listener, "channel": self.channel,
                         "bridge": self.bridge}[kind]
                built[kind].append(build(element))
        config = ServiceConfig(path=self.path, listeners=tuple(built["listener"]),
                               channels=tuple(built["channel"]),
                               bridges=tuple(built["bridge"]))
        try:
            checkService(config)
        except ConfigError as e:
            if e.path is None:
                # Each element was checked when read: what is left is between
                # elements (a port two listeners bind), named by its element.
                e.path = self.path
                owner = next((o for o in self.owners.values() if o.label == e.element),
                             None)
                if owner is not None:
                    owner.locate(e)
            raise
        return config

    def element(self, kind, node):
        """Read the attributes and properties of a listener or channel."""
        line = node.sourceline
        for attribute in node.attrib:
            if attribute in _EARLY_ATTRIBUTES:
                name = (node.get("name") or "").strip()
                raise self.error(_earlyAttributes(node), line=line,
                                 element=_label(kind, name) if name else kind)
            if attribute not in ("name", "run"):
                raise self.error(
                    f"unknown attribute '{attribute}'; expected name and run",
                    line=line, element=kind)
        name = node.get("name")
        if name is None:
            raise self.error("missing 'name' attribute", line=line, element=kind)
        name = name.strip()
        if not name:
            raise self.error("empty 'name' attribute", line=line, element=kind)
        label = _label(kind, name)
        if name in self.owners:
            first = self.owners[name]
            raise self.error(f"name already used by {first.label} at line {first.line}",
                             line=line, element=label)
        run = node.get("run")
        try:
            run = True if run is None else _bool(run.strip())
        except ConfigError as e:
            raise self.error(f"attribute 'run': {e.message}", line=line,
                             element=label) from None
        element = _Element(self, kind, name, run, line)
        self.owners[name] = element
        allowed = ("property", "topic") if kind == "bridge" else ("property",)
        for prop in self.children(node, f"<{kind}>", allowed, element=label):
            if prop.tag == "topic":
                element.topics.append(self.bridgeTopic(element, prop))
            else:
                element.add(prop)
        return element

    def bridgeTopic(self, element, node):
        """One ``<topic local remote direction qos/>`` of a bridge."""
        line = node.sourceline

        def fail(message):
            return ConfigError(f"<topic>: {message}", path=self.path, line=line,
                               element=element.label)

        self.checkEmpty(node, "<topic>")
        for attribute in node.attrib:
            if attribute not in _BRIDGE_TOPIC_ATTRIBUTES:
                raise fail(f"unknown attribute '{attribute}'; expected "
                           f"{', '.join(_BRIDGE_TOPIC_ATTRIBUTES)}")
        values = {}
        for attribute, convert in (("local", _topic), ("remote", _text),
                                   ("direction", _choice("in", "out", "both")),
                                   ("qos", _choice("0", "1"))):
            raw = node.get(attribute)
            if raw is None:
                if attribute == "qos":
                    continue
                raise fail(f"missing '{attribute}' attribute")
            try:
                values[attribute] = convert(raw.strip())
            except ConfigError as e:
                raise fail(f"attribute '{attribute}': {e.message}") from None
        if "qos" in values:
            values["qos"] = int(values["qos"])
        return BridgeTopic(line=line, **values)

    def bridge(self, element):
        """A ``<bridge>``: properties and topics, files resolved and readable."""
        host = element.require("host")
        nodeId = element.require("node-id")
        tls = element.get("tls", False)
        given = _given(element, _BRIDGE_FIELDS)
        return self.located(element, checkBridge, BridgeConfig(
            name=element.name, host=host, node_id=nodeId,
            topics=tuple(element.topics),
            password_file=self.path_(element, "password-file"),
            tls_ca=self.path_(element, "tls.ca") if tls else element.get("tls.ca"),
            run=element.run, line=element.line, **given))

    # -- protocols ---------------------------------------------------------------

    def protocol(self, element, default=None):
        name = element.get("protocol", default)
        if name is None:
            raise element.missing("protocol")
        if name == "asymmetric":
            stray = element.first("protocol.")
            if stray:
                key = stray[len("protocol."):]
                raise element.error(
                    "with protocol asymmetric, settings go under protocol-inbound.* "
                    f"and protocol-outbound.*: write protocol-inbound.{key}, "
                    f"protocol-outbound.{key} or both", stray)
            inbound, outbound = (self.side(element, side) for side in _SIDES)
            return self.shared(ProtocolConfig(name, inbound, outbound))
        stray = element.first(*_SIDES)
        if stray:
            raise element.error(
                f"only used with protocol asymmetric (protocol is {name})", stray)
        settings = self.settings(element, "protocol", name)
        return self.shared(ProtocolConfig(name, settings, settings))

    def side(self, element, side):
        name = element.require(side, " (protocol asymmetric needs protocol-inbound "
                                     "and protocol-outbound)")
        if name in ("asymmetric", "http"):
            raise element.error(
                f"{name} cannot be one direction of an asymmetric protocol", side)
        return self.settings(element, side, name)

    def settings(self, element, prefix, protocol):
        values = {}
        for name in element.properties:
            fieldName = _SETTING_FIELDS.get(name)
            if fieldName is not None and name.startswith(prefix + "."):
                values[fieldName] = element.get(name)
        key = f"{prefix}.delimiter"
        if key in element:
            if protocol == "http":
                raise element.error("http frames its own messages; a delimiter "
                                    "has no meaning here", key)
            if not values["delimiter"]:
                if protocol == "text-messages":
                    raise element.error(
                        "empty delimiter: text-messages needs one to cut messages", key)
                values["delimiter"] = None
        elif protocol == "text-messages":
            values["delimiter"] = b"\n"
        return ProtocolSettings(name=protocol, **values)

    def located(self, element, check, *args):
        """``check(*args)``, its ConfigError given this file, the line of the
        property it names (else the element's) and the element."""
        try:
            return check(*args)
        except ConfigError as e:
            if e.path is None:
                e.path = self.path
                element.locate(e)
                e.element = element.label
            raise

    # -- listeners and channels ------------------------------------------------

    def listener(self, element):
        msgtype = element.get("msgtype", _default(ListenerConfig, "msgtype"))
        direction = element.get("direction", _default(ListenerConfig, "direction"))
        protocol = self.protocol(element, default=_DEFAULT_PROTOCOL.get(msgtype))
        topicIn, topicOut = element.get("topic-in"), element.get("topic-out")
        self.located(element, _checkRouting, msgtype, direction, topicIn, topicOut,
                     protocol)
        if topicOut is None or msgtype == "xmlcall":
            stray = element.first("overflow", "slow-consumer-timeout")
            if stray:
                raise element.error("only used by a listener that writes topic-out's "
                                    "messages to its connections", stray)
        if element.get("overflow") == "drop" and "slow-consumer-timeout" in element:
            raise element.error("only used with overflow pause", "slow-consumer-timeout")
        secretFile = element.get("auth.secret-file")
        if secretFile is not None:
            secretFile = os.path.normpath(os.path.join(self.basedir, secretFile))
            if element.get("auth"):
                self.checkReadable(element, secretFile, "auth.secret-file")
        certificate, key = (self.path_(element, p) for p in ("tls.certificate", "tls.key"))
        # Only what the file gives: the rest keeps ListenerConfig's defaults,
        # the one place they are written.
        return self.located(element, checkListener, ListenerConfig(
            name=element.name, port=element.require("port"), protocol=protocol,
            direction=direction, msgtype=msgtype, topic_in=topicIn, topic_out=topicOut,
            auth_secret_file=secretFile, tls_certificate=certificate, tls_key=key,
            run=element.run, line=element.line,
            **_given(element, {"interface": "interface", "auth": "auth",
                               "max-connections": "max_connections",
                               "idle-timeout": "idle_timeout", "overflow": "overflow",
                               "slow-consumer-timeout": "slow_consumer_timeout",
                               "tcp.nodelay": "tcp_nodelay"})))

    def path_(self, element, prop):
        """A file property: resolved against media.xml's directory and readable."""
        value = element.get(prop)
        if value is None:
            return None
        filename = os.path.normpath(os.path.join(self.basedir, value))
        self.checkReadable(element, filename, prop)
        return filename

    @staticmethod
    def checkReadable(element, filename, prop):
        # checked now so a wrong path stops start-up; the content is read later
        if not os.path.isfile(filename):
            raise element.error(f"no such file: {filename}", prop)
        if not os.access(filename, os.R_OK):
            raise element.error(f"cannot read {filename}", prop)

    def channel(self, element):
        host = element.require("host")
        port = element.require("port")
        protocol = self.protocol(element)
        if element.get("replies") != "ordered" and protocol.outbound.name != "http":
            stray = element.first("max-in-flight", "response-timeout")
            if stray:
                raise element.error("only used by channels that pair replies with "
                                    "requests (protocol http, or replies=ordered)", stray)
        tls = element.get("tls", False)
        # Only what the file gives: the rest keeps ChannelConfig's defaults.
        given = _given(element, _CHANNEL_FIELDS)
        return self.located(element, checkChannel, ChannelConfig(
            name=element.name, host=host, port=port, protocol=protocol,
            tls_ca=self.path_(element, "tls.ca") if tls else element.get("tls.ca"),
            run=element.run, line=element.line, **given))


def parse(data: bytes, path: str = "<string>") -> ServiceConfig:
    """Parse and validate media.xml content.

    ``path`` names the file in messages, and relative paths in the file
    (``auth.secret-file``) resolve against its directory.
    """
    if isinstance(data, str):
        data = data.encode("utf-8")
    reader = _Reader(path)
    try:
        return reader.service(data)
    finally:
        # The elements and the reader refer to each other: without this, a
        # large media.xml would leave its whole parse for the cyclic collector.
        reader.owners.clear()


def load(path: str) -> ServiceConfig:
    """Read, parse and validate the media.xml at ``path``."""
    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise ConfigError(f"cannot read file: {e.strerror or e}", path=path) from None
    return parse(data, path)


def main(argv=None) -> int:
    """``python -m aiengine.config FILE``: check a media.xml, say OK or why not."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m aiengine.config FILE", file=sys.stderr)
        return 2
    try:
        config = load(args[0])
    except ConfigError as e:
        print(e, file=sys.stderr)
        return 1
    print(f"OK: {config.path}: {len(config.listeners)} listener(s), "
          f"{len(config.channels)} channel(s)"
          + (f", {len(config.bridges)} bridge(s)" if config.bridges else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
