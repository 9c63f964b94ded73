"""twistd entry point: command-line options and ``makeService``.

``twistd -n aiengine -c etc/media.xml`` runs in the foreground;
``twistd aiengine -c etc/media.xml`` daemonizes as twistd always does;
``twistd aiengine -c etc/media.xml --check`` only checks the file.

Whatever stops start-up does so with one plain line on stderr and exit
status 1, before twistd daemonizes: the configuration is read and checked
while the options are parsed, and :func:`makeService` binds every listener
(twistd itself would bind them in ``privilegedStartService``, after it has
forked and closed the terminal).

Under twistd, :func:`makeService` also sets up the log (``--log-level``,
``--log-format``: see :class:`DaemonEngine`), systemd's notifications
(:mod:`aiengine.systemd`) and the signals: SIGTERM and SIGINT stop cleanly
with status 0, a second SIGINT while stopping exits at once with status 130,
SIGHUP reloads (:func:`reloadEngine`).
"""

from __future__ import annotations

import gc
import os
import signal
import sys

from twisted.internet import defer
from twisted.logger import ILogObserver, Logger
from twisted.python import usage
from twisted.python.components import Componentized

from aiengine import __version__, logs, systemd
from aiengine.config import ConfigError, load
from aiengine.engine import Engine, ReloadError
from aiengine.listeners import ListenerUnavailable

__all__ = ["Options", "makeService", "DaemonEngine", "bindListeners", "reloadEngine",
           "EXIT_SECOND_SIGINT"]

#: exit status of a second SIGINT while stopping (128 + SIGINT, as shells say)
EXIT_SECOND_SIGINT = 130

_log = Logger(namespace="Engine")


class Options(usage.Options):
    """Options of ``twistd aiengine``."""

    synopsis = "[options]"
    longdesc = ("Runs aiengine: the channels and listeners of a media.xml, its topic "
                "broker and the XML-call console (127.0.0.1:20001 unless media.xml "
                "declares a listener with msgtype=xmlcall).")
    optParameters = [
        ["config", "c", "media.xml",
         "Path of the media.xml configuration file to run."],
        ["log-level", None, "info",
         "Least level logged: " + ", ".join(logs.LOG_LEVELS) + "."],
        ["log-format", None, "text",
         "text (twistd's lines) or json (one JSON object per line)."],
    ]
    optFlags = [
        ["check", None,
         "Check the configuration file and that every listener can bind its "
         "address, print the result and exit (0 when valid)."],
    ]

    def opt_version(self):
        """Print aiengine's version and exit."""
        print(f"aiengine {__version__}")
        sys.exit(0)

    def postOptions(self):
        if self["log-level"] not in logs.LOG_LEVELS:
            raise usage.UsageError(f"--log-level must be one of "
                                   f"{', '.join(logs.LOG_LEVELS)}, not "
                                   f"{self['log-level']!r}")
        if self["log-format"] not in logs.LOG_FORMATS:
            raise usage.UsageError(f"--log-format must be one of "
                                   f"{', '.join(logs.LOG_FORMATS)}, not "
                                   f"{self['log-format']!r}")
        if self["log-format"] == "json" and self.parent is not None and \
                self.parent.get("syslog"):
            raise usage.UsageError("--log-format=json cannot go to syslog (--syslog)")
        _pauseCollector()
        try:
            self.serviceConfig = load(self["config"])
        except ConfigError as e:
            _fail(f"configuration error: {e}")
        if self["check"]:
            # Also read what the engine reads at start: secrets and TLS files.
            engine = _buildEngine(self.serviceConfig)
            for service in engine.listeners.values():
                try:
                    service.probe()
                except ListenerUnavailable as e:
                    _fail(str(e))
            c = self.serviceConfig
            print(f"OK: {self['config']}: {len(c.listeners)} listener(s), "
                  f"{len(c.channels)} channel(s)")
            sys.exit(0)


def _fail(message):
    """Stop start-up: ``message`` as one line on stderr, exit status 1."""
    sys.stderr.write(f"aiengine: {message}\n")
    sys.stderr.flush()
    sys.exit(1)


