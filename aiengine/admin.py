"""The admin listener: Prometheus metrics, a health check and a live dashboard over HTTP.

A ``<listener>`` with ``msgtype`` ``admin`` serves, with twisted.web:

- ``GET /metrics``: the engine's counters in the Prometheus text format.
  :class:`EngineCollector` reads them from the live channels, listeners,
  MQTT bridges, topics and console registry at each scrape; nothing here
  keeps a copy.
  Each admin listener has its own ``CollectorRegistry``, so nothing else in
  the process (the global default registry) ends up in its output.
- ``GET /health``: ``200`` when every running permanent channel and every
  running bridge is connected and every listener is listening, else
  ``503``; the JSON body names what is down (:func:`health`).
- ``GET /``: the dashboard, a page that follows channels, listeners and
  topics live, and its endpoints under ``/api/`` (:mod:`aiengine.dashboard`).
- any other path: ``404``; a method a path does not take: ``405``.

With a secret (``auth=true``), every request must carry ``Authorization:
Bearer <secret>``; without it the answer is ``401`` with ``WWW-Authenticate:
Bearer``.  A wrong secret makes its address wait before the next one is
checked (:class:`~aiengine.auth.LoginThrottle`): ``429`` meanwhile.  A
browser logs in instead with the form ``GET /`` shows (``POST /login``),
which trades the secret, under the same throttle, for a session cookie
(:mod:`aiengine.dashboard.sessions`) that is then accepted as the bearer
token is.  Without a secret (a loopback listener), the dashboard answers
only requests whose ``Host`` is a loopback name or the listener's own
address, so that a web site cannot reach it through a name of its own that
resolves to 127.0.0.1 (DNS rebinding).

The listener's ``max-connections``, ``idle-timeout`` and TLS apply as to any
listener: :meth:`aiengine.engine.Engine._listener` wraps :func:`adminSite`'s
factory in a :class:`~aiengine.listeners.ListenerService`.
"""

from __future__ import annotations

import json
import math
import re
from urllib.parse import parse_qs

from prometheus_client import generate_latest
from prometheus_client.metrics_core import (CounterMetricFamily, GaugeMetricFamily,
                                            HistogramMetricFamily)
from prometheus_client.registry import Collector, CollectorRegistry
from prometheus_client.utils import floatToGoString
from twisted.internet import defer
from twisted.web import resource, server

from aiengine.auth import LoginThrottle, SharedSecret
from aiengine.bridge import CONNECTED as BRIDGE_CONNECTED
from aiengine.bridge import COUNTERS as BRIDGE_COUNTERS
from aiengine.channels.machine import CONNECTED
from aiengine.console.registry import CALL_BUCKETS
from aiengine.dashboard import staticFile
from aiengine.dashboard.sessions import Sessions
from aiengine.dashboard.web import ACTION_HEADER, Dashboard, jsonAnswer, securityHeaders
from aiengine.logs import PeerSafeLogger

__all__ = ["EngineCollector", "AdminResource", "AdminSite", "adminSite", "health",
           "METRICS_CONTENT_TYPE"]

#: What :func:`prometheus_client.generate_latest` writes: the text format
#: 0.0.4, which every Prometheus parses (newer prometheus_client versions
#: give CONTENT_TYPE_LATEST another version).
METRICS_CONTENT_TYPE = b"text/plain; version=0.0.4; charset=utf-8"

_BUCKET_LABELS = [floatToGoString(bound) for bound in CALL_BUCKETS] + ["+Inf"]

