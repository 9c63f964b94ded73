"""Tests for aiengine.config: media.xml parsing, validation and error messages."""

import io
import os
from contextlib import redirect_stderr, redirect_stdout

from hypothesis import given, strategies as st
from twisted.trial.unittest import TestCase

from aiengine.config import (
    ChannelConfig, ConfigError, ProtocolSettings, load, main, parse,
    parseCString)

SAMPLE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                      "etc", "media.xml")

#: the layout of the original media.xml: the debug console and the seed's channel
ORIGINAL = """<?xml version="1.0" encoding="UTF-8"?>
<service>
	<listeners>
		<listener name="debug" run="true">
			<property name="port" value="20001"/>
			<property name="protocol" value="text-messages"/>
			<property name="protocol.delimiter" value="\\1"/>
			<property name="msgtype" value="xmlcall"/>
		</listener>
	</listeners>
	<directchannels>
		<channel name="google" run="true">
			<property name="protocol" value="http"/>
			<property name="protocol.showmessages" value="false"/>
			<property name="protocol.showpackets" value="false"/>
			<property name="msgtype" value="text"/>
			<property name="permanent" value="true"/>
			<property name="host" value="www.google.com"/> 
			<property name="port" value="80"/> 
			<property name="redirect-in" value="true"/>
			<property name="redirect-out" value="true"/> 
			<property name="topic-in" value="http.response"/> 
			<property name="topic-out" value="http.request"/> 
		</channel>
	</directchannels>
</service>
"""

CHANNEL = [("host", "127.0.0.1"), ("port", "8080"), ("protocol", "text-messages")]
LISTENER = [("port", "0"), ("protocol", "text-messages"), ("topic-in", "in"),
            ("topic-out", "out")]


def edit(pairs, drop=(), **changes):
    """``pairs`` with some properties dropped, changed or (at the end) added.
    Keyword names use ``_`` for ``-`` and ``__`` for ``.``."""
    changes = {k.replace("__", ".").replace("_", "-"): v for k, v in changes.items()}
    out = [(n, changes.pop(n, v)) for n, v in pairs if n not in drop]
    return out + list(changes.items())


def element(kind, name, pairs, attributes=None):
    attributes = f' name="{name}"' if attributes is None else attributes
    body = "".join(f'      <property name="{n}" value="{v}"/>\n' for n, v in pairs)
    return f"    <{kind}{attributes}>\n{body}    </{kind}>\n"


def document(listeners=(), channels=()):
    return ("<service>\n  <listeners>\n" + "".join(listeners)
            + "  </listeners>\n  <directchannels>\n" + "".join(channels)
            + "  </directchannels>\n</service>\n")


def channelDoc(pairs, name="c"):
    return document(channels=[element("channel", name, pairs)])


def listenerDoc(pairs, name="l"):
    return document(listeners=[element("listener", name, pairs)])


def lineOf(text, needle, after=""):
    """1-based line of the first ``needle`` in ``text`` (after ``after``)."""
    return text[:text.index(needle, text.index(after))].count("\n") + 1


class Helpers:
    def parseError(self, text, path="media.xml"):
        return self.assertRaises(ConfigError, parse, text.encode("utf-8"), path)

    def assertPropertyError(self, text, element, prop, message, needle=None,
                            after=""):
        """The error names the property's line (or ``needle``'s), element and name."""
        error = self.parseError(text)
        line = lineOf(text, needle or f'name="{prop}"', after)
        self.assertEqual(
            str(error), f"media.xml:{line}: {element}: property '{prop}': {message}")
        self.assertEqual((error.line, error.element, error.prop), (line, element, prop))
        return error


