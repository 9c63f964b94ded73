"""Cut a byte stream from the network into XML documents, safely.

A document is complete when its root element closes; nothing needs to follow
it.  Whitespace and separator bytes (for example 0x01) between documents are
skipped.

Untrusted input rules, for every document:

- No ``<!DOCTYPE``: it is refused (:class:`Malformed`, "DOCTYPE is not
  allowed") before libxml2 sees it, so no DTD is read, no entity can be
  declared and therefore none is ever resolved; a reference to an undefined
  entity (``&nbsp;``) is malformed.  Only XML's predefined entities
  (``&amp;`` ...) and character references are replaced.
- Only ASCII-compatible encodings (UTF-8, the default; US-ASCII,
  ISO-8859-*, windows-125*): a declared UTF-7 or UTF-16, or NUL bytes before
  the root element (UTF-16/32 autodetection), could hide a DOCTYPE from the
  check above and are refused.
- No network, no file: the parser is built with ``no_network``, without DTD
  loading, and with a resolver that answers every load with nothing.
- Size: at most ``maxSize`` bytes per document, and at most ``maxSize`` bytes
  of a malformed line before a line end; more raises :class:`TooLarge`,
  however the stream is split into packets (nothing past the limit is looked
  at, so a short malformed document is malformed whatever follows it).
- Depth: libxml2's limit without ``huge_tree`` (256 levels) makes a deeper
  document malformed.

How documents are cut: libxml2 reports the end of the root element as soon as
the ``>`` that closes it is fed, so the splitter must never feed bytes past
the root's end.  It reads the document's head (prologue and root start tag)
itself, so it knows the root's name, and then feeds the content in pieces of
up to a few kilobytes that end only where the root may end (at the next
``</name>``).  A piece never ends inside an unfinished ``<...``: those bytes
wait for the next packet.  The work per byte is thus small and independent of
the document's shape (a megabyte of ``<b/>`` costs a handful of feeds, not a
quarter of a million).
"""

from __future__ import annotations

import re
from collections import deque

from lxml import etree

__all__ = ["XmlSplitter", "Document", "Malformed", "TooLarge", "safeParser",
           "parseDocument"]


class _NoLoads(etree.Resolver):
    """Answers every attempt to load a DTD or external entity with nothing.

    The parser options already forbid such loads; this makes sure that no
    option or libxml2 default can ever make a network document read a file.
    """

    def resolve(self, url, pubid, context):
        return self.resolve_string("", context)


def safeParser(**kw) -> etree.XMLParser:
    """An lxml parser for untrusted input: no entities, DTD, file or network.

    For a complete document in memory (``etree.fromstring(data,
    safeParser())``).  It keeps entity references unresolved; use
    :func:`parseDocument` to apply every rule of this module (no DOCTYPE at
    all, ASCII-compatible encoding, size).
    """
    parser = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False,
                             huge_tree=False, **kw)
    parser.resolvers.add(_NoLoads())
    return parser


def _pullParser() -> etree.XMLPullParser:
    # resolve_entities="internal", not False: with False libxml2 stops at an
    # undefined entity and lxml's feed() hides the error, so the document
    # would never end; "internal" raises instead.  As no DOCTYPE gets
    # through, no entity is declared and "internal" resolves none.
    parser = etree.XMLPullParser(events=("end",), resolve_entities="internal",
                                 no_network=True, load_dtd=False, huge_tree=False)
    parser.resolvers.add(_NoLoads())
    return parser


class Document:
    """A complete document: its bytes and its parsed root element."""

    __slots__ = ("data", "root")

    def __init__(self, data, root):
        self.data = data
        self.root = root


class Malformed:
    """Bytes that are not well-formed XML, or that the rules above refuse.

    The rest of the line (up to a newline or separator) where the error was
    found is dropped with them, so that the next document starts clean.
    """

    __slots__ = ("data", "error")

    def __init__(self, data, error):
        self.data = data
        self.error = error


class TooLarge(Exception):
    """A document, or a malformed line, is larger than the size limit.

    ``items`` holds what the same :meth:`XmlSplitter.feed` call completed
    before it, so that nothing already framed is lost.
    """

    def __init__(self, message, items=()):
        super().__init__(message)
        self.items = list(items)