#: The HELP texts of the bridges' counters (:data:`aiengine.bridge.COUNTERS`,
#: as ``Bridges.status`` shows them).  ``messagesIn`` and ``messagesOut`` are
#: one family with a ``direction`` label, as the channels' and listeners'
#: messages are; each other counter ``fooBar`` is ``aiengine_bridge_foo_bar``
#: (a gauge, see :func:`_bridgeGauge`) or ``aiengine_bridge_foo_bar_total``.
#: A counter missing here is exported all the same, with a plain HELP text.
_BRIDGE_HELP = {
    "duplicatesDropped": "Inbound messages dropped as copies of ones already received",
    "loopsDropped": "Messages dropped because they would loop: one of the bridge's own "
                    "coming back in, or one that came in through it going back out",
    "queued": "Outbound messages waiting in the bridge's queue, unacknowledged QoS 1 "
              "ones included",
    "dropped": "Outbound messages dropped from a full queue",
    "reconnects": "Working connections to the MQTT broker that were lost (each is "
                  "followed by a reconnection)",
    "paused": "Times publishers of outbound topics were paused by a full queue",
    "inboundPaused": "Times a busy subscriber of an inbound topic paused the bridge",
    "heldAcks": "Inbound QoS 1 messages not acknowledged to the MQTT broker yet (held "
                "while a subscriber of their topic is busy)",
}

#: The bridge counters read as messages, by direction.
_BRIDGE_MESSAGES = {"messagesIn": "in", "messagesOut": "out"}


def _bridgeGauge(key: str) -> bool:
    """Whether the bridge counter ``key`` is a level (``queued``, and any
    ``held...``: what is waiting now), exported as a gauge; every other one
    only grows and is a Prometheus counter."""
    return key == "queued" or key.startswith("held")


def _snake(key: str) -> str:
    """``inboundPaused`` -> ``inbound_paused``."""
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", key).lower()