class LayoutTests(Helpers, TestCase):
    """The original file and the document structure."""

    def test_originalLayout(self):
        config = parse(ORIGINAL.encode(), "orig.xml")
        self.assertEqual(config.path, "orig.xml")
        [debug] = config.listeners
        [google] = config.channels
        self.assertEqual((debug.name, debug.port, debug.msgtype, debug.interface),
                         ("debug", 20001, "xmlcall", "127.0.0.1"))
        self.assertEqual(debug.protocol.inbound.delimiter, b"\x01")
        self.assertEqual(debug.line, 4)
        self.assertEqual(google, ChannelConfig(
            name="google", host="www.google.com", port=80, protocol=google.protocol,
            msgtype="text", permanent=True, redirect_in=True, redirect_out=True,
            topic_in="http.response", topic_out="http.request", line=12))
        self.assertEqual(google.protocol.inbound, ProtocolSettings(name="http"))

    def test_sectionsMayBeMissing(self):
        self.assertEqual(parse(b"<service/>").listeners, ())
        config = parse(b"<service><listeners/></service>")
        self.assertEqual((config.listeners, config.channels), ((), ()))
        config = parse(channelDoc(CHANNEL).replace(
            "<listeners>\n  </listeners>\n", "").encode())
        self.assertEqual([c.name for c in config.channels], ["c"])

    def test_commentsAnywhere(self):
        text = ("<!-- top --><service><!-- a --><listeners><!-- b -->"
                '<listener name="l"><!-- c --><property name="port" value="1"/>'
                '<!-- d --><property name="protocol" value="text-messages"/>'
                '<property name="topic-in" value="t"/><?pi data?></listener>'
                "</listeners></service><!-- end -->")
        self.assertEqual(parse(text.encode()).listeners[0].topic_in, "t")

    def test_runFalseIncluded(self):
        text = document(
            listeners=[element("listener", "a", LISTENER, ' name="a" run="false"')],
            channels=[element("channel", "b", CHANNEL, ' name="b" run=" FALSE "'),
                      element("channel", "c", CHANNEL)])
        config = parse(text.encode())
        self.assertEqual([x.run for x in config.listeners + config.channels],
                         [False, False, True])

    def test_runFalseStillValidated(self):
        text = document(channels=[element(
            "channel", "b", edit(CHANNEL, port="http"), ' name="b" run="false"')])
        self.assertPropertyError(text, "channel 'b'", "port",
                                 "expected an integer, got 'http'")

    def test_badRun(self):
        text = document(channels=[element("channel", "b", CHANNEL,
                                          ' name="b" run="yes"')])
        self.assertEqual(str(self.parseError(text)),
                         f"media.xml:{lineOf(text, '<channel')}: channel 'b': "
                         "attribute 'run': expected true or false, got 'yes'")

    def test_notXml(self):
        error = self.parseError("<service>\n  <listeners>\n</service>\n")
        self.assertEqual(error.line, 3)
        self.assertTrue(str(error).startswith(
            "media.xml:3: not well-formed XML: Opening and ending tag mismatch"),
            str(error))
        self.assertIn("media.xml:1: not well-formed XML",
                      str(self.parseError("")))

    def test_unreadableFile(self):
        missing = self.mktemp()
        error = self.assertRaises(ConfigError, load, missing)
        self.assertEqual(str(error), f"{missing}: cannot read file: No such file or directory")
        directory = self.mktemp()
        os.mkdir(directory)
        self.assertIn("cannot read file", str(self.assertRaises(ConfigError, load, directory)))

    def test_wrongRoot(self):
        self.assertEqual(str(self.parseError("<?xml version='1.0'?>\n<media/>")),
                         "media.xml:2: root element is <media>; expected <service>")

    def test_unknownSection(self):
        text = "<service>\n  <listner/>\n</service>"
        self.assertEqual(
            str(self.parseError(text)),
            "media.xml:2: unknown element <listner> in <service>; expected "
            "<listeners> or <directchannels> or <bridges>; did you mean <listeners>?")

    def test_unknownElementInsideElement(self):
        text = channelDoc(CHANNEL).replace('<property name="port"', '<prop name="port"')
        error = self.parseError(text)
        self.assertEqual(str(error), f"media.xml:{lineOf(text, '<prop ')}: channel 'c': "
                         "unknown element <prop> in <channel>; expected <property>; "
                         "did you mean <property>?")

    def test_wrongElementInSection(self):
        text = document(listeners=[element("channel", "c", CHANNEL)])
        self.assertIn("media.xml:3: unknown element <channel> in <listeners>; "
                      "expected <listener>", str(self.parseError(text)))

    def test_textAndEntitiesRefused(self):
        self.assertIn("unexpected text 'hello' in <listeners>",
                      str(self.parseError("<service><listeners>hello</listeners></service>")))
        for doctype in ('<!DOCTYPE service [<!ENTITY e "x">]>',
                        '<!DOCTYPE service SYSTEM "media.dtd">'):
            text = doctype + '\n<service>&e;</service>'
            self.assertEqual(str(self.parseError(text)),
                             "media.xml:1: a DOCTYPE is not allowed in media.xml")

    def test_duplicateSection(self):
        text = "<service>\n<listeners/>\n<listeners/>\n</service>"
        self.assertEqual(str(self.parseError(text)), "media.xml:3: <listeners> given "
                         "twice (first at line 2); put all its elements in one")

    def test_missingAndEmptyName(self):
        text = document(channels=[element("channel", None, CHANNEL, "")])
        line = lineOf(text, "<channel>")
        self.assertEqual(str(self.parseError(text)),
                         f"media.xml:{line}: channel: missing 'name' attribute")
        text = document(channels=[element("channel", None, CHANNEL, ' name=" "')])
        self.assertEqual(str(self.parseError(text)),
                         f"media.xml:{line}: channel: empty 'name' attribute")

    def test_duplicateNameAcrossKinds(self):
        text = document(listeners=[element("listener", "x", LISTENER)],
                        channels=[element("channel", "x", CHANNEL)])
        line = lineOf(text, '<channel name="x"')
        self.assertEqual(str(self.parseError(text)),
                         f"media.xml:{line}: channel 'x': name already used by "
                         "listener 'x' at line 3")

    def test_unknownAttribute(self):
        text = document(channels=[element("channel", "c", CHANNEL,
                                          ' name="c" enabled="true"')])
        self.assertIn("channel: unknown attribute 'enabled'", str(self.parseError(text)))


