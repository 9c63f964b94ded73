"""Cut a byte stream into XML documents with lxml's feed parser.

A document is complete when its root element closes; nothing needs to follow
it.  Whitespace and separator bytes (for example 0x01) between documents are
skipped.  The parser resolves no entities, loads no DTD and touches no network.

libxml2 reports the end of the root element as soon as the ``>`` that closes
it is fed, so the splitter feeds data in pieces that each end at a ``>``: the
piece after which the root's end event appears ends the document exactly.
"""

from __future__ import annotations

from lxml import etree

__all__ = ["XmlSplitter", "Document", "Malformed", "TooLarge", "safeParser"]


def safeParser(**kw) -> etree.XMLParser:
    """An lxml parser for untrusted input: no entities, DTD or network."""
    return etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False,
                           huge_tree=False, **kw)


class Document:
    """A complete document: its bytes and its parsed root element."""

    __slots__ = ("data", "root")

    def __init__(self, data, root):
        self.data = data
        self.root = root


class Malformed:
    """Bytes that are not well-formed XML.

    The rest of the line (up to a newline or separator) where the error was
    found is dropped with them, so that the next document starts clean.
    """

    __slots__ = ("data", "error")

    def __init__(self, data, error):
        self.data = data
        self.error = error


class TooLarge(Exception):
    """A document grew past the size limit without completing."""


_WHITESPACE = b" \t\r\n"


class XmlSplitter:
    """Incremental XML document splitter.

    :param separators: bytes skipped between documents besides whitespace,
        and where a malformed document's remains are cut off.
    :param maxSize: largest document in bytes; :meth:`feed` raises
        :class:`TooLarge` past it.
    """

    def __init__(self, separators=b"\x01", maxSize=1000000):
        self._skip = _WHITESPACE + separators
        self._resync = [bytes((b,)) for b in b"\n" + separators]
        self._maxSize = maxSize
        self._parser = None
        self._doc = []  # pieces of the current document
        self._size = 0
        self._discarding = False  # dropping a malformed line's remains
        #: bytes dropped after malformed documents, up to their line ends
        self.discarded = 0

    @property
    def pending(self) -> int:
        """Bytes held for an incomplete document."""
        return self._size

    def feed(self, data: bytes) -> list:
        """Feed bytes; return the :class:`Document` and :class:`Malformed`
        items completed by them, in stream order.

        Raises :class:`TooLarge` when a document grows past ``maxSize``; the
        splitter is then unusable and the connection should be closed.
        """
        out = []
        pos = 0
        while pos < len(data):
            if self._discarding:
                cut = self._findResync(data, pos)
                if cut < 0:
                    self.discarded += len(data) - pos
                    break
                self.discarded += cut + 1 - pos
                self._discarding = False
                pos = cut + 1
                continue
            if self._parser is None:
                # Between documents: skip whitespace and separators.
                end = len(data)
                skip = self._skip
                while pos < end and data[pos] in skip:
                    pos += 1
                if pos == end:
                    break
                self._parser = etree.XMLPullParser(
                    events=("end",), resolve_entities=False, no_network=True,
                    load_dtd=False, huge_tree=False)
            gt = data.find(b">", pos)
            piece = data[pos:] if gt < 0 else data[pos:gt + 1]
            pos += len(piece)
            item, rest = self._feedPiece(piece, ended=gt >= 0)
            if item is not None:
                out.append(item)
            if rest:
                data = rest + data[pos:]
                pos = 0
        return out

    def _findResync(self, data, pos):
        found = [i for i in (data.find(b, pos) for b in self._resync) if i >= 0]
        return min(found) if found else -1

    def _reset(self):
        data = b"".join(self._doc)
        self._parser = None
        self._doc = []
        self._size = 0
        return data

    def _feedPiece(self, piece, ended):
        self._doc.append(piece)
        self._size += len(piece)
        parser = self._parser
        try:
            parser.feed(piece)
            root = self._rootEnd(parser)
            if root is None and ended and self._size <= 4:
                # libxml2 waits for more than four bytes before it starts
                # (encoding detection); whitespace after the root is legal.
                parser.feed(b" ")
                root = self._rootEnd(parser)
        except etree.XMLSyntaxError as e:
            data = self._reset()
            # Cut after the first line end or separator at or after the error.
            line, column = e.position if e.position else (1, 1)
            offset = 0
            for _ in range((line or 1) - 1):
                nl = data.find(b"\n", offset)
                if nl < 0:
                    break
                offset = nl + 1
            offset += max((column or 1) - 1, 0)
            cut = self._findResync(data, min(offset, len(data)))
            if cut < 0:
                self._discarding = True
                return Malformed(data, str(e)), b""
            return Malformed(data[:cut + 1], str(e)), data[cut + 1:]
        if root is not None:
            return Document(self._reset(), root), b""
        if self._size > self._maxSize:
            size = self._size
            self._reset()
            raise TooLarge(f"XML document exceeds {self._maxSize} bytes ({size} so far)")
        return None, b""

    @staticmethod
    def _rootEnd(parser):
        for _event, element in parser.read_events():
            if element.getparent() is None:
                return element
        return None
