"""Tests for aiengine.protocols.xmlsplit: cutting a byte stream into XML documents."""

from __future__ import annotations

import os
import re
import sys
import tempfile
import time

from hypothesis import given, settings
from lxml import etree
from hypothesis import strategies as st
from twisted.trial.unittest import TestCase

from aiengine.protocols import xmlsplit
from aiengine.protocols.xmlsplit import (Document, Malformed, TooLarge, XmlSplitter,
                                         parseDocument, safeParser)

# -- strategies shared with test_protocols --------------------------------------

_text = st.text(st.sampled_from("aZ0 \n\t<>&]'\"\r-?\u00e9\u20ac\U0001f600"), max_size=10)
_names = st.sampled_from(["a", "b", "root", "x-1", "\u00e9l\u00e9ment"])


def _escape(text, quote=False):
    # "]]>" is not allowed in text: libxml2 only noticed when it came in one
    # piece.  Texts are joined ("]]" then ">"): a ">" that starts one or
    # follows a "]" is escaped.
    text = text.replace("&", "&amp;").replace("<", "&lt;").replace("\r", "&#13;")
    text = re.sub(r"(?:^|(?<=\]))>", "&gt;", text)
    return text.replace('"', "&quot;") if quote else text


_misc = st.one_of(
    _text.map(_escape),
    _text.map(lambda t: "<!--" + t.replace("-", "") + "-->"),
    _text.map(lambda t: "<![CDATA[" + t.replace("]]>", "") + "]]>"),
    _text.map(lambda t: "<?pi " + t.replace("?>", "").lstrip() + "?>"),
    st.just("&amp;&lt;&gt;&#x41;&#233;"),
)


@st.composite
def _element(draw, children):
    name = draw(_names)
    attrs = draw(st.dictionaries(st.sampled_from(["k", "v"]), _text, max_size=2))
    attrText = "".join(f' {k}="{_escape(v, True)}"' for k, v in attrs.items())
    body = "".join(draw(st.lists(children, max_size=3)))
    if not body and draw(st.booleans()):
        return f"<{name}{attrText}/>"
    return f"<{name}{attrText}>{body}</{name}>"


# Three levels deep at most: enough for every framing case, cheap to draw.
_elements = _element(_element(_element(_misc) | _misc) | _misc)


@st.composite
def xmlDocuments(draw):
    """One well-formed document (bytes) with no leading or trailing whitespace."""
    prolog = draw(st.sampled_from([
        "", '<?xml version="1.0"?>', '<?xml version="1.0" encoding="UTF-8"?>\n',
        "<!-- > -->", "<!-- </a> <!DOCTYPE -->\n", "<?pi > ?>\n",
        "\ufeff<?xml version='1.0'?><!---->"]))
    root = draw(_elements)
    return (prolog + root).encode("utf-8")


#: lines that are certainly not XML
garbage = st.sampled_from([
    b"<bad></worse> & junk", b"junk", b"x", b"<a>\x00</a>", b"<a>&undefined;</a>",
    b"\xff\xfe<a/>", b"<a b=>", b"</a>", b"ju\x01nk", b"<a>\xc3(</a>",
    b"<a>" + b"long " * 200 + b"</b>"])

#: what may come between documents
separators = st.sampled_from([b"", b"\x01", b"\n", b" \r\n\t", b"\x01\n", b"  \x01  "])


@st.composite
def splits(draw, data):
    """``data`` cut into packets at random points."""
    points = sorted(draw(st.lists(st.integers(0, len(data)), max_size=12)))
    edges = [0] + points + [len(data)]
    return [data[a:b] for a, b in zip(edges, edges[1:])]


_parser = etree.XMLParser(resolve_entities="internal")


def feedAll(splitter, packets):
    """Feed every packet; return the items, then ``TooLarge`` if it was raised."""
    items = []
    for packet in packets:
        try:
            items += splitter.feed(packet)
        except TooLarge as e:
            return items + e.items + [e]
    return items


def kinds(items):
    """Items as comparable tuples."""
    return [(type(i).__name__, i.data if not isinstance(i, TooLarge) else None)
            for i in items]


def outcome(items):
    """What must not depend on the packets: the documents, the errors of
    the malformed ones (how much of those is quoted back may), TooLarge."""
    return [("Document", i.data) if isinstance(i, Document)
            else ("Malformed", i.error) if isinstance(i, Malformed) else ("TooLarge",)
            for i in items]


def someSplits(data):
    """``data`` whole, byte by byte, and cut in two at each place."""
    yield [data]
    yield [data[i:i + 1] for i in range(len(data))]
    for i in range(1, len(data)):
        yield [data[:i], data[i:]]


