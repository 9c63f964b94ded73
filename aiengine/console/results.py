"""Building and writing the console's XML replies.

Everything the console writes is one XML element serialised by
:func:`frame`: UTF-8, no XML declaration, indented for a person, then
:data:`TERMINATOR`.  Message bodies go into elements with :func:`setBody`,
which falls back to base64 when the bytes cannot be XML text (so the 0x01
terminator can never appear inside a reply).  Answers meant for a person at
telnet (``format="table"``) carry an aligned text table made by
:func:`textTable` in one element made by :func:`textBlock`.
"""

from __future__ import annotations

import base64
import heapq
import re

from lxml import etree

__all__ = ["TERMINATOR", "frame", "xmlSafe", "setBody", "textElement",
           "messageElement", "resultElement", "textTable", "textBlock", "duration",
           "plural", "listNames", "hostPort"]

#: Written after every reply and event: a line end, so a person at telnet
#: sees the document end its line, then 0x01, which ends the frame for
#: clients that read up to 0x01 (and which terminals do not display).
TERMINATOR = b"\n\x01"

# Characters XML 1.0 forbids in text (lone surrogates cannot even be encoded).
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


def frame(element) -> bytes:
    """``element`` as the bytes the console writes: document + TERMINATOR."""
    data = etree.tostring(element, encoding="utf-8", xml_declaration=False,
                          pretty_print=True)
    return data.rstrip(b"\n") + TERMINATOR


def xmlSafe(text: str) -> str:
    """``text`` with characters XML cannot carry written as ``\\xNN`` escapes.

    For human-readable texts (error messages) only; data uses :func:`setBody`.
    """
    return _NOT_XML.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


def setBody(element, body) -> None:
    """Make ``body`` (bytes or str) the text of ``element``.

    Bytes that are not UTF-8, or text with characters XML forbids (NUL and
    the other control characters except tab, newline and carriage return),
    are written base64-encoded and ``encoding="base64"`` is set.
    """
    if isinstance(body, bytes):
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError:
            text = None
        raw = body
    else:
        text = body
        raw = None
    if text is not None and not _NOT_XML.search(text):
        element.text = text
        return
    if raw is None:
        raw = text.encode("utf-8", "surrogatepass")
    element.set("encoding", "base64")
    element.text = base64.b64encode(raw).decode("ascii")


def textElement(tag, data):
    """``<tag>`` holding ``data`` as text (base64 when XML cannot carry it)."""
    element = etree.Element(tag)
    setBody(element, data)
    return element


def messageElement(tag: str, message, **extra):
    """An element ``<tag topic=".." id=".." type=".." source="..">body</tag>``
    for a broker :class:`~aiengine.broker.Message`."""
    element = etree.Element(tag)
    element.set("topic", message.topic)
    element.set("id", message.id)
    if message.msgtype:
        element.set("type", message.msgtype)
    if message.source is not None:
        element.set("source", xmlSafe(str(message.source)))
    if message.inReplyTo is not None:
        element.set("in-reply-to", xmlSafe(str(message.inReplyTo)))
    for key, value in extra.items():
        element.set(key, xmlSafe(str(value)))
    setBody(element, message.body)
    return element


def resultElement(status: str, requestId=None, name=None, error=None):
    """An ``<xmlcallresult>`` with ``requestId`` and ``name`` when given.

    ``requestId`` and ``name`` must be text XML can carry, as attribute
    values read from a parsed request are (pass others through
    :func:`xmlSafe`).  With ``error`` the result gets an ``<exception>``
    child holding it.
    """
    # Set in the order the answer shows them.
    result = etree.Element("xmlcallresult")
    if requestId is not None:
        result.set("requestId", requestId)
    if name is not None:
        result.set("name", name)
    result.set("status", status)
    if error is not None:
        etree.SubElement(result, "exception").text = xmlSafe(error)
    return result


def plural(n: int, noun: str) -> str:
    """``1 call``, ``2 calls``: a count and its noun, for messages and logs."""
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def listNames(names, limit: int = 20) -> str:
    """The first ``limit`` of ``names`` (a collection) in sorted order, joined
    with commas, then ``and N more``: an error message naming what exists
    stays one line even when thousands exist."""
    shown = ", ".join(heapq.nsmallest(limit, names))
    if len(names) > limit:
        shown += f" and {len(names) - limit} more"
    return shown


def hostPort(host, port) -> str:
    """``host:port``; an IPv6 address in brackets (``[::1]:9000``)."""
    host = str(host)
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"{host}:{port}"


def duration(seconds) -> str:
    """``seconds`` for a person: ``0.4s``, ``42s``, ``3m12s``, ``2h05m``,
    ``3d04h`` (the two largest units, rounded down); ``-`` for ``None``."""
    if seconds is None:
        return "-"
    seconds = max(0.0, float(seconds))
    if seconds < 10:
        # Tenths, rounded down as the larger units are: 9.96 s is "9.9s"
        # (the epsilon keeps 2.3 from reading 2.2 through binary rounding).
        return f"{int(seconds * 10 + 1e-9) / 10:.1f}s"
    whole = int(seconds)
    if whole < 60:
        return f"{whole}s"
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    if whole < 86400:
        return f"{whole // 3600}h{whole % 3600 // 60:02d}m"
    return f"{whole // 86400}d{whole % 86400 // 3600:02d}h"


def textTable(headers, rows, right=()) -> str:
    """An aligned plain-text table: a header line, then one line per row.

    ``rows`` are sequences of cells (anything ``str`` takes; ``None`` is
    ``-``).  Columns are as wide as their widest cell, two spaces apart;
    the columns whose header is in ``right`` (numbers) are right-aligned.
    Cells have the characters XML cannot carry escaped, and line ends too,
    so that a row stays one line.
    """
    lines = [list(headers)] + [
        [_cell(value) for value in row] for row in rows]
    widths = [max(len(line[i]) for line in lines) for i in range(len(headers))]
    aligned = [header in right for header in headers]
    out = []
    for line in lines:
        cells = [cell.rjust(width) if rightAligned else cell.ljust(width)
                 for cell, width, rightAligned in zip(line, widths, aligned)]
        out.append("  ".join(cells).rstrip())
    return "\n".join(out)


def _cell(value) -> str:
    if value is None:
        return "-"
    return xmlSafe(str(value)).replace("\n", "\\n").replace("\r", "\\r")


def textBlock(tag: str, text: str):
    """``<tag>`` holding ``text`` (a table) between line ends, as CDATA so
    that a person at telnet reads it as it is, without ``&amp;`` escapes
    (as escaped text when it holds ``]]>``, which CDATA cannot)."""
    element = etree.Element(tag)
    text = "\n" + xmlSafe(text) + "\n"
    element.text = text if "]]>" in text else etree.CDATA(text)
    return element
