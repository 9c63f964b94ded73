"""HTTP via aiengine: pages/s through an ``http`` channel, against the same nginx directly.

nginx (one worker, keepalive) serves a 1 KiB page.  aiengine: the
configuration of :mod:`bench.web`: a client writes the page's path as a line
into a duplex listener whose ``topic-in`` is the ``http`` channel's
``topic-out`` and whose ``topic-out`` is the channel's ``topic-in``; the
channel GETs the page from nginx on its persistent connection and the body
comes back to the client as a line.  Direct: the same client program
(``bench.peers.rrclient``) sends the ``GET`` (with the headers the channel
sends) to nginx on one persistent connection and reads the response.  Two
windows, the same for both sides: 1 (one request, its answer, the next) and
8 requests in flight (pipelined on the one connection directly, as the channel
pipelines its requests).  Figure: pages/s over direct pages/s, the median of
3 alternating runs.

A third side, for information: ``bench.peers.httpforwarder``, a bare Twisted
program doing only what the listener and channel do (lines in, the same
``GET`` pipelined, httptools, bodies out as lines), through which the same
client fetches the same pages.  A forwarder puts two more hops between the
client and nginx, each a wake-up of one more process, so its ratio to direct
is what any Twisted forwarder can reach on the machine; aiengine's ratio to
it is what the daemon's own work costs.
"""

from __future__ import annotations

from bench import servers
# The page listener and the http channel, as the web benchmark configures them.
from bench.web import daemonConfig
from bench.harness import (BenchError, Cleanup, Daemon, Peer, Row, describeSpread,
                           spread)

NAME = "httpvia"
TARGET = 0.5
WINDOWS = (1, 8)
SIDES = ("aiengine", "direct", "forwarder")


def fetches(settings, window) -> int:
    """Timed pages per run: about 2 s through aiengine."""
    count = 10_000 if window == 1 else 50_000
    return count // 4 if settings.quick else count


def client(settings, mode, port, count, window) -> dict:
    """One rrclient run fetching the page ``count`` times."""
    with Cleanup() as cleanup:
        peer = cleanup.add(Peer(settings, "rrclient", "--mode", mode, "--port", port,
                                "--count", count, "--window", window, "--path",
                                servers.PAGE_PATH, "--size", servers.PAGE_SIZE))
        done = peer.expect("done", 60 + count / 100)
    if done["bad"]:
        raise BenchError(f"httpvia: {done['bad']} of {done['answers']} {mode} answers "
                         f"were not the {servers.PAGE_SIZE}-byte page")
    return done


def run(settings) -> list:
    """One nginx, one daemon and the bare forwarder; aiengine, direct and the
    forwarder take turns."""
    def measure(window):
        return (f"pages/s ({fetches(settings, window):,} x {servers.PAGE_SIZE} B, "
                + ("concurrency 1)" if window == 1 else f"{window} in flight)"))

    with Cleanup() as cleanup:
        try:
            nginx = cleanup.add(servers.start("nginx", settings))
        except servers.Unavailable as e:
            return [row for w in WINDOWS for row in (
                Row(NAME, f"{measure(w)} vs nginx direct", target=f">= {TARGET}",
                    skipped=str(e)),
                Row(NAME, f"bare Twisted forwarder, {measure(w)} vs nginx direct",
                    target="info", skipped=str(e)))]
        daemon = cleanup.add(Daemon(settings, "httpvia", *daemonConfig(nginx.port)))
        port = daemon.port("pages")
        daemon.waitConnected("web")
        forwarder = cleanup.add(Peer(settings, "httpforwarder", "--upstream",
                                     nginx.port))
        forwarderPort = forwarder.expect("listening", 30)["port"]
        runs = {(w, side): [] for w in WINDOWS for side in SIDES}
        for rep in range(settings.repetitions(3, 1)):
            for window in WINDOWS:
                count = fetches(settings, window)
                runs[window, "aiengine"].append(client(settings, "lines", port, count,
                                                       window))
                runs[window, "direct"].append(client(settings, "http", nginx.port,
                                                     count, window))
                runs[window, "forwarder"].append(client(settings, "lines",
                                                        forwarderPort, count, window))
            settings.say(f"httpvia {rep + 1}: " + ", ".join(
                f"window {w} {side} {v[-1]['rate']:,.0f}/s"
                for (w, side), v in runs.items()))
    rows = []
    for window in WINDOWS:
        ours, theirs, bare = (runs[window, side] for side in SIDES)
        a, b, f = (spread([r["rate"] for r in side])[1] for side in (ours, theirs, bare))
        ratio = a / b
        note = (describeSpread("aiengine min/median/max", [r["rate"] for r in ours])
                + "; " + describeSpread("direct", [r["rate"] for r in theirs])
                + f"; aiengine / bare forwarder {a / f:.2f}")
        forwarderNote = describeSpread("forwarder min/median/max",
                                       [r["rate"] for r in bare])
        if window == 1:
            p50, direct, viaBare = (spread([r["p50"] * 1e6 for r in side])[1]
                                    for side in (ours, theirs, bare))
            note += f"; median round trip {p50:.0f} us vs {direct:.0f} us"
            forwarderNote += f"; median round trip {viaBare:.0f} us vs {direct:.0f} us"
        rows.append(Row(NAME, f"{measure(window)} vs nginx direct", a, b, "pages/s",
                        ratio, f">= {TARGET}", ratio >= TARGET, note=note,
                        details={"aiengine": ours, "direct": theirs, "forwarder": bare}))
        rows.append(Row(NAME, f"bare Twisted forwarder, {measure(window)} vs nginx "
                              f"direct", f, b, "pages/s", f / b, "info", None,
                        note=forwarderNote))
    return rows


def profile(settings, path) -> None:
    """Both windows once through a daemon under cProfile."""
    with Cleanup() as cleanup:
        nginx = cleanup.add(servers.start("nginx", settings))
        daemon = cleanup.add(Daemon(settings, "httpvia", *daemonConfig(nginx.port),
                                    profile=path))
        port = daemon.port("pages")
        daemon.waitConnected("web")
        for window in WINDOWS:
            client(settings, "lines", port, fetches(settings, window), window)
