"""The runner's side of the benchmarks: processes, media.xml files, results.

Everything here runs in the ``python -m bench`` process.  aiengine runs as
a real ``twistd`` process (:class:`Daemon`), the peers as
``python -m bench.peers.<name>`` processes (:class:`Peer`); both get
``PYTHONPATH`` set to this checkout, so the checkout's code is what runs.
"""

from __future__ import annotations

import json
import os
import queue
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tarfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional
from xml.sax.saxutils import quoteattr

__all__ = [
    "ROOT", "TWISTD", "BenchError", "Row", "Settings", "Peer", "Daemon", "Console",
    "Probe", "Cleanup", "mediaXml", "daemonXml", "childEnvironment", "raiseFileLimit",
    "rssKiB", "best", "median", "spread", "describeSpread", "machine", "exportCommit",
    "describeTree", "removeTree",
]

#: the checkout this suite belongs to
ROOT = Path(__file__).resolve().parent.parent
#: the twistd of the running Python (a virtualenv's, when run from one)
TWISTD = Path(sys.executable).parent / "twistd"


class BenchError(Exception):
    """A benchmark could not produce its figure (a peer failed, a wait timed out)."""


@dataclass
class Settings:
    """How the suite runs: sizes, repetitions, where logs go, profiling."""

    quick: bool = False
    reps: Optional[int] = None
    workdir: Path = Path(".")
    #: the tree whose aiengine (and twistd plugin) the daemon runs
    tree: Path = ROOT
    profile: bool = False
    verbose: bool = False

    def repetitions(self, full: int, quick: int = 1) -> int:
        """``--reps`` if given, else ``full`` or (``--quick``) ``quick``."""
        if self.reps:
            return self.reps
        return quick if self.quick else full

    def say(self, text: str) -> None:
        """A progress line on stderr (the table goes to stdout)."""
        print(f"  {text}", file=sys.stderr, flush=True)


@dataclass
class Row:
    """One line of the results table.

    ``passed`` is None for a row that has no target (information only) or no
    figure (``error`` says why, or ``skipped``: a comparison whose peer server
    is not available).
    """

    benchmark: str
    measure: str
    aiengine: Optional[float] = None
    baseline: Optional[float] = None
    unit: str = ""
    ratio: Optional[float] = None
    target: str = ""
    passed: Optional[bool] = None
    note: str = ""
    error: Optional[str] = None
    details: dict = field(default_factory=dict)
    skipped: Optional[str] = None


def best(values, higher=True):
    """The best of repeated measurements (None values are failed runs)."""
    good = [v for v in values if v is not None]
    if not good:
        return None
    return max(good) if higher else min(good)


def raiseFileLimit() -> int:
    """Raise this process's soft ``RLIMIT_NOFILE`` to the hard limit.

    Every process the suite starts inherits it (limits survive fork and
    exec), twistd included.  Returns the new soft limit.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = max(soft, 1048576)
    if soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError):
            pass
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def rssKiB(pid) -> int:
    """Resident set size of process ``pid`` in KiB (``VmRSS``)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise BenchError(f"no VmRSS for process {pid}")


