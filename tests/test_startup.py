"""Start-up and signals of ``twistd aiengine``, in real processes.

A listener that cannot bind stops start-up with one line and status 1, in
the foreground, daemonized and with ``--check``; SIGHUP reloads and never
kills; SIGTERM stops with status 0 and removes the pid file; a second
SIGINT while stopping exits at once.
"""

from __future__ import annotations

import errno
import os
import signal
import socket
import subprocess
import time

from twisted.internet import defer, reactor, task
from twisted.trial import unittest

from aiengine import tap
from aiengine.listeners import ListenerService, ListenerUnavailable
from tests.support import ReservedPort
from tests.test_daemon import (LISTENING, Peer, TwistdProcess, call, environment,
                               twistdCommand)
from tests.test_tap import FakeCollector

CONSOLE = """    <listener name="console">
      <property name="port" value="{port}"/>
      <property name="interface" value="{interface}"/>
      <property name="msgtype" value="xmlcall"/>
    </listener>
"""

LINES = """    <listener name="lines">
      <property name="port" value="{port}"/>
      <property name="interface" value="{interface}"/>
      <property name="protocol" value="text-messages"/>
      <property name="topic-in" value="lines.in"/>
    </listener>
"""

# A channel whose server never answers its TLS handshake, with a long
# flush-timeout: a queued message keeps the daemon stopping for that long.
SLOW_CHANNEL = """  <directchannels>
    <channel name="slow">
      <property name="host" value="127.0.0.1"/>
      <property name="port" value="{port}"/>
      <property name="tls" value="true"/>
      <property name="protocol" value="text-messages"/>
      <property name="topic-out" value="slow.out"/>
      <property name="redirect-out" value="true"/>
      <property name="reconnectionTimeout" value="60"/>
      <property name="flush-timeout" value="60"/>
    </channel>
  </directchannels>
"""



def mediaXml(console=0, lines=None, interface="127.0.0.1", channels=""):
    listeners = CONSOLE.format(port=console, interface="127.0.0.1")
    if lines is not None:
        listeners += LINES.format(port=lines, interface=interface)
    return f"<service>\n  <listeners>\n{listeners}  </listeners>\n{channels}</service>\n"


def held(listening=True):
    """A socket holding a loopback port, as another program would."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    if listening:
        sock.listen(1)
    return sock


class ProcessTestCase(unittest.TestCase):
    """Runs twistd in a directory of its own; kills whatever it left running."""

    def setUp(self):
        self.workdir = os.path.abspath(self.mktemp())
        os.makedirs(self.workdir)
        self.pidfile = os.path.join(self.workdir, "twistd.pid")
        self.addCleanup(self._killDaemon)

    def _killDaemon(self):
        # A daemonized twistd is not our child: found by its pid file.
        try:
            with open(self.pidfile) as f:
                pid = int(f.read())
            os.kill(pid, signal.SIGKILL)
        except (OSError, ValueError):
            pass

    def config(self, text):
        path = os.path.join(self.workdir, "media.xml")
        with open(path, "w") as f:
            f.write(text)
        return path

    def twistd(self, *args, timeout=30):
        """Run twistd to its end: (status, stdout, stderr)."""
        process = subprocess.Popen(
            twistdCommand() + list(args), cwd=self.workdir, env=environment(),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            out, err = process.communicate(timeout=timeout)
        finally:
            if process.poll() is None:
                process.kill()
                process.communicate()
        return process.returncode, out, err


class ListenFailureTests(ProcessTestCase):
    """A listener that cannot bind: one line, status 1, nothing left behind."""

    def assertOneLine(self, result, listener, address, reason):
        status, out, err = result
        self.assertEqual(
            (status, err),
            (1, f"aiengine: listener '{listener}' cannot listen on {address}: "
                f"{reason}\n"),
            out + err)
        self.assertNotIn("Traceback", out)

    def test_portInUseForeground(self):
        holder = held()
        self.addCleanup(holder.close)
        port = holder.getsockname()[1]
        path = self.config(mediaXml(console=port))
        self.assertOneLine(self.twistd("-n", f"--pidfile={self.pidfile}", "aiengine",
                                       "-c", path),
                           "console", f"127.0.0.1:{port}", "address already in use")
        self.assertFalse(os.path.exists(self.pidfile))

    def test_portBoundNotListening(self):
        """A port only bound by another socket (no SO_REUSEADDR) is in use too."""
        reserved = ReservedPort()
        self.addCleanup(reserved.close)
        path = self.config(mediaXml(lines=reserved.port))
        self.assertOneLine(self.twistd("-n", "--pidfile=", "aiengine", "-c", path),
                           "lines", f"127.0.0.1:{reserved.port}",
                           "address already in use")

    def test_portInUseDaemon(self):
        """Daemonizing comes after binding: the line reaches the terminal whole
        and the command's status is 1."""
        holder = held()
        self.addCleanup(holder.close)
        port = holder.getsockname()[1]
        path = self.config(mediaXml(lines=port))
        logfile = os.path.join(self.workdir, "twistd.log")
        self.assertOneLine(self.twistd(f"--pidfile={self.pidfile}",
                                       f"--logfile={logfile}", "aiengine", "-c", path),
                           "lines", f"127.0.0.1:{port}", "address already in use")
        self.assertFalse(os.path.exists(self.pidfile))
        self.assertFalse(os.path.exists(logfile))

    def test_addressNotOfThisHost(self):
        path = self.config(mediaXml(lines=0, interface="192.0.2.1"))
        self.assertOneLine(self.twistd("-n", "--pidfile=", "aiengine", "-c", path),
                           "lines", "192.0.2.1:0", "cannot assign requested address")

    def test_checkPortInUse(self):
        holder = held()
        self.addCleanup(holder.close)
        port = holder.getsockname()[1]
        path = self.config(mediaXml(lines=port))
        self.assertOneLine(self.twistd("aiengine", "-c", path, "--check"),
                           "lines", f"127.0.0.1:{port}", "address already in use")

    def test_checkAddressNotOfThisHost(self):
        path = self.config(mediaXml(lines=0, interface="192.0.2.1"))
        self.assertOneLine(self.twistd("aiengine", "-c", path, "--check"),
                           "lines", "192.0.2.1:0", "cannot assign requested address")

    def test_checkReleasesThePorts(self):
        """--check binds and lets go: a free port is OK and free afterwards."""
        holder = held(listening=False)
        port = holder.getsockname()[1]
        holder.close()
        path = self.config(mediaXml(lines=port))
        status, out, err = self.twistd("aiengine", "-c", path, "--check")
        self.assertEqual((status, out, err),
                         (0, f"OK: {path}: 2 listener(s), 0 channel(s)\n", ""))
        again = held()
        again.close()


