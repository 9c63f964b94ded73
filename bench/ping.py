"""Ping: request/response round trips at concurrency 1, against Redis ``PING``.

One client program (``bench.peers.rrclient``: a blocking socket, one request
written, its answer read, the next) for both sides:

- ``Engine.ping`` at aiengine's console (0x01-framed ``<xmlcall>``, the
  ``<xmlcallresult>`` with ``<pong/>`` back) against ``PING`` at Redis
  (``+PONG``); the figure is round trips per second, target >= 0.5x Redis.
- ``Topics.request`` at the console, answered through a channel: the
  request is published on a topic; channel ``echo`` (``text-messages``,
  ``\\r\\n``, ``replies=ordered``) writes it to the same Redis, which takes
  ``PING`` as an inline command and answers ``+PONG``; the channel publishes
  that as the reply and the console answers the call with it.  So the far
  end costs what the baseline costs, and the difference is what aiengine's
  hop (console, broker, channel, two more sockets) adds.  Information only.
- For information, ``Engine.ping``'s answer from ``bench.peers.xmlconsole``,
  a bare Twisted program that only splits the requests, parses each with
  lxml and writes the answer the console would: what any Twisted console
  reaches here.  The ``Engine.ping`` row's note gives aiengine / bare.

200 untimed round trips first, then the timed ones; repetitions alternate
aiengine, Redis and the bare console; the median of 3 is the figure.
"""

from __future__ import annotations

from bench import servers
from bench.harness import (BenchError, Cleanup, Daemon, Peer, Row, describeSpread,
                           spread)

NAME = "ping"
TARGET = 0.5
REQUEST_TOPIC = "ping.request"
REPLY_TOPIC = "ping.reply"


def calls(settings) -> int:
    """Timed round trips per run."""
    return 5000 if settings.quick else 20000


def daemonConfig(echoPort):
    """The console (always there) and channel ``echo`` to Redis's port."""
    return (), (
        ("echo", {"host": "127.0.0.1", "port": echoPort, "protocol": "text-messages",
                  "protocol.delimiter": r"\r\n", "replies": "ordered",
                  "redirect-in": "true", "redirect-out": "true",
                  "topic-out": REQUEST_TOPIC, "topic-in": REPLY_TOPIC}),
    )


def client(settings, mode, port, count, *extra) -> dict:
    """One rrclient run at concurrency 1."""
    with Cleanup() as cleanup:
        peer = cleanup.add(Peer(settings, "rrclient", "--mode", mode, "--port", port,
                                "--count", count, *extra))
        done = peer.expect("done", 60 + count / 200)
    if done["bad"]:
        raise BenchError(f"ping: {done['bad']} of {done['answers']} {mode} answers "
                         f"were not the expected one")
    return done


REQUEST_ARGS = ("--topic-out", REQUEST_TOPIC, "--topic-in", REPLY_TOPIC,
                "--message", "PING")


def run(settings) -> list:
    """One Redis and one daemon; aiengine's two modes and Redis take turns."""
    count = calls(settings)
    measures = ((f"Engine.ping round trips/s (concurrency 1, {count:,})", "ping",
                 f">= {TARGET}"),
                (f"Topics.request via a channel to Redis, round trips/s "
                 f"(concurrency 1, {count:,})", "request", "info"),
                (f"bare Twisted console, Engine.ping round trips/s (concurrency 1, "
                 f"{count:,})", "bare", "info"))
    with Cleanup() as cleanup:
        try:
            redis = cleanup.add(servers.start("redis", settings))
        except servers.Unavailable as e:
            return [Row(NAME, f"{m} vs Redis PING", target=t, skipped=str(e))
                    for m, _, t in measures]
        daemon = cleanup.add(Daemon(settings, "ping", *daemonConfig(redis.port)))
        console = daemon.port("console")
        daemon.waitConnected("echo")
        bare = cleanup.add(Peer(settings, "xmlconsole"))
        barePort = bare.expect("listening", 30)["port"]
        runs = {"ping": [], "request": [], "redis": [], "bare": []}
        for rep in range(settings.repetitions(3, 1)):
            runs["ping"].append(client(settings, "console-ping", console, count))
            runs["redis"].append(client(settings, "redis-ping", redis.port, count))
            runs["request"].append(client(settings, "console-request", console, count,
                                          *REQUEST_ARGS))
            runs["bare"].append(client(settings, "console-ping", barePort, count))
            settings.say(f"ping {rep + 1}: " + ", ".join(
                f"{k} {v[-1]['rate']:,.0f}/s (p50 {v[-1]['p50'] * 1e6:.0f} us)"
                for k, v in runs.items()))
    b = spread([r["rate"] for r in runs["redis"]])[1]
    rows = []
    for measure, key, target in measures:
        ours = runs[key]
        a = spread([r["rate"] for r in ours])[1]
        ratio = a / b
        p50 = spread([r["p50"] * 1e6 for r in ours])[1]
        p50redis = spread([r["p50"] * 1e6 for r in runs["redis"]])[1]
        who = "bare console" if key == "bare" else "aiengine"
        note = (describeSpread(f"{who} min/median/max", [r["rate"] for r in ours])
                + "; " + describeSpread("Redis", [r["rate"] for r in runs["redis"]])
                + f"; median round trip {p50:.0f} us vs {p50redis:.0f} us")
        if key == "ping":
            note += (f"; aiengine / bare console "
                     f"{a / spread([r['rate'] for r in runs['bare']])[1]:.2f}")
        rows.append(Row(NAME, f"{measure} vs Redis PING", a, b, "calls/s", ratio,
                        target, ratio >= TARGET if key == "ping" else None, note=note,
                        details={"aiengine": ours, "redis": runs["redis"]}))
    return rows


def profile(settings, path) -> None:
    """Both aiengine modes once against a daemon under cProfile."""
    with Cleanup() as cleanup:
        redis = cleanup.add(servers.start("redis", settings))
        daemon = cleanup.add(Daemon(settings, "ping", *daemonConfig(redis.port),
                                    profile=path))
        console = daemon.port("console")
        daemon.waitConnected("echo")
        client(settings, "console-ping", console, calls(settings))
        client(settings, "console-request", console, calls(settings), *REQUEST_ARGS)
