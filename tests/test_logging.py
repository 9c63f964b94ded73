"""The daemon's log: ``--log-level`` filtering, the ``--log-format=json``
line, where twistd's log goes, and the noise start-up no longer makes."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
from datetime import datetime, timezone

from twisted.application import service
from twisted.logger import ILogObserver, Logger, LogLevel, globalLogPublisher
from twisted.python import log as legacyLog
from twisted.python import usage
from twisted.scripts.twistd import ServerOptions
from twisted.trial import unittest

from aiengine import logs, tap
from tests.test_daemon import twistdCommand
from tests.support import ReservedPort
from tests.test_startup import Daemon, _poll, environment, mediaXml
from tests.test_tap import FakeCollector


class Collect(list):
    """An observer keeping the events it sees."""

    def __call__(self, event):
        self.append(event)


def emitAll(observer, namespace="test"):
    log = Logger(namespace=namespace, observer=observer)
    log.debug("a debug line")
    log.info("an info line")
    log.warn("a warning")
    log.error("an error")
    log.critical("a critical line")


class LevelTests(unittest.TestCase):
    """--log-level: the least level that gets through."""

    def levels(self, name):
        seen = Collect()
        emitAll(logs.filteredObserver(seen, name))
        return [event["log_level"] for event in seen]

    def test_default(self):
        """info by default: debug lines (the console's "cancelled: connection
        gone", say) no longer show."""
        self.assertEqual(self.levels("info"), [LogLevel.info, LogLevel.warn,
                                               LogLevel.error, LogLevel.critical])

    def test_levels(self):
        self.assertEqual(len(self.levels("debug")), 5)
        self.assertEqual(self.levels("warn"), [LogLevel.warn, LogLevel.error,
                                               LogLevel.critical])
        self.assertEqual(self.levels("error"), [LogLevel.error, LogLevel.critical])

    def test_legacyEventsFiltered(self):
        """Twisted's own legacy lines (log.msg: info) obey the level too."""
        seen = Collect()
        observer = logs.filteredObserver(seen, "warn")
        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)
        legacyLog.msg("legacy info")
        self.assertEqual(seen, [])

    def test_quietDropsBindChatter(self):
        seen = Collect()
        observer = logs.filteredObserver(seen, "debug")
        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)
        logs.quietly(legacyLog.msg, "SocketServer::x starting on 1234")
        legacyLog.msg("after")
        self.assertEqual([e.get("message") for e in seen], [("after",)])


class JSONTests(unittest.TestCase):
    """--log-format=json: one object per line."""

    def lines(self, emit):
        out = io.StringIO()
        emit(Logger(namespace="SocketServer::console",
                    observer=logs.jsonLineObserver(out)))
        text = out.getvalue()
        self.assertTrue(text.endswith("\n"))
        return [json.loads(line) for line in text.splitlines()]

    def test_shape(self):
        [record] = self.lines(lambda log: log.warn("refused {peer}: {n} open",
                                                   peer="127.0.0.1:5", n=3))
        self.assertEqual(sorted(record), ["level", "namespace", "text", "time"])
        self.assertEqual(record["level"], "warn")
        self.assertEqual(record["namespace"], "SocketServer::console")
        self.assertEqual(record["text"], "refused 127.0.0.1:5: 3 open")
        self.assertTrue(record["time"].endswith("Z"), record["time"])
        when = datetime.fromisoformat(record["time"].replace("Z", "+00:00"))
        self.assertEqual(when.utcoffset().total_seconds(), 0)
        self.assertLess(abs((datetime.now(timezone.utc) - when).total_seconds()), 60)

    def test_failure(self):
        def emit(log):
            try:
                1 / 0
            except ZeroDivisionError:
                log.failure("could not answer {id}", id="R1")

        [record] = self.lines(emit)
        self.assertEqual(record["level"], "critical")
        self.assertEqual(record["text"], "could not answer R1")
        self.assertIn("Traceback", record["failure"])
        self.assertIn("ZeroDivisionError", record["failure"])

    def test_textStaysOnOneLine(self):
        [record] = self.lines(lambda log: log.info("two\nlines"))
        self.assertEqual(record["text"], "two\nlines")

    def test_legacyError(self):
        """A legacy log.err keeps its reason as text, its traceback apart."""
        out = io.StringIO()
        observer = logs.jsonLineObserver(out)
        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)
        legacyLog.err(ValueError("boom"), "while testing")
        self.flushLoggedErrors(ValueError)
        record = json.loads(out.getvalue())
        self.assertEqual(record["text"], "while testing")
        self.assertIn("ValueError: boom", record["failure"])


