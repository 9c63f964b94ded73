"""``aiengine-console``: send ``<xmlcall>`` documents to an aiengine console.

Like the original ``aiconsole``::

    aiengine-console [-s host:port] [-i file] [-o file] [-t seconds]
                     [-k secret-file] [--tls [--ca file]]

reads XML documents from the input (standard input by default), sends each
to the console followed by 0x01, waits for the ``<xmlcallresult>`` with the
same ``requestId`` (``REQ-<n>`` is set when the document has none, ``n``
counting the documents from 1; ``<xmlevent>`` documents are skipped) and
writes::

    INFO: AI console
    INFO: connected to host:port
    REQUEST:
    <xmlcall ... requestId="REQ-1">...</xmlcall>

    RESPONSE:
    <xmlcallresult requestId="REQ-1" status="OK">...</xmlcallresult>

    INFO: disconnected

With ``-k``, the client first logs in with ``Engine.login`` and the secret
read from the file (surrounding whitespace stripped); the secret is not
written to the transcript (``INFO: logged in`` is).  With ``--tls`` it
speaks TLS and verifies the console's certificate against ``--ca`` (the
system's trust store by default) and the host name of ``-s``.

Documents are sent one at a time as they are read, so the input may be a
person typing.  Exit status: 0 when every request was answered with
``status="OK"``, 1 when every request was answered but some not OK, 2 on an
error (written to standard error as ``ERROR: ...``): cannot connect, no
answer within the timeout, connection closed, input that is not XML or holds
no document.  A blocking socket client: it has nothing else to do while it
waits.
"""

from __future__ import annotations

import argparse
import socket
import ssl
import sys
import time
from collections import deque

from lxml import etree

from aiengine.auth import readSecretFile
from aiengine.protocols.xmlsplit import Document, Malformed, TooLarge, XmlSplitter

__all__ = ["main", "ClientError", "ConsoleConnection", "parseServer"]

DEFAULT_SERVER = "127.0.0.1:20001"
DEFAULT_TIMEOUT = 30.0
#: Largest input document and largest reply (replies may carry page bodies).
MAX_REQUEST = 1000000
MAX_REPLY = 64 * 1000000
_CHUNK = 65536


class ClientError(Exception):
    """A failure that ends the client with ``ERROR: <message>`` and status 2."""


def parseServer(text: str):
    """``(host, port)`` from ``host:port`` (``[v6]:port`` for IPv6 literals)."""
    host, sep, port = text.rpartition(":")
    if not sep or not host:
        raise argparse.ArgumentTypeError(f"expected host:port, got {text!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    try:
        number = int(port)
    except ValueError:
        number = -1
    if not 0 < number < 65536:
        raise argparse.ArgumentTypeError(f"bad port in {text!r}")
    return host, number


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive number of seconds, "
                                         f"got {text!r}")
    return value


def _parser():
    parser = argparse.ArgumentParser(
        prog="aiengine-console",
        description="Send <xmlcall> documents to an aiengine console and print the "
                    "replies.",
        epilog="Exit status: 0 all answered OK, 1 some answered with an exception, "
               "2 error.")
    parser.add_argument("-s", "--server", type=parseServer, default=DEFAULT_SERVER,
                        metavar="HOST:PORT",
                        help=f"console address (default {DEFAULT_SERVER})")
    parser.add_argument("-i", "--input", metavar="FILE",
                        help="read the requests from FILE (default standard input)")
    parser.add_argument("-o", "--output", metavar="FILE",
                        help="write the transcript to FILE (default standard output)")
    parser.add_argument("-t", "--timeout", type=_seconds, default=DEFAULT_TIMEOUT,
                        metavar="SECONDS",
                        help=f"how long to wait for each answer (default "
                             f"{DEFAULT_TIMEOUT:g})")
    parser.add_argument("-k", "--secret-file", metavar="FILE",
                        help="log in with Engine.login and the secret in FILE first")
    parser.add_argument("--tls", action="store_true",
                        help="connect with TLS and verify the console's certificate")
    parser.add_argument("--ca", metavar="FILE",
                        help="with --tls: PEM file of the certificates to trust "
                             "(default: the system's)")
    return parser