class PropertyTests(Helpers, TestCase):
    """Property names, types and ranges."""

    def test_unknownPropertySuggestion(self):
        text = channelDoc(CHANNEL + [("reconectionTimeout", "5")], name="google")
        self.assertPropertyError(
            text, "channel 'google'", "reconectionTimeout",
            "unknown property; did you mean 'reconnectionTimeout'?")

    def test_unknownProtocolSettingSuggestion(self):
        text = channelDoc(CHANNEL + [("protocol.delimeter", "x")])
        self.assertPropertyError(text, "channel 'c'", "protocol.delimeter",
                                 "unknown property; did you mean 'protocol.delimiter'?")

    def test_otherKindsProperty(self):
        text = channelDoc(CHANNEL + [("auth", "true")])
        self.assertPropertyError(text, "channel 'c'", "auth",
                                 "unknown property; only a listener has it")
        text = channelDoc(CHANNEL + [("zzzz", "1")])
        self.assertPropertyError(text, "channel 'c'", "zzzz", "unknown property")

    def test_givenTwice(self):
        text = channelDoc(CHANNEL + [("port", "81")])
        error = self.parseError(text)
        first = lineOf(text, 'name="port"')
        self.assertEqual(error.line, first + 2)
        self.assertEqual(str(error), f"media.xml:{first + 2}: channel 'c': property "
                         f"'port': given twice (first at line {first})")

    def test_reconnectionTimeoutAlias(self):
        config = parse(channelDoc(CHANNEL + [("reconnectionTimeoutSec", "2.5")]).encode())
        self.assertEqual(config.channels[0].reconnection_timeout, 2.5)
        text = channelDoc(CHANNEL + [("reconnectionTimeout", "1"),
                                     ("reconnectionTimeoutSec", "2")])
        first = lineOf(text, 'name="reconnectionTimeout"')
        self.assertPropertyError(
            text, "channel 'c'", "reconnectionTimeoutSec",
            f"given together with 'reconnectionTimeout' (line {first}), "
            "which is the same setting")

    def test_propertyWithoutNameOrValue(self):
        text = channelDoc(CHANNEL).replace('name="port" ', "")
        error = self.parseError(text)
        line = lineOf(text, 'value="8080"')
        self.assertEqual(str(error), f"media.xml:{line}: "
                         "channel 'c': <property> without a 'name' attribute")
        text = channelDoc(CHANNEL).replace('value="8080"', "")
        self.assertPropertyError(text, "channel 'c'", "port", "missing 'value' attribute")

    def test_wrongTypes(self):
        cases = [
            ("port", "80x", "expected an integer, got '80x'"),
            ("port", "8_080", "expected an integer, got '8_080'"),
            ("queue-size", "1.5", "expected an integer, got '1.5'"),
            ("connect-timeout", "soon", "expected a number of seconds, got 'soon'"),
            ("idle-timeout", "nan", "expected a number of seconds, got 'nan'"),
            ("permanent", "yes", "expected true or false, got 'yes'"),
            ("keepalive", "1", "expected true or false, got '1'"),
        ]
        for prop, value, message in cases:
            text = channelDoc(edit(CHANNEL, drop=(prop,)) + [(prop, value)])
            self.assertPropertyError(text, "channel 'c'", prop, message)

    def test_booleansIgnoreCase(self):
        config = parse(channelDoc(CHANNEL + [("permanent", "FALSE"),
                                             ("keepalive", "False")]).encode())
        self.assertEqual((config.channels[0].permanent, config.channels[0].keepalive),
                         (False, False))

    def test_ranges(self):
        cases = [
            ("channel", "port", "0", "out of range: 0 (allowed 1 to 65535)"),
            ("channel", "port", "65536", "out of range: 65536 (allowed 1 to 65535)"),
            ("listener", "port", "-1", "out of range: -1 (allowed 0 to 65535)"),
            ("channel", "reconnectionTimeout", "-1", "must not be negative, got -1"),
            ("channel", "connect-timeout", "0", "must be greater than 0, got 0"),
            ("channel", "queue-size", "0", "must be at least 1, got 0"),
            ("channel", "inbox-size", "-3", "must be at least 1, got -3"),
            ("channel", "protocol.max-packet-size", "0", "must be at least 1, got 0"),
            ("listener", "protocol.wait-time-sec", "-0.5", "must not be negative, got -0.5"),
        ]
        for kind, prop, value, message in cases:
            base = CHANNEL if kind == "channel" else LISTENER
            text = document(**{kind + "s": [element(
                kind, "e", edit(base, drop=(prop,)) + [(prop, value)])]})
            self.assertPropertyError(text, f"{kind} 'e'", prop, message)

    def test_listenerPortZeroMeansAnyPort(self):
        self.assertEqual(parse(listenerDoc(LISTENER).encode()).listeners[0].port, 0)

    def test_missingRequired(self):
        for prop in ("host", "port", "protocol"):
            text = channelDoc(edit(CHANNEL, drop=(prop,)))
            self.assertPropertyError(text, "channel 'c'", prop,
                                     "missing required property", needle="<channel")
        self.assertPropertyError(listenerDoc(edit(LISTENER, drop=("port",))),
                                 "listener 'l'", "port", "missing required property",
                                 needle="<listener ")

    def test_badEnums(self):
        self.assertPropertyError(
            channelDoc(edit(CHANNEL, protocol="text-message")), "channel 'c'",
            "protocol", "'text-message' is not one of text-messages, xml-messages, "
            "text-stream, binary-stream, http, asymmetric; did you mean 'text-messages'?")
        self.assertPropertyError(
            channelDoc(CHANNEL + [("msgtype", "xmlcall")]), "channel 'c'", "msgtype",
            "'xmlcall' is not one of text, xml; did you mean 'xml'?")
        self.assertPropertyError(
            listenerDoc(LISTENER + [("direction", "both")]), "listener 'l'",
            "direction", "'both' is not one of in, out, duplex")

    def test_valuesStrippedExceptDelimiter(self):
        pairs = edit(CHANNEL, port=" 80 ", host=" example.org ",
                     protocol__delimiter=" ; ")
        channel = parse(channelDoc(pairs).encode()).channels[0]
        self.assertEqual((channel.port, channel.host), (80, "example.org"))
        self.assertEqual(channel.protocol.inbound.delimiter, b" ; ")

    def test_channelDefaultsAndExtras(self):
        channel = parse(channelDoc(CHANNEL).encode()).channels[0]
        self.assertEqual(
            (channel.queue_size, channel.inbox_size, channel.idle_timeout,
             channel.connect_timeout, channel.keepalive, channel.reconnection_timeout,
             channel.permanent, channel.msgtype),
            (1000, 1000, None, 30.0, True, 10.0, True, "text"))
        channel = parse(channelDoc(CHANNEL + [
            ("queue-size", "5"), ("inbox-size", "7"), ("idle-timeout", "0"),
            ("connect-timeout", "1.5"), ("keepalive", "false"),
            ("permanent", "false")]).encode()).channels[0]
        self.assertEqual(
            (channel.queue_size, channel.inbox_size, channel.idle_timeout,
             channel.connect_timeout, channel.keepalive, channel.effective_idle_timeout),
            (5, 7, 0.0, 1.5, False, 0.0))

    def test_hosts(self):
        for value, stored in [("www.google.com", "www.google.com"),
                              ("127.0.0.2", "127.0.0.2"), ("::1", "::1"),
                              ("[::1]", "::1"), ("[2001:DB8::0:1]", "2001:db8::1"),
                              ("my_host.local.", "my_host.local.")]:
            channel = parse(channelDoc(edit(CHANNEL, host=value)).encode()).channels[0]
            self.assertEqual(channel.host, stored)
        for value, message in [
                ("www.google.com:80", "'www.google.com:80' includes a port; give the "
                                      "host alone and put 80 in property 'port'"),
                ("256.1.1.1", "'256.1.1.1' is not a valid IPv4 address"),
                ("[::g]", "'[::g]' is not a valid IPv6 address"),
                ("bad host", "'bad host' is not a valid host name"),
                ("-x.org", "'-x.org' is not a valid host name")]:
            self.assertPropertyError(channelDoc(edit(CHANNEL, host=value)),
                                     "channel 'c'", "host", message)

    def test_interface(self):
        for value, stored in [("::", "::"), ("[::1]", "::1"), ("0.0.0.0", "0.0.0.0")]:
            listener = parse(listenerDoc(LISTENER + [("interface", value)]).encode())
            self.assertEqual(listener.listeners[0].interface, stored)
        self.assertPropertyError(
            listenerDoc(LISTENER + [("interface", "localhost")]), "listener 'l'",
            "interface", "'localhost' is not an IPv4 or IPv6 address "
            "(e.g. 127.0.0.1, ::1, 0.0.0.0)")


