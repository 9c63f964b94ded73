"""twistd entry point: command-line options and ``makeService``.

``twistd -n aiengine -c etc/media.xml`` runs in the foreground;
``twistd aiengine -c etc/media.xml`` daemonizes as twistd always does;
``twistd aiengine -c etc/media.xml --check`` only checks the file.
The configuration is read and checked while the options are parsed, so a
broken file stops start-up with one plain message before anything listens
(and before twistd daemonizes).
"""

from __future__ import annotations

import gc
import signal
import sys

from twisted.logger import Logger
from twisted.python import usage

from aiengine import __version__
from aiengine.config import ConfigError, load

__all__ = ["Options", "makeService"]


class Options(usage.Options):
    """Options of ``twistd aiengine``."""

    synopsis = "[options]"
    longdesc = ("Runs aiengine: the channels and listeners of a media.xml, its topic "
                "broker and the XML-call console (127.0.0.1:20001 unless media.xml "
                "declares a listener with msgtype=xmlcall).")
    optParameters = [
        ["config", "c", "media.xml",
         "Path of the media.xml configuration file to run."],
    ]
    optFlags = [
        ["check", None,
         "Check the configuration file, print the result and exit (0 when valid)."],
    ]

    def opt_version(self):
        """Print aiengine's version and exit."""
        print(f"aiengine {__version__}")
        sys.exit(0)

    def postOptions(self):
        _pauseCollector()
        try:
            self.serviceConfig = load(self["config"])
        except ConfigError as e:
            sys.stderr.write(f"aiengine: configuration error: {e}\n")
            sys.exit(1)
        if self["check"]:
            # Also read what the engine reads at start: secrets and TLS files.
            _buildEngine(self.serviceConfig)
            c = self.serviceConfig
            print(f"OK: {self['config']}: {len(c.listeners)} listener(s), "
                  f"{len(c.channels)} channel(s)")
            sys.exit(0)


def _buildEngine(serviceConfig, reactor=None):
    """The engine for ``serviceConfig``, or exit with one plain message."""
    from aiengine.engine import Engine
    try:
        # media.xml without a console gets the default one (SPEC section 5).
        return Engine(serviceConfig, reactor, defaultConsole=True)
    except ConfigError as e:
        sys.stderr.write(f"aiengine: configuration error: {e}\n")
        sys.exit(1)


def makeService(options, reactor=None):
    """Build the :class:`~aiengine.engine.Engine` service from parsed options."""
    if reactor is None:
        from twisted.internet import reactor

    engine = _buildEngine(options.serviceConfig, reactor)
    reactor.callWhenRunning(_stopOnSignals, reactor)
    engine.started.addCallback(_resumeCollector)
    return engine


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


def _stopOnSignals(reactor):
    # twistd re-raises the stop signal on itself after a clean shutdown, so
    # the exit status would say "killed"; aiengine promises status 0 for a
    # clean stop on SIGTERM/SIGINT.  Runs after the reactor's own handlers
    # are installed, and replaces them for these two signals.
    from twisted.internet.error import ReactorNotRunning

    log = Logger(namespace="Engine")

    def stopOnce():
        try:
            reactor.stop()
        except ReactorNotRunning:
            pass  # a second signal while already stopping

    def stop(signum, frame):
        log.info("received {signal}, stopping", signal=signal.Signals(signum).name)
        reactor.callFromThread(stopOnce)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