def childEnvironment(tree: Path = ROOT) -> dict:
    """The environment of a process started: ``tree`` first on the path
    (peers: this checkout, for ``bench.peers``; the daemon: the aiengine tree
    being measured)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(tree)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    env["PYTHONUNBUFFERED"] = "1"
    return env


class _Process:
    """A started subprocess in its own session, stopped for sure by :meth:`stop`."""

    popen: subprocess.Popen
    name: str

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def stop(self, grace: float = 10.0) -> Optional[int]:
        """SIGTERM, then SIGKILL after ``grace`` seconds; returns the exit status."""
        if self.popen.poll() is None:
            try:
                self.popen.send_signal(signal.SIGTERM)
                self.popen.wait(grace)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(10)
            except ProcessLookupError:
                pass
        return self.popen.returncode


class Cleanup:
    """Stops every process registered with it, last started first, even on error."""

    def __init__(self):
        self.processes = []

    def add(self, process):
        self.processes.append(process)
        return process

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        while self.processes:
            process = self.processes.pop()
            try:
                process.stop()
            except Exception as e:  # one failed stop must not leave the others
                print(f"  could not stop {process.name}: {e}", file=sys.stderr)
        return False


class Peer(_Process):
    """A ``python -m bench.peers.<module>`` process and its JSON events.

    A thread reads the peer's stdout into a queue; :meth:`expect` waits for
    an event by name.  stderr goes to ``<workdir>/<label>.err``.
    """

    _numbers = {}

    def __init__(self, settings: Settings, module: str, *args, label=None):
        n = Peer._numbers[module] = Peer._numbers.get(module, 0) + 1
        self.name = label or f"{module}-{n}"
        self.events = queue.Queue()
        self.seen = []
        argv = [sys.executable, "-m", f"bench.peers.{module}"] + [str(a) for a in args]
        self.errPath = settings.workdir / f"{self.name}.err"
        with open(self.errPath, "wb") as err:
            self.started = time.monotonic()
            self.popen = subprocess.Popen(
                argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err,
                env=childEnvironment(), cwd=ROOT, start_new_session=True)
        threading.Thread(target=self._read, name=self.name, daemon=True).start()

    def _read(self):
        for raw in self.popen.stdout:
            line = raw.decode("utf-8", "replace").strip()
            if not line:
                continue
            try:
                event = json.loads(line)
            except ValueError:
                event = {"event": "text", "text": line}
            self.events.put(event)
        self.events.put(None)

    def _stderrTail(self) -> str:
        try:
            text = self.errPath.read_text(errors="replace").strip()
        except OSError:
            return ""
        return text[-600:]

    def expect(self, name: str, timeout: float) -> dict:
        """The next event called ``name``; others are kept in ``seen``.

        Raises :class:`BenchError` when the peer reports ``error``, exits or
        does not send it within ``timeout`` seconds.
        """
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise BenchError(f"{self.name}: no '{name}' within {timeout:g} s")
            try:
                event = self.events.get(timeout=left)
            except queue.Empty:
                continue
            if event is None:
                self.events.put(None)  # later calls see the end too
                self.popen.wait(5)
                raise BenchError(f"{self.name} exited ({self.popen.returncode}) before "
                                 f"'{name}': {self._stderrTail() or 'no stderr'}")
            self.seen.append(event)
            if event["event"] == name:
                return event
            if event["event"] in ("error", "timeout"):
                raise BenchError(f"{self.name}: {event.get('text', event['event'])}")

    def poll(self, name: str) -> Optional[dict]:
        """The event ``name`` if it has arrived (without waiting), else None."""
        while not self.events.empty():
            event = self.events.get_nowait()
            if event is None:
                self.events.put(None)  # the end stays visible
                return None
            self.seen.append(event)
            if event["event"] == name:
                return event
            if event["event"] in ("error", "timeout"):
                raise BenchError(f"{self.name}: {event.get('text', event['event'])}")
        return None

    def send(self, command: str) -> None:
        """Write one command line to the peer's stdin."""
        self.popen.stdin.write(command.encode() + b"\n")
        self.popen.stdin.flush()

    def stop(self, grace: float = 5.0):
        try:
            self.popen.stdin.close()  # peers stop when their stdin closes
        except OSError:
            pass
        try:
            self.popen.wait(1.0)
        except subprocess.TimeoutExpired:
            pass
        return super().stop(grace)


def mediaXml(listeners=(), channels=(), bridges=()) -> str:
    """A media.xml: ``listeners`` and ``channels`` are ``(name, {property: value})``;
    ``bridges`` are ``(name, {property: value}, [{attribute: value}, ...])``, the
    last the bridge's ``<topic>`` elements (no ``<bridges>`` section without)."""
    def element(kind, name, properties, topics=()):
        props = "".join(f"<property name={quoteattr(k)} value={quoteattr(str(v))}/>"
                        for k, v in properties.items())
        props += "".join("<topic " + " ".join(f"{k}={quoteattr(str(v))}"
                                              for k, v in topic.items()) + "/>"
                         for topic in topics)
        return f"<{kind} name={quoteattr(name)}>{props}</{kind}>\n"

    return ("<service>\n<listeners>\n"
            + "".join(element("listener", n, p) for n, p in listeners)
            + "</listeners>\n<directchannels>\n"
            + "".join(element("channel", n, p) for n, p in channels)
            + "</directchannels>\n"
            + ("<bridges>\n" + "".join(element("bridge", n, p, t) for n, p, t in bridges)
               + "</bridges>\n" if bridges else "")
            + "</service>\n")


#: the console listener every benchmark daemon has, on a free port
CONSOLE = ("console", {"port": 0, "msgtype": "xmlcall", "protocol": "text-messages",
                       "protocol.delimiter": r"\1"})


def daemonXml(listeners=(), channels=(), bridges=()) -> str:
    """The media.xml of a benchmark daemon: its console, then ``listeners``,
    ``channels`` and ``bridges`` (as for :func:`mediaXml`)."""
    return mediaXml((CONSOLE,) + tuple(listeners), channels, bridges)