class ProtocolTests(Helpers, TestCase):
    """Protocol names, settings and asymmetric protocols."""

    def test_symmetricSharesSettings(self):
        pairs = edit(CHANNEL, protocol__max_packet_size="10", protocol__showpackets="true")
        protocol = parse(channelDoc(pairs).encode()).channels[0].protocol
        self.assertIs(protocol.inbound, protocol.outbound)
        self.assertFalse(protocol.asymmetric)
        self.assertEqual(protocol.inbound, ProtocolSettings(
            name="text-messages", delimiter=b"\n", max_packet_size=10, show_packets=True))

    def test_defaultDelimiters(self):
        for name, delimiter in [("text-messages", b"\n"), ("xml-messages", None),
                                ("text-stream", None), ("http", None)]:
            protocol = parse(channelDoc(edit(CHANNEL, protocol=name)).encode()
                             ).channels[0].protocol
            self.assertEqual(protocol.inbound.delimiter, delimiter, name)

    def test_emptyDelimiter(self):
        self.assertPropertyError(
            channelDoc(CHANNEL + [("protocol.delimiter", "")]), "channel 'c'",
            "protocol.delimiter", "empty delimiter: text-messages needs one to cut messages")
        pairs = edit(CHANNEL, protocol="xml-messages", protocol__delimiter="")
        self.assertIsNone(parse(channelDoc(pairs).encode()).channels[0]
                          .protocol.outbound.delimiter)

    def test_delimiterOnHttp(self):
        self.assertPropertyError(
            channelDoc(edit(CHANNEL, protocol="http", protocol__delimiter="\\n")),
            "channel 'c'", "protocol.delimiter",
            "http frames its own messages; a delimiter has no meaning here")

    def test_badDelimiterEscape(self):
        self.assertPropertyError(
            channelDoc(CHANNEL + [("protocol.delimiter", "ab\\q")]), "channel 'c'",
            "protocol.delimiter", "unknown escape '\\q' at position 2")

    def test_httpOnlyOnChannels(self):
        self.assertPropertyError(
            listenerDoc(edit(LISTENER, protocol="http")), "listener 'l'", "protocol",
            "http is a client protocol: only a channel can use it")

    def test_asymmetric(self):
        pairs = edit(CHANNEL, drop=("protocol",), protocol="asymmetric",
                     protocol_inbound="xml-messages", protocol_outbound="text-messages",
                     protocol_inbound__max_packet_size="100",
                     protocol_outbound__delimiter="\\r\\n")
        protocol = parse(channelDoc(pairs).encode()).channels[0].protocol
        self.assertTrue(protocol.asymmetric)
        self.assertEqual(protocol.inbound, ProtocolSettings(
            name="xml-messages", max_packet_size=100))
        self.assertEqual(protocol.outbound, ProtocolSettings(
            name="text-messages", delimiter=b"\r\n"))

    def test_asymmetricErrors(self):
        base = edit(CHANNEL, protocol="asymmetric", protocol_inbound="text-messages",
                    protocol_outbound="text-messages")
        self.assertPropertyError(
            channelDoc(edit(base, drop=("protocol-outbound",))), "channel 'c'",
            "protocol-outbound", "missing required property (protocol asymmetric needs "
            "protocol-inbound and protocol-outbound)", needle="<channel")
        for side, name in [("protocol-inbound", "asymmetric"),
                           ("protocol-outbound", "http")]:
            self.assertPropertyError(
                channelDoc(edit(base, **{side.replace("-", "_"): name})), "channel 'c'",
                side, f"{name} cannot be one direction of an asymmetric protocol")
        self.assertPropertyError(
            channelDoc(base + [("protocol.showmessages", "true")]), "channel 'c'",
            "protocol.showmessages", "with protocol asymmetric, settings go under "
            "protocol-inbound.* and protocol-outbound.*: write "
            "protocol-inbound.showmessages, protocol-outbound.showmessages or both")

    def test_sideSettingsNeedAsymmetric(self):
        for prop in ("protocol-inbound", "protocol-outbound.showpackets"):
            value = "true" if "." in prop else "text-messages"
            self.assertPropertyError(
                channelDoc(CHANNEL + [(prop, value)]), "channel 'c'", prop,
                "only used with protocol asymmetric (protocol is text-messages)")

    def test_streamsCannotCarryXml(self):
        self.assertPropertyError(
            channelDoc(edit(CHANNEL, protocol="text-stream", msgtype="xml")),
            "channel 'c'", "msgtype",
            "msgtype xml needs whole messages, but protocol text-stream "
            "delivers arbitrary chunks")