_WHITESPACE = b" \t\r\n"
# What a document can start with: markup, or a UTF-8 byte order mark.
_START = b"<\xef"
_BOM = b"\xef\xbb\xbf"
#: Largest piece of a document fed to libxml2 at once: small enough that
#: re-reading the rest of a piece after an error stays cheap, large enough
#: that the per-feed cost does not matter.  A document's first piece is
#: smaller (_FIRST_PIECE) and each next one twice as large, so that a flood of
#: short malformed lines costs little per line.
_PIECE = 4096
_FIRST_PIECE = 128
#: Possible root ends that turned out not to be before the splitter feeds
#: whole pieces and finds the exact end afterwards (see _feedPiece).
_FALSE_ENDS = 8

# Complete whitespace, comments and processing instructions of a prologue.
_MISC = re.compile(rb"(?:[ \t\r\n]+|<!--.*?-->|<\?.*?\?>)*", re.S)
_ENCODING = re.compile(rb"""\sencoding\s*=\s*(["'])(.*?)\1""", re.S)
# Encodings in which every byte below 0x80 is the ASCII character: the head
# check reads the bytes as they are.
_ASCII_COMPATIBLE = re.compile(
    rb"utf-?8|(?:us-?)?ascii|iso[-_]?8859[-_]?(?:[1-9]|1[0-6])|latin-?[1-9]"
    rb"|(?:windows|cp)-?125[0-8]", re.I)
# The body of a start tag: anything but ">" outside quoted values, and no
# "<" anywhere (XML allows none in a tag; one usually starts the next
# document after an unclosed quote).
_TAG_BODY = re.compile(rb"""(?:[^"'<>]+|"[^"<]*"|'[^'<]*')*""")
_NAME = re.compile(rb"[^ \t\r\n/>]*")
_SPACE_GT = re.compile(rb"[ \t\r\n]*>")
# "<!" (comment, CDATA, DOCTYPE) or "<?" (declaration, PI).  A regex rather
# than ``b"<!" in data``: bytes' "in" first tries the operand as an int and
# raises and clears a TypeError, which costs more than the search.
_DECL_OR_PI = re.compile(rb"<[!?]")
_NAME_START = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz_:"
                        + bytes(range(0x80, 0x100)))

# Head scanner states.
_MISC_STATE, _COMMENT, _PI, _TAG = range(4)
# Line-end lexer states (see XmlSplitter._lineEndInConstruct).
_LEX_TEXT, _LEX_TAG, _LEX_QUOTE, _LEX_CLOSER = range(4)
_LEX_OPENERS = ((b"<!--", b"-->"), (b"<![CDATA[", b"]]>"), (b"<?", b"?>"))
_LEX_QUOTE_OR_GT = re.compile(rb"""["'>]""")
#: A piece that may hold several possible ends of the root (see _cut).
_SPECULATIVE = "speculative"


def _byteClass(chars, negate=False):
    return re.compile(b"[" + (b"^" if negate else b"")
                      + b"".join(re.escape(bytes((c,))) for c in chars) + b"]")


