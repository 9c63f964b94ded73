"""systemd notifications: the sd_notify datagrams, the watchdog, and the
daemon's READY/STOPPING/RELOADING around its start, stop and reload."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import tempfile

from twisted.internet import defer, reactor
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import LogLevel, formatEvent, globalLogPublisher
from twisted.trial import unittest

from aiengine import systemd, tap
from aiengine.config import ConfigError
from tests.support import waitFor
from tests.test_tap import FakeCollector

MEDIA_XML = """<service>
  <listeners>
    <listener name="console">
      <property name="port" value="0"/>
      <property name="msgtype" value="xmlcall"/>
    </listener>
    <listener name="lines">
      <property name="port" value="0"/>
      <property name="protocol" value="text-messages"/>
      <property name="topic-in" value="lines.in"/>
    </listener>
  </listeners>
</service>
"""


class NotifySocket:
    """A unix datagram socket standing in for systemd's: what it received,
    one list of fields per datagram."""

    def __init__(self, testCase, abstract=False):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.setblocking(False)
        if abstract:
            name = f"aiengine-test-{os.getpid()}-{id(self)}"
            self.sock.bind("\0" + name)
            self.address = "@" + name
        else:
            # Not under _trial_temp: a unix socket path has at most 107 bytes.
            directory = tempfile.mkdtemp(prefix="aiengine-notify-")
            testCase.addCleanup(shutil.rmtree, directory, True)
            self.address = os.path.join(directory, "notify")
            self.sock.bind(self.address)
        testCase.addCleanup(self.sock.close)
        self.received = []

    def read(self):
        """Everything received so far."""
        while True:
            try:
                data = self.sock.recv(4096)
            except BlockingIOError:
                return self.received
            self.received.append(data.decode().split("\n"))

    def firsts(self):
        """The first field of each datagram, but those only saying STATUS=."""
        return [fields[0] for fields in self.read()
                if not fields[0].startswith("STATUS=")]

    def has(self, field):
        return any(field in fields for fields in self.read())


class NotifierTests(unittest.TestCase):
    """The datagrams themselves."""

    def test_pathSocket(self):
        server = NotifySocket(self)
        notifier = systemd.fromEnvironment({"NOTIFY_SOCKET": server.address})
        self.addCleanup(notifier.close)
        self.assertTrue(notifier.ready("serving 2 listener(s)"))
        self.assertTrue(notifier.stopping())
        self.assertEqual(server.read(), [["READY=1", "STATUS=serving 2 listener(s)"],
                                         ["STOPPING=1"]])
        self.assertEqual(notifier.sent, 2)

    def test_abstractSocket(self):
        """A NOTIFY_SOCKET starting with @ names an abstract socket."""
        server = NotifySocket(self, abstract=True)
        notifier = systemd.Notifier(server.address)
        self.addCleanup(notifier.close)
        notifier.watchdog()
        self.assertEqual(server.read(), [["WATCHDOG=1"]])

    def test_reloadingCarriesMonotonicTime(self):
        server = NotifySocket(self)
        notifier = systemd.Notifier(server.address)
        self.addCleanup(notifier.close)
        notifier.reloading()
        [fields] = server.read()
        self.assertEqual(fields[0], "RELOADING=1")
        self.assertTrue(fields[1].startswith("MONOTONIC_USEC="), fields)
        self.assertGreater(int(fields[1].split("=")[1]), 0)

    def test_statusIsOneLine(self):
        server = NotifySocket(self)
        notifier = systemd.Notifier(server.address)
        self.addCleanup(notifier.close)
        notifier.status("reload failed:\nbad\tfile")
        self.assertEqual(server.read(), [["STATUS=reload failed: bad file"]])

    def test_noSocket(self):
        """Without NOTIFY_SOCKET nothing is sent, and nothing fails."""
        self.assertIsNone(systemd.fromEnvironment({}))

    def test_goneSocketIsLoggedNotRaised(self):
        server = NotifySocket(self)
        notifier = systemd.Notifier(server.address)
        self.addCleanup(notifier.close)
        os.unlink(server.address)
        self.assertFalse(notifier.ready())
        self.assertEqual((notifier.sent, notifier.failed), (0, 1))

    def test_unsupportedAddress(self):
        notifier = systemd.Notifier("vsock:2:1234")
        self.assertFalse(notifier.ready())


class WatchdogTests(unittest.TestCase):
    """WATCHDOG=1 every WATCHDOG_USEC/2, on a clock."""

    def test_interval(self):
        self.assertEqual(systemd.watchdogInterval({"WATCHDOG_USEC": "20000000"}), 10.0)
        self.assertEqual(systemd.watchdogInterval(
            {"WATCHDOG_USEC": "3000000", "WATCHDOG_PID": "42"}, pid=42), 1.5)

    def test_noWatchdog(self):
        for environ in ({}, {"WATCHDOG_USEC": "0"}, {"WATCHDOG_USEC": "x"},
                        {"WATCHDOG_USEC": "3000000", "WATCHDOG_PID": "41"},
                        {"WATCHDOG_USEC": "3000000", "WATCHDOG_PID": "x"}):
            self.assertIsNone(systemd.watchdogInterval(environ, pid=42), environ)

    def test_pidDefaultsToOurs(self):
        environ = {"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": str(os.getpid())}
        self.assertEqual(systemd.watchdogInterval(environ), 1.0)

    def test_beats(self):
        server = NotifySocket(self)
        notifier = systemd.Notifier(server.address)
        self.addCleanup(notifier.close)
        clock = Clock()
        watchdog = systemd.Watchdog(notifier, 5.0, clock)
        watchdog.start()
        self.assertEqual(server.firsts(), ["WATCHDOG=1"])
        clock.advance(4.9)
        self.assertEqual(len(server.firsts()), 1)
        clock.advance(0.1)
        clock.advance(5)
        self.assertEqual(server.firsts(), ["WATCHDOG=1"] * 3)
        watchdog.stop()
        self.assertFalse(clock.getDelayedCalls())
        clock.advance(50)
        self.assertEqual(len(server.firsts()), 3)


class DaemonNotificationTests(unittest.TestCase):
    """What ``makeService``'s engine tells systemd."""

    def setUp(self):
        # Options stop the collector and start-up freezes: not in the test runner.
        self.patch(tap, "gc", FakeCollector())
        # Signal handlers belong to twistd's process, not to the test runner's.
        self.patch(tap, "_handleSignals", lambda *args: None)
        self.server = NotifySocket(self)

    def options(self):
        path = os.path.abspath(self.mktemp())
        with open(path, "w") as f:
            f.write(MEDIA_XML)
        options = tap.Options()
        options.parseOptions(["-c", path])
        return options

    @defer.inlineCallbacks
    def test_readyOnceListeningThenStopping(self):
        engine = tap.makeService(self.options(), reactor=reactor,
                                 environ={"NOTIFY_SOCKET": self.server.address})
        self.addCleanup(engine.notifier.close)
        # Bound by makeService, before twistd would daemonize ...
        addresses = {name: s.address for name, s in engine.listeners.items()}
        self.assertTrue(all(addresses.values()), addresses)
        # ... but not ready before the engine has started its channels.
        self.assertEqual(self.server.read(), [])

        engine.startService()
        stopped = []
        self.addCleanup(lambda: stopped or engine.stopService())
        yield waitFor(lambda: self.server.firsts(), what="READY=1")
        self.assertEqual(self.server.read(),
                         [["STATUS=starting 0 channel(s)"],
                          ["READY=1", "STATUS=serving 2 listener(s), 0 channel(s)"]])
        self.assertTrue(engine.started.called)
        for name, (host, port) in addresses.items():
            with socket.create_connection((host, port), timeout=5):
                pass

        stopped.append(True)
        yield engine.stopService()
        self.assertEqual(self.server.firsts(), ["READY=1", "STOPPING=1"])
        self.assertIsNone(engine.watchdog)

    def test_watchdogWhileRunning(self):
        clock = MemoryReactorClock()
        engine = tap.makeService(self.options(), reactor=clock, environ={
            "NOTIFY_SOCKET": self.server.address, "WATCHDOG_USEC": "4000000",
            "WATCHDOG_PID": str(os.getpid())})
        self.addCleanup(engine.notifier.close)
        engine.startService()
        self.assertEqual(self.server.firsts(), ["WATCHDOG=1"])
        for _ in range(5):
            clock.advance(0)  # the channels' start-up, a slice a turn
        self.assertEqual(self.server.firsts(), ["WATCHDOG=1", "READY=1"])
        clock.advance(2)
        clock.advance(2)
        self.assertEqual(self.server.firsts(), ["WATCHDOG=1", "READY=1", "WATCHDOG=1",
                                                "WATCHDOG=1"])
        engine.stopService()
        clock.advance(10)
        self.assertEqual(self.server.firsts()[-1], "STOPPING=1")
        self.assertEqual(self.server.firsts().count("WATCHDOG=1"), 3)
        self.assertFalse(engine.watchdog.running)

    def test_noReadyWhenStoppedDuringStartUp(self):
        clock = MemoryReactorClock()
        engine = tap.makeService(self.options(), reactor=clock,
                                 environ={"NOTIFY_SOCKET": self.server.address})
        self.addCleanup(engine.notifier.close)
        engine.startService()
        engine.stopService()
        clock.advance(0)
        self.assertEqual(self.server.firsts(), ["STOPPING=1"])

    def test_withoutSystemd(self):
        engine = tap.makeService(self.options(), reactor=MemoryReactorClock(),
                                 environ={})
        self.assertIsNone(engine.notifier)
        engine.startService()
        engine.stopService()