class CombinationTests(Helpers, TestCase):
    """Settings that only make sense together."""

    def test_redirectNeedsTopic(self):
        for redirect, topic in [("redirect-in", "topic-in"), ("redirect-out", "topic-out")]:
            self.assertPropertyError(
                channelDoc(CHANNEL + [(redirect, "true")]), "channel 'c'", topic,
                f"missing required property ({redirect} is true)", needle="<channel")

    def test_topicWithoutRedirectIsKept(self):
        channel = parse(channelDoc(CHANNEL + [("topic-in", "t")]).encode()).channels[0]
        self.assertEqual((channel.topic_in, channel.redirect_in), ("t", False))

    def test_listenerDirections(self):
        only = lambda *keep: edit(LISTENER, drop=[t for t in ("topic-in", "topic-out")
                                                  if t not in keep])
        listener = parse(listenerDoc(only("topic-in") + [("direction", "in")]).encode())
        self.assertEqual(listener.listeners[0].direction, "in")
        self.assertPropertyError(
            listenerDoc(only("topic-out") + [("direction", "in")]), "listener 'l'",
            "topic-in", "missing required property (direction in publishes to it)",
            needle="<listener ")
        self.assertPropertyError(
            listenerDoc(only("topic-in") + [("direction", "out")]), "listener 'l'",
            "topic-out", "missing required property (direction out sends from it)",
            needle="<listener ")
        self.assertPropertyError(
            listenerDoc(LISTENER + [("direction", "out")]), "listener 'l'", "topic-in",
            "not used with direction out")
        text = listenerDoc(only())
        self.assertEqual(str(self.parseError(text)),
                         f"media.xml:{lineOf(text, '<listener ')}: listener 'l': "
                         "direction duplex needs topic-in, topic-out or both")

    def test_xmlcallListener(self):
        listener = parse(listenerDoc([("port", "1"), ("msgtype", "xmlcall")]).encode()
                         ).listeners[0]
        self.assertEqual(listener.protocol.name, "xml-messages")
        self.assertEqual((listener.topic_in, listener.topic_out), (None, None))
        # The original's console named its topics: both optional, both kept.
        listener = parse(listenerDoc([("port", "1"), ("msgtype", "xmlcall"),
                                      ("topic-in", "c.in"), ("topic-out", "c.out")]
                                     ).encode()).listeners[0]
        self.assertEqual((listener.topic_in, listener.topic_out), ("c.in", "c.out"))
        self.assertPropertyError(
            listenerDoc([("port", "1"), ("msgtype", "xmlcall"), ("topic-in", "c"),
                         ("topic-out", "c")]), "listener 'l'", "topic-out",
            "must differ from topic-in: the console would read its own answers as calls")
        self.assertPropertyError(
            listenerDoc([("port", "1"), ("msgtype", "xmlcall"), ("direction", "in")]),
            "listener 'l'", "direction",
            "msgtype xmlcall answers calls, so direction must be duplex")

    def test_listenerProtocolRequiredUnlessXmlcall(self):
        self.assertPropertyError(
            listenerDoc(edit(LISTENER, drop=("protocol",))), "listener 'l'", "protocol",
            "missing required property", needle="<listener ")

    def test_auth(self):
        directory = self.mktemp()
        os.makedirs(os.path.join(directory, "keys"))
        with open(os.path.join(directory, "keys", "secret"), "w") as f:
            f.write("s3cret-value")
        media = os.path.join(directory, "media.xml")
        with open(media, "w") as f:
            f.write(listenerDoc(LISTENER + [("auth", "true"),
                                            ("auth.secret-file", "keys/secret")]))
        listener = load(media).listeners[0]
        self.assertTrue(listener.auth)
        self.assertEqual(listener.auth_secret_file,
                         os.path.join(os.path.abspath(directory), "keys", "secret"))
        self.assertNotIn("s3cret-value", repr(load(media)))

    def test_authErrors(self):
        self.assertPropertyError(
            listenerDoc(LISTENER + [("auth", "true")]), "listener 'l'",
            "auth.secret-file", "missing required property (auth is true)",
            needle="<listener ")
        missing = os.path.abspath(self.mktemp())
        self.assertPropertyError(
            listenerDoc(LISTENER + [("auth", "true"), ("auth.secret-file", missing)]),
            "listener 'l'", "auth.secret-file", f"no such file: {missing}")

    def test_listenerPortConflicts(self):
        a = element("listener", "a", edit(LISTENER, port="2000"))
        b = element("listener", "b", edit(LISTENER, port="2000") + [("interface", "0.0.0.0")])
        text = document(listeners=[a, b])
        self.assertPropertyError(
            text, "listener 'b'", "port", "port 2000 on 0.0.0.0 is already used by "
            "listener 'a' (line 3)", after='<listener name="b"')
        stopped = element("listener", "b", edit(LISTENER, port="2000"), ' name="b" run="false"')
        ipv6 = element("listener", "c", edit(LISTENER, port="2000") + [("interface", "::1")])
        self.assertEqual(len(parse(document(listeners=[a, stopped, ipv6]).encode())
                             .listeners), 3)


