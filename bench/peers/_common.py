"""What every peer shares: JSON events on stdout, stdin commands, limits, memory."""

from __future__ import annotations

import json
import os
import resource
import sys
import time

__all__ = ["emit", "now", "raiseFileLimit", "rssKiB", "serve", "stop", "addArguments",
           "Stall"]

#: Seconds a peer runs at most when not told otherwise.
DEFAULT_TIMEOUT = 300.0
#: Seconds without data, once data has come, after which a stream is stalled.
DEFAULT_STALL = 10.0


def now() -> float:
    """``time.monotonic()``: on Linux one clock for every process, so the
    runner can compare times that different peers report."""
    return time.monotonic()


def emit(event: str, **fields) -> None:
    """Write one event as a JSON line on stdout, flushed at once."""
    fields = {"event": event, **fields}
    sys.stdout.write(json.dumps(fields) + "\n")
    sys.stdout.flush()


def raiseFileLimit() -> int:
    """Raise the soft ``RLIMIT_NOFILE`` to the hard limit; return the soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = max(soft, 1048576)
    if soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError):
            pass  # keep what we have; the caller sees it in the result
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def rssKiB(pid="self") -> int:
    """Resident set size of a process in KiB (``VmRSS`` of ``/proc/<pid>/status``)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for process {pid}")


def addArguments(parser) -> None:
    """The options every reactor-based peer takes."""
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT,
                        help="stop after this many seconds (default %(default)s)")
    parser.add_argument("--stall", type=float, default=DEFAULT_STALL,
                        help="report an error when a stream that started stops for "
                             "this many seconds (default %(default)s)")


class Stall:
    """Reports a stalled stream: an ``error`` event when :meth:`progress` has
    not been called for ``seconds`` (so a run that lost data fails at once
    instead of waiting out its timeout)."""

    def __init__(self, seconds: float, describe, clock=None):
        if clock is None:
            from twisted.internet import reactor as clock
        self.seconds = seconds
        self.describe = describe
        self.clock = clock
        self.call = None

    def progress(self) -> None:
        """Data arrived: the clock starts over."""
        if self.call is not None and self.call.active():
            self.call.reset(self.seconds)
        else:
            self.call = self.clock.callLater(self.seconds, self._stalled)

    def done(self) -> None:
        """The stream is complete: nothing to watch any more."""
        if self.call is not None and self.call.active():
            self.call.cancel()
        self.call = None

    def _stalled(self):
        self.call = None
        emit("error", text=f"stalled: nothing for {self.seconds:g} s; {self.describe()}")


def stop() -> None:
    """Stop the reactor if it is running (idempotent)."""
    from twisted.internet import reactor
    if reactor.running:
        reactor.stop()


def serve(commands=None, timeout=DEFAULT_TIMEOUT) -> None:
    """Run the reactor until stdin closes, ``timeout`` passes or something stops it.

    ``commands`` maps a stdin line (``"go"``, ``"drop"``...) to a callable.
    """
    from twisted.internet import reactor, stdio
    from twisted.protocols.basic import LineOnlyReceiver

    handlers = dict(commands or {})

    class Control(LineOnlyReceiver):
        delimiter = b"\n"

        def lineReceived(self, line):
            command = line.decode("utf-8", "replace").strip()
            handler = handlers.get(command)
            if handler is None:
                emit("error", text=f"unknown command {command!r}")
            else:
                handler()

        def connectionLost(self, reason=None):
            # The runner has gone (or closed our stdin): nobody needs us.
            stop()

    def expire():
        emit("timeout", seconds=timeout)
        stop()

    stdio.StandardIO(Control())
    expiry = reactor.callLater(timeout, expire)
    reactor.run()
    if expiry.active():
        expiry.cancel()
    sys.stdout.flush()
    os._exit(0)  # skip interpreter teardown of thousands of sockets