class FakeEngine:
    """Just what :func:`aiengine.tap.reloadEngine` uses of an engine."""

    stopping = False

    def __init__(self, notifier, reload=None):
        self.notifier = notifier
        self.started = defer.succeed(None)
        if reload is not None:
            self.reload = reload

    def describe(self):
        return "serving 1 listener(s), 0 channel(s)"


class Summary:
    def describe(self):
        return "added 1 (listener two); removed 0; changed 0; kept 1"


class ReloadTests(unittest.TestCase):
    """RELOADING=1 then READY=1 around a reload, whatever its outcome."""

    def setUp(self):
        self.server = NotifySocket(self)
        self.notifier = systemd.Notifier(self.server.address)
        self.addCleanup(self.notifier.close)

    def test_reload(self):
        pending = defer.Deferred()
        engine = FakeEngine(self.notifier, reload=lambda: pending)
        done = tap.reloadEngine(engine)
        self.assertEqual(self.server.firsts(), ["RELOADING=1"])
        self.assertNoResult(done)
        # A second request while the first runs joins it.
        joined = tap.reloadEngine(engine)
        self.assertEqual(self.server.firsts(), ["RELOADING=1"])
        pending.callback(Summary())
        self.successResultOf(done)
        self.successResultOf(joined)
        self.assertEqual(self.server.read()[-1],
                         ["READY=1", "STATUS=serving 1 listener(s), 0 channel(s)"])
        self.assertIsNone(engine.reloadUnderWay)

    def test_failedReloadStillReady(self):
        engine = FakeEngine(self.notifier, reload=lambda: defer.fail(
            ConfigError("media.xml:3: listener 'x': property 'port': bad")))
        self.successResultOf(tap.reloadEngine(engine))
        self.assertEqual(self.server.firsts(), ["RELOADING=1", "READY=1"])
        self.assertIn("STATUS=reload failed: media.xml:3: listener 'x': property "
                      "'port': bad", self.server.read()[-1])
        self.assertEqual(self.flushLoggedErrors(), [])

    def test_refusedReloadIsAWarning(self):
        """A reload the engine refuses (another under way, start-up not over)
        is one warning line, no traceback."""
        from aiengine.engine import ReloadError

        events = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        engine = FakeEngine(self.notifier, reload=lambda: defer.fail(
            ReloadError("a reload is already under way")))
        self.successResultOf(tap.reloadEngine(engine))
        lines = [(e["log_level"], formatEvent(e)) for e in events
                 if e.get("log_namespace") == "Engine"]
        self.assertEqual(lines, [
            (LogLevel.info, "reload requested (SIGHUP)"),
            (LogLevel.warn, "reload (SIGHUP) not done: a reload is already under way")])
        self.assertEqual(self.server.firsts(), ["RELOADING=1", "READY=1"])

    def test_unexpectedFailureIsLoggedWithTraceback(self):
        engine = FakeEngine(self.notifier, reload=lambda: 1 / 0)
        self.successResultOf(tap.reloadEngine(engine))
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)
        self.assertEqual(self.server.firsts(), ["RELOADING=1", "READY=1"])

    def test_notWhileStopping(self):
        calls = []
        engine = FakeEngine(self.notifier, reload=lambda: calls.append(1))
        engine.stopping = True
        self.successResultOf(tap.reloadEngine(engine))
        self.assertEqual((calls, self.server.read()), ([], []))

    def test_noReloadingStateBeforeReady(self):
        """During start-up systemd still waits for READY=1: no reload state."""
        engine = FakeEngine(self.notifier, reload=lambda: None)
        engine.started = defer.Deferred()
        self.successResultOf(tap.reloadEngine(engine))
        self.assertEqual(self.server.read(), [])


