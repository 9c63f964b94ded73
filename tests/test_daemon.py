"""End to end: ``twistd -n aiengine`` as a subprocess, talked to over TCP."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

from twisted.trial import unittest

import aiengine
from aiengine.protocols.xmlsplit import Document, XmlSplitter

MEDIA_XML = r"""<?xml version="1.0"?>
<service>
  <listeners>
    <listener name="debug" run="true">
      <property name="port" value="0"/>
      <property name="protocol" value="text-messages"/>
      <property name="protocol.delimiter" value="\1"/>
      <property name="msgtype" value="xmlcall"/>
    </listener>
    <listener name="lines">
      <property name="port" value="0"/>
      <property name="protocol" value="text-messages"/>
      <property name="topic-in" value="lines.in"/>
      <property name="topic-out" value="lines.out"/>
    </listener>
    <listener name="off" run="false">
      <property name="port" value="0"/>
      <property name="protocol" value="text-messages"/>
      <property name="topic-in" value="off.in"/>
    </listener>
  </listeners>
</service>
"""

LISTENING = re.compile(r"\[SocketServer::(\S+?)#info\] listening on ([0-9.]+):(\d+)")


def twistdCommand():
    """The twistd of the Python running the tests."""
    candidate = os.path.join(os.path.dirname(sys.executable), "twistd")
    if os.path.exists(candidate):
        return [candidate]
    found = shutil.which("twistd")
    if found is None:
        raise unittest.SkipTest("twistd is not installed")
    return [found]


def environment():
    """The environment of a twistd that imports aiengine (and finds its
    plugin) where these tests import it from."""
    env = dict(os.environ)
    root = os.path.dirname(os.path.dirname(os.path.abspath(aiengine.__file__)))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    env.pop("NOTIFY_SOCKET", None)
    return env


class TwistdProcess:
    """A ``twistd -n aiengine -c <path>`` subprocess (with ``options`` after
    the path, in ``env``, by default :func:`environment`) and its collected
    output; ``ports`` by listener name, from its "listening on" lines."""

    def __init__(self, workdir, path, pidfile="", options=(), env=None):
        self.process = subprocess.Popen(
            twistdCommand() + ["-n", f"--pidfile={pidfile}", "aiengine", "-c", path,
                               *options],
            cwd=workdir, env=environment() if env is None else env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT)
        self.output = []
        self.ports = {}
        self._changed = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self):
        for raw in self.process.stdout:
            line = raw.decode("utf-8", "replace")
            with self._changed:
                self.output.append(line)
                match = LISTENING.search(line)
                if match:
                    self.ports[match.group(1)] = int(match.group(3))
                self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    def waitFor(self, predicate, timeout=20.0):
        """Whether ``predicate()`` (called with the output locked) became
        true within ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while not predicate():
                remaining = deadline - time.monotonic()
                if remaining <= 0 or (self.process.poll() is not None
                                      and not self._reader.is_alive()):
                    break
                self._changed.wait(min(remaining, 0.2))
            return predicate()

    def text(self):
        with self._changed:
            return "".join(self.output)


class Daemon(TwistdProcess):
    """A ``twistd -n aiengine`` running ``config`` (media.xml text)."""

    def __init__(self, workdir, config):
        path = os.path.join(workdir, "media.xml")
        with open(path, "w") as f:
            f.write(config)
        super().__init__(workdir, path)

    def stop(self):
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(10)
        finally:
            if self.process.poll() is None:
                self.process.kill()
                self.process.wait()
            self._reader.join(5)
            self.process.stdout.close()


class Peer:
    """A blocking TCP client with a read timeout."""

    def __init__(self, port):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.buffer = b""

    def send(self, data):
        self.sock.sendall(data)

    def readUntil(self, marker):
        while marker not in self.buffer:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise AssertionError(f"connection closed; got {self.buffer!r}")
            self.buffer += chunk
        head, _, self.buffer = self.buffer.partition(marker)
        return head

    def readDocument(self):
        """The next XML document from the peer (any framing around it)."""
        splitter = XmlSplitter()
        pending = self.buffer
        self.buffer = b""
        while True:
            items = splitter.feed(pending) if pending else []
            for item in items:
                if isinstance(item, Document):
                    return item.root
            pending = self.sock.recv(65536)
            if not pending:
                raise AssertionError("connection closed before a document")

    def close(self):
        self.sock.close()


def call(peer, cls, method, requestId, **params):
    props = "".join(f'<property name="{k}" value="{v}"/>' for k, v in params.items())
    peer.send(f'<xmlcall class="{cls}" method="{method}" requestId="{requestId}">'
              f'<parameters>{props}</parameters></xmlcall>\r\n'.encode())
    while True:
        root = peer.readDocument()
        if root.tag == "xmlcallresult" and root.get("requestId") == requestId:
            return root


class DaemonTests(unittest.TestCase):
    """The daemon as a user runs it."""

    def startDaemon(self, config=MEDIA_XML):
        daemon = Daemon(self._workdir(), config)
        self.addCleanup(daemon.stop)
        return daemon

    def _workdir(self):
        path = os.path.abspath(self.mktemp())
        os.makedirs(path)
        return path

    def test_consoleAndListener(self):
        """A listener's messages reach a console subscriber; console publishes
        reach the listener's connections; the daemon stops on SIGTERM."""
        daemon = self.startDaemon()
        self.assertTrue(daemon.waitFor(lambda: {"debug", "lines"} <= set(daemon.ports)),
                        daemon.text())
        self.assertIn("not configured to run", daemon.text())

        console = Peer(daemon.ports["debug"])
        self.addCleanup(console.close)
        answer = call(console, "Engine", "ping", "R1")
        self.assertEqual(answer.get("status"), "OK")
        self.assertEqual(answer[0].tag, "pong")

        self.assertEqual(call(console, "Topics", "subscribe", "R2",
                              topic="lines.in").get("status"), "OK")
        lines = Peer(daemon.ports["lines"])
        self.addCleanup(lines.close)
        lines.send(b"hello from a listener\n")
        event = console.readDocument()
        self.assertEqual(event.tag, "xmlevent")
        self.assertEqual(event.get("topic"), "lines.in")
        self.assertEqual(event.text, "hello from a listener")

        answer = call(console, "Topics", "publish", "R3", topic="lines.out",
                      message="hello from the console")
        self.assertEqual(answer.get("status"), "OK", answer)
        self.assertEqual(lines.readUntil(b"\n"), b"hello from the console")

        answer = call(console, "Nope", "ping", "R4")
        self.assertEqual(answer.get("status"), "Exception")

        console.close()
        lines.close()
        self.assertEqual(daemon.stop(), 0, daemon.text())
        self.assertIn("aiengine stopped", daemon.text())

    def test_misspeltProperty(self):
        """A misspelt property stops start-up with its line number."""
        config = MEDIA_XML.replace('name="protocol.delimiter"', 'name="protocol.delimitr"')
        daemon = Daemon(self._workdir(), config)
        daemon.process.wait(20)
        status = daemon.stop()
        text = daemon.text()
        self.assertEqual(status, 1, text)
        self.assertIn("media.xml:7", text)
        self.assertIn("protocol.delimitr", text)
        self.assertIn("protocol.delimiter", text)
        self.assertNotIn("Traceback", text)
        self.assertFalse(daemon.ports)