class Daemon(_Process):
    """``twistd -n --pidfile= aiengine -c <media.xml>`` with its log in a file.

    ``profile`` (a path) runs it under cProfile, which writes its statistics
    there when the daemon exits.  ``bridges``: its ``<bridges>`` (as for
    :func:`mediaXml`).
    """

    def __init__(self, settings: Settings, name: str, listeners=(), channels=(),
                 profile: Optional[Path] = None, bridges=()):
        self.name = f"aiengine-{name}"
        workdir = settings.workdir
        self.config = workdir / f"{name}.xml"
        self.config.write_text(daemonXml(listeners, channels, bridges))
        self.logPath = workdir / f"{name}.log"
        argv = [str(TWISTD), "-n", "--pidfile=", "aiengine", "-c", str(self.config)]
        if profile is not None:
            argv = [sys.executable, "-m", "cProfile", "-o", str(profile)] + argv
        self.profile = profile
        self._offset = 0
        self._pending = ""
        self.lines = []
        with open(self.logPath, "wb") as log:
            self.started = time.monotonic()
            self.popen = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                env=childEnvironment(settings.tree), cwd=workdir, start_new_session=True)

    def _readLog(self):
        with open(self.logPath, "rb") as f:
            f.seek(self._offset)
            data = f.read()
        self._offset += len(data)
        text = self._pending + data.decode("utf-8", "replace")
        lines = text.split("\n")
        self._pending = lines.pop()
        self.lines.extend(lines)
        return lines

    def waitLog(self, pattern: str, timeout: float, start: int = 0):
        """The first log line (from line ``start``) matching ``pattern``: a ``re.Match``."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        checked = start
        while True:
            self._readLog()
            for line in self.lines[checked:]:
                match = regex.search(line)
                if match:
                    return match
            checked = max(checked, len(self.lines))
            if not self.alive():
                self._readLog()
                tail = "\n".join(self.lines[-8:])
                raise BenchError(f"{self.name} exited ({self.popen.returncode}); "
                                 f"log {self.logPath}:\n{tail}")
            if time.monotonic() > deadline:
                raise BenchError(f"{self.name}: no log line matching {pattern!r} "
                                 f"within {timeout:g} s (log {self.logPath})")
            time.sleep(0.02)

    def waitCount(self, pattern: str, count: int, timeout: float,
                  interval: float = 0.02) -> float:
        """Wait until ``count`` log lines (from the start) match ``pattern``.

        Returns the ``time.monotonic()`` at which the runner saw the last one
        (the log is polled every ``interval`` seconds).
        """
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        seen = sum(1 for line in self.lines if regex.search(line))
        while True:
            seen += sum(1 for line in self._readLog() if regex.search(line))
            if seen >= count:
                return time.monotonic()
            if not self.alive():
                raise BenchError(f"{self.name} exited ({self.popen.returncode}) with "
                                 f"{seen:,} of {count:,} lines matching {pattern!r}; "
                                 f"log {self.logPath}")
            if time.monotonic() > deadline:
                raise BenchError(f"{self.name}: {seen:,} of {count:,} lines matching "
                                 f"{pattern!r} after {timeout:g} s (log {self.logPath})")
            time.sleep(interval)

    def port(self, listener: str, timeout: float = 30.0) -> int:
        """The port listener ``listener`` is bound to (from its start-up log line)."""
        match = self.waitLog(
            rf"\[SocketServer::{re.escape(listener)}#info\] listening on "
            r"127\.0\.0\.1:(\d+)", timeout)
        return int(match.group(1))

    def waitConnected(self, channel: str, timeout: float = 30.0) -> None:
        """Wait for channel ``channel``'s "connected to" log line."""
        self.waitLog(rf"\[ActiveSocket::{re.escape(channel)}#info\] connected to ",
                     timeout)

    def rss(self) -> int:
        """The daemon's resident set size in KiB."""
        return rssKiB(self.pid)

    def stop(self, grace: float = 30.0):
        """SIGTERM (a clean stop: the profile, if any, gets written)."""
        return super().stop(grace)