class ConsoleConnection:
    """A blocking connection to a console: :meth:`call` one document at a time."""

    def __init__(self, host: str, port: int, timeout: float, tls=None):
        self.address = f"{host}:{port}"
        try:
            self._socket = socket.create_connection((host, port), timeout=timeout)
            if tls is not None:
                self._socket = tls.wrap_socket(self._socket, server_hostname=host)
        except (OSError, ssl.SSLError) as e:
            raise ClientError(f"cannot connect to {self.address}: {e}") from e
        self._splitter = XmlSplitter(separators=b"\x01", maxSize=MAX_REPLY)
        self._replies: deque = deque()
        # A 0x01 before the first request tells the console that this
        # connection frames with 0x01, not typed lines: a line end inside a
        # request's attribute value, comment or CDATA section is then data.
        self._framing = b"\x01"

    def close(self) -> None:
        """Close the socket."""
        self._socket.close()

    def call(self, request: bytes, requestId: str, timeout: float) -> Document:
        """Send ``request`` and return the ``<xmlcallresult>`` for ``requestId``."""
        try:
            self._socket.sendall(self._framing + request + b"\x01")
            self._framing = b""
        except OSError as e:
            raise ClientError(f"cannot send {requestId} to {self.address}: {e}") from e
        deadline = time.monotonic() + timeout
        while True:
            while self._replies:
                reply = self._replies.popleft()
                if (reply.root.tag == "xmlcallresult"
                        and reply.root.get("requestId") == requestId):
                    return reply
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise ClientError(f"no answer to {requestId} within {timeout:g} s")
            self._socket.settimeout(remaining)
            try:
                data = self._socket.recv(_CHUNK)
            except socket.timeout:
                raise ClientError(f"no answer to {requestId} within {timeout:g} s") from None
            except OSError as e:
                raise ClientError(f"connection to {self.address} failed: {e}") from e
            if not data:
                raise ClientError(f"connection closed by the server before the answer "
                                  f"to {requestId}")
            try:
                items = self._splitter.feed(data)
            except TooLarge as e:
                raise ClientError(f"reply too large: {e}") from e
            for item in items:
                if isinstance(item, Malformed):
                    print(f"WARNING: malformed reply skipped: {item.error}",
                          file=sys.stderr)
                else:
                    self._replies.append(item)


def _documents(stream):
    """Yield the documents of the binary ``stream`` as they complete."""
    splitter = XmlSplitter(separators=b"\x01", maxSize=MAX_REQUEST)
    read = getattr(stream, "read1", stream.read)
    count = 0
    while True:
        data = read(_CHUNK)
        if not data:
            break
        try:
            items = splitter.feed(data)
        except TooLarge as e:
            raise ClientError(f"input document {count + 1} is too large: {e}") from e
        for item in items:
            count += 1
            if isinstance(item, Malformed):
                raise ClientError(f"input document {count} is not XML: {item.error}")
            yield item.root
    if splitter.pending:
        raise ClientError("input ends inside an unfinished XML document")
    if count == 0:
        raise ClientError("no XML document in the input")


def _run(args, source, out) -> int:
    def write(text):
        out.write(text if isinstance(text, bytes) else text.encode("utf-8"))
        out.flush()

    host, port = args.server
    write("INFO: AI console\n")
    secret = _readSecret(args.secret_file) if args.secret_file else None
    tls = None
    if args.tls:
        try:
            tls = ssl.create_default_context(cafile=args.ca)
        except (OSError, ssl.SSLError) as e:
            raise ClientError(f"cannot use CA file {args.ca}: {e}") from e
    connection = ConsoleConnection(host, port, args.timeout, tls)
    write(f"INFO: connected to {connection.address}\n")
    allOk = True
    try:
        if secret is not None:
            _login(connection, secret, args.timeout)
            write("INFO: logged in\n")
        for number, root in enumerate(_documents(source), 1):
            requestId = root.get("requestId")
            if requestId is None:
                requestId = f"REQ-{number}"
                root.set("requestId", requestId)
            request = etree.tostring(root, encoding="utf-8")
            write(b"REQUEST:\n" + request + b"\n\n")
            reply = connection.call(request, requestId, args.timeout)
            write(b"RESPONSE:\n" + reply.data.strip() + b"\n\n")
            if reply.root.get("status") != "OK":
                allOk = False
    finally:
        connection.close()
        write("INFO: disconnected\n")
    return 0 if allOk else 1


def _readSecret(path) -> str:
    try:
        return readSecretFile(path).decode("utf-8")
    except ValueError as e:
        raise ClientError(str(e)) from None


def _login(connection, secret, timeout) -> None:
    request = etree.Element("xmlcall", {"class": "Engine", "method": "login",
                                        "requestId": "LOGIN"})
    prop = etree.SubElement(etree.SubElement(request, "parameters"), "property")
    prop.set("name", "secret")
    prop.set("value", secret)
    reply = connection.call(etree.tostring(request), "LOGIN", timeout)
    if reply.root.get("status") != "OK":
        raise ClientError("login refused: "
                          + (reply.root.findtext("exception") or "no reason given"))


def _open(path, mode, default, what, opened):
    if not path:
        return default
    try:
        stream = open(path, mode)
    except OSError as e:
        raise ClientError(f"cannot open {what} file {path}: {e.strerror}") from e
    opened.append(stream)
    return stream


def main(argv=None) -> int:
    """Run the console client; returns the exit status."""
    args = _parser().parse_args(argv)
    opened = []
    try:
        source = _open(args.input, "rb", sys.stdin.buffer, "input", opened)
        out = _open(args.output, "wb", sys.stdout.buffer, "output", opened)
        return _run(args, source, out)
    except ClientError as e:
        print(f"ERROR: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("ERROR: interrupted", file=sys.stderr)
        return 2
    finally:
        for stream in opened:
            stream.close()


if __name__ == "__main__":
    sys.exit(main())
