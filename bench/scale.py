"""Scale: 10,000 channels to one local acceptor.

A media.xml with 10,000 permanent ``text-messages`` channels to one local
acceptor (``bench.peers.acceptor``).  Figures, each over the same for 10,000
raw-Twisted ``ReconnectingClientFactory`` connections made by one process
(``bench.peers.rcfclients``):

* seconds from process start until the process itself has seen every
  connection up (aiengine: the log line of its last channel connecting;
  baseline: its last ``connectionMade``), the acceptor holding all of them;
* resident memory per connection: the process's RSS with all connected
  minus its RSS without any (aiengine: a daemon with only its console;
  baseline: the same process before it connects), over the count.

Also the console's ping round trip, while the channels connect and once they
are all up: both must stay under 100 ms.
"""

from __future__ import annotations

import time

from bench.harness import (BenchError, Cleanup, Console, Daemon, Peer, Row, best,
                           median, raiseFileLimit, rssKiB)

NAME = "scale"
TIME_TARGET = 3.0
MEMORY_TARGET = 4.0
PING_TARGET_MS = 100.0
#: file descriptors a process needs besides its connections
SPARE_FDS = 200
#: seconds to let a process settle before its memory is read
SETTLE = 1.0
#: the daemon's log line for a channel that is up
CONNECTED = r"\[ActiveSocket::c\d+#info\] connected to "


def channels(settings):
    """Channels to run, and a note when the machine's limit made it fewer."""
    wanted = 2000 if settings.quick else 10000
    limit = raiseFileLimit()
    if limit - SPARE_FDS < wanted:
        count = max(100, limit - SPARE_FDS)
        return count, (f"RLIMIT_NOFILE is {limit}: ran {count:,} instead of "
                       f"{wanted:,} channels")
    return wanted, ""


def _acceptor(settings, cleanup, count):
    acceptor = cleanup.add(Peer(settings, "acceptor", "--target", count))
    acceptor.expect("limits", 30)
    return acceptor, acceptor.expect("listening", 30)["port"]


def _reached(acceptor, count, timeout):
    """Wait for the acceptor to hold all ``count`` connections."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        event = acceptor.poll("reached")
        if event is not None:
            return event
        time.sleep(0.05)
    acceptor.send("stats")
    stats = acceptor.expect("stats", 10)
    raise BenchError(f"only {stats['open']:,} of {count:,} connections were up "
                     f"after {timeout:g} s")


def daemonConfig(count, port):
    """The daemon's listeners (none besides the console) and ``count`` channels."""
    return (), tuple((f"c{i:05d}", {"host": "127.0.0.1", "port": port,
                                    "protocol": "text-messages"}) for i in range(count))


def emptyDaemonRss(settings) -> int:
    """RSS (KiB) of a daemon with only its console, after a few pings."""
    with Cleanup() as cleanup:
        daemon = cleanup.add(Daemon(settings, "empty"))
        console = Console(daemon.port("console"))
        try:
            console.pings(10)
            time.sleep(SETTLE)
            return daemon.rss()
        finally:
            console.close()


def runAiengine(settings, count, profile=None) -> dict:
    """One daemon with ``count`` channels: time, RSS and console round trips.

    "Connected" is the daemon's own view: its log line for the last channel
    (the acceptor has accepted the connection before the daemon has handled
    it).
    """
    with Cleanup() as cleanup:
        acceptor, port = _acceptor(settings, cleanup, count)
        daemon = cleanup.add(Daemon(settings, "scale", *daemonConfig(count, port),
                                    profile=profile))
        consolePort = daemon.port("console", timeout=60 + count / 100)
        console = Console(consolePort)
        try:
            probe = console.probe()
            try:
                connected = daemon.waitCount(CONNECTED, count, 60 + count / 50)
            finally:
                during = probe.stop()
            _reached(acceptor, count, 30)
            seconds = connected - daemon.started
            time.sleep(SETTLE)
            rss = daemon.rss()
            after = console.pings(10)
        finally:
            console.close()
    return {"seconds": seconds, "rss": rss, "during": during, "after": after}


def runBaseline(settings, count) -> dict:
    """One process with ``count`` ReconnectingClientFactory connections.

    "Connected" is the process's own view: its last ``connectionMade``.
    """
    with Cleanup() as cleanup:
        acceptor, port = _acceptor(settings, cleanup, count)
        clients = cleanup.add(Peer(settings, "rcfclients", "--port", port,
                                   "--count", count))
        empty = clients.expect("ready", 30)["rss"]
        connected = clients.expect("connected", 60 + count / 50)
        _reached(acceptor, count, 30)
        seconds = connected["t"] - clients.started
        time.sleep(SETTLE)
        rss = rssKiB(clients.pid)
    return {"seconds": seconds, "rss": rss, "empty": empty}


def run(settings) -> list:
    """Best of a few runs of each; memory per connection in KiB."""
    count, note = channels(settings)
    empty = emptyDaemonRss(settings)
    ours, theirs = [], []
    for rep in range(settings.repetitions(3, 1)):
        ours.append(runAiengine(settings, count))
        theirs.append(runBaseline(settings, count))
        settings.say(
            f"scale {rep + 1}: aiengine {ours[-1]['seconds']:.2f} s, "
            f"{(ours[-1]['rss'] - empty) / count:.1f} KiB/channel; baseline "
            f"{theirs[-1]['seconds']:.2f} s, "
            f"{(theirs[-1]['rss'] - theirs[-1]['empty']) / count:.1f} KiB/connection")
    seconds = best([r["seconds"] for r in ours], higher=False)
    baseSeconds = best([r["seconds"] for r in theirs], higher=False)
    memory = best([(r["rss"] - empty) / count for r in ours], higher=False)
    baseMemory = best([(r["rss"] - r["empty"]) / count for r in theirs], higher=False)
    during = [p * 1000 for r in ours for p in r["during"]]
    after = [p * 1000 for r in ours for p in r["after"]]
    timeRatio, memoryRatio = seconds / baseSeconds, memory / baseMemory
    label = f"{count:,} channels"
    worstAfter = max(after)
    worstDuring = max(during) if during else None
    return [
        Row(NAME, f"seconds to all connected ({label})", seconds, baseSeconds, "s",
            timeRatio, f"<= {TIME_TARGET:g}", timeRatio <= TIME_TARGET, note=note,
            details={"aiengine": ours, "baseline": theirs}),
        Row(NAME, f"RSS per connection ({label})", memory, baseMemory, "KiB",
            memoryRatio, f"<= {MEMORY_TARGET:g}", memoryRatio <= MEMORY_TARGET,
            note=f"empty daemon {empty / 1024:.1f} MiB"),
        Row(NAME, "console ping, all connected (worst)", worstAfter, None, "ms", None,
            f"< {PING_TARGET_MS:g} ms", worstAfter < PING_TARGET_MS,
            note=f"median {median(after):.1f} ms"),
        Row(NAME, "console ping while connecting (worst)", worstDuring, None, "ms", None,
            f"< {PING_TARGET_MS:g} ms",
            None if worstDuring is None else worstDuring < PING_TARGET_MS,
            note=(f"{len(during)} ping(s), median {median(during):.1f} ms" if during
                  else "all connected before the first ping")),
    ]


def profile(settings, path) -> None:
    """One aiengine run with the daemon under cProfile."""
    runAiengine(settings, channels(settings)[0], profile=path)