class DaemonEngine(Engine):
    """The :class:`~aiengine.engine.Engine` as ``twistd aiengine`` runs it.

    - :attr:`logObserver`, when set, becomes the log observer of the twistd
      application this service is added to: twistd's ``AppLogger`` uses an
      application's ``ILogObserver`` component instead of the observer it
      would make (unless ``twistd --logger`` names one).
    - With a systemd :attr:`notifier`: ``READY=1`` once the listeners are
      bound and every channel has begun connecting, ``STOPPING=1`` when
      it stops, and ``WATCHDOG=1`` meanwhile when :attr:`environ` asks
      for a watchdog (``WATCHDOG_USEC``).
    """

    #: the observer for twistd's log (None: twistd's own)
    logObserver = None
    #: a :class:`aiengine.systemd.Notifier`, or None
    notifier = None
    #: where WATCHDOG_USEC and WATCHDOG_PID are read (None: os.environ)
    environ = None
    #: the running :class:`aiengine.systemd.Watchdog`, or None
    watchdog = None
    #: set once the engine has begun to stop
    stopping = False
    #: the Deferred of the reload under way, or None
    reloadUnderWay = None

    def setServiceParent(self, parent):
        """Join ``parent`` (twistd's application), giving it :attr:`logObserver`."""
        if self.logObserver is not None and isinstance(parent, Componentized):
            parent.setComponent(ILogObserver, self.logObserver)
        super().setServiceParent(parent)

    def startService(self):
        """Start; with systemd, the watchdog now and ``READY=1`` at the end."""
        super().startService()
        if self.notifier is None:
            return
        self.notifier.status(f"starting {len(self.channels)} channel(s)")
        # Read now, not when built: daemonizing has changed our pid since.
        interval = systemd.watchdogInterval(self.environ)
        if interval is not None and not self.stopping:
            self.watchdog = systemd.Watchdog(self.notifier, interval, self.reactor)
            self.watchdog.start()
        self.started.addCallback(self._ready)

    def _ready(self, result):
        if not self.stopping:
            self.notifier.ready(self.describe())
        return result

    def describe(self) -> str:
        """One line for ``systemctl status``."""
        return (f"serving {len(self.listeners)} listener(s), "
                f"{len(self.channels)} channel(s)")

    def stopService(self):
        """Stop, telling systemd first."""
        self.stopping = True
        if self.watchdog is not None:
            self.watchdog.stop()
        if self.notifier is not None:
            self.notifier.stopping("stopping")
        return super().stopService()


def _buildEngine(serviceConfig, reactor=None, engineClass=Engine):
    """The engine for ``serviceConfig``, or exit with one plain message."""
    try:
        # media.xml without a console gets the default one (SPEC section 5).
        return engineClass(serviceConfig, reactor, defaultConsole=True)
    except ConfigError as e:
        _fail(f"configuration error: {e}")


def bindListeners(engine) -> None:
    """Bind every listener of ``engine`` now.

    :raises ListenerUnavailable: one cannot bind; those already bound are
        released first.
    """
    bound = []
    try:
        for service in engine.listeners.values():
            service.privilegedStartService()
            bound.append(service)
    except ListenerUnavailable:
        for service in bound:
            service.stopService()
        raise


def makeService(options, reactor=None, environ=None):
    """Build the :class:`DaemonEngine` service from parsed options, with its
    listeners bound; a listener that cannot bind exits with one line.

    :param environ: where systemd's variables are read (default
        ``os.environ``).
    """
    if reactor is None:
        from twisted.internet import reactor

    engine = _buildEngine(options.serviceConfig, reactor, DaemonEngine)
    try:
        bindListeners(engine)
    except ListenerUnavailable as e:
        _fail(str(e))

    serverOptions = getattr(options, "parent", None)
    if serverOptions is not None:  # under twistd, not built in code
        _setUpLog(engine, options, serverOptions)
        # Until the reactor runs and _handleSignals takes over, a SIGHUP
        # (a reload asked for too early) must not kill the process.
        signal.signal(signal.SIGHUP, signal.SIG_IGN)

    engine.environ = environ
    engine.notifier = (systemd.processNotifier() if environ is None
                       else systemd.fromEnvironment(environ))
    pidfile = serverOptions.get("pidfile") if serverOptions is not None else None
    reactor.callWhenRunning(_handleSignals, reactor, engine, pidfile)
    engine.started.addCallback(_resumeCollector)
    return engine


def _setUpLog(engine, options, serverOptions):
    if serverOptions.get("logger"):
        # twistd --logger's observer wins over an application's.
        if (options["log-level"], options["log-format"]) != ("info", "text"):
            sys.stderr.write("aiengine: --log-level and --log-format do not apply "
                             "with twistd --logger\n")
        return
    engine.logObserver = logs.daemonObserver(serverOptions, options["log-level"],
                                             options["log-format"])


