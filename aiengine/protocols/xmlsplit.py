"""Cut a byte stream into XML documents with lxml's feed parser.

A document is complete when its root element closes; nothing needs to follow
it.  Whitespace and separator bytes (for example 0x01) between documents are
skipped.  The parser loads no DTD, reads no file and touches no network; it
expands only entities declared inside the document (within libxml2's
amplification limits), so an external or undefined entity makes the document
malformed.

libxml2 reports the end of the root element as soon as the ``>`` that closes
it is fed, so the splitter feeds data in pieces that each end at a ``>`` (or
at a line end or separator): the piece after which the root's end event
appears ends the document exactly.  Separators must not include ``<``.
"""

from __future__ import annotations

import re

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
    """A document is larger than the size limit.

    ``items`` holds what the same :meth:`XmlSplitter.feed` call completed
    before it, so that nothing already framed is lost.
    """

    def __init__(self, message, items=()):
        super().__init__(message)
        self.items = list(items)


_WHITESPACE = b" \t\r\n"
# What a document can start with: markup, or a UTF-8 byte order mark.
_START = b"<\xef"


def _byteClass(chars, negate=False):
    return re.compile(b"[" + (b"^" if negate else b"")
                      + b"".join(re.escape(bytes((c,))) for c in chars) + b"]")


class XmlSplitter:
    """Incremental XML document splitter.

    :param separators: bytes skipped between documents besides whitespace,
        and where a malformed document's remains are cut off.
    :param maxSize: largest document in bytes; :meth:`feed` raises
        :class:`TooLarge` past it.
    """

    def __init__(self, separators=b"\x01", maxSize=1000000):
        self._content = _byteClass(_WHITESPACE + separators, negate=True)
        self._resync = _byteClass(b"\n" + separators)
        # Pieces end at every ">" (where a root can end) and at every line end
        # or separator (so that a line of garbage costs only itself).
        self._pieceEnd = _byteClass(b">\n" + separators)
        self._maxSize = maxSize
        # One parser for every document: close() makes it ready for the next
        # at half the cost of a new one.  resolve_entities=False would be
        # unsafe: libxml2 stops at an undefined entity and lxml's feed()
        # hides that error, so the document would never end; "internal"
        # raises instead.
        self._parser = etree.XMLPullParser(
            events=("end",), resolve_entities="internal", no_network=True,
            load_dtd=False, huge_tree=False)
        self._inDocument = False
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

        Raises :class:`TooLarge` when a document grows past ``maxSize``
        (its ``items`` are the documents completed before); the splitter is
        then unusable and the connection should be closed.
        """
        out = []
        pos = 0
        while pos < len(data):
            if self._discarding:
                match = self._resync.search(data, pos)
                end = match.end() if match else len(data)
                self.discarded += end - pos
                self._discarding = match is None
                pos = end
                continue
            if not self._inDocument:
                # Between documents: skip whitespace and separators.
                match = self._content.search(data, pos)
                if match is None:
                    break
                pos = match.start()
                if data[pos] not in _START:
                    # Garbage: no need to ask libxml2 to say so.
                    match = self._resync.search(data, pos)
                    end = match.end() if match else len(data)
                    out.append(Malformed(data[pos:end], "document does not start "
                                         "with '<'; dropped up to the line end"))
                    self._discarding = match is None
                    pos = end
                    continue
                self._inDocument = True
            match = self._pieceEnd.search(data, pos)
            end = match.end() if match else len(data)
            if self._size + end - pos > self._maxSize:
                # Checked before parsing, so the limit holds however the
                # stream is split into packets.
                size = self._size + end - pos
                self._reset()
                raise TooLarge(f"XML document exceeds {self._maxSize} bytes "
                               f"({size} so far)", out)
            item, rest = self._feedPiece(data[pos:end])
            if item is not None:
                out.append(item)
            if len(rest) <= end - pos:
                pos = end - len(rest)
            else:
                # The next document starts in an earlier packet's bytes.
                data = rest + data[end:]
                pos = 0
        return out

    def _reset(self):
        data = b"".join(self._doc)
        self._inDocument = False
        self._doc = []
        self._size = 0
        parser = self._parser
        for _ in parser.read_events():
            pass
        try:
            parser.close()
        except etree.XMLSyntaxError:
            pass  # an unfinished or malformed document: already dealt with
        return data

    def _feedPiece(self, piece):
        """Parse one piece of the current document.

        Returns the completed item or None, and the bytes to parse again
        (after a malformed document, what follows the cut).
        """
        self._doc.append(piece)
        self._size += len(piece)
        parser = self._parser
        try:
            parser.feed(piece)
            root = self._rootEnd(parser)
            if root is None and self._size <= 4 and piece.endswith(b"/>"):
                # libxml2 waits for more than four bytes before it starts
                # (encoding detection), so ``<a/>`` needs a nudge; whitespace
                # after the root is legal (after a start tag it would be data).
                parser.feed(b" ")
                root = self._rootEnd(parser)
        except etree.XMLSyntaxError as e:
            return self._malformed(e)
        if root is not None:
            return Document(self._reset(), root), b""
        return None, b""

    def _malformed(self, error):
        data = self._reset()
        # Cut after the first line end or separator at or after the error.
        line, column = error.position if error.position else (1, 1)
        offset = 0
        for _ in range((line or 1) - 1):
            nl = data.find(b"\n", offset)
            if nl < 0:
                break
            offset = nl + 1
        offset += max((column or 1) - 1, 0)
        match = self._resync.search(data, min(offset, len(data)))
        if match is None:
            self._discarding = True
            return Malformed(data, str(error)), b""
        return Malformed(data[:match.end()], str(error)), data[match.end():]

    @staticmethod
    def _rootEnd(parser):
        for _event, element in parser.read_events():
            if element.getparent() is None:
                return element
        return None