class EngineCollector(Collector):
    """A Prometheus collector of an :class:`~aiengine.engine.Engine`'s counters.

    Each :meth:`collect` reads the engine as it is then (a reload's new
    listeners and channels included).
    """

    def __init__(self, engine):
        self.engine = engine

    def collect(self):
        """The metric families, read from the engine now."""
        yield from self._channels(self.engine.channels.values())
        yield from self._listeners(self.engine.listeners.values())
        yield from self._bridges(self.engine.bridges.values())
        yield from self._topics(self.engine.broker.topics())
        yield from self._console(self.engine.registry)

    @staticmethod
    def _channels(channels):
        labels = ["channel"]
        up = GaugeMetricFamily("aiengine_channel_up",
                               "1 when the channel is connected, else 0", labels=labels)
        messages = CounterMetricFamily("aiengine_channel_messages_total",
                                       "Messages read (in) and written (out)",
                                       labels=["channel", "direction"])
        octets = CounterMetricFamily("aiengine_channel_bytes_total",
                                     "Bytes read (in) and written (out)",
                                     labels=["channel", "direction"])
        queued = GaugeMetricFamily("aiengine_channel_queued",
                                   "Outbound messages waiting in the channel's queue",
                                   labels=labels)
        dropped = CounterMetricFamily("aiengine_channel_dropped_total",
                                      "Outbound messages dropped from a full queue",
                                      labels=labels)
        connects = CounterMetricFamily("aiengine_channel_connects_total",
                                       "Connections made", labels=labels)
        failures = CounterMetricFamily("aiengine_channel_connect_failures_total",
                                       "Failed connection attempts", labels=labels)
        drops = CounterMetricFamily(
            "aiengine_channel_connection_drops_total",
            "Working connections that ended without aiengine asking", labels=labels)
        for channel in channels:
            name = [channel.name]
            up.add_metric(name, 1 if channel.state == CONNECTED else 0)
            messages.add_metric([channel.name, "in"], channel.messagesIn)
            messages.add_metric([channel.name, "out"], channel.messagesOut)
            octets.add_metric([channel.name, "in"], channel.bytesIn)
            octets.add_metric([channel.name, "out"], channel.bytesOut)
            queued.add_metric(name, channel.queued)
            dropped.add_metric(name, channel.dropped)
            connects.add_metric(name, channel.connects)
            failures.add_metric(name, channel.failures)
            drops.add_metric(name, channel.drops)
        return up, messages, octets, queued, dropped, connects, failures, drops

    @staticmethod
    def _listeners(services):
        labels = ["listener"]
        up = GaugeMetricFamily("aiengine_listener_up", "1 when the listener is listening",
                               labels=labels)
        connections = GaugeMetricFamily("aiengine_listener_connections",
                                        "Connections open now", labels=labels)
        accepted = CounterMetricFamily(
            "aiengine_listener_accepted_total",
            "Connections accepted since the listener started listening", labels=labels)
        refused = CounterMetricFamily(
            "aiengine_listener_refused_total",
            "Connections refused by max-connections since the listener started "
            "listening", labels=labels)
        messages = CounterMetricFamily(
            "aiengine_listener_messages_total",
            "Messages read (in) and written (out) by a message listener's connections",
            labels=["listener", "direction"])
        dropped = CounterMetricFamily(
            "aiengine_listener_dropped_total",
            "Outbound messages a message listener dropped for peers that did not read",
            labels=labels)
        for service in services:
            name = [service.name]
            up.add_metric(name, 0 if service.address is None else 1)
            guard = service.guard
            # The guard wraps every accepted connection, whatever the listener
            # serves (and before TLS or a secret), so it counts them all.
            connections.add_metric(name, len(guard.protocols) if guard is not None else 0)
            accepted.add_metric(name, guard.accepted if guard is not None else 0)
            refused.add_metric(name, guard.refused if guard is not None else 0)
            factory = service.factory
            # Only message listeners count messages; the console counts calls
            # (see the console metrics), this listener requests not at all.
            if hasattr(factory, "messagesIn"):
                messages.add_metric([service.name, "in"], factory.messagesIn)
                messages.add_metric([service.name, "out"], factory.messagesOut)
                dropped.add_metric(name, factory.dropped)
        return up, connections, accepted, refused, messages, dropped

    @staticmethod
    def _bridges(bridges):
        labels = ["bridge"]
        up = GaugeMetricFamily("aiengine_bridge_up",
                               "1 when the bridge is connected to its MQTT broker, else 0",
                               labels=labels)
        messages = CounterMetricFamily(
            "aiengine_bridge_messages_total",
            "Messages received from the MQTT broker (in) and published to it (out)",
            labels=["bridge", "direction"])
        families = {}
        for key in BRIDGE_COUNTERS:
            if key in _BRIDGE_MESSAGES:
                continue
            text = _BRIDGE_HELP.get(key, f"The bridge's {key} counter")
            if _bridgeGauge(key):
                families[key] = GaugeMetricFamily(f"aiengine_bridge_{_snake(key)}", text,
                                                  labels=labels)
            else:
                families[key] = CounterMetricFamily(
                    f"aiengine_bridge_{_snake(key)}_total", text, labels=labels)
        for bridge in bridges:
            status = bridge.status()
            name = [bridge.name]
            up.add_metric(name, 1 if status["state"] == BRIDGE_CONNECTED else 0)
            for key, direction in _BRIDGE_MESSAGES.items():
                if key in status:
                    messages.add_metric([bridge.name, direction], status[key])
            for key, family in families.items():
                if key in status:
                    family.add_metric(name, status[key])
        return [up, messages, *families.values()]

    @staticmethod
    def _topics(topics):
        families = {
            key: CounterMetricFamily(f"aiengine_topic_{key}_total", text, labels=["topic"])
            for key, text in (
                ("published", "Messages published"),
                ("delivered", "Messages handed to subscribers and waiting requests"),
                ("unrouted", "Messages that reached no subscriber and no request"),
                ("dropped", "Messages dropped from subscribers' full queues"),
                ("expired", "Messages whose ttl ran out in a subscriber's queue"))}
        for topic in topics:
            name = [topic.name]
            for key, family in families.items():
                family.add_metric(name, getattr(topic, key))
        return families.values()

    @staticmethod
    def _console(registry):
        calls = CounterMetricFamily(
            "aiengine_console_calls_total",
            "Console calls of existing methods, by outcome (ok, or exception: raised "
            "or failed)", labels=["class", "method", "status"])
        for key, count in registry.calls.items():
            calls.add_metric(list(key), count)
        durations = HistogramMetricFamily(
            "aiengine_console_call_duration_seconds",
            "Time from a console call's start until its result was ready",
            labels=["class", "method"])
        for key, stats in registry.callStats.items():
            if not stats[0] and not stats[1]:
                continue  # looked up, never called: no series yet
            cumulative, buckets = 0, []
            for label, count in zip(_BUCKET_LABELS, stats[2:-1]):
                cumulative += count
                buckets.append((label, cumulative))
            durations.add_metric(list(key), buckets, stats[-1])
        return calls, durations