class CStringTests(TestCase):
    """parseCString: the C string literal of protocol.delimiter."""

    GOOD = [
        ("", b""), ("abc", b"abc"), ("\\n", b"\n"), ("\\t", b"\t"), ("\\v", b"\v"),
        ("\\b", b"\b"), ("\\r", b"\r"), ("\\f", b"\f"), ("\\a", b"\a"),
        ("\\\\", b"\\"), ("\\?", b"?"), ("\\'", b"'"), ('\\"', b'"'),
        ("\\1", b"\x01"), ("\\0", b"\x00"), ("\\12", b"\n"), ("\\101", b"A"),
        ("\\1012", b"A2"), ("\\377", b"\xff"), ("\\18", b"\x018"),
        ("\\x1", b"\x01"), ("\\xff", b"\xff"), ("\\xAbc", b"\xabc"), ("\\x0g", b"\x00g"),
        ("\\r\\n", b"\r\n"), ("é", "é".encode()), ("a\\tb", b"a\tb"),
    ]
    BAD = [
        ("\\q", "unknown escape '\\q' at position 0"),
        ("ab\\8", "unknown escape '\\8' at position 2"),
        ("\\x", "'\\x' without hex digits at position 0"),
        ("\\xg", "'\\x' without hex digits at position 0"),
        ("\\400", "octal escape '\\400' at position 0 is larger than a byte (\\377)"),
        ("x\\", "backslash at the end of the string"),
        ("\\u0041", "unknown escape '\\u' at position 0"),
    ]

    def test_good(self):
        for text, expected in self.GOOD:
            self.assertEqual(parseCString(text), expected, text)

    def test_bad(self):
        for text, message in self.BAD:
            error = self.assertRaises(ConfigError, parseCString, text)
            self.assertEqual(str(error), message)

    @given(st.lists(st.tuples(st.integers(0, 255), st.sampled_from(
        ["\\x%02x", "\\x%02X", "\\%03o", "literal"]))))
    def test_roundTrip(self, encoded):
        """Full-width escapes and literal ASCII decode back to the same bytes."""
        text = "".join(
            chr(byte) if form == "literal" and 0x20 <= byte < 0x7f and byte != 0x5c
            else (form if form != "literal" else "\\%03o") % byte
            for byte, form in encoded)
        self.assertEqual(parseCString(text), bytes(byte for byte, _ in encoded))