class ListenerUnavailableTests(unittest.TestCase):
    """The line's wording, for the errors a test cannot cause as root."""

    def test_permission(self):
        error = ListenerUnavailable("web", "0.0.0.0", 80,
                                    PermissionError(errno.EACCES, "Permission denied"))
        self.assertEqual(str(error),
                         "listener 'web' cannot listen on 0.0.0.0:80: permission denied")

    def test_ipv6(self):
        error = ListenerUnavailable("v6", "::1", 9000,
                                    OSError(errno.EADDRINUSE, "Address already in use"))
        self.assertEqual(str(error), "listener 'v6' cannot listen on [::1]:9000: "
                                     "address already in use")

    def test_probe(self):
        holder = held()
        self.addCleanup(holder.close)
        service = ListenerService("busy", None, "127.0.0.1", holder.getsockname()[1])
        error = self.assertRaises(ListenerUnavailable, service.probe)
        self.assertEqual(error.socketError.errno, errno.EADDRINUSE)
        ListenerService("free", None, "127.0.0.1", 0).probe()


class BindListenersTests(unittest.TestCase):
    """In-process: a listener that cannot bind releases those bound before it."""

    def setUp(self):
        self.patch(tap, "gc", FakeCollector())

    @defer.inlineCallbacks
    def test_earlierListenersReleased(self):
        holder = held()
        self.addCleanup(holder.close)
        path = os.path.abspath(self.mktemp())
        with open(path, "w") as f:
            f.write(mediaXml(lines=holder.getsockname()[1]))
        options = tap.Options()
        options.parseOptions(["-c", path])
        engine = tap._buildEngine(options.serviceConfig, reactor, tap.DaemonEngine)
        first = engine.listeners["console"]
        self.assertRaises(ListenerUnavailable, tap.bindListeners, engine)
        self.assertIsNone(first.address)
        # Its port closes in a later reactor turn.
        yield task.deferLater(reactor, 0.01, lambda: None)


class Daemon(TwistdProcess):
    """A ``twistd -n aiengine`` with a pid file; its output collected."""

    def __init__(self, workdir, config, pidfile, *options, env=None):
        self.pidfile = pidfile
        super().__init__(workdir, config, pidfile, options, env)

    def waitFor(self, text, timeout=20.0):
        """Whether ``text`` appeared in the output within ``timeout`` seconds."""
        return super().waitFor(lambda: text in "".join(self.output), timeout)

    def signal(self, signum):
        self.process.send_signal(signum)

    def wait(self, timeout=20.0):
        """The exit status, or None if still running after ``timeout`` seconds."""
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def kill(self):
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self._reader.join(5)
        self.process.stdout.close()