class _Recorder:
    """Wraps a pull parser, recording what it is fed."""

    def __init__(self, parser, fed):
        self._parser = parser
        self._fed = fed

    def feed(self, data):
        self._fed.append(data)
        return self._parser.feed(data)

    def __getattr__(self, name):
        return getattr(self._parser, name)


class SplitterTests(TestCase):
    """Examples of the splitter's behaviour."""

    def split(self, data, **kw):
        return XmlSplitter(**kw).feed(data)

    def assertDocuments(self, items, expected):
        self.assertEqual(kinds(items), [("Document", d) for d in expected])

    def test_withAndWithoutSeparator(self):
        """A document ends at its root's end, whether 0x01 follows or not."""
        items = self.split(b"<a>1</a>\x01<b/><c x='1'>2</c>\x01")
        self.assertDocuments(items, [b"<a>1</a>", b"<b/>", b"<c x='1'>2</c>"])
        self.assertEqual(items[0].root.text, "1")
        self.assertEqual(items[2].root.get("x"), "1")

    def test_whitespaceBetween(self):
        """Whitespace between documents is skipped, inside them it is kept."""
        items = self.split(b"  \r\n<a>\n <b/> </a>\n\t \n<c/>  ")
        self.assertDocuments(items, [b"<a>\n <b/> </a>", b"<c/>"])

    def test_otherSeparators(self):
        """Configured separator bytes are skipped like whitespace."""
        items = self.split(b"<a/>||<b/>|", separators=b"|")
        self.assertDocuments(items, [b"<a/>", b"<b/>"])

    def test_greaterThanInsideMarkup(self):
        """``>`` in comments, PIs, CDATA, attributes and text ends nothing."""
        doc = (b'<a t="x>y"><!-- <b> --><?pi ?> > ?><![CDATA[ </a> ]]>'
               b"text > more</a>")
        items = self.split(doc + b"<b/>")
        self.assertDocuments(items, [doc, b"<b/>"])
        self.assertEqual(items[0].root.get("t"), "x>y")

    def test_xmlDeclaration(self):
        """Each document may start with its own ``<?xml?>`` declaration."""
        one = b'<?xml version="1.0" encoding="UTF-8"?>\n<a>\xc3\xa9</a>'
        two = b"<?xml version='1.0' encoding='ISO-8859-1'?><b>\xe9</b>"
        items = self.split(one + two)
        self.assertDocuments(items, [one, two])
        self.assertEqual([i.root.text for i in items], ["\u00e9", "\u00e9"])

    def test_smallestDocument(self):
        """``<a/>`` (4 bytes, less than libxml2 wants to start) completes
        at once, whole or byte by byte."""
        self.assertDocuments(self.split(b"<a/>"), [b"<a/>"])
        splitter = XmlSplitter()
        items = []
        for byte in b"<a/>\x01<b/>":
            items += splitter.feed(bytes([byte]))
        self.assertDocuments(items, [b"<a/>", b"<b/>"])
        self.assertEqual(splitter.pending, 0)

    def test_malformedThenGood(self):
        """A malformed document is reported with the rest of its line and the
        next document is framed normally."""
        splitter = XmlSplitter()
        items = splitter.feed(b"<a></b> tail\n<c/>")
        self.assertEqual([type(i) for i in items], [Malformed, Document])
        self.assertIn(b"<a></b>", items[0].data)
        self.assertIn("mismatch", items[0].error)
        self.assertEqual(items[1].data, b"<c/>")

    def test_malformedRestDiscarded(self):
        """Without a line end in sight, the malformed line's remains are
        discarded (and counted) up to the next one."""
        splitter = XmlSplitter()
        items = splitter.feed(b"garbage")
        self.assertEqual([type(i) for i in items], [Malformed])
        items = splitter.feed(b"more garbage\n<ok/>")
        self.assertDocuments(items, [b"<ok/>"])
        self.assertEqual(splitter.discarded, len(b"more garbage\n"))

    def test_nulIsMalformed(self):
        """A NUL byte is not XML."""
        items = self.split(b"<a>x\x00y</a>\n<b/>")
        self.assertEqual(kinds(items)[1:], [("Document", b"<b/>")])
        self.assertIsInstance(items[0], Malformed)

    def test_invalidUtf8IsMalformed(self):
        """Bytes that are not UTF-8 (the default encoding) are malformed."""
        for bad in (b"\xff", b"\xc3(", b"\xed\xa0\x80"):
            items = self.split(b"<a>" + bad + b"</a>\n<b/>")
            self.assertEqual([type(i) for i in items], [Malformed, Document], bad)

    def test_undefinedEntityIsMalformed(self):
        """An undefined entity is reported, not left to stall the stream."""
        items = self.split(b"<a>&nbsp;</a>\n<b/>")
        self.assertEqual([type(i) for i in items], [Malformed, Document])
        self.assertIn("nbsp", items[0].error)

    def test_doctypeRefused(self):
        """Any DOCTYPE is refused before libxml2 sees it, with the rest of
        its line; the next document is framed normally."""
        for doc in [b'<!DOCTYPE a [<!ENTITY e "v">]><a>&e;</a>', b"<!DOCTYPE a><a/>",
                    b'<!DOCTYPE a SYSTEM "a.dtd"><a/>',
                    b'\xef\xbb\xbf<?xml version="1.0"?>\n<!-- c --><?pi x?> <!DOCTYPE a><a/>']:
            items = self.split(doc + b"\n<b/>")
            self.assertEqual(kinds(items), [("Malformed", doc + b"\n"), ("Document", b"<b/>")])
            self.assertEqual(items[0].error, "DOCTYPE is not allowed")

    def test_doctypeRefusedAnySplit(self):
        """The check does not depend on packet boundaries: byte by byte, the
        parser never gets the whole ``<!DOCTYPE`` keyword."""
        splitter = XmlSplitter()
        fed = []
        data = b'<!-- x --><!DOCTYPE a [<!ENTITY e "v">]><a>&e;</a>\n<b/>'
        items = []
        for byte in data:
            # Watch what reaches libxml2 (the parser is reused: wrap it).
            parser = splitter._parser
            splitter._parser = _Recorder(parser, fed)
            items += splitter.feed(bytes([byte]))
            splitter._parser = parser
        self.assertEqual([type(i) for i in items], [Malformed, Document])
        self.assertNotIn(b"DOCTYPE", b"".join(fed))
        self.assertIn(b"<!DOC", b"".join(fed))  # it did see the bytes before the check

    def test_doctypeInCommentIsText(self):
        """``<!DOCTYPE`` inside a comment or an element is just text."""
        doc = b"<!-- <!DOCTYPE a> --><a><!-- <!DOCTYPE --><![CDATA[<!DOCTYPE]]></a>"
        self.assertDocuments(self.split(doc), [doc])

    def test_entityExpansionBomb(self):
        """Entity bombs never get to expand: their DOCTYPE is refused."""
        decls = "".join(f'<!ENTITY e{i} "{("&e%d;" % (i - 1)) * 10}">' for i in range(1, 12))
        pes = "".join(f'<!ENTITY % p{i} "' + f"%p{i - 1};" * 10 + '">' for i in range(1, 12))
        for doc in [f'<!DOCTYPE a [<!ENTITY e0 "boom">{decls}]><a>&e11;</a>',
                    f'<!DOCTYPE a [<!ENTITY e0 "boom">{decls}<!ATTLIST a x CDATA "&e11;">]><a/>',
                    f'<!DOCTYPE a [<!ENTITY % p0 "<!-- boom -->">{pes} %p11;]><a/>']:
            items = self.split(doc.encode() + b"\n<b/>")
            self.assertEqual([type(i) for i in items], [Malformed, Document])
            self.assertEqual(items[0].error, "DOCTYPE is not allowed")

    def test_externalEntitiesNotRead(self):
        """External entities, parameter entities and DTDs are never read:
        their DOCTYPE is refused, and a reference without one is undefined."""
        marker = "SECRET-FILE-CONTENT"
        fd, path = tempfile.mkstemp()
        self.addCleanup(os.remove, path)
        with os.fdopen(fd, "w") as f:
            f.write(marker)
        fd, dtd = tempfile.mkstemp(suffix=".dtd")
        self.addCleanup(os.remove, dtd)
        with os.fdopen(fd, "w") as f:
            f.write(f'<!ENTITY x "{marker}">')
        docs = [
            f'<!DOCTYPE a [<!ENTITY x SYSTEM "file://{path}">]><a>&x;</a>',
            f'<!DOCTYPE a [<!ENTITY x SYSTEM "file://{path}">]><a b="&x;"/>',
            f'<!DOCTYPE a SYSTEM "file://{dtd}"><a>&x;</a>',
            f'<!DOCTYPE a [<!ENTITY % p SYSTEM "file://{dtd}"> %p;]><a>&x;</a>',
            '<a>&x;</a>',
        ]
        for doc in docs:
            items = self.split(doc.encode() + b"\n<b/>")
            self.assertEqual([type(i) for i in items], [Malformed, Document], doc)
            self.assertEqual(items[0].data.rstrip(b"\n"), doc.encode())
            self.assertEqual(items[1].data, b"<b/>")
            self.assertNotIn(marker, items[0].error)

    def test_safeParserLoadsNothing(self):
        """safeParser keeps entities unresolved and, even when asked to
        validate against a DTD, reads no file."""
        marker = "SECRET-FILE-CONTENT"
        fd, path = tempfile.mkstemp()
        self.addCleanup(os.remove, path)
        with os.fdopen(fd, "w") as f:
            f.write(marker)
        doc = f'<!DOCTYPE a [<!ENTITY x SYSTEM "file://{path}">]><a>&x;</a>'.encode()
        root = etree.fromstring(doc, safeParser())
        self.assertNotIn(marker.encode(), etree.tostring(root))
        fd, dtd = tempfile.mkstemp(suffix=".dtd")
        self.addCleanup(os.remove, dtd)
        with os.fdopen(fd, "w") as f:
            f.write(f'<!ENTITY y "{marker}"><!ELEMENT a (#PCDATA)>')
        doc = f'<!DOCTYPE a SYSTEM "file://{dtd}"><a>&y;</a>'.encode()
        try:
            root = etree.fromstring(doc, safeParser(attribute_defaults=True))
        except etree.XMLSyntaxError as e:
            self.assertNotIn(marker, str(e))  # "y" stays undefined: the DTD is empty
        else:
            self.assertNotIn(marker.encode(), etree.tostring(root))

    def test_encodings(self):
        """ASCII-compatible encodings are read; the others, which could hide
        markup from the DOCTYPE check, are refused."""
        doc = '<!DOCTYPE a [<!ENTITY e "x">]><a>&e;</a>'
        refused = [
            b'<?xml version="1.0" encoding="UTF-7"?>' + doc.encode("utf-7"),
            ('<?xml version="1.0"?>' + doc).encode("utf-16-le"),
            ('<?xml version="1.0"?>' + doc).encode("utf-32-le"),
            b"<\x00a\x00/\x00>\x00",
            b'<?xml version="1.0" encoding="Shift_JIS"?><a/>',
            b"<?xml version='1.0' encoding='EBCDIC-US'?><a/>",
        ]
        for data in refused:
            items = self.split(data + b"\n<b/>")
            self.assertIsInstance(items[0], Malformed, data)
            self.assertEqual(kinds(items[1:]), [("Document", b"<b/>")], data)
            self.assertTrue(items[0].error.startswith(("encoding", "NUL")), items[0].error)
        allowed = [b"<?xml version='1.0' encoding='iso-8859-15'?><a>\xa4</a>",
                   b'<?xml version="1.0" encoding="windows-1252"?><a>\x80</a>',
                   b'<?xml version="1.0" encoding="US-ASCII"?><a/>']
        items = self.split(b"".join(allowed))
        self.assertDocuments(items, allowed)
        self.assertEqual([i.root.text for i in items], ["\u20ac", "\u20ac", None])

    def test_headErrors(self):
        """What cannot start a document is refused at once, by the head
        check, with the rest of its line."""
        for bad in [b"<", b"< a/>", b"<1/>", b"<!ELEMENT a>", b"<![CDATA[x]]>",
                    b"<!-- c --> text <a/>", b"\xef\xbb<a/>"]:
            items = self.split(bad + b"\n<b/>")
            self.assertEqual([type(i) for i in items], [Malformed, Document], bad)
            self.assertEqual(items[0].data, bad + b"\n")

    def test_deepNesting(self):
        """100,000 nested elements are malformed (libxml2's depth limit),
        quickly, and the next document is framed."""
        start = time.perf_counter()
        items = self.split(b"<a>" * 100000 + b"</a>" * 100000 + b"\n<b/>")
        self.assertLess(time.perf_counter() - start, 1)
        self.assertEqual([type(i) for i in items], [Malformed, Document])
        self.assertIn("depth", items[0].error)

    def test_sameNameChildren(self):
        """Many children named like the root, and the next document named
        like it too in the same packet, are cut exactly."""
        one = b"<r>" + b"<r>x</r>" * 50 + b"<r/></r>"
        two = b"<r><r></r></r>"
        data = one + two + b"\x01" + one
        self.assertDocuments(self.split(data), [one, two, one])
        splitter = XmlSplitter()
        items = []
        for i in range(0, len(data), 7):
            items += splitter.feed(data[i:i + 7])
        self.assertDocuments(items, [one, two, one])

    def test_sameNameChildrenAtTheLimit(self):
        """What follows a document's end does not count against its size."""
        one = b"<r>" + b"<r>x</r>" * 20 + b"</r>"
        splitter = XmlSplitter(maxSize=len(one))
        self.assertDocuments(splitter.feed(one + b"<r>y</r>"), [one, b"<r>y</r>"])

    def test_fewFeeds(self):
        """The parser is fed a few kilobytes at a time whatever the shape of
        the document, not once per element."""
        for doc in [b"<r>" + b"<b/>" * 50000 + b"</r>", b"<r>" + b"<r>x</r>" * 25000 + b"</r>",
                    b"<!---->" * 25000 + b"<r>" + b"\n" * 200000 + b"</r>"]:
            splitter = XmlSplitter()
            fed = []
            splitter._parser = _Recorder(splitter._parser, fed)
            self.assertDocuments(splitter.feed(doc), [doc])
            self.assertEqual(b"".join(fed).rstrip(b" "), doc)
            self.assertLess(len(fed), len(doc) // 1000)

    def test_parseDocument(self):
        """parseDocument applies the splitter's rules to one document."""
        self.assertEqual(parseDocument(b" <a x='1'>t</a>\n").get("x"), "1")
        for bad, message in [(b"<!DOCTYPE a><a/>", "DOCTYPE is not allowed"),
                             (b"<a>&nbsp;</a>", "nbsp"), (b"<a>", "incomplete"),
                             (b"<a/><b/>", "after the end"), (b"", "incomplete"),
                             (b"<a/>junk", "after the end")]:
            e = self.assertRaises(ValueError, parseDocument, bad)
            self.assertIn(message, str(e), bad)
        self.assertRaises(ValueError, parseDocument, b"<a>" + b"x" * 100 + b"</a>", 50)

    def test_tooLarge(self):
        """A document over the limit raises TooLarge, keeping the documents
        completed before it in the same feed."""
        splitter = XmlSplitter(maxSize=20)
        self.assertDocuments(splitter.feed(b"<a>" + b"x" * 13 + b"</a>"),
                             [b"<a>" + b"x" * 13 + b"</a>"])  # exactly 20 bytes
        with self.assertRaises(TooLarge) as caught:
            splitter.feed(b"<b/><a>" + b"x" * 14 + b"</a>")  # 21 bytes
        self.assertDocuments(caught.exception.items, [b"<b/>"])
        self.assertEqual(splitter.pending, 0)

    def test_malformedLineTooLarge(self):
        """A malformed line longer than the limit raises TooLarge; what is
        dropped is not held."""
        splitter = XmlSplitter(maxSize=1000)
        items = splitter.feed(b"junk" * 200)
        self.assertEqual([type(i) for i in items], [Malformed])
        self.assertEqual(splitter.pending, 0)
        self.assertRaises(TooLarge, splitter.feed, b"junk" * 100)

    def test_heldBytesBounded(self):
        """However a 5 MB document without an end arrives, the splitter
        holds at most the limit plus one piece, and raises TooLarge."""
        for body in [b"x" * 65536, b"<b/>" * 16384, b"<" * 65536, b"<r a='" + b"/>" * 30000]:
            splitter = XmlSplitter(maxSize=100000)
            held = 0
            with self.assertRaises(TooLarge):
                splitter.feed(b"<r>")
                for _ in range(80):
                    splitter.feed(body)
                    held = max(held, splitter.pending)
            self.assertLessEqual(held, 100000 + 4096)
            self.assertEqual(splitter.pending, 0)

    def test_tooLargeIncomplete(self):
        """An unfinished document is stopped as soon as it passes the limit."""
        splitter = XmlSplitter(maxSize=100)
        self.assertEqual(splitter.feed(b"<a>" + b"x" * 90), [])
        self.assertEqual(splitter.pending, 93)
        self.assertRaises(TooLarge, splitter.feed, b"y" * 10)

    def test_separatorsSkippedInBulk(self):
        """A flood of whitespace costs nothing and holds nothing."""
        splitter = XmlSplitter(maxSize=10)
        self.assertEqual(splitter.feed(b" \x01\n" * 100000), [])
        self.assertEqual(splitter.pending, 0)
        self.assertDocuments(splitter.feed(b"<a/>"), [b"<a/>"])


class SplitInvarianceTests(TestCase):
    """The documents found do not depend on how the stream is cut."""

    def assertSameForAnySplit(self, data, expected, **kw):
        """Cut anywhere, ``data`` gives what it gives whole: ``expected``,
        with a part of each error message."""
        whole = outcome(feedAll(XmlSplitter(**kw), [data]))
        self.assertEqual(len(whole), len(expected), whole)
        for item, want in zip(whole, expected):
            if want[0] == "Malformed":
                self.assertEqual(item[0], "Malformed", whole)
                self.assertIn(want[1], item[1])
            else:
                self.assertEqual(item, want)
        for packets in someSplits(data):
            self.assertEqual(outcome(feedAll(XmlSplitter(**kw), packets)), whole,
                             [len(p) for p in packets])

    def test_shortMalformedThenMore(self):
        """A short malformed document followed in the same packet by more
        than the size limit of other bytes is malformed, not too large, as
        when its bytes come one by one; the next documents are delivered."""
        doc = b"<doc>" + b"x" * 40 + b"</doc>"
        for separators in (b"\x01", b"\n", b"\n\x01", b""):
            self.assertSameForAnySplit(
                b"<bad></worse> & junk\n<ok/>\n" + doc + b"\n",
                [("Malformed", "mismatch: bad line 1 and worse, line 1, column 14"),
                 ("Document", b"<ok/>"), ("Document", doc)],
                separators=separators, maxSize=60)
        # Refused by the head check, unfinished markup, a broken line typed
        # at a terminal: the same.
        for bad, error in [(b"<!-- c --><!DOCTYPE a><a/>", "DOCTYPE is not allowed"),
                           (b"<a>< x y", "invalid element name")]:
            self.assertSameForAnySplit(bad + b"\nnot xml\n" + doc + b"\n",
                                       [("Malformed", error),
                                        ("Malformed", "document does not start with '<'; "
                                                      "dropped up to the line end"),
                                        ("Document", doc)], maxSize=60)
        for packets in someSplits(b"<a><!-- c\n<ok/>\n" + doc + b"\n"):
            splitter = XmlSplitter(maxSize=60)
            splitter.lineEnds = True
            self.assertEqual([kind for kind, *_ in outcome(feedAll(splitter, packets))],
                             ["Malformed", "Document", "Document"])

    def test_tooLargeAnySplit(self):
        """What really exceeds the limit raises TooLarge however it comes: a
        document, a head whose error is past the limit, a malformed
        document's line, a line of garbage."""
        limit = 60
        for data, expected in [
                (b"<ok/>\n<a>" + b"x" * 70 + b"</a>\n<ok/>\n", [("Document", b"<ok/>")]),
                (b"<ok/><a>" + b"x" * 54 + b"</a><ok/>", [("Document", b"<ok/>")]),  # 61 bytes
                (b"<!--" + b" " * 60 + b"--><!DOCTYPE a><a/>\n<ok/>\n", []),
                (b"<a>&x;" + b"x" * 70 + b"\n<ok/>\n",
                 [("Malformed", "Entity 'x' not defined")]),
                (b"junk " * 13 + b"\n<ok/>\n",
                 [("Malformed", "document does not start with '<'; dropped up to the "
                                "line end")])]:
            self.assertSameForAnySplit(data, expected + [("TooLarge",)], maxSize=limit)
        # At the limit, not past it: no error.
        self.assertSameForAnySplit(b"junk " * 12 + b"\n<ok/>\n",
                                   [("Malformed", "document does not start with '<'; "
                                                  "dropped up to the line end"),
                                    ("Document", b"<ok/>")], maxSize=limit)

    @settings(max_examples=100, deadline=None)
    @given(st.data(), st.lists(st.one_of(xmlDocuments(), garbage), min_size=1, max_size=5),
           st.sampled_from([b"\x01", b"\n", b"\n\x01"]), st.integers(8, 200))
    def test_sizeLimitWithMalformedAnySplit(self, data, lines, separators, limit):
        """Documents, malformed documents and TooLarge come out the same
        whole, byte by byte or cut anywhere, whatever the limit."""
        stream = b"".join(line + b"\n" for line in lines)

        def result(packets):
            return outcome(feedAll(XmlSplitter(separators=separators, maxSize=limit),
                                   packets))

        whole = result([stream])
        self.assertEqual(result([stream[i:i + 1] for i in range(len(stream))]), whole)
        self.assertEqual(result(data.draw(splits(stream))), whole)

    @settings(max_examples=80, deadline=None)
    @given(st.data(), st.lists(st.tuples(xmlDocuments(), separators), max_size=5))
    def test_anySplit(self, data, docs):
        stream = b"".join(doc + sep for doc, sep in docs)
        packets = data.draw(splits(stream))
        items = feedAll(XmlSplitter(), packets)
        self.assertEqual(kinds(items), [("Document", doc) for doc, _ in docs])
        # The parsed root is the document's, not altered by the splitting.
        for item, (doc, _) in zip(items, docs):
            self.assertEqual(etree.tostring(item.root),
                             etree.tostring(etree.fromstring(doc, _parser)))

    @settings(max_examples=60, deadline=None)
    @given(st.data(), st.lists(st.tuples(st.integers(0, 40), st.sampled_from(["r", "a"]),
                                         separators), min_size=1, max_size=4))
    def test_sameNameChildrenAnySplit(self, data, docs):
        """Documents whose children are named like the root (cut by feeding
        several possible ends at once, then exactly) frame like any other."""
        def document(n, name):
            child = data.draw(st.sampled_from([f"<{name}>x</{name}>", f"<{name}/>",
                                               f"<{name} >&lt;/{name}></{name} >"]))
            return f"<{name}>{child * n}</{name}\n>".encode()
        docs = [(document(n, name), sep) for n, name, sep in docs]
        stream = b"".join(doc + sep for doc, sep in docs)
        items = feedAll(XmlSplitter(), data.draw(splits(stream)))
        self.assertEqual(kinds(items), [("Document", doc) for doc, _ in docs])

    @settings(max_examples=60, deadline=None)
    @given(st.data(), st.lists(xmlDocuments(), min_size=1, max_size=5), st.integers(4, 80))
    def test_sizeLimitAnySplit(self, data, docs, limit):
        """Documents up to the limit pass, the first one over it raises."""
        stream = b"\x01".join(docs)
        items = feedAll(XmlSplitter(maxSize=limit), data.draw(splits(stream)))
        expected = []
        for doc in docs:
            if len(doc) > limit:
                expected.append(("TooLarge", None))
                break
            expected.append(("Document", doc))
        self.assertEqual(kinds(items), expected)

    @settings(max_examples=80, deadline=None)
    @given(st.data(), st.lists(st.tuples(xmlDocuments(), st.lists(garbage, max_size=2)),
                               max_size=4))
    def test_malformedLinesAnySplit(self, data, docs):
        """Lines of garbage between documents never swallow a good one."""
        stream = b"".join(b"".join(g + b"\n" for g in bad) + doc + b"\n"
                          for doc, bad in docs)
        items = feedAll(XmlSplitter(), data.draw(splits(stream)))
        good = [i.data for i in items if isinstance(i, Document)]
        self.assertEqual(good, [doc for doc, _ in docs])
        self.assertGreaterEqual(sum(isinstance(i, Malformed) for i in items),
                                sum(len(bad) for _, bad in docs))


class _SearchCounter:
    """Wraps a compiled pattern, counting the bytes its searches look at."""

    def __init__(self, pattern):
        self._pattern = pattern
        self.searched = 0

    def search(self, data, pos=0, endpos=sys.maxsize):
        match = self._pattern.search(data, pos, endpos)
        self.searched += (match.end() if match else min(len(data), endpos)) - pos
        return match


class _Packet(bytes):
    """A packet that adds the bytes its (and its slices') searches for 0x01
    look at to a :class:`_SearchCounter`."""

    def __new__(cls, data, counter):
        packet = super().__new__(cls, data)
        packet.counter = counter
        return packet

    def find(self, sub, start=0, *args):
        at = super().find(sub, start, *args)
        if sub == b"\x01":
            self.counter.searched += (at + 1 if at >= 0 else len(self)) - start
        return at

    def __getitem__(self, key):
        item = super().__getitem__(key)
        return _Packet(item, self.counter) if isinstance(key, slice) else item


class WholeDocumentPathTests(TestCase):
    """0x01-framed documents parsed whole give what the incremental path gives."""

    CASES = [
        b'<xmlcall class="Engine" method="ping"/>\x01',
        b'<a>1</a>\n\x01<b x="&amp;"/>\x01',
        b'<a/><!-- after -->\x01<b/>\x01',
        b'<a><![CDATA[ x>y ]]></a>\x01',
        b'<a>&nbsp;</a>\x01<ok/>\x01',
        b'<a>\x00</a>\x01<ok/>\x01',
        b'<a>\xff</a>\x01<ok/>\x01',
        b'<a/> <b/>\x01',
        b'<a>' * 300 + b'</a>' * 300 + b'\x01<ok/>\x01',
    ]

    def items(self, packets):
        splitter = XmlSplitter()
        out = []
        for packet in packets:
            out.extend(splitter.feed(packet))
        # How much of a malformed document is quoted back may depend on the
        # packets; what was delivered, and what was refused, may not.
        return [("Document", i.data, i.root.tag) if isinstance(i, Document)
                else ("Malformed",) for i in out]

    def test_sameAsByteByByte(self):
        for case in self.CASES:
            whole = self.items([case])
            trickled = self.items([case[i:i + 1] for i in range(len(case))])
            self.assertEqual(whole, trickled, case)

    def test_searchedOnce(self):
        """Documents separated by line ends only while 0x01 is a separator:
        each byte of a packet is searched for the 0x01 that would end a
        document, and read by the fast path, once at most, not once for
        each document before it (which was quadratic)."""
        doc = b"<a>x</a>\n"
        fastPath = _SearchCounter(xmlsplit._DECL_OR_PI)  # before each parse
        self.patch(xmlsplit, "_DECL_OR_PI", fastPath)
        for separators, stream in [(b"\n\x01", doc * 2000), (b"\n\x01", doc * 2000 + b"\x01"),
                                   (b"\n\x01\x02", (doc * 20 + b"\x02") * 100)]:
            splitter = XmlSplitter(separators=separators)
            searches = _SearchCounter(splitter._hardEnd)
            splitter._hardEnd = searches
            fastPath.searched = 0
            self.assertEqual(outcome(splitter.feed(_Packet(stream, searches))),
                             [("Document", b"<a>x</a>")] * 2000)
            self.assertLessEqual(searches.searched, len(stream))
            self.assertLessEqual(fastPath.searched, len(stream))

    def test_depthLimitStillApplies(self):
        deep = b"<a>" * 100000 + b"\x01"
        [item] = XmlSplitter(maxSize=10 ** 7).feed(deep)
        self.assertIsInstance(item, Malformed)


#: Lines typed at a terminal: good documents (some over several lines, with
#: comments, CDATA and PIs that close), and broken ones whose construct is
#: never closed.
TYPED = [b'<a x="1/>\n', b"<a><!-- x\n", b"<a><![CDATA[x\n", b'<a>\n  <p v="x/></a>\n',
         b"<a>\n <!-- fine -->\n <![CDATA[o]]k]]>\n</a>\n", b'<?xml version="1.0"?>\n<a/>\n',
         b"<b c=\"d\" e='f'><g/></b>\n", b"<?pi x\n", b"<a><?pi ok?></a>\n",
         b"<a>--&gt; ]] ?&gt;</a>\n", b"<!-- c\n", b"<!-- ok -->\n<z/>\n", b"<a></b>\n",
         b"junk\n", b"\xef\xbb<a/>\n", b"<!DOCTYPE a>\n"]


class LineEndTests(TestCase):
    """lineEnds (text typed at a terminal): a line end inside an unclosed
    attribute value, comment, CDATA section or PI ends the document."""

    def feed(self, packets):
        splitter = XmlSplitter()
        splitter.lineEnds = True
        return kinds(feedAll(splitter, packets))

    def test_brokenLinesEndThere(self):
        self.assertEqual(self.feed([b'<a x="1/>\n<b/>\n<c><!-- x\n<d/>\n<e><![CDATA[\n<f/>\n']),
                         [("Malformed", b'<a x="1/>\n'), ("Document", b"<b/>"),
                          ("Malformed", b"<c><!-- x\n"), ("Document", b"<d/>"),
                          ("Malformed", b"<e><![CDATA[\n"), ("Document", b"<f/>")])

    def test_constructsEndOnTheirLine(self):
        """A document may span lines between its tags; a comment (or value,
        CDATA, PI) may not."""
        doc = b"<a>\n <!-- one -->\n <b/>\n</a>\n"
        self.assertEqual(self.feed([doc]), [("Document", doc.rstrip())])
        self.assertEqual(self.feed([b"<a>\n <!-- one\n -->\n</a>\n"]),
                         [("Malformed", b"<a>\n <!-- one\n"), ("Malformed", b"-->\n"),
                          ("Malformed", b"</a>\n")])

    @settings(max_examples=200, deadline=None)
    @given(st.data(), st.lists(st.sampled_from(TYPED), max_size=8))
    def test_anySplit(self, data, lines):
        """The same documents and as many malformed items however the lines
        are cut into packets (garbage is reported as it comes)."""
        def shape(items):
            return [(kind, body if kind == "Document" else None) for kind, body in items]

        stream = b"".join(lines)
        self.assertEqual(shape(self.feed(data.draw(splits(stream)))),
                         shape(self.feed([stream])))
