"""What the dashboard shows, and how it learns of changes: server-sent events.

The engine is read as *rows*: per section (``channels``, ``listeners``,
``topics``) a dict of name to a tuple of plain values, in the order of the
section's columns (:data:`COLUMNS`).  Tuples compare cheaply, so the diff
between two readings (:func:`diff`) is one comparison per row.

``GET /api/events`` is a ``text/event-stream`` (:class:`EventFeed`):

- ``event: snapshot``: first, and again after the client fell behind.  Its
  data is ``{"now": t, "actions": bool, "channels": {"columns": [...],
  "rows": [[...], ...]}, "listeners": {...}, "topics": {...}}``.
- ``event: diff``: at most once a second, only when something changed:
  ``{"now": t, "channels": {"rows": [...], "removed": [names]}, ...}`` with
  only the sections that changed, and in each only the rows whose values
  changed (whole rows) and the names that are gone.
- ``: keepalive`` comments when nothing was sent for :attr:`EventFeed.keepalive`
  seconds, so that proxies and idle timeouts leave the stream open.

``now`` and each channel's ``since`` are the reactor's clock (seconds): the
page gets a channel's time in its state as ``now - since``.
"""

from __future__ import annotations

import json
from time import perf_counter

from twisted.internet.interfaces import IPushProducer
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from zope.interface import implementer

from aiengine.console.results import hostPort

__all__ = ["COLUMNS", "readRows", "diff", "snapshotData", "event", "EventFeed"]

#: The columns of each section's rows; the first is the row's name.
COLUMNS = {
    "channels": ("name", "state", "since", "peer", "messagesIn", "messagesOut",
                 "bytesIn", "bytesOut", "queued", "dropped", "failures", "permanent",
                 "lastError"),
    "listeners": ("name", "address", "connections", "accepted", "refused",
                  "messagesIn", "messagesOut"),
    "topics": ("name", "published", "delivered", "unrouted", "dropped", "subscribers"),
}


def _channelRows(channels) -> dict:
    rows = {}
    for name, channel in channels.items():
        s = channel.status()
        rows[name] = (name, s["state"], s["stateSince"], hostPort(s["host"], s["port"]),
                      s["messagesIn"], s["messagesOut"], s["bytesIn"], s["bytesOut"],
                      s["queued"], s["dropped"], s["failures"], s["permanent"],
                      s["lastError"])
    return rows


def _listenerRows(services) -> dict:
    rows = {}
    for name, service in services.items():
        address = service.address
        guard = service.guard
        factory = service.factory
        # As the metrics count them: the guard sees every connection; only
        # message listeners count messages, a console counts its requests.
        messagesIn = getattr(factory, "messagesIn", getattr(factory, "requests", None))
        rows[name] = (name, hostPort(*address) if address else None,
                      len(guard.protocols) if guard is not None else 0,
                      guard.accepted if guard is not None else 0,
                      guard.refused if guard is not None else 0,
                      messagesIn, getattr(factory, "messagesOut", None))
    return rows


def _topicRows(broker) -> dict:
    return {topic.name: (topic.name, topic.published, topic.delivered, topic.unrouted,
                         topic.dropped, len(topic.subscriptions))
            for topic in broker.topics()}


def readRows(engine) -> dict:
    """``{section: {name: row tuple}}`` of ``engine`` now."""
    return {"channels": _channelRows(engine.channels),
            "listeners": _listenerRows(engine.listeners),
            "topics": _topicRows(engine.broker)}


def diff(previous: dict, current: dict) -> dict:
    """What changed from ``previous`` to ``current`` (both :func:`readRows`'):
    ``{section: {"rows": [changed or new rows], "removed": [names]}}``, with
    only the sections where something changed."""
    changes = {}
    for section, rows in current.items():
        before = previous.get(section, {})
        changed = [list(row) for name, row in rows.items() if before.get(name) != row]
        # Most seconds nothing is removed: only look when the counts say so,
        # or when rows were added (a rename is one removal and one addition).
        removed = []
        if len(before) + sum(1 for row in changed if row[0] not in before) != len(rows):
            removed = [name for name in before if name not in rows]
        if changed or removed:
            changes[section] = {"rows": changed, "removed": removed}
    return changes


def snapshotData(rows: dict, now: float, **extra) -> dict:
    """The data of a ``snapshot`` event for ``rows`` at ``now``."""
    data = {"now": now, **extra}
    for section, sectionRows in rows.items():
        data[section] = {"columns": COLUMNS[section],
                         "rows": [list(row) for row in sectionRows.values()]}
    return data