class SampleTests(TestCase):
    """etc/media.xml and the command-line check."""

    def test_sampleLoads(self):
        config = load(SAMPLE)
        self.assertEqual(config.path, SAMPLE)
        debug = config.listeners[0]
        self.assertEqual((debug.name, debug.port, debug.msgtype, debug.interface,
                          debug.protocol.name, debug.protocol.inbound.delimiter, debug.run),
                         ("debug", 20001, "xmlcall", "127.0.0.1", "text-messages",
                          b"\x01", True))
        self.assertIn(False, [listener.run for listener in config.listeners])
        google = config.channels[0]
        self.assertEqual((google.name, google.host, google.port, google.protocol.name,
                          google.topic_in, google.topic_out, google.redirect_in,
                          google.redirect_out, google.permanent),
                         ("google", "127.0.0.1", 8080, "http", "http.response",
                          "http.request", True, True, True))

    def test_main(self):
        out, err = io.StringIO(), io.StringIO()
        with redirect_stdout(out), redirect_stderr(err):
            self.assertEqual(main([SAMPLE]), 0)
            bad = self.mktemp()
            with open(bad, "w") as f:
                f.write("<media/>")
            self.assertEqual(main([bad]), 1)
        self.assertEqual(out.getvalue(), f"OK: {SAMPLE}: 2 listener(s), 1 channel(s)\n")
        self.assertEqual(err.getvalue(),
                         f"{bad}:1: root element is <media>; expected <service>\n")


class SecurityPropertyTests(Helpers, TestCase):
    """Properties of SPEC section 8: limits, TLS, and the console's exposure."""

    def secretFile(self, name="secret"):
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        path = os.path.join(directory, name)
        with open(path, "w") as f:
            f.write("s3cret\n")
        return directory, path

    def test_listenerLimitsDefaults(self):
        listener = parse(listenerDoc(LISTENER)).listeners[0]
        self.assertEqual((listener.max_connections, listener.idle_timeout), (1000, 3600.0))
        self.assertFalse(listener.tls)

    def test_listenerLimits(self):
        listener = parse(listenerDoc(edit(LISTENER, max_connections="5",
                                          idle_timeout="0"))).listeners[0]
        self.assertEqual((listener.max_connections, listener.idle_timeout), (5, 0.0))

    def test_maxConnectionsPositive(self):
        message = str(self.parseError(listenerDoc(edit(LISTENER, max_connections="0"))))
        self.assertIn("'max-connections'", message)

    def test_tlsListenerNeedsBoth(self):
        directory, certificate = self.secretFile("cert.pem")
        text = listenerDoc(edit(LISTENER, tls__certificate="cert.pem"))
        message = str(self.parseError(text, path=os.path.join(directory, "media.xml")))
        self.assertIn("'tls.key'", message)
        self.assertIn("TLS needs both", message)

    def test_tlsListenerFilesResolved(self):
        directory, certificate = self.secretFile("cert.pem")
        text = listenerDoc(edit(LISTENER, tls__certificate="cert.pem", tls__key="cert.pem"))
        listener = parse(text, path=os.path.join(directory, "media.xml")).listeners[0]
        self.assertEqual(listener.tls_certificate, certificate)
        self.assertTrue(listener.tls)

    def test_tlsFileMissing(self):
        text = listenerDoc(edit(LISTENER, tls__certificate="nope.pem", tls__key="k.pem"))
        self.assertIn("no such file", str(self.parseError(text)))

    def test_channelTls(self):
        channel = parse(channelDoc(edit(CHANNEL, tls="true", tls__hostname="example.test",
                                        tls__verify="false"))).channels[0]
        self.assertEqual((channel.tls, channel.tls_hostname, channel.tls_verify, channel.tls_ca),
                         (True, "example.test", False, None))

    def test_channelTlsSettingsNeedTls(self):
        message = str(self.parseError(channelDoc(edit(CHANNEL, tls__hostname="x"))))
        self.assertIn("'tls.hostname'", message)
        self.assertIn("only used with tls=true", message)

    def test_flushTimeout(self):
        self.assertEqual(parse(channelDoc(CHANNEL)).channels[0].flush_timeout, 5.0)
        channel = parse(channelDoc(edit(CHANNEL, flush_timeout="1.5"))).channels[0]
        self.assertEqual(channel.flush_timeout, 1.5)

    def test_exposedConsoleNeedsAuth(self):
        console = [("port", "0"), ("msgtype", "xmlcall"), ("interface", "0.0.0.0")]
        message = str(self.parseError(listenerDoc(console)))
        self.assertIn("'interface'", message)
        self.assertIn("must require authentication", message)

    def test_exposedConsoleWithAuth(self):
        directory, secret = self.secretFile()
        console = [("port", "0"), ("msgtype", "xmlcall"), ("interface", "0.0.0.0"),
                   ("auth", "true"), ("auth.secret-file", "secret")]
        listener = parse(listenerDoc(console),
                         path=os.path.join(directory, "media.xml")).listeners[0]
        self.assertEqual(listener.auth_secret_file, secret)

    def test_loopbackConsoleWithoutAuth(self):
        console = [("port", "0"), ("msgtype", "xmlcall"), ("interface", "::1")]
        self.assertFalse(parse(listenerDoc(console)).listeners[0].auth)


