"""Tests for the ``aiengine-console`` command-line client.

The client blocks on its socket, so it runs as a subprocess against a
console listening in the test's reactor.
"""

from __future__ import annotations

import argparse
import io
import os
import sys
from types import SimpleNamespace

from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.protocol import Factory, ProcessProtocol, Protocol
from twisted.internet.ssl import PrivateCertificate
from twisted.trial import unittest

import aiengine
from aiengine import client
from aiengine.broker import Broker
from aiengine.console.builtins import registerBuiltins
from aiengine.console.protocol import ConsoleFactory
from aiengine.console.registry import CallRegistry
from tests.certs import makeCertificates
from tests.support import ReservedPort

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(aiengine.__file__)))

PING = b'<xmlcall class="Engine" method="ping"/>'


class _Run(ProcessProtocol):
    def __init__(self, stdin):
        self.stdin = stdin
        self.out = b""
        self.err = b""
        self.ended = Deferred()

    def connectionMade(self):
        self.transport.write(self.stdin)
        self.transport.closeStdin()

    def outReceived(self, data):
        self.out += data

    def errReceived(self, data):
        self.err += data

    def processEnded(self, reason):
        self.ended.callback((self.out.decode(), self.err.decode(),
                             reason.value.exitCode))


def runClient(*args, stdin=b""):
    """Run ``python -m aiengine.client *args``; fires with (out, err, status)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [_ROOT, env.get("PYTHONPATH")]))
    protocol = _Run(stdin)
    reactor.spawnProcess(protocol, sys.executable,
                         [sys.executable, "-m", "aiengine.client", *args], env=env,
                         path=_ROOT)
    return protocol.ended


class ClientTests(unittest.TestCase):
    """The client against a real console."""

    def setUp(self):
        self.broker = Broker()
        registry = CallRegistry()
        registerBuiltins(registry)
        self.factory = ConsoleFactory(registry, SimpleNamespace(broker=self.broker),
                                      name="test")
        self.port = reactor.listenTCP(0, self.factory, interface="127.0.0.1")
        self.addCleanup(self.port.stopListening)
        self.server = f"127.0.0.1:{self.port.getHost().port}"

    def inputFile(self, data: bytes) -> str:
        path = os.path.abspath(self.mktemp())
        with open(path, "wb") as f:
            f.write(data)
        return path

    @inlineCallbacks
    def test_transcript(self):
        data = (PING + b"\n" + b'<xmlcall class="Engine" method="version" requestId="mine"/>'
                + b"\x01\n" + PING)
        out, err, status = yield runClient("-s", self.server, "-i", self.inputFile(data))
        self.assertEqual((status, err), (0, ""))
        lines = out.splitlines()
        self.assertEqual(lines[:2], ["INFO: AI console", f"INFO: connected to {self.server}"])
        self.assertEqual(lines[-1], "INFO: disconnected")
        self.assertEqual([lines[i + 1] for i, line in enumerate(lines) if line == "REQUEST:"], [
            '<xmlcall class="Engine" method="ping" requestId="REQ-1"/>',
            '<xmlcall class="Engine" method="version" requestId="mine"/>',
            '<xmlcall class="Engine" method="ping" requestId="REQ-3"/>'])
        responses = [lines[i + 1] for i, line in enumerate(lines) if line == "RESPONSE:"]
        self.assertEqual(responses, [
            '<xmlcallresult requestId="REQ-1" status="OK">',
            '<xmlcallresult requestId="mine" status="OK">',
            '<xmlcallresult requestId="REQ-3" status="OK">'])
        self.assertIn(f"<version>{aiengine.__version__}</version>", out)
        self.assertEqual(self.factory.requests, 3)

    @inlineCallbacks
    def test_stdinAndOutputFile(self):
        output = os.path.abspath(self.mktemp())
        out, err, status = yield runClient("-s", self.server, "-o", output, stdin=PING)
        self.assertEqual((out, err, status), ("", "", 0))
        with open(output) as f:
            written = f.read()
        self.assertIn("RESPONSE:\n<xmlcallresult requestId=\"REQ-1\" status=\"OK\">\n"
                      "  <pong/>\n</xmlcallresult>\n", written)

    @inlineCallbacks
    def test_eventsSkipped(self):
        data = (b'<xmlcall class="Topics" method="subscribe"><parameters>'
                b'<property name="topic" value="t"/></parameters></xmlcall>'
                b'<xmlcall class="Topics" method="publish"><parameters>'
                b'<property name="topic" value="t"/><property name="message" value="m"/>'
                b'</parameters></xmlcall>' + PING)
        out, err, status = yield runClient("-s", self.server, "-i", self.inputFile(data))
        self.assertEqual(status, 0, err)
        self.assertNotIn("xmlevent", out)
        self.assertIn("<messageId>t-1</messageId>", out)
        self.assertEqual(out.count("RESPONSE:"), 3)

    @inlineCallbacks
    def test_exceptionAnswerStatus1(self):
        data = b'<xmlcall class="Engine" method="pnig"/>'
        out, err, status = yield runClient("-s", self.server, "-i", self.inputFile(data))
        self.assertEqual(status, 1)
        self.assertIn("did you mean 'ping'?", out)

    @inlineCallbacks
    def test_inputNotXml(self):
        data = PING + b"\nthis is not xml\n"
        out, err, status = yield runClient("-s", self.server, "-i", self.inputFile(data))
        self.assertEqual(status, 2)
        self.assertTrue(err.startswith("ERROR: input document 2 is not XML"), err)
        self.assertIn("requestId=\"REQ-1\" status=\"OK\"", out)

    @inlineCallbacks
    def test_noDocuments(self):
        out, err, status = yield runClient("-s", self.server, stdin=b"  \n")
        self.assertEqual((status, err), (2, "ERROR: no XML document in the input\n"))

    @inlineCallbacks
    def test_connectionRefused(self):
        # Held (bound, not listening) while the client runs: refused, and no
        # other process can start listening on it meanwhile.
        reserved = ReservedPort()
        self.addCleanup(reserved.close)
        port = reserved.port
        out, err, status = yield runClient("-s", f"127.0.0.1:{port}", stdin=PING)
        self.assertEqual(status, 2)
        self.assertTrue(err.startswith(f"ERROR: cannot connect to 127.0.0.1:{port}"), err)
        self.assertNotIn("connected to", out)

    @inlineCallbacks
    def test_noAnswer(self):
        silent = reactor.listenTCP(0, Factory.forProtocol(Protocol), interface="127.0.0.1")
        self.addCleanup(silent.stopListening)
        out, err, status = yield runClient(
            "-s", f"127.0.0.1:{silent.getHost().port}", "-t", "0.5", stdin=PING)
        self.assertEqual((status, err), (2, "ERROR: no answer to REQ-1 within 0.5 s\n"))
        self.assertIn("REQUEST:", out)


class SecuredConsoleTests(unittest.TestCase):
    """``-k`` logs in first; ``--tls`` verifies the console's certificate."""

    SECRET = b"client-s3cret"

    def setUp(self):
        registry = CallRegistry()
        registerBuiltins(registry)
        self.factory = ConsoleFactory(registry, SimpleNamespace(broker=Broker()),
                                      name="test", secret=self.SECRET)
        self.directory = os.path.abspath(self.mktemp())
        os.makedirs(self.directory)
        self.certs = makeCertificates(self.directory)
        pem = b""
        for name in ("certificate", "key"):
            with open(self.certs[name], "rb") as f:
                pem += f.read()
        certificate = PrivateCertificate.loadPEM(pem)
        self.port = reactor.listenSSL(0, self.factory, certificate.options(),
                                      interface="127.0.0.1")
        self.addCleanup(self.port.stopListening)
        self.server = f"localhost:{self.port.getHost().port}"

    def secretFile(self, secret):
        path = os.path.join(self.directory, "secret")
        with open(path, "wb") as f:
            f.write(b"  " + secret + b"\n")
        return path

    @inlineCallbacks
    def test_loginOverTls(self):
        out, err, status = yield runClient(
            "-s", self.server, "--tls", "--ca", self.certs["ca"],
            "-k", self.secretFile(self.SECRET), stdin=PING)
        self.assertEqual((status, err), (0, ""), out)
        self.assertIn("INFO: logged in", out)
        self.assertIn('<xmlcallresult requestId="REQ-1" status="OK">', out)
        self.assertNotIn(self.SECRET.decode(), out)
        self.assertEqual(self.factory.logins, 1)

    @inlineCallbacks
    def test_wrongSecret(self):
        out, err, status = yield runClient(
            "-s", self.server, "--tls", "--ca", self.certs["ca"],
            "-k", self.secretFile(b"wrong"), stdin=PING)
        self.assertEqual(status, 2)
        self.assertIn("ERROR: login refused: authentication failed", err)

    @inlineCallbacks
    def test_untrustedCertificate(self):
        out, err, status = yield runClient("-s", self.server, "--tls", stdin=PING)
        self.assertEqual(status, 2)
        self.assertIn("ERROR: cannot connect to", err)
        self.assertIn("CERTIFICATE_VERIFY_FAILED", err)


class ArgumentTests(unittest.TestCase):
    """Option parsing, in-process."""

    def test_parseServer(self):
        self.assertEqual(client.parseServer("example.org:20001"), ("example.org", 20001))
        self.assertEqual(client.parseServer("[::1]:7"), ("::1", 7))
        for bad in ("nohost", ":1", "h:0", "h:70000", "h:x"):
            self.assertRaises(argparse.ArgumentTypeError, client.parseServer, bad)

    def setUp(self):
        self.stderr = io.StringIO()
        self.patch(sys, "stderr", self.stderr)

    def test_badTimeoutExits2(self):
        e = self.assertRaises(SystemExit, client.main, ["-t", "-3"])
        self.assertEqual(e.code, 2)
        self.assertIn("expected a positive number of seconds", self.stderr.getvalue())

    def test_missingInputFile(self):
        path = self.mktemp()
        self.assertEqual(client.main(["-i", path]), 2)
        self.assertEqual(self.stderr.getvalue(),
                         f"ERROR: cannot open input file {path}: No such file or directory\n")