class DestinationTests(unittest.TestCase):
    """daemonObserver writes where twistd would."""

    def serverOptions(self, *args):
        options = ServerOptions()
        options.parseOptions(list(args) + ["aiengine", "-c", self.config()])
        return options

    def setUp(self):
        self.patch(tap, "gc", FakeCollector())

    def config(self):
        path = os.path.abspath(self.mktemp())
        with open(path, "w") as f:
            f.write(mediaXml())
        return path

    def test_foregroundToStdout(self):
        out = io.StringIO()
        self.patch(logs.sys, "stdout", out)
        observer = logs.daemonObserver({"nodaemon": True, "logfile": None}, "info",
                                       "json")
        Logger(namespace="t", observer=observer).info("hello")
        Logger(namespace="t", observer=observer).debug("hidden")
        lines = out.getvalue().splitlines()
        self.assertEqual([json.loads(line)["text"] for line in lines], ["hello"])

    def test_logFile(self):
        path = os.path.abspath(self.mktemp())
        self.patch(logs, "_rotateOnSIGUSR1", lambda logFile: None)
        observer = logs.daemonObserver({"nodaemon": False, "logfile": path}, "warn",
                                       "text")
        Logger(namespace="t", observer=observer).info("hidden")
        Logger(namespace="t", observer=observer).warn("shown")
        with open(path) as f:
            text = f.read()
        self.assertIn("[t#warn] shown", text)
        self.assertNotIn("hidden", text)

    def test_daemonCannotLogToStdout(self):
        self.assertRaises(SystemExit, logs.daemonObserver,
                          {"nodaemon": False, "logfile": "-"})

    def test_becomesTheApplicationsObserver(self):
        """twistd's AppLogger uses the application's ILogObserver component."""
        options = self.serverOptions("-n", "--pidfile=")
        self.patch(tap.signal, "signal", lambda *args: None)
        from twisted.internet.testing import MemoryReactorClock
        engine = tap.makeService(options.subOptions, reactor=MemoryReactorClock(),
                                 environ={})
        application = service.Application("aiengine")
        engine.setServiceParent(application)
        self.assertIs(application.getComponent(ILogObserver), engine.logObserver)
        self.assertIsNotNone(engine.logObserver)

    def test_optionsChecked(self):
        for args in (["--log-level", "verbose"], ["--log-format", "xml"]):
            options = tap.Options()
            self.assertRaises(usage.UsageError, options.parseOptions,
                              ["-c", self.config()] + args)

    def test_jsonNotToSyslog(self):
        options = ServerOptions()
        self.assertRaises(usage.UsageError, options.parseOptions,
                          ["--syslog", "aiengine", "-c", self.config(),
                           "--log-format=json"])


class DaemonLogTests(unittest.TestCase):
    """The options in real twistd processes."""

    def setUp(self):
        self.workdir = os.path.abspath(self.mktemp())
        os.makedirs(self.workdir)
        self.path = os.path.join(self.workdir, "media.xml")
        with open(self.path, "w") as f:
            f.write(mediaXml())

    def test_foregroundJSON(self):
        pidfile = os.path.join(self.workdir, "twistd.pid")
        daemon = Daemon(self.workdir, self.path, pidfile, "--log-format=json")
        self.addCleanup(daemon.kill)
        self.assertTrue(daemon.waitFor(" channel(s) in "), daemon.text())
        daemon.signal(signal.SIGTERM)
        self.assertEqual(daemon.wait(), 0, daemon.text())
        records = [json.loads(line) for line in daemon.text().splitlines()]
        texts = [r["text"] for r in records]
        self.assertTrue(any(t.startswith("listening on 127.0.0.1:") for t in texts),
                        texts)
        self.assertIn("aiengine stopped", texts)
        self.assertEqual({r["level"] for r in records}, {"info"})

    def test_startUpLines(self):
        """Each start-up event once, in one format: no "starting on" and
        "(TCP Port n Closed)" lines from Twisted beside the listener's own."""
        pidfile = os.path.join(self.workdir, "twistd.pid")
        daemon = Daemon(self.workdir, self.path, pidfile)
        self.addCleanup(daemon.kill)
        self.assertTrue(daemon.waitFor(" channel(s) in "), daemon.text())
        daemon.signal(signal.SIGTERM)
        self.assertEqual(daemon.wait(), 0, daemon.text())
        text = daemon.text()
        port = daemon.ports["console"]
        self.assertEqual(text.count(str(port)), 2, text)  # listening on, stopped
        self.assertIn(f"[SocketServer::console#info] stopped listening on "
                      f"127.0.0.1:{port}", text)
        self.assertNotIn("starting on", text)
        self.assertNotIn("Closed)", text)
        self.assertNotIn("[-]", text)

    def test_daemonizedLevelAndFormat(self):
        server = ReservedPort()  # refuses: the channel logs a warning
        self.addCleanup(server.close)
        with open(self.path, "w") as f:
            f.write(mediaXml(channels=CHANNEL.format(port=server.port)))
        pidfile = os.path.join(self.workdir, "twistd.pid")
        logfile = os.path.join(self.workdir, "twistd.log")
        self.addCleanup(_killByPidFile, pidfile)
        process = subprocess.run(
            twistdCommand() + [f"--pidfile={pidfile}", f"--logfile={logfile}", "aiengine",
                               "-c", self.path, "--log-format=json",
                               "--log-level=warn"],
            cwd=self.workdir, env=environment(), capture_output=True, text=True,
            timeout=30)
        self.assertEqual((process.returncode, process.stdout, process.stderr),
                         (0, "", ""))
        with open(pidfile) as f:
            pid = int(f.read())

        def logged():
            with open(logfile) as f:
                return f.read()

        self.assertTrue(_poll(lambda: "cannot connect" in logged()), logged())
        os.kill(pid, signal.SIGTERM)
        self.assertTrue(_poll(lambda: not os.path.exists(pidfile)))
        records = [json.loads(line) for line in logged().splitlines()]
        self.assertEqual({r["level"] for r in records}, {"warn"}, records)
        self.assertEqual(records[0]["namespace"], "ActiveSocket::slow")


CHANNEL = """  <directchannels>
    <channel name="slow">
      <property name="host" value="127.0.0.1"/>
      <property name="port" value="{port}"/>
      <property name="protocol" value="text-messages"/>
    </channel>
  </directchannels>
"""


def _killByPidFile(pidfile):
    # A daemonized twistd is not our child: found by its pid file.
    try:
        with open(pidfile) as f:
            os.kill(int(f.read()), signal.SIGKILL)
    except (OSError, ValueError):
        pass