def event(kind: str, data) -> bytes:
    """One server-sent event: ``event: kind`` and ``data`` as one JSON line."""
    # JSON escapes line ends inside strings, so the data is one line.
    return (b"event: " + kind.encode("ascii") + b"\ndata: "
            + json.dumps(data, separators=(",", ":")).encode("utf-8") + b"\n\n")


@implementer(IPushProducer)
class _Client:
    """One open event stream, and whether its peer keeps up."""

    def __init__(self, request):
        self.request = request
        #: the connection's buffer is full: skip diffs, send a snapshot later
        self.paused = False
        #: diffs were skipped: the next event must be a snapshot
        self.stale = False

    def pauseProducing(self):
        self.paused = True

    def resumeProducing(self):
        self.paused = False

    def stopProducing(self):
        self.paused = True


class EventFeed:
    """The server-sent events of one admin listener, to every page watching.

    One :class:`~twisted.internet.task.LoopingCall` reads the engine every
    :attr:`interval` seconds while at least one client is connected, and
    sends every client the same diff against the previous reading.  A client
    whose connection does not take what is written (its buffer is full) gets
    no diffs meanwhile, then a fresh snapshot: a slow page costs no memory.

    :param engine: the :class:`~aiengine.engine.Engine` (or anything with
        ``channels``, ``listeners`` and ``broker``).
    :param clock: ``IReactorTime`` for the loop and ``now``.
    :param extra: a callable giving more keys for each snapshot (the page's
        ``actions``).
    """

    #: seconds between two readings
    interval = 1.0
    #: seconds without any event after which a keepalive comment is sent
    keepalive = 15.0

    def __init__(self, engine, clock, extra=None):
        self.engine = engine
        self.clock = clock
        self.extra = extra or dict
        self.log = Logger(namespace="aiengine.dashboard")
        self.clients: set = set()
        #: the last reading, which the next diff is made against
        self._rows = None
        self._loop = None
        self._quietSince = 0.0
        #: readings made, and the seconds (wall clock) the last one took
        self.ticks = 0
        self.lastTickSeconds = 0.0

    def snapshot(self, rows=None) -> bytes:
        """A ``snapshot`` event of ``rows`` (read now when None)."""
        if rows is None:
            rows = readRows(self.engine)
        return event("snapshot", snapshotData(rows, self.clock.seconds(), **self.extra()))

    def add(self, request) -> None:
        """Stream to ``request`` (headers already set): a snapshot now, then
        the diffs, until the request or the feed ends."""
        rows = readRows(self.engine)
        client = _Client(request)
        request.registerProducer(client, True)
        # Tells EventSource to come back after 2 s when the stream ends.
        request.write(b"retry: 2000\n" + self.snapshot(rows))
        self.clients.add(client)
        request.notifyFinish().addBoth(self._finished, client)
        if self._rows is None:
            self._rows = rows
        if self._loop is None:
            self._quietSince = self.clock.seconds()
            self._loop = LoopingCall(self.tick)
            self._loop.clock = self.clock
            self._loop.start(self.interval, now=False).addErrback(self._broken)

    def _broken(self, failure):
        # A bug: said once, and the streams end, so that the pages come back
        # (EventSource reconnects) to a fresh snapshot and a new loop.
        self.log.failure("the dashboard's feed failed; its streams are closed", failure)
        self._loop = None
        self.close()

    def _finished(self, _, client):
        self.clients.discard(client)
        if not self.clients:
            self._stopLoop()

    def _stopLoop(self):
        if self._loop is not None:
            if self._loop.running:
                self._loop.stop()
            self._loop = None
        self._rows = None

    def tick(self) -> None:
        """Read the engine and send what changed since the last reading
        (``lastTickSeconds`` says how long that took)."""
        started = perf_counter()
        rows = readRows(self.engine)
        changes = diff(self._rows or {}, rows)
        self._rows = rows
        self.ticks += 1
        now = self.clock.seconds()
        data = None
        if changes:
            data = event("diff", {"now": now, **changes})
        elif now - self._quietSince >= self.keepalive:
            data = b": keepalive\n\n"
        if data is not None:
            self._quietSince = now
        snapshot = None
        for client in list(self.clients):
            if client.paused:
                client.stale = client.stale or data is not None
                continue
            if client.stale:
                if snapshot is None:
                    snapshot = self.snapshot(rows)
                client.stale = False
                client.request.write(snapshot)
            elif data is not None:
                client.request.write(data)
        self.lastTickSeconds = perf_counter() - started

    def close(self) -> None:
        """End every stream and stop reading (at shutdown)."""
        self._stopLoop()
        for client in list(self.clients):
            self.clients.discard(client)
            request = client.request
            if not request.finished and not getattr(request, "_disconnected", False):
                request.unregisterProducer()
                request.finish()
