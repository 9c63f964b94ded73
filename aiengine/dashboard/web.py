"""The dashboard's HTTP side: its page, its JSON endpoints and its event stream.

:class:`Dashboard` answers the requests :class:`aiengine.admin.AdminResource`
hands it, after that has checked the secret (and, without one, the
``Host``).  Actions (``POST``) need the header ``X-Aiengine: 1``, which no
cross-site form can send, and are refused when the admin listener could
grant more than the console does (:meth:`Dashboard.actionsRefusal`).
"""

from __future__ import annotations

import json
from urllib.parse import unquote

from twisted.internet.defer import CancelledError
from twisted.python.failure import Failure
from twisted.web.server import NOT_DONE_YET

from aiengine.console.protocol import ConsoleFactory
from aiengine.dashboard import STATIC_FILES, staticFile
from aiengine.dashboard.calls import ConsoleAdapter, examples, serialize
from aiengine.dashboard.feed import EventFeed, readRows, snapshotData
from aiengine.logs import peerHost
from aiengine.media import UnknownChannel

__all__ = ["Dashboard", "ACTION_HEADER", "MAX_BODY", "CONTENT_SECURITY_POLICY"]

#: The header (and its value) every action must carry.
ACTION_HEADER = (b"x-aiengine", b"1")
#: The largest request body an action takes, in bytes (the console's default
#: largest request).
MAX_BODY = 1000000
#: The page runs only its own script and style, and nothing may frame it.
CONTENT_SECURITY_POLICY = (b"default-src 'none'; script-src 'self'; style-src 'self'; "
                           b"img-src 'self' data:; connect-src 'self'; form-action 'self'; "
                           b"frame-ancestors 'none'; base-uri 'none'")

_ACTIONS = (b"connect", b"disconnect")


def securityHeaders(request) -> None:
    """Headers every dashboard answer carries."""
    request.setHeader(b"x-content-type-options", b"nosniff")
    request.setHeader(b"x-frame-options", b"DENY")
    request.setHeader(b"referrer-policy", b"no-referrer")
    request.setHeader(b"content-security-policy", CONTENT_SECURITY_POLICY)


def jsonAnswer(request, code: int, data) -> bytes:
    """``data`` as a JSON answer with status ``code``."""
    request.setResponseCode(code)
    request.setHeader(b"content-type", b"application/json")
    return json.dumps(data).encode("utf-8") + b"\n"