def health(engine) -> dict:
    """``{"status": "ok" | "down", "down": [...]}``: what is down, each as
    ``{"kind": "channel" | "listener" | "bridge", "name": ..., "state": ...}``.

    Down: a running permanent channel that is not connected (connecting,
    waiting to retry, or stopped by ``Media.disconnect``), a listener that
    is not listening, a running bridge that is not connected to its MQTT
    broker (connecting, waiting to retry, or stopped because it could not
    start).  An on-demand channel is never down: it connects when it has
    something to send.  A bridge is always down while not connected: like a
    permanent channel, it stays connected to share its topics.
    """
    down = []
    for channel in engine.channels.values():
        if channel.config.permanent and channel.state != CONNECTED:
            down.append({"kind": "channel", "name": channel.name, "state": channel.state})
    for service in engine.listeners.values():
        if service.address is None:
            down.append({"kind": "listener", "name": service.name,
                         "state": "not listening"})
    for bridge in engine.bridges.values():
        if bridge.state != BRIDGE_CONNECTED:
            down.append({"kind": "bridge", "name": bridge.name, "state": bridge.state})
    return {"status": "down" if down else "ok", "down": down}


class AdminResource(resource.Resource):
    """Every request of an admin listener: ``/metrics``, ``/health``, the
    dashboard, or an error.

    :param engine: the :class:`~aiengine.engine.Engine`.
    :param registry: the ``CollectorRegistry`` ``/metrics`` writes out.
    :param secret: bytes a request must carry as ``Authorization: Bearer``,
        or None for none.
    :param clock: an ``IReactorTime`` for the login throttle, the browser
        sessions and the dashboard's event feed.
    :param log: where refused secrets and the dashboard's actions are logged.
    :param name: the listener's name.
    """

    isLeaf = True

    def __init__(self, engine, registry, secret=None, clock=None, log=None,
                 name="admin"):
        super().__init__()
        self.engine = engine
        self.registry = registry
        if clock is None:
            clock = engine.reactor
        self.log = log or PeerSafeLogger(namespace="aiengine.admin")
        #: what a request's bearer token is compared with; never logged
        self.sharedSecret = None if secret is None else SharedSecret(secret)
        #: wrong secrets per address (see LoginThrottle)
        self.throttle = LoginThrottle(clock)
        #: requests refused for a missing or wrong secret, and unchecked ones
        #: refused while their address had to wait
        self.authFailures = self.authThrottled = 0
        #: browsers logged in with the form
        self.sessions = Sessions(clock)
        #: the page and its endpoints
        self.dashboard = Dashboard(engine, name, clock, self.log,
                                   secured=self.sharedSecret is not None)
        self._routes = {b"/metrics": self.metrics, b"/health": self.health}

    def render(self, request):
        """Check the secret, then the path, then the method."""
        # Counters and states are of this instant: no cache may keep them.
        request.setHeader(b"cache-control", b"no-store")
        path = request.path
        if self.sharedSecret is None:
            if path not in self._routes and not _loopbackHost(request):
                return _plain(request, 403, b"forbidden: without auth, the dashboard "
                                            b"answers loopback names and addresses only\n")
        elif path not in _PUBLIC:
            refusal = self._refusal(request)
            if refusal is not None:
                if (path in (b"/", b"/index.html") and request.method == b"GET"
                        and request.getHeader(b"authorization") is None):
                    # A browser: the login form, still a 401.
                    return self._loginPage(request, 401)
                return refusal
        if path == b"/login":
            return self.login(request)
        if path == b"/logout":
            return self.logout(request)
        handler = self._routes.get(path)
        if handler is None:
            return self.dashboard.render(request)
        if request.method not in (b"GET", b"HEAD"):
            request.setHeader(b"allow", b"GET, HEAD")
            return _plain(request, 405, b"method not allowed: use GET or HEAD\n")
        return handler(request)

    def metrics(self, request) -> bytes:
        """``/metrics``: the registry's metrics in the Prometheus text format."""
        request.setHeader(b"content-type", METRICS_CONTENT_TYPE)
        return generate_latest(self.registry)

    def health(self, request) -> bytes:
        """``/health``: 200 or 503, and the JSON of :func:`health`."""
        state = health(self.engine)
        request.setResponseCode(200 if state["status"] == "ok" else 503)
        request.setHeader(b"content-type", b"application/json")
        return json.dumps(state).encode() + b"\n"

    # -- browsers --------------------------------------------------------------

    def cookieName(self, request) -> bytes:
        """The session cookie's name: a browser keeps cookies per host, not
        per port, so each listener's has its port in it."""
        return b"aiengine_session_%d" % request.getHost().port

    def login(self, request):
        """``/login``: ``GET`` shows the form, ``POST`` (form field ``secret``)
        sets the session cookie and goes to the page."""
        securityHeaders(request)
        if self.sharedSecret is None:
            return _seeOther(request)  # nothing to log in to
        if request.method == b"GET":
            return self._loginPage(request, 200)
        if request.method != b"POST":
            request.setHeader(b"allow", b"GET, POST")
            return _plain(request, 405, b"method not allowed: use GET or POST\n")
        host = _host(request)
        wait = self.throttle.retryAfter(host)
        if wait > 0:
            self.authThrottled += 1
            request.setHeader(b"retry-after", b"%d" % math.ceil(wait))
            return self._loginPage(request, 429, "Too many wrong secrets: wait "
                                                 f"{math.ceil(wait)} s and try again.")
        # The form's body only: a secret in the URL would end up in histories.
        body = request.content.read(4096) if request.content is not None else b""
        secret = (parse_qs(body).get(b"secret") or [b""])[0]
        if secret.strip() and self.sharedSecret.matches(secret):
            self.throttle.succeeded(host)
            request.addCookie(self.cookieName(request), self.sessions.create().encode(),
                              path=b"/", max_age=str(int(self.sessions.lifetime)),
                              httpOnly=True, secure=request.isSecure(), sameSite="strict")
            self.log.info("dashboard: browser logged in from {peer}", peer=host)
            return _seeOther(request)
        self.authFailures += 1
        wait = self.throttle.failed(host)
        self.log.warn("wrong secret from {peer} at the login form; the next try from "
                      "there waits {wait:g} s", peer=host, wait=wait)
        return self._loginPage(request, 401, "Wrong secret.")

    def _loginPage(self, request, code, message=None) -> bytes:
        securityHeaders(request)
        request.setResponseCode(code)
        request.setHeader(b"content-type", b"text/html; charset=utf-8")
        page = staticFile("login.html")
        if message:
            # Fixed texts of ours: nothing from the request is echoed.
            page = page.replace(b"<!--message-->",
                                b'<p class="error">' + message.encode() + b"</p>")
        return page

    def _session(self, request):
        """The request's session token, or None."""
        token = request.getCookie(self.cookieName(request))
        return token if token and self.sessions.valid(token) else None

    def logout(self, request) -> bytes:
        """``POST /logout`` (with ``X-Aiengine: 1``): end the browser's session."""
        securityHeaders(request)
        if request.method != b"POST":
            request.setHeader(b"allow", b"POST")
            return jsonAnswer(request, 405, {"ok": False,
                                             "error": "method not allowed: use POST"})
        if request.getHeader(ACTION_HEADER[0]) != ACTION_HEADER[1]:
            return jsonAnswer(request, 403, {
                "ok": False, "error": "actions need the header X-Aiengine: 1"})
        token = request.getCookie(self.cookieName(request))
        self.sessions.end(token)
        request.addCookie(self.cookieName(request), b"", path=b"/", max_age="0",
                          httpOnly=True, secure=request.isSecure(), sameSite="strict")
        return jsonAnswer(request, 200, {"ok": True})

    def _refusal(self, request):
        """The answer for a request without the right secret, or None."""
        header = request.getHeader(b"authorization")
        if header is None and self._session(request) is not None:
            return None
        header = header or b""
        scheme, _, token = header.strip().partition(b" ")
        if scheme.lower() != b"bearer" or not token.strip():
            self.authFailures += 1
            return _unauthorized(request)
        address = request.getClientAddress()
        host = str(getattr(address, "host", "?"))
        wait = self.throttle.retryAfter(host)
        if wait > 0:
            # Not even checked: guesses from this address are slowed down.
            self.authThrottled += 1
            request.setHeader(b"retry-after", b"%d" % math.ceil(wait))
            return _plain(request, 429, b"too many wrong secrets: wait and retry\n")
        # Constant time over fixed-length digests (see SharedSecret).
        if self.sharedSecret.matches(token):
            self.throttle.succeeded(host)
            return None
        self.authFailures += 1
        wait = self.throttle.failed(host)
        self.log.warn("wrong secret from {peer} for {path}; the next try from there "
                      "waits {wait:g} s", peer=host,
                      path=request.path.decode("ascii", "replace"), wait=wait)
        return _unauthorized(request)


