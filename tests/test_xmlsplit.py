"""Tests for aiengine.protocols.xmlsplit: cutting a byte stream into XML documents."""

from __future__ import annotations

import os
import tempfile

from hypothesis import given, settings
from lxml import etree
from hypothesis import strategies as st
from twisted.trial.unittest import TestCase

from aiengine.protocols.xmlsplit import Document, Malformed, TooLarge, XmlSplitter

# -- strategies shared with test_protocols --------------------------------------

_text = st.text(st.sampled_from("aZ0 \n\t<>&]'\"\r-?\u00e9\u20ac\U0001f600"), max_size=10)
_names = st.sampled_from(["a", "b", "root", "x-1", "\u00e9l\u00e9ment"])


def _escape(text, quote=False):
    text = text.replace("&", "&amp;").replace("<", "&lt;").replace("\r", "&#13;")
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
        "<!-- > -->", '<!DOCTYPE r [<!ENTITY e "v>">]>', "<?pi > ?>\n"]))
    root = draw(_elements)
    if "ENTITY e" in prolog and not root.endswith("/>"):
        cut = root.rindex("</")
        root = root[:cut] + "&e;" + root[cut:]
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

    def test_internalEntity(self):
        """Entities declared in the document itself are fine."""
        doc = b'<!DOCTYPE a [<!ENTITY e "v">]><a>&e;</a>'
        items = self.split(doc)
        self.assertDocuments(items, [doc])
        self.assertEqual(items[0].root.text, "v")

    def test_entityExpansionBomb(self):
        """Exponential entity expansion is refused, not performed."""
        decls = "".join(f'<!ENTITY e{i} "{("&e%d;" % (i - 1)) * 10}">' for i in range(1, 12))
        doc = f'<!DOCTYPE a [<!ENTITY e0 "boom">{decls}]><a>&e11;</a>\n<b/>'.encode()
        items = self.split(doc)
        self.assertEqual([type(i) for i in items], [Malformed, Document])

    def test_externalEntitiesNotRead(self):
        """External entities, parameter entities and DTDs stay unresolved:
        no file is read."""
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
        ]
        for doc in docs:
            items = self.split(doc.encode() + b"\n<b/>")
            self.assertEqual(len(items), 2, doc)
            self.assertEqual(items[0].data, doc.encode(), doc)
            self.assertEqual(kinds(items[1:]), [("Document", b"<b/>")], doc)
            if isinstance(items[0], Document):
                self.assertNotIn(marker.encode(), etree.tostring(items[0].root), doc)

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