class Console:
    """A blocking console connection for latency probes from the runner."""

    def __init__(self, port: int, timeout: float = 60.0):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buffer = b""
        self.n = 0

    def ping(self) -> float:
        """Round trip of one ``Engine.ping``, in seconds."""
        self.n += 1
        start = time.perf_counter()
        self.sock.sendall(b'<xmlcall class="Engine" method="ping" requestId="probe-%d"/>'
                          b"\x01" % self.n)
        while b"\x01" not in self.buffer:
            data = self.sock.recv(65536)
            if not data:
                raise BenchError("console closed the connection")
            self.buffer += data
        reply, _, self.buffer = self.buffer.partition(b"\x01")
        elapsed = time.perf_counter() - start
        if b"<pong" not in reply:
            raise BenchError(f"unexpected console reply {reply[:200]!r}")
        return elapsed

    def pings(self, n: int) -> list:
        """``n`` round trips, one after the other (seconds)."""
        return [self.ping() for _ in range(n)]

    def probe(self, interval: float = 0.1) -> "Probe":
        """Ping every ``interval`` seconds from a thread until the probe is stopped."""
        return Probe(self, interval)

    def close(self):
        self.sock.close()


class Probe:
    """Console round trips measured in a thread, so that waiting for them
    delays nothing else the runner watches."""

    def __init__(self, console: Console, interval: float):
        self.console = console
        self.interval = interval
        self.times = []
        self.error = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="console-probe",
                                        daemon=True)
        self._thread.start()

    def _run(self):
        try:
            while not self._stop.is_set():
                self.times.append(self.console.ping())
                self._stop.wait(self.interval)
        except Exception as e:  # reported by stop()
            self.error = e

    def stop(self) -> list:
        """End the probe (after the ping in progress) and return the round trips."""
        self._stop.set()
        self._thread.join(120)
        if self.error is not None:
            raise BenchError(f"console probe failed: {self.error}")
        return self.times


def median(values):
    """The median, or None for no values."""
    return statistics.median(values) if values else None


def spread(values):
    """``(min, median, max)`` of repeated measurements (None values are failed
    runs and left out); ``(None, None, None)`` when none succeeded."""
    good = sorted(v for v in values if v is not None)
    if not good:
        return None, None, None
    return good[0], statistics.median(good), good[-1]


def describeSpread(label: str, values, fmt: str = "{:,.0f}") -> str:
    """``"label min/median/max a/b/c"`` for a row's note."""
    low, mid, high = spread(values)
    if mid is None:
        return f"{label} -"
    return f"{label} {'/'.join(fmt.format(v) for v in (low, mid, high))}"


def machine() -> dict:
    """What the figures were measured on."""
    import platform

    import lxml.etree
    import twisted
    try:
        load = os.getloadavg()[0]
    except OSError:
        load = None
    return {
        "nproc": os.cpu_count(),
        "python": platform.python_version(),
        "twisted": twisted.__version__,
        "lxml": ".".join(map(str, lxml.etree.LXML_VERSION[:3])),
        "platform": platform.platform(terse=True),
        "load": load,
        "nofile": resource.getrlimit(resource.RLIMIT_NOFILE)[0],
    }


def exportCommit(revision: str, destination: Path) -> str:
    """Extract aiengine and its twistd plugin as of git ``revision`` into
    ``destination`` (read-only for the repository: ``git archive``).
    Returns the full commit id."""
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--verify",
                             f"{revision}^{{commit}}"], capture_output=True, text=True)
    if commit.returncode != 0:
        raise BenchError(f"unknown git revision {revision!r}: {commit.stderr.strip()}")
    commit = commit.stdout.strip()
    destination.mkdir(parents=True)
    archive = subprocess.Popen(["git", "-C", str(ROOT), "archive", "--format=tar", commit,
                                "aiengine", "twisted"], stdout=subprocess.PIPE)
    with tarfile.open(fileobj=archive.stdout, mode="r|") as tar:
        tar.extractall(destination, filter="data")
    if archive.wait() != 0:
        raise BenchError(f"git archive {commit} failed")
    return commit


def describeTree(tree: Path, commit: Optional[str] = None) -> str:
    """Which aiengine code a run measured, for the results."""
    if commit:
        return f"commit {commit[:10]}"
    head = subprocess.run(["git", "-C", str(tree), "rev-parse", "--short=10", "HEAD"],
                          capture_output=True, text=True)
    if head.returncode != 0:
        return str(tree)
    dirty = subprocess.run(["git", "-C", str(tree), "status", "--porcelain", "--",
                            "aiengine", "twisted"], capture_output=True, text=True)
    changed = " with uncommitted changes" if dirty.stdout.strip() else ""
    return f"checkout at {head.stdout.strip()}{changed}"


def removeTree(path: Path) -> None:
    """Remove a work directory, ignoring what cannot be removed."""
    shutil.rmtree(path, ignore_errors=True)