class SignalTests(ProcessTestCase):
    """SIGHUP, SIGTERM and SIGINT as systemd and a person at a terminal send them."""

    def start(self, config):
        daemon = Daemon(self.workdir, self.config(config), self.pidfile)
        self.addCleanup(daemon.kill)
        self.assertTrue(daemon.waitFor(" channel(s) in "), daemon.text())
        return daemon

    def ping(self, daemon, requestId):
        console = Peer(daemon.ports["console"])
        try:
            return call(console, "Engine", "ping", requestId).get("status")
        finally:
            console.close()

    def test_hangUpDoesNotKill(self):
        daemon = self.start(mediaXml())
        with open(self.pidfile) as f:
            self.assertEqual(int(f.read()), daemon.process.pid)
        daemon.signal(signal.SIGHUP)
        self.assertTrue(daemon.waitFor("reload requested (SIGHUP)"), daemon.text())
        daemon.signal(signal.SIGHUP)
        self.assertIsNone(daemon.wait(0.5), daemon.text())
        self.assertEqual(self.ping(daemon, "R1"), "OK")

        daemon.signal(signal.SIGTERM)
        self.assertEqual(daemon.wait(), 0, daemon.text())
        self.assertFalse(os.path.exists(self.pidfile))
        self.assertIn("received SIGTERM, stopping", daemon.text())
        self.assertIn("aiengine stopped", daemon.text())
        self.assertNotIn("Traceback", daemon.text())

    def test_interruptStopsCleanly(self):
        daemon = self.start(mediaXml())
        daemon.signal(signal.SIGINT)
        self.assertEqual(daemon.wait(), 0, daemon.text())
        self.assertFalse(os.path.exists(self.pidfile))
        self.assertIn("aiengine stopped", daemon.text())

    def test_secondInterruptExitsAtOnce(self):
        server = held()  # accepts (the kernel does), never answers
        self.addCleanup(server.close)
        daemon = self.start(mediaXml(
            channels=SLOW_CHANNEL.format(port=server.getsockname()[1])))
        console = Peer(daemon.ports["console"])
        self.addCleanup(console.close)
        answer = call(console, "Topics", "publish", "P1", topic="slow.out",
                      message="queued")
        self.assertEqual(answer.get("status"), "OK")
        console.close()

        daemon.signal(signal.SIGINT)
        self.assertTrue(daemon.waitFor("queued message"), daemon.text())
        # Stopping waits for the flush (up to 60 s) ...
        self.assertIsNone(daemon.wait(0.5), daemon.text())
        # ... unless the user insists.
        began = time.monotonic()
        daemon.signal(signal.SIGINT)
        self.assertEqual(daemon.wait(10), tap.EXIT_SECOND_SIGINT, daemon.text())
        self.assertLess(time.monotonic() - began, 10)
        self.assertIn("received SIGINT again while stopping: exiting at once",
                      daemon.text())
        self.assertFalse(os.path.exists(self.pidfile))

    def test_daemonizedHangUpAndTerm(self):
        """Without -n: starts with status 0, survives SIGHUP, stops on SIGTERM
        and removes its pid file."""
        logfile = os.path.join(self.workdir, "twistd.log")
        path = self.config(mediaXml())
        status, out, err = self.twistd(f"--pidfile={self.pidfile}",
                                       f"--logfile={logfile}", "aiengine", "-c", path)
        self.assertEqual((status, out, err), (0, "", ""))
        with open(self.pidfile) as f:
            pid = int(f.read())

        def logged(text):
            with open(logfile) as f:
                return text in f.read()

        self.assertTrue(_poll(lambda: logged("started 0 channel(s)")))
        os.kill(pid, signal.SIGHUP)
        self.assertTrue(_poll(lambda: logged("reload requested (SIGHUP)")))
        with open(logfile) as f:
            port = int(LISTENING.search(f.read()).group(3))
        console = Peer(port)
        try:
            self.assertEqual(call(console, "Engine", "ping", "D1").get("status"), "OK")
        finally:
            console.close()

        os.kill(pid, signal.SIGTERM)
        self.assertTrue(_poll(lambda: not os.path.exists(self.pidfile)))
        self.assertTrue(_poll(lambda: not _alive(pid)))
        self.assertTrue(logged("aiengine stopped"))


def _poll(predicate, timeout=20.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def _alive(pid):
    """Whether ``pid`` runs (a zombie nobody reaps does not)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False