#: What the login form needs before a login: itself and its style.
_PUBLIC = frozenset((b"/login", b"/style.css"))


def _host(request) -> str:
    return str(getattr(request.getClientAddress(), "host", "?"))


#: Host names that can only mean this machine.
_LOOPBACK_NAMES = frozenset((b"localhost", b"127.0.0.1", b"::1"))


def _loopbackHost(request) -> bool:
    """Whether the request's ``Host`` names this machine: a loopback name or
    the address the request came in on (no ``Host``: not a browser)."""
    header = request.getHeader(b"host")
    if header is None:
        return True
    header = header.strip().lower()
    if header.startswith(b"["):
        name = header[1:].partition(b"]")[0]
    else:
        name = header.rpartition(b":")[0] if b":" in header else header
    local = str(getattr(request.getHost(), "host", "")).lower().encode()
    return name in _LOOPBACK_NAMES or name == local or name.endswith(b".localhost")


def _seeOther(request) -> bytes:
    request.setResponseCode(303)
    # Relative: right behind a proxy that serves the page under a prefix.
    request.setHeader(b"location", b"./")
    return b""


def _plain(request, code, body: bytes) -> bytes:
    request.setResponseCode(code)
    request.setHeader(b"content-type", b"text/plain; charset=utf-8")
    return body