class DaemonProcessTests(unittest.TestCase):
    """A real ``twistd -n aiengine`` started as systemd starts it."""

    @defer.inlineCallbacks
    def test_notifications(self):
        from tests.test_startup import Daemon, environment

        server = NotifySocket(self)
        workdir = os.path.abspath(self.mktemp())
        os.makedirs(workdir)
        path = os.path.join(workdir, "media.xml")
        with open(path, "w") as f:
            f.write(MEDIA_XML)
        env = environment()
        env.update(NOTIFY_SOCKET=server.address, WATCHDOG_USEC="400000")
        daemon = Daemon(workdir, path, "", env=env)
        self.addCleanup(daemon.kill)

        yield waitFor(lambda: server.has("READY=1"), timeout=20, what="READY=1")
        self.assertIn(" channel(s) in ", daemon.text())
        yield waitFor(lambda: server.firsts().count("WATCHDOG=1") >= 3, timeout=20,
                      what="three WATCHDOG=1")

        daemon.signal(signal.SIGHUP)
        # Before Engine.reload existed, SIGHUP only logged "not available".
        yield waitFor(lambda: server.firsts().count("READY=1") == 2
                      or "not available" in daemon.text(), timeout=20,
                      what="READY=1 after the reload")
        if "not available" not in daemon.text():
            firsts = [f for f in server.firsts() if f != "WATCHDOG=1"]
            self.assertEqual(firsts, ["READY=1", "RELOADING=1", "READY=1"])
            self.assertIn("reload requested (SIGHUP)", daemon.text())

        daemon.signal(signal.SIGTERM)
        self.assertEqual(daemon.wait(), 0, daemon.text())
        self.assertEqual([f for f in server.firsts() if f != "WATCHDOG=1"][-1],
                         "STOPPING=1")
