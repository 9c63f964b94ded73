"""Property-based tests: random and malformed input thrown at the splitter
and at the console protocol (over ``StringTransport``)."""

from __future__ import annotations

from types import SimpleNamespace

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import TestCase

from aiengine.broker import Broker
from aiengine.console.builtins import registerBuiltins
from aiengine.console.protocol import ConsoleFactory
from aiengine.console.registry import CallRegistry
from aiengine.protocols.xmlsplit import Document, Malformed, TooLarge, XmlSplitter
from tests.test_xmlsplit import splits

FUZZ = settings(max_examples=150, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

_BOMB = "".join(f'<!ENTITY e{i} "{("&e%d;" % (i - 1)) * 10}">' for i in range(1, 12))

#: One-line requests that must each get one Exception answer.
ATTACK_LINES = [
    b'<!DOCTYPE xmlcall [<!ENTITY x SYSTEM "file:///etc/passwd">]>'
    b'<xmlcall class="Engine" method="ping">&x;</xmlcall>',
    f'<!DOCTYPE a [<!ENTITY e0 "lol">{_BOMB}]><a>&e11;</a>'.encode(),
    b'<!DOCTYPE a [<!ENTITY % p SYSTEM "file:///etc/passwd"> %p;]><a/>',
    b"<!DOCTYPE a>",
    b'<xmlcall class="Engine" method="ping">' + b"<a>" * 300 + b"</a>" * 300 + b"</xmlcall>",
    b'<xmlcall class="Engine" method="ping">\x00</xmlcall>',
    b"<\x00x\x00/\x00>\x00",
    b'<xmlcall class="Engine" method="ping">\xc3\x28</xmlcall>',
    b'<xmlcall class="Engine" method="ping">&nbsp;</xmlcall>',
    b'<?xml version="1.0" encoding="UTF-7"?>+ADw-xmlcall/+AD4-',
    b"<a></b>", b"<a b=>", b"</a>", b"<<<", b"< a/>", b"<!-- c --> text <a/>",
    b"\xef\xbb<a/>", b"hello there", b"\xff\xfe<a/>", b"<a>]]></a>",
]

#: Well-formed one-line documents that are not valid calls.
WRONG_CALLS = [b'<call requestId="x"/>', b'<xmlcall method="ping"/>',
               b'<xmlcall class="Nope" method="x"/>']

#: A good call, then garbage on the same line: two items, two answers.
CALL_THEN_GARBAGE = b"<xmlcall class='Engine' method='ping'/></oops>"

#: Bytes that are garbage on their own: no line end, separator or "<".
_junk = st.binary(min_size=1, max_size=40).map(
    lambda b: b.replace(b"\n", b"").replace(b"\x01", b"").replace(b"<", b"")
).filter(lambda b: b.strip(b" \t\r\n") not in (b"", b"\xef\xbb\xbf"))  # a BOM starts a document

_line = st.one_of(
    st.sampled_from(["ping", "version"]).map(lambda m: ("ok", m)),
    st.sampled_from(ATTACK_LINES).map(lambda line: ("malformed", line)),
    _junk.map(lambda line: ("malformed", line)),
    st.sampled_from(WRONG_CALLS).map(lambda line: ("wrong", line)),
    st.just(("both", CALL_THEN_GARBAGE)),
)
_lines = st.lists(_line, max_size=12)

#: The splitter's items for each kind of line.
_ITEMS = {"ok": [Document], "malformed": [Malformed], "wrong": [Document],
          "both": [Document, Malformed]}

_ends = st.sampled_from([b"\n", b"\r\n", b"\x01", b"\x01\n", b" \n\x01 "])

#: Requests broken by a construct that is never closed: an attribute value,
#: a comment, a CDATA section, a processing instruction.
UNCLOSED_QUOTES = [b'<xmlcall class="Engine" method="ping" requestId="x/>',
                   b"<xmlcall class='Engine' method='ping' requestId='x/>"]
UNCLOSED = UNCLOSED_QUOTES + [
    b'<xmlcall class="Engine" method="ping"><!-- no end',
    b'<xmlcall class="Engine" method="ping"><![CDATA[no end',
    b"<!-- no end", b"<?pi no end",
    b'<xmlcall class="Engine" method="ping"><parameters><property name="a" '
    b'value="b/></parameters></xmlcall>',
]

#: With 0x01 framing, 0x01 ends whatever is unclosed.
_brokenLines = st.lists(st.one_of(
    _line, st.sampled_from(UNCLOSED).map(lambda line: ("malformed", line))), max_size=12)
_ends01 = st.sampled_from([b"\x01", b"\x01\n", b" \n\x01 ", b"\r\n\x01"])

#: Typed at a terminal (no 0x01 yet): the line end ends whatever is unclosed.
_endsNewline = st.sampled_from([b"\n", b"\r\n", b" \n"])


def _console(maxSize=100000, maxMalformed=10 ** 6):
    registry = CallRegistry()
    registerBuiltins(registry)
    factory = ConsoleFactory(registry, SimpleNamespace(broker=Broker()), name="fuzz",
                             maxSize=maxSize, maxMalformed=maxMalformed)
    protocol = factory.buildProtocol(None)
    transport = StringTransport()
    protocol.makeConnection(transport)
    return factory, protocol, transport


def _answers(transport):
    """The documents the console wrote; each must be a well-formed reply."""
    items = XmlSplitter(separators=b"\x01", maxSize=10 ** 8).feed(transport.value())
    for item in items:
        assert isinstance(item, Document), item.data
    return [item.root for item in items]


class SplitterFuzzTests(TestCase):
    """Whatever the bytes, the splitter returns items or raises TooLarge, and
    holds no more than the limit."""

    @FUZZ
    @given(st.data(), st.lists(st.one_of(st.binary(max_size=300),
                                         st.sampled_from(ATTACK_LINES + WRONG_CALLS)),
                               max_size=8),
           st.integers(50, 2000))
    def test_randomBytes(self, data, chunks, limit):
        stream = b"".join(chunks)
        splitter = XmlSplitter(maxSize=limit)
        for packet in data.draw(splits(stream)):
            try:
                items = splitter.feed(packet)
            except TooLarge:
                self.assertEqual(splitter.pending, 0)
                return
            self.assertLessEqual(splitter.pending, limit)
            for item in items:
                self.assertIsInstance(item, (Document, Malformed))
                self.assertLessEqual(len(item.data), limit + 4096)

    @FUZZ
    @given(st.data(), _lines, _ends)
    def test_oneItemPerLine(self, data, lines, end):
        """Each one-line document or line of garbage is one item."""
        stream = b"".join((b"<r/>" if kind == "ok" else line) + end for kind, line in lines)
        items = []
        splitter = XmlSplitter()
        for packet in data.draw(splits(stream)):
            items += splitter.feed(packet)
        expected = [item for kind, _ in lines for item in _ITEMS[kind]]
        self.assertEqual([type(i) for i in items], expected)


class ConsoleFuzzTests(TestCase):
    """The console protocol over StringTransport: one answer per request, no
    exception escapes, bounded memory."""

    @FUZZ
    @given(st.data(), _lines, _ends)
    def test_everyRequestAnsweredOnce(self, data, lines, end):
        self.everyRequestAnsweredOnce(data, lines, end)

    @FUZZ
    @given(st.data(), _brokenLines, _ends01)
    def test_unclosedConstructsEndAt01(self, data, lines, end):
        """An unclosed quote, comment, CDATA section or PI ends at the 0x01
        after it: one Exception, and the next request is served."""
        self.everyRequestAnsweredOnce(data, lines, end)

    @FUZZ
    @given(st.data(), _brokenLines, _endsNewline)
    def test_unclosedConstructsEndAtTheLine(self, data, lines, end):
        """Typed at a terminal: an unclosed quote, comment, CDATA section or
        PI is one Exception at its line's end, and the next line is served."""
        self.everyRequestAnsweredOnce(data, lines, end)

    def everyRequestAnsweredOnce(self, data, lines, end):
        factory, protocol, transport = _console()
        stream = b""
        expectedOk = []
        expected = 0
        for number, (kind, line) in enumerate(lines):
            if kind == "ok":
                requestId = f"R{number}"
                expectedOk.append(requestId)
                line = (f'<xmlcall class="Engine" method="{line}" '
                        f'requestId="{requestId}"/>').encode()
            elif kind == "both":
                expectedOk.append(None)
            expected += len(_ITEMS[kind])
            stream += line + end
        for packet in data.draw(splits(stream)):
            protocol.dataReceived(packet)
            self.assertLessEqual(protocol._splitter.pending, factory.maxSize)
        answers = _answers(transport)
        self.assertEqual(len(answers), expected)
        ok = [a.get("requestId") or "" for a in answers if a.get("status") == "OK"]
        self.assertEqual(sorted(ok), sorted(r or "" for r in expectedOk))
        self.assertEqual(factory.errors, expected - len(expectedOk))
        for answer in answers:
            self.assertEqual(answer.tag, "xmlcallresult")
            self.assertNotIn("internal error", answer.findtext("exception") or "")
        self.assertFalse(transport.disconnecting)
        self.assertEqual(self.flushLoggedErrors(), [])
        protocol.connectionLost(None)

    @FUZZ
    @given(st.data(), st.lists(st.one_of(st.binary(max_size=400),
                                         st.sampled_from(ATTACK_LINES + WRONG_CALLS)),
                               max_size=10))
    def test_anyBytes(self, data, chunks):
        """Random bytes: only replies come out, nothing raises, what is held
        stays under the limit; a close follows only a too-large or a flood."""
        factory, protocol, transport = _console(maxSize=1000, maxMalformed=5)
        for packet in data.draw(splits(b"".join(chunks))):
            protocol.dataReceived(packet)
            self.assertLessEqual(protocol._splitter.pending, 1000)
        answers = _answers(transport)
        for answer in answers:
            self.assertEqual(answer.tag, "xmlcallresult")
            self.assertIn(answer.get("status"), ("OK", "Exception"))
            self.assertNotIn("internal error", answer.findtext("exception") or "")
        if transport.disconnecting:
            self.assertRegex(answers[-1].findtext("exception"),
                             "too large|malformed requests in a row")
        self.assertEqual(self.flushLoggedErrors(), [])
        protocol.connectionLost(None)