def _unauthorized(request) -> bytes:
    request.setHeader(b"www-authenticate", b'Bearer realm="aiengine"')
    return _plain(request, 401, b"authentication required: send "
                                b"Authorization: Bearer <secret>\n")


class AdminSite(server.Site):
    """The twisted.web ``Site`` of an admin listener, without an access log.

    A scraper calls every few seconds: an access log line each time would
    bury the daemon's own log, and its once-a-second date timer is not
    needed either.
    """

    noisy = False
    displayTracebacks = False

    def __init__(self, resource, name, secret=None, reactor=None):
        super().__init__(resource, reactor=reactor)
        self.name = name
        #: the shared secret (bytes) or None: ListenerService's start line
        #: says whether authentication is required; never logged
        self.secret = secret

    def logPrefix(self):
        """Names the listener in Twisted's own log lines."""
        return f"SocketServer::{self.name}"

    def startFactory(self):
        """No access log to open, no date timer to start."""

    def log(self, request):
        """No access log."""

    def closeConnections(self):
        """At shutdown (before the connections close): end the dashboard's
        event streams and cancel its calls, so that nothing is left running."""
        self.resource.dashboard.close()
        return defer.succeed(None)


def adminSite(engine, name: str, secret: bytes | None = None) -> AdminSite:
    """The factory of the admin listener ``name`` of ``engine``: a
    :class:`AdminSite` over an :class:`AdminResource` whose private
    ``CollectorRegistry`` holds an :class:`EngineCollector`."""
    registry = CollectorRegistry()
    registry.register(EngineCollector(engine))
    log = PeerSafeLogger(namespace=f"SocketServer::{name}")
    return AdminSite(AdminResource(engine, registry, secret, engine.reactor, log, name),
                     name, secret=secret, reactor=engine.reactor)