class RoutingPropertyTests(Helpers, TestCase):
    """Slow consumers on listeners; paired replies on channels."""

    def test_overflowDefaults(self):
        listener = parse(listenerDoc(LISTENER)).listeners[0]
        self.assertEqual((listener.overflow, listener.slow_consumer_timeout),
                         ("pause", 30.0))
        listener = parse(listenerDoc(edit(LISTENER, overflow="drop"))).listeners[0]
        self.assertEqual(listener.overflow, "drop")
        listener = parse(listenerDoc(edit(LISTENER, slow_consumer_timeout="2.5"))
                         ).listeners[0]
        self.assertEqual(listener.slow_consumer_timeout, 2.5)

    def test_overflowErrors(self):
        self.assertIn("'overflow'", str(self.parseError(
            listenerDoc(edit(LISTENER, overflow="block")))))
        self.assertIn("'slow-consumer-timeout'", str(self.parseError(
            listenerDoc(edit(LISTENER, slow_consumer_timeout="0")))))
        self.assertPropertyError(
            listenerDoc(edit(LISTENER, overflow="drop", slow_consumer_timeout="5")),
            "listener 'l'", "slow-consumer-timeout", "only used with overflow pause")
        inOnly = edit(LISTENER, drop=("topic-out",), direction="in", overflow="drop")
        self.assertPropertyError(
            listenerDoc(inOnly), "listener 'l'", "overflow",
            "only used by a listener that writes topic-out's messages to its connections")
        console = [("port", "0"), ("msgtype", "xmlcall"), ("slow-consumer-timeout", "5")]
        self.assertPropertyError(
            listenerDoc(console), "listener 'l'", "slow-consumer-timeout",
            "only used by a listener that writes topic-out's messages to its connections")

    def test_replies(self):
        channel = parse(channelDoc(CHANNEL)).channels[0]
        self.assertEqual((channel.replies, channel.max_in_flight), ("none", 1000))
        channel = parse(channelDoc(edit(CHANNEL, replies="ordered", max_in_flight="5"))
                        ).channels[0]
        self.assertEqual((channel.replies, channel.max_in_flight), ("ordered", 5))

    def test_repliesErrors(self):
        for prop in ("max-in-flight", "response-timeout"):
            self.assertPropertyError(
                channelDoc(CHANNEL + [(prop, "5")]), "channel 'c'", prop,
                "only used by channels that pair replies with requests (protocol http, "
                "or replies=ordered)")
        http = parse(channelDoc(edit(CHANNEL, protocol="http", max_in_flight="5",
                                     response_timeout="2.5"))).channels[0]
        self.assertEqual((http.max_in_flight, http.response_timeout), (5, 2.5))
        self.assertPropertyError(
            channelDoc(edit(CHANNEL, protocol="http", replies="ordered")), "channel 'c'",
            "replies", "http pairs each response with its request itself: leave "
            "replies out")
        self.assertPropertyError(
            channelDoc(edit(CHANNEL, protocol="text-stream", replies="ordered")),
            "channel 'c'", "replies",
            "protocol text-stream delivers arbitrary chunks, not one reply per message")
        self.assertIn("'max-in-flight'", str(self.parseError(
            channelDoc(edit(CHANNEL, replies="ordered", max_in_flight="0")))))

    def test_topicNameBounded(self):
        channel = parse(channelDoc(edit(CHANNEL, topic_in="t" * 256))).channels[0]
        self.assertEqual(len(channel.topic_in), 256)
        self.assertPropertyError(
            channelDoc(edit(CHANNEL, topic_out="t" * 257)), "channel 'c'", "topic-out",
            "a topic name has at most 256 characters, not 257")
