"""Building and writing the console's XML replies.

Everything the console writes is one XML element serialised by
:func:`frame`: UTF-8, no XML declaration, indented for a person, then
:data:`TERMINATOR`.  Message bodies go into elements with :func:`setBody`,
which falls back to base64 when the bytes cannot be XML text (so the 0x01
terminator can never appear inside a reply).
"""

from __future__ import annotations

import base64
import re

from lxml import etree

__all__ = ["TERMINATOR", "frame", "xmlSafe", "setBody", "messageElement",
           "resultElement"]

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