def _pauseCollector():
    # Start-up makes objects that live as long as the process (the
    # configuration, thousands of channels and their connections).  While
    # their number grows, the cyclic garbage collector would scan all of them
    # again and again: with 10,000 channels that was a second of a
    # four-second start, in pauses of up to 0.4 s.
    gc.disable()


def _resumeCollector(ignored=None):
    # Once start-up is over, what it made is frozen: kept out of every later
    # collection, so that a full collection at run time scans only what came
    # after (no 0.4 s pauses in a daemon with 10,000 channels).
    gc.freeze()
    gc.enable()


def reloadEngine(engine, why="SIGHUP") -> defer.Deferred:
    """Reload ``engine`` (:meth:`~aiengine.engine.Engine.reload`), logged and told
    to systemd: ``RELOADING=1``, then ``READY=1`` whatever the outcome.

    A reload asked for while one is under way joins it; one asked for
    while stopping is ignored.  The Deferred fires (None) when it is over;
    a failed reload is logged, not passed on.
    """
    _log.info("reload requested ({why})", why=why)
    if getattr(engine, "stopping", False):
        _log.info("not reloading: aiengine is stopping")
        return defer.succeed(None)
    running = getattr(engine, "reloadUnderWay", None)
    if running is not None:
        _log.info("a reload is already under way; this request joins it")
        waiter = defer.Deferred()
        running.addBoth(lambda result: (waiter.callback(None), result)[1])
        return waiter
    notifier = getattr(engine, "notifier", None)
    # Before READY=1, systemd is still waiting for start-up: no reload state.
    if notifier is not None and not engine.started.called:
        notifier = None
    if notifier is not None:
        notifier.reloading("reloading")

    def done(result):
        describe = getattr(result, "describe", None)
        summary = describe() if describe is not None else (
            "" if result is None else str(result))
        # Engine.reload logs what it did at info; this line only ties it to
        # its request.
        _log.debug("reload ({why}) done{summary}", why=why,
                   summary=f": {summary}" if summary else "")
        return getattr(engine, "describe", lambda: None)()

    def failed(failure):
        if failure.check(ConfigError):
            # Engine.reload has logged the broken media.xml at error.
            _log.debug("reload ({why}) refused: {error}", why=why,
                       error=failure.getErrorMessage())
        elif failure.check(ReloadError):
            _log.warn("reload ({why}) not done: {error}", why=why,
                      error=failure.getErrorMessage())
        else:
            _log.failure("reload ({why}) failed, still running as before", failure,
                         why=why)
        return f"reload failed: {failure.getErrorMessage()}"

    def over(status):
        engine.reloadUnderWay = None
        if notifier is not None and not getattr(engine, "stopping", False):
            notifier.ready(status)

    d = defer.maybeDeferred(engine.reload)
    d.addCallbacks(done, failed)
    d.addCallback(over)
    if not d.called:
        engine.reloadUnderWay = d
    return d


def _handleSignals(reactor, engine, pidfile=None):
    # Installed once the reactor runs, after its own handlers, and replacing
    # them for SIGTERM and SIGINT: twistd would re-raise the stop signal on
    # itself after a clean shutdown, so the exit status would say "killed";
    # aiengine promises status 0 for a clean stop.
    from twisted.internet.error import ReactorNotRunning

    state = {"stopping": False}

    def stopOnce(name):
        _log.info("received {signal}, stopping", signal=name)
        try:
            reactor.stop()
        except ReactorNotRunning:
            pass

    def stop(signum, frame):
        name = signal.Signals(signum).name
        if state["stopping"] or getattr(engine, "stopping", False):
            if signum == signal.SIGINT:
                # Ctrl-C twice: the user will not wait for the flush.
                _log.warn("received SIGINT again while stopping: exiting at once "
                          "with status {status}", status=EXIT_SECOND_SIGINT)
                _removePidFile(pidfile)
                os._exit(EXIT_SECOND_SIGINT)
            reactor.callFromThread(
                _log.info, "received {signal} while stopping; still stopping "
                "(SIGINT exits at once)", signal=name)
            return
        state["stopping"] = True
        reactor.callFromThread(stopOnce, name)

    def hangUp(signum, frame):
        reactor.callFromThread(reloadEngine, engine, "SIGHUP")

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGHUP, hangUp)


def _removePidFile(pidfile):
    # os._exit skips twistd's own removal; a pid file naming a dead process
    # would make the next start refuse ("Another twistd server is running").
    if not pidfile:
        return
    try:
        with open(pidfile, "rb") as f:
            if int(f.read().strip() or 0) != os.getpid():
                return
        os.unlink(pidfile)
    except (OSError, ValueError):
        pass