class XmlSplitter:
    """Incremental XML document splitter for untrusted input.

    :param separators: bytes skipped between documents besides whitespace,
        and where a malformed document's remains are cut off.  Must not
        include ``<``.
    :param maxSize: largest document in bytes, and longest malformed line;
        :meth:`feed` raises :class:`TooLarge` past it.
    """

    def __init__(self, separators=b"\x01", maxSize=1000000):
        self._content = _byteClass(_WHITESPACE + separators, negate=True)
        # 0x01-framed documents that start right at their root element take a
        # fast path: parsed whole (see _whole).
        self._wholeParser = safeParser() if b"\x01" in separators else None
        self._resync = _byteClass(b"\n" + separators)
        # Separators XML cannot carry anywhere (control characters but tab,
        # line feed and carriage return): one ends an unfinished document.
        illegal = bytes(b for b in separators if b < 0x20 and b not in b"\t\n\r")
        self._hardEnd = _byteClass(illegal) if illegal else None
        # One such byte (0x01, the usual case): _whole looks for it itself.
        self._hardByte = illegal if len(illegal) == 1 else None
        #: (from, at): the last search for a hard end in the packet being
        #: fed, from ``from``, found one at ``at`` (-1: none); see _nextHardEnd
        self._lastHardEnd = None
        #: the fast path is off up to the next hard end (see _whole)
        self._wholeOff = False
        self._maxSize = maxSize
        self._parser = _pullParser()
        self._fed = False  # whether the parser has bytes of the current document
        self._inDocument = False
        self._doc = []  # pieces of the current document fed to the parser
        self._size = 0
        self._held = b""  # an unfinished "<..." waiting for the next packet
        self._discarding = False  # dropping a malformed line's remains
        self._run = 0  # bytes of the malformed line being dropped
        self._head = None  # the document's head while it is being read
        self._endTag = b""  # "</name" of the current root
        #: text typed at a terminal: a line end inside an attribute value,
        #: comment, CDATA section or PI ends the document as malformed (see
        #: _lineEndInConstruct); set by the console until a 0x01 is seen
        self.lineEnds = False
        self._lexState = _LEX_TEXT
        self._lexCarry = b""
        self._lexCloser = b""
        self._anyGt = False  # the next ">" may end the root (see _contentCut)
        #: bytes dropped after malformed documents, up to their line ends
        self.discarded = 0

    @property
    def pending(self) -> int:
        """Bytes held for an incomplete document."""
        return self._size + len(self._held)

    def feed(self, data: bytes) -> list:
        """Feed bytes; return the :class:`Document` and :class:`Malformed`
        items completed by them, in stream order.

        A separator byte that XML cannot carry (0x01) ends a document that
        is still open when it comes, whatever construct it is in (an
        unclosed quote, comment or CDATA section): that document is
        :class:`Malformed`, and the next one starts after it.

        Raises :class:`TooLarge` when a document grows past ``maxSize``, or
        a malformed line does (its ``items`` are the items completed
        before); the splitter is then unusable and the connection should be
        closed.
        """
        out = []
        if self._hardEnd is None:
            self._feed(data, out)
            return out
        self._lastHardEnd = None  # a new packet
        self._wholeOff = False
        pos = 0
        while pos < len(data):
            if not (self._inDocument or self._held or self._discarding):
                # Whole documents (and garbage) need no care: they end before
                # any hard end.  Stop where a document must be read piece
                # by piece.
                pos = self._feed(data, out, pos, wholeOnly=True)
                if pos >= len(data):
                    break
            # A document in progress: never past the next hard end.
            at = self._nextHardEnd(data, pos)
            end = at + 1 if at >= 0 else len(data)
            self._feed(data[pos:end], out)
            if at >= 0 and (self._inDocument or self._held):
                self._abandon(out, f"document not finished before the byte "
                                   f"0x{data[at]:02x}; dropped up to it")
            self._wholeOff = False
            pos = end
        return out

    def _nextHardEnd(self, packet, pos) -> int:
        """Where the first hard end at or after ``pos`` in the packet being
        fed is (-1: none).

        Asked by :meth:`feed` and, for each document, by :meth:`_whole`: the
        last answer is remembered (it holds for every position up to it), so
        that no byte of the packet is searched twice.  Searching to the
        packet's end again for each document made a packet of documents
        without 0x01 (separated by line ends only) cost time quadratic in
        its length.
        """
        last = self._lastHardEnd
        if last is not None and last[0] <= pos and (last[1] < 0 or pos <= last[1]):
            return last[1]
        match = self._hardEnd.search(packet, pos)
        at = match.start() if match else -1
        self._lastHardEnd = (pos, at)
        return at

    def _abandon(self, out, error):
        """The current document cannot go on: it is malformed as it stands."""
        held = self._held  # what waits to be fed; the rest was fed already
        out.append(Malformed(self._reset() + held, error))

    def _feed(self, data, out, pos=0, wholeOnly=False) -> int:
        """Feed ``data`` from ``pos``; append the items completed to ``out``.

        With ``wholeOnly`` (between documents), stop at the first document
        that must be read piece by piece and return where it starts;
        otherwise ``data`` holds no hard end but maybe at its end.
        """
        if self._held:
            data = self._held + data
            self._held = b""
        while pos < len(data):
            if self._discarding:
                match = self._resync.search(data, pos)
                end = match.end() if match else len(data)
                self.discarded += end - pos
                # The line counts up to its line end, whether that comes in
                # this packet or a later one.
                self._run += (match.start() if match else end) - pos
                self._discarding = match is None
                pos = end
                if self._run > self._maxSize:
                    self._discarding = False
                    raise TooLarge(f"more than {self._maxSize} bytes of malformed data "
                                   f"without a line end", out)
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
                    self._startDiscarding(match is None,
                                          (match.start() if match else end) - pos, out)
                    pos = end
                    continue
                if self._wholeParser is not None and not self._wholeOff:
                    end = self._whole(data, pos, out, wholeOnly)
                    if end:
                        pos = end
                        continue
                if wholeOnly:
                    return pos
                self._startDocument()
            end, complete, refusal = self._cut(data, pos)
            brokenAt = -1
            if self.lineEnds:
                if end > pos:
                    brokenAt = self._lineEndInConstruct(data, pos, end)
                    if refusal is not None:
                        # The head broke a rule: a line end before that
                        # place ends it first.
                        if 0 <= brokenAt < pos + refusal[0] - self._size:
                            refusal = None
                            end = pos
                        else:
                            brokenAt = -1
                    elif brokenAt >= 0:
                        # Up to the line end only: what comes before it may
                        # still end the document (or show another error).
                        end = brokenAt
                        if complete is True:
                            complete = False
                else:
                    # Held for the next packet (an unfinished "<..."): a line
                    # end in it may already tell; it is looked at again then.
                    saved = (self._lexState, self._lexCloser, self._lexCarry)
                    # Not past the byte after the size limit: coming one by
                    # one, the bytes after it would raise TooLarge first.
                    stop = min(len(data), pos + self._maxSize - self._size + 1)
                    brokenAt = self._lineEndInConstruct(data, pos, stop)
                    self._lexState, self._lexCloser, self._lexCarry = saved
                    if brokenAt >= 0:
                        end = brokenAt  # nothing before it to try
                if brokenAt >= 0 and end == pos:
                    self._lineBroken(out, data[pos:brokenAt + 1])
                    pos = brokenAt + 1
                    continue
            if refusal is not None:
                item, rest = self._refuse(data[pos:end], *refusal)
            elif end == pos:
                self._held = data[pos:]
                if self.pending > self._maxSize:
                    self._tooLarge(out)
                break
            else:
                item, rest = self._feedPiece(data[pos:end], complete)
            if item is None and brokenAt >= 0:
                # The document goes on past the line end it cannot hold.
                self._lineBroken(out, data[end:brokenAt + 1])
                pos = brokenAt + 1
                continue
            if item is not None:
                out.append(item)
                if isinstance(item, Malformed) and self._discarding:
                    self._startDiscarding(True, len(item.data), out)
            if len(rest) <= end - pos:
                pos = end - len(rest)
            else:
                # The next document starts in an earlier packet's bytes.
                data = rest + data[end:]
                pos = 0
        return len(data)

    def _whole(self, data, pos, out, packet) -> int:
        """Parse the bytes from ``pos`` to the next 0x01 as one document.

        Only for a document whose first byte opens its root element and
        that holds no ``<!`` or ``<?``: no declaration (so UTF-8), no DOCTYPE
        and nothing after the root but whitespace, so parsing it
        whole with :func:`safeParser` keeps every rule of this module (an
        undefined entity, NUL or invalid UTF-8 fails the parse).  Returns
        where the document ends, or 0 to take the incremental path (no
        0x01 yet, another start, too large, or a failed parse: that path
        then says exactly what is wrong; after a failed parse, the documents
        up to the same 0x01 take it too).  ``packet``: ``data`` is the
        packet being fed, not just the bytes up to its next hard end.
        """
        if pos + 1 >= len(data) or data[pos + 1] not in _NAME_START:
            return 0
        if packet:
            last = self._lastHardEnd
            if last is not None and last[0] <= pos and (last[1] < 0 or pos <= last[1]):
                end = last[1]
            elif self._hardByte is not None:
                # _nextHardEnd's work, inline: this runs for every document.
                end = data.find(self._hardByte, pos)
                self._lastHardEnd = (pos, end)
            else:
                end = self._nextHardEnd(data, pos)
            if end >= 0 and data[end] != 0x01:
                return 0  # another hard end comes first: it fails the parse
        else:
            # feed() gives the bytes up to the next hard end: a 0x01 can
            # only be the last one.
            end = len(data) - 1 if data[-1] == 0x01 else -1
        if end < 0 or end - pos > self._maxSize:
            return 0
        document = data[pos:end]
        if _DECL_OR_PI.search(document) is None:
            try:
                root = etree.fromstring(document, self._wholeParser)
            except etree.XMLSyntaxError:
                pass
            else:
                out.append(Document(document.rstrip(_WHITESPACE), root))
                return end
        # Comments, CDATA or PIs (where exactly the root ends is the
        # incremental path's to say), or a failed parse.  The next documents
        # up to the same 0x01 take that path too: their bytes would be
        # mostly the same, and trying each would cost time quadratic in the
        # length of a run of them (documents separated by line ends).
        self._wholeOff = True
        return 0

    # -- cutting ----------------------------------------------------------------

    def _startDocument(self):
        self._inDocument = True
        self._lexState = _LEX_TEXT
        self._lexCarry = b""
        self._head = bytearray()
        self._headBase = 0  # document offset of self._head[0]
        self._headPos = 0  # where the scan goes on, in self._head
        self._headState = _MISC_STATE
        self._headFrom = 0  # where to look for the end of the current token
        self._headMark = 0  # start of the current token
        self._quote = None
        self._declDone = False
        self._endTag = b""
        self._endRe = None
        self._anyGt = False
        self._falseEnds = 0
        self._chunk = _FIRST_PIECE

    def _cut(self, data, pos):
        """Where the next piece of the current document ends.

        Returns ``(end, complete, refusal)``.  ``complete`` is False when the
        root cannot end inside the piece, True when it may end exactly at
        ``end`` and nowhere before, and ``_SPECULATIVE`` when it may end at
        ``end`` or at earlier possible ends.  ``end == pos`` when the bytes
        must wait for more.  ``refusal`` is ``(offset in the document,
        message)`` when the head breaks a rule (``end`` then covers what was
        looked at).

        Nothing past the size limit is looked at or fed, so that the outcome
        does not depend on the packets: a piece past it made a short
        malformed document followed by more documents in the same packet
        too large, whereas the same bytes one by one made it malformed.  At
        the limit, ``end == pos`` (the next byte is one too many).
        """
        chunk = self._chunk
        self._chunk = min(chunk * 2, _PIECE)
        stop = min(len(data), pos + self._maxSize - self._size)
        if self._head is None:
            return self._contentCut(data, pos, pos, chunk, stop)
        chunkEnd = min(stop, pos + chunk)
        if chunkEnd == pos:
            return pos, False, None
        nul = data.find(b"\x00", pos, chunkEnd)
        if nul >= 0:
            chunkEnd = nul
        self._head += data[pos:chunkEnd]
        found = self._scanHead()
        if found is None:
            if nul >= 0:
                return nul + 1, False, (self._size + nul - pos, "NUL byte: documents must "
                                        "be UTF-8 (or ASCII-compatible), not UTF-16/32")
            return chunkEnd, False, None
        if found[0] == "refuse":
            return chunkEnd, False, found[1:]
        _, docEnd, selfClosing, name = found
        self._head = None
        tagEnd = pos + docEnd - self._size
        if selfClosing:
            return tagEnd, True, None
        self._endTag = b"</" + name
        return self._contentCut(data, pos, tagEnd, chunk, stop)

    def _contentCut(self, data, pos, start, chunk, stop):
        """Cut inside the root element: at its next possible end tag, or
        before ``chunk`` bytes or ``stop``, never inside an unfinished
        ``<...`` but a long one or one that reaches ``stop``."""
        limit = min(stop, pos + chunk)
        if start >= limit:
            return start, False, None
        if self._anyGt:
            # A long unfinished markup was fed whole: it may be the root's
            # end tag, so the next ">" is a possible end.
            gt = data.find(b">", start, limit)
            if gt < 0:
                return limit, False, None
            self._anyGt = False
            return gt + 1, True, None
        if self._falseEnds >= _FALSE_ENDS:
            # Many elements named like the root: feed up to the last possible
            # end in reach at once; _feedPiece finds the exact end afterwards.
            ends = self._endRe.finditer(data, start, limit)
            first = next(ends, None)
            if first is not None:
                last = None
                for last in ends:
                    pass
                if last is None:
                    return first.end(), True, None
                # Stop short of the last one: a document's own end is
                # usually the last in reach, and is then cut exactly.
                return last.start(), _SPECULATIVE, None
        else:
            endTag = self._endTag
            at = data.find(endTag, start, limit)
            while at >= 0:
                match = _SPACE_GT.match(data, at + len(endTag), stop)
                if match is not None:
                    return match.end(), True, None
                at = data.find(endTag, at + 1, limit)
        lt = data.rfind(b"<", start, limit)
        if lt >= 0 and data.find(b">", lt, limit) < 0:
            if lt > pos:
                return lt, False, None
            if limit == len(data) and len(data) - pos < _PIECE:
                return pos, False, None  # hold: the rest of it comes next
            self._anyGt = True
        return limit, False, None

    def _scanHead(self):
        """Read the document's head (prologue and root start tag) as far as
        the bytes go.

        Returns None (need more), ``("refuse", offset, message)`` or
        ``("start", end offset, self-closing, root name)``.
        """
        head = self._head
        n = len(head)
        i = self._headPos
        while True:
            state = self._headState
            if state == _MISC_STATE:
                if not self._declDone:
                    need = self._declaration(head, i)
                    if need is None or need[0] == "refuse":
                        return need
                    i = need[1]
                i = _MISC.match(head, i).end()
                if i < n and head[i] != 0x3C:  # "<"
                    return self._refusal(i, "text before the root element")
                if n - i < 2:
                    self._keepHead(i)
                    return None
                second = head[i + 1]
                if second == 0x21:  # "!"
                    if head.startswith(b"<!--", i):
                        self._token(_COMMENT, i, i + 4)
                        continue
                    if head.startswith(b"<!DOCTYPE", i):
                        return self._refusal(i, "DOCTYPE is not allowed")
                    if n - i < 9 and (b"<!DOCTYPE".startswith(head[i:])
                                      or b"<!--".startswith(head[i:])):
                        self._keepHead(i)
                        return None
                    return self._refusal(i, "unexpected '<!' before the root element")
                if second == 0x3F:  # "?"
                    self._token(_PI, i, i + 2)
                    continue
                if second in _NAME_START:
                    self._token(_TAG, i, i + 1)
                    continue
                return self._refusal(i, "invalid element name")
            if state == _COMMENT or state == _PI:
                close = b"-->" if state == _COMMENT else b"?>"
                end = head.find(close, self._headFrom)
                if end < 0:
                    self._headFrom = max(self._headFrom, n - len(close) + 1)
                    return None
                i = end + len(close)
                self._headState = _MISC_STATE
                continue
            # _TAG: the root start tag ends at the first ">" outside quotes.
            at = self._headFrom
            if self._quote is not None:
                end = head.find(self._quote, at)
                lt = head.find(b"<", at, n if end < 0 else end)
                if lt >= 0:
                    return self._refusal(lt, "'<' in an attribute value (a quote not "
                                             "closed?)")
                if end < 0:
                    self._headFrom = n
                    return None
                self._quote = None
                at = end + 1
            at = _TAG_BODY.match(head, at).end()
            if at == n:
                self._headFrom = n
                return None
            if head[at] == 0x3C:  # "<"
                return self._refusal(at, "'<' inside a start tag")
            if head[at] != 0x3E:  # an unfinished quoted value
                self._quote = head[at:at + 1]
                self._headFrom = at + 1
                lt = head.find(b"<", at + 1)
                if lt >= 0:
                    return self._refusal(lt, "'<' in an attribute value (a quote not "
                                             "closed?)")
                return None
            name = bytes(_NAME.match(head, self._headMark + 1).group())
            return ("start", self._headBase + at + 1, head[at - 1] == 0x2F, name)

    def _declaration(self, head, i):
        """Check the byte order mark and XML declaration at the start."""
        n = len(head)
        if self._headBase + i == 0 and n and head[0] == 0xEF:
            if n < 3 and _BOM.startswith(head):
                return None
            if head[:3] != _BOM:
                return self._refusal(0, "not UTF-8: invalid byte order mark")
            i = 3
        if n - i < 6:
            if b"<?xml "[:n - i] == head[i:] or b"<?xml\t"[:n - i] == head[i:]:
                return None
        elif head.startswith(b"<?xml", i) and head[i + 5] in _WHITESPACE:
            end = head.find(b"?>", max(i + 5, self._headFrom))
            if end < 0:
                self._headFrom = max(i + 5, n - 1)
                return None
            match = _ENCODING.search(head, i, end)
            if match is not None and not _ASCII_COMPATIBLE.fullmatch(match.group(2)):
                encoding = match.group(2).decode("ascii", "replace")
                return self._refusal(i, f"encoding '{encoding}' is not allowed; use UTF-8")
            i = end + 2
        self._declDone = True
        self._headFrom = 0
        return ("ok", i)

    def _token(self, state, mark, searchFrom):
        self._headState = state
        self._headMark = mark
        self._headFrom = searchFrom

    def _keepHead(self, i):
        """Forget the complete tokens before ``i``: only the scan needs them."""
        if i:
            del self._head[:i]
            self._headBase += i
        self._headPos = 0

    def _refusal(self, i, message):
        return ("refuse", self._headBase + i, message)

    def _lineBroken(self, out, tail):
        """The current document, and ``tail`` (up to its line end), is
        malformed: a line end came inside an unclosed construct."""
        out.append(Malformed(self._reset() + tail,
                             "line end inside an attribute value, comment, CDATA "
                             "section or processing instruction that is not closed"))

    def _lineEndInConstruct(self, data, start, end) -> int:
        """Where in ``data[start:end]``, the next piece of the document, a
        line end falls inside an attribute value, comment, CDATA section or
        PI (-1: none).  Keeps its place between pieces.

        For text typed at a terminal, one request a line: such a construct
        left open would otherwise swallow the requests of the next lines.
        """
        carry = self._lexCarry
        if carry:
            data = carry + data[start:end]
            base, start, end = start - len(carry), 0, len(carry) + end - start
        else:
            base = 0
        self._lexCarry = b""
        i = start
        while i < end:
            state = self._lexState
            if state == _LEX_TEXT:
                lt = data.find(b"<", i, end)
                if lt < 0:
                    return -1
                ahead = data[lt + 1:lt + 9]
                if len(ahead) < 8 and lt + 9 > end and any(
                        opener.startswith(ahead) for opener in (b"!--", b"![CDATA[")):
                    self._lexCarry = data[lt:end]  # an opener cut by the piece's end
                    return -1
                for opener, closer in _LEX_OPENERS:
                    if data.startswith(opener, lt):
                        self._lexState, self._lexCloser = _LEX_CLOSER, closer
                        i = lt + len(opener)
                        break
                else:
                    self._lexState = _LEX_TAG
                    i = lt + 1
            elif state == _LEX_TAG:
                match = _LEX_QUOTE_OR_GT.search(data, i, end)
                if match is None:
                    return -1
                if data[match.start()] == 0x3E:  # ">"
                    self._lexState = _LEX_TEXT
                else:
                    self._lexState, self._lexCloser = _LEX_QUOTE, match.group()
                i = match.end()
            else:
                closer = self._lexCloser
                at = data.find(closer, i, end)
                newline = data.find(b"\n", i, end if at < 0 else at)
                if newline >= 0:
                    return base + newline
                if at < 0:
                    # The closer may be cut by the piece's end.
                    keep = len(closer) - 1
                    if keep:
                        self._lexCarry = data[max(i, end - keep):end]
                    return -1
                self._lexState = _LEX_TAG if state == _LEX_QUOTE else _LEX_TEXT
                i = at + len(closer)
        return -1

    # -- parsing ----------------------------------------------------------------

    def _tooLarge(self, out):
        size = self.pending
        self._reset()
        raise TooLarge(f"XML document exceeds {self._maxSize} bytes ({size} so far)", out)

    def _startDiscarding(self, discarding, run, out):
        """A malformed line's first ``run`` bytes, before any line end, were
        reported; drop the rest of the line if ``discarding``."""
        self._discarding = discarding
        self._run = run
        if run > self._maxSize:
            self._discarding = False
            raise TooLarge(f"more than {self._maxSize} bytes of malformed data without "
                           f"a line end", out)

    def _reset(self):
        """End the current document; return its bytes."""
        data = b"".join(self._doc)
        self._inDocument = False
        self._held = b""
        self._head = None
        self._anyGt = False
        self._restart()
        return data

    def _restart(self):
        """Make the parser ready for a new document and forget the bytes."""
        self._doc = []
        self._size = 0
        if self._fed:
            self._fed = False
            # Closing makes the parser ready for the next document at less
            # cost than a new one.
            parser = self._parser
            deque(parser.read_events(), maxlen=0)
            try:
                parser.close()
            except etree.XMLSyntaxError:
                # An unfinished or malformed document, already dealt with.
                # libxml2 2.14 (lxml 6.2) keeps such a document's elements
                # after close() and reports their ends during the next
                # document: only a new parser is clean.
                self._parser = _pullParser()

    def _feedPiece(self, piece, complete):
        """Parse one piece of the current document.

        Returns the completed item or None, and the bytes to parse again
        (after a malformed document, what follows the cut).
        """
        self._doc.append(piece)
        self._size += len(piece)
        parser = self._parser
        self._fed = True
        try:
            parser.feed(piece)
            root = self._rootEnd(parser)
            if root is None and complete is True and self._size <= 4:
                # libxml2 waits for more than four bytes before it starts
                # (encoding detection), so ``<a/>`` needs a nudge; whitespace
                # after the root is legal.
                parser.feed(b" ")
                root = self._rootEnd(parser)
        except etree.XMLSyntaxError as e:
            if complete is _SPECULATIVE:
                return self._replay()  # maybe the root ended, then "extra content"
            line, column = e.position if e.position else (1, 1)
            return self._cutAfter(self._reset(), line or 1, column or 1, str(e))
        if root is None:
            if complete and self._falseEnds < _FALSE_ENDS:
                self._falseEnds += 1
                if self._falseEnds == _FALSE_ENDS:
                    self._endRe = re.compile(re.escape(self._endTag) + rb"[ \t\r\n]*>")
            return None, b""
        if complete is _SPECULATIVE:
            return self._replay()
        if root.getroottree().docinfo.doctype:
            # Cannot happen (the head check refuses it first); never deliver one.
            return self._cutAfter(self._reset(), 1, 1, "DOCTYPE is not allowed")
        return Document(self._reset(), root), b""

    def _replay(self):
        """The root ended, or an error came, in the last piece, which held
        several possible ends: parse the document again, cutting that piece
        at each of them, to end the document exactly.  This costs one more
        parse of the document, once."""
        piece = self._doc.pop()
        before = b"".join(self._doc)
        self._restart()
        if before:
            self._doc = [before]
            self._size = len(before)
            self._fed = True
            try:
                self._parser.feed(before)  # went through before: no end, no error
                deque(self._parser.read_events(), maxlen=0)
            except etree.XMLSyntaxError as e:
                line, column = e.position if e.position else (1, 1)
                return self._cutAfter(self._reset(), line or 1, column or 1, str(e))
        at = 0
        for match in self._endRe.finditer(piece):
            item, rest = self._feedPiece(piece[at:match.end()], True)
            at = match.end()
            if item is not None:
                return item, rest + piece[at:]
        if at < len(piece):
            item, rest = self._feedPiece(piece[at:], False)
            if item is not None:
                return item, rest
        return None, b""

    def _refuse(self, unparsed, offset, message):
        """A rule is broken at document ``offset``; ``unparsed`` was looked at
        but not fed."""
        self._doc.append(unparsed)
        data = self._reset()
        return self._cutAt(data, offset, message)

    def _cutAfter(self, data, line, column, message):
        offset = 0
        for _ in range(line - 1):
            nl = data.find(b"\n", offset)
            if nl < 0:
                break
            offset = nl + 1
        # Columns may count characters, not bytes: the line's end is still
        # the first one at or after this offset.
        return self._cutAt(data, min(offset + max(column - 1, 0), len(data)), message)

    def _cutAt(self, data, offset, message):
        """A Malformed for ``data`` up to the first line end or separator at
        or after ``offset``, and what follows it (to parse again).

        An error found at a ``<`` that begins a line (after blanks) belongs
        to the document that line starts, typed after a broken one: the cut
        is made before that line instead."""
        if offset < len(data) and data[offset] == 0x3C:
            lineStart = offset
            while lineStart > 0 and data[lineStart - 1] in b" \t":
                lineStart -= 1
            if lineStart > 0 and self._resync.match(data, lineStart - 1):
                return Malformed(data[:lineStart], message), data[lineStart:]
        match = self._resync.search(data, offset)
        if match is None:
            self._discarding = True
            return Malformed(data, message), b""
        return Malformed(data[:match.end()], message), data[match.end():]

    @staticmethod
    def _rootEnd(parser):
        # The root's end, when it came, is the last event: pieces end there.
        last = deque(parser.read_events(), maxlen=1)
        if last and last[0][1].getparent() is None:
            return last[0][1]
        return None


def parseDocument(data: bytes, maxSize: int | None = None):
    """Parse ``data``, one complete XML document from an untrusted source,
    with the rules of :class:`XmlSplitter`; return its root element.

    Raises ``ValueError`` with a message for a person when ``data`` is not
    exactly one well-formed, allowed document (whitespace around it is
    fine).
    """
    splitter = XmlSplitter(separators=b"", maxSize=maxSize or max(len(data), 1))
    try:
        items = splitter.feed(data)
    except TooLarge as e:
        raise ValueError(str(e)) from None
    if items and isinstance(items[0], Malformed):
        raise ValueError(items[0].error)
    if not items or splitter.pending:
        raise ValueError("incomplete XML document")
    if len(items) > 1:
        raise ValueError("content after the end of the XML document")
    return items[0].root