class Dashboard:
    """The dashboard of one admin listener.

    :param engine: the :class:`~aiengine.engine.Engine`.
    :param name: the admin listener's name.
    :param clock: ``IReactorTime`` of the event feed.
    :param log: where actions and the console calls' outcomes are logged.
    :param secured: whether the admin listener requires a secret.
    """

    def __init__(self, engine, name: str, clock, log, secured: bool):
        self.engine = engine
        self.name = name
        self.log = log
        self.secured = secured
        self.calls = ConsoleAdapter(engine, name, log)
        self.feed = EventFeed(engine, clock, extra=self._extra)
        #: console calls and publishes whose answers are still to come
        self.pending: set = set()

    def _extra(self) -> dict:
        refusal = self.actionsRefusal()
        return {"actions": refusal is None, "actionsRefused": refusal,
                "auth": self.secured}

    def actionsRefusal(self):
        """Why actions are refused (None: they are allowed).

        Without a secret, the admin listener must not open what a console
        keeps behind a login: the page's actions are console calls.
        """
        if self.secured:
            return None
        for service in self.engine.listeners.values():
            factory = service.factory
            if isinstance(factory, ConsoleFactory) and factory.authRequired:
                return (f"console '{service.name}' requires a login and admin listener "
                        f"'{self.name}' has no auth: give it auth=true to use the "
                        f"dashboard's actions")
        return None

    # -- routing ---------------------------------------------------------------

    def render(self, request):
        """Answer a request for the page or an endpoint (secret checked)."""
        securityHeaders(request)
        path, method = request.path, request.method
        static = STATIC_FILES.get(path)
        if static is not None:
            if method not in (b"GET", b"HEAD"):
                return _notAllowed(request, b"GET, HEAD")
            name, contentType = static
            request.setHeader(b"content-type", contentType)
            return staticFile(name)
        if path in (b"/api/events", b"/api/snapshot", b"/api/examples"):
            if method != b"GET":
                return _notAllowed(request, b"GET")
            return {b"/api/events": self.events, b"/api/snapshot": self.snapshot,
                    b"/api/examples": self.examples}[path](request)
        action = self._action(path)
        if action is None:
            return jsonAnswer(request, 404, {
                "ok": False, "error": "not found: the admin listener serves /metrics, "
                                      "/health, the dashboard at / and its /api/"})
        if method != b"POST":
            # An action by GET could be triggered by a link or an <img>.
            return _notAllowed(request, b"POST")
        if request.getHeader(ACTION_HEADER[0]) != ACTION_HEADER[1]:
            return jsonAnswer(request, 403, {
                "ok": False, "error": "actions need the header X-Aiengine: 1"})
        refusal = self.actionsRefusal()
        if refusal is not None:
            return jsonAnswer(request, 403, {"ok": False, "error": refusal})
        body = request.content.read(MAX_BODY + 1) if request.content is not None else b""
        if len(body) > MAX_BODY:
            return jsonAnswer(request, 413, {
                "ok": False, "error": f"request body larger than {MAX_BODY} bytes"})
        return action(request, body)

    def _action(self, path: bytes):
        """The handler of an action path, or None."""
        if path == b"/api/console":
            return self.console
        if path == b"/api/publish":
            return self.publish
        parts = path.split(b"/")
        # b"/api/channels/NAME/connect" -> ["", "api", "channels", NAME, "connect"]
        if len(parts) == 5 and parts[1:3] == [b"api", b"channels"] and parts[3] \
                and parts[4] in _ACTIONS:
            name = unquote(parts[3].decode("utf-8", "replace"))
            action = parts[4].decode("ascii")
            return lambda request, body: self.channelAction(request, name, action)
        return None

    # -- reading ---------------------------------------------------------------

    def events(self, request):
        """``GET /api/events``: the event stream (see :mod:`~aiengine.dashboard.feed`)."""
        request.setHeader(b"content-type", b"text/event-stream")
        # Proxies (nginx) would otherwise hold the events back.
        request.setHeader(b"x-accel-buffering", b"no")
        self.feed.add(request)
        return NOT_DONE_YET

    def snapshot(self, request) -> bytes:
        """``GET /api/snapshot``: one snapshot as JSON, for scripts."""
        return jsonAnswer(request, 200, snapshotData(
            readRows(self.engine), self.feed.clock.seconds(), **self._extra()))

    def examples(self, request) -> bytes:
        """``GET /api/examples``: ``Engine.help``'s example calls."""
        return jsonAnswer(request, 200, {"examples": examples()})

    # -- actions ---------------------------------------------------------------

    def channelAction(self, request, name: str, action: str) -> bytes:
        """``POST /api/channels/NAME/connect`` (or ``disconnect``): what
        ``Media.connect`` (``Media.disconnect``) does at the console.

        Answers at once with the channel's state; a connection that takes
        time shows in the event stream.
        """
        peer = peerHost(request.transport)
        self.log.info("dashboard: {action} channel {channel} asked from {peer}",
                      action=action, channel=name, peer=peer)
        media = self.engine.media
        d = media.connect(name) if action == "connect" else media.disconnect(name)
        outcome = []

        def settled(result):
            if not outcome:
                outcome.append(result)  # fired at once: answered below
            elif isinstance(result, Failure) and not result.check(CancelledError):
                # The channel logs its own connection failures; this says
                # that the dashboard's request ended so.
                self.log.info("dashboard: {action} channel {channel}: {error}",
                              action=action, channel=name,
                              error=result.getErrorMessage())

        d.addBoth(settled)
        if outcome and isinstance(outcome[0], Failure):
            failure = outcome[0]
            code = 404 if failure.check(UnknownChannel) else 409
            return jsonAnswer(request, code, {"ok": False, "channel": name,
                                              "error": failure.getErrorMessage()})
        outcome.append(None)  # later outcomes are logged, not answered
        return jsonAnswer(request, 200, {"ok": True, "channel": name, "action": action,
                                         "state": self.engine.channels[name].state})

    def console(self, request, body: bytes):
        """``POST /api/console``: the body is one ``<xmlcall>``; the answer is
        its ``<xmlcallresult>``, as a console connection would read it."""
        session = self.calls.session()
        self.log.info("dashboard: console call as {session} from {peer}",
                      session=session, peer=peerHost(request.transport))

        def answer(element):
            request.setHeader(b"content-type", b"application/xml; charset=utf-8")
            return serialize(element) + b"\n"

        return self._later(request, self.calls.runText(body, session), answer)

    def publish(self, request, body: bytes):
        """``POST /api/publish``: ``{"topic", "message", "type"}`` (JSON; type
        ``text`` by default) published as ``Topics.publish`` does; answers
        ``{"ok": true, "messageId": ...}`` or ``{"ok": false, "error": ...}``."""
        try:
            data = json.loads(body or b"null")
            topic, message = data["topic"], data["message"]
            msgtype = data.get("type", "text")
            if not all(isinstance(v, str) for v in (topic, message, msgtype)):
                raise TypeError
        except (ValueError, KeyError, TypeError, AttributeError):
            return jsonAnswer(request, 400, {
                "ok": False, "error": 'expected JSON {"topic": "..", "message": "..", '
                                      '"type": "text"}'})
        session = self.calls.session()
        self.log.info("dashboard: publish on {topic} as {session} from {peer}",
                      topic=topic, session=session, peer=peerHost(request.transport))

        def answer(element):
            if element.get("status") == "OK":
                return jsonAnswer(request, 200, {"ok": True,
                                                 "messageId": element.findtext("messageId")})
            return jsonAnswer(request, 400, {"ok": False,
                                             "error": element.findtext("exception")})

        return self._later(request, self.calls.publish(topic, message, msgtype, session),
                           answer)

    def _later(self, request, d, answer):
        """Answer ``request`` with ``answer(result)`` when ``d`` fires; a
        request whose client goes first cancels ``d``."""
        gone = []
        self.pending.add(d)

        def lost(_):
            gone.append(True)
            d.cancel()

        request.notifyFinish().addErrback(lost)

        def done(result):
            self.pending.discard(d)
            if gone:
                return
            try:
                body = answer(result)
            except Exception:
                # A bug of ours: logged, and the request still gets an answer.
                self.log.failure("dashboard: could not answer")
                request.setResponseCode(500)
                request.setHeader(b"content-type", b"text/plain; charset=utf-8")
                body = b"internal error\n"
            request.write(body)
            request.finish()

        d.addCallback(done)
        return NOT_DONE_YET

    def close(self) -> None:
        """End the event streams and cancel the calls still running (at shutdown)."""
        self.feed.close()
        for d in list(self.pending):
            d.cancel()


def _notAllowed(request, allowed: bytes) -> bytes:
    request.setHeader(b"allow", allowed)
    return jsonAnswer(request, 405, {"ok": False, "error": "method not allowed: use "
                                                          + allowed.decode("ascii")})
