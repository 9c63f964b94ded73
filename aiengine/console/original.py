"""The original's test classes, callable at the console as its deploy files
call them: ``TestDirectChannels.testRequestPage`` and ``TestEngineThreads``."""

from __future__ import annotations

import sys
import threading
import traceback

from lxml import etree
from twisted.internet import defer
from twisted.logger import Logger

from aiengine.broker import NoSubscriber
from aiengine.console.interfaces import CallError, ConsoleClass, Param, boolean, method
from aiengine.console.results import setBody, textElement, xmlSafe

__all__ = ["TestDirectChannels", "TestEngineThreads"]


class TestDirectChannels(ConsoleClass):
    """The original's test class: read a page through the channel that
    subscribes to ``http.request`` (``google`` in the original's media.xml)."""

    name = "TestDirectChannels"
    description = "The original's channel tests."

    requestTopic = "http.request"
    responseTopic = "http.response"
    timeout = 5.0

    @staticmethod
    def _takers(broker, topic):
        """Who a message published on ``topic`` now reaches, for a person:
        the channels that subscribe to it, else its other subscribers."""
        names = [sub.name for sub in broker.topic(topic).subscriptions if sub.active]
        channels = [n[len("channel:"):] for n in names if n.startswith("channel:")]
        return channels or names

    @method("Publish a page address to http.request and answer the body of its "
            "response on http.response (5 s).", Param("page", "Address of the page."))
    def testRequestPage(self, call):
        page = call.params["page"]
        broker = call.engine.broker
        # The channels the request reaches, named when none answers.
        takers = self._takers(broker, self.requestTopic)
        d = broker.request(self.requestTopic, self.responseTopic, page,
                           timeout=self.timeout, source=call.connection.session)

        def answer(reply):
            body = textElement("body", reply.body)
            status = reply.attributes.get("status")
            if status is not None:
                body.set("status", str(status))
            return [textElement("page", page), body]

        def noAnswer(failure):
            who = ", ".join(takers) or "any channel"
            if failure.check(NoSubscriber):
                raise CallError(f"No response from {who} page={page}: "
                                f"{failure.getErrorMessage()}")
            failure.trap(defer.TimeoutError)
            raise CallError(f"No response from {who} page={page}")

        return d.addCallbacks(answer, noAnswer)


class TestEngineThreads(ConsoleClass):
    """The original's thread test class.

    The original's engine ran each of its services in threads it named
    itself.  Here a thread is a Python thread of the daemon's process, as
    :func:`threading.enumerate` lists them: ``MainThread`` runs the reactor
    (every listener, channel and console call), the others are the ones
    Twisted's thread pool (name resolution, ``deferToThread``) or a library
    started.  A stack, asked for with ``showStack=true``, is the thread's
    Python stack at the moment of the call (:func:`sys._current_frames`);
    the calling thread's own stack ends in the console method.  What the
    original only wrote to its log is both logged and answered here.
    """

    name = "TestEngineThreads"
    description = "The original's engine thread tests."
    log = Logger(namespace="TestEngineThreads")

    showStack = Param("showStack", "true: also each thread's stack (as the "
                      "<thread> element's text); default false.", default="false")

    @staticmethod
    def _flag(call, key):
        return boolean(call.params[key], key)

    def _describe(self, threads, showStack):
        frames = sys._current_frames() if showStack else {}
        answer = []
        for thread in threads:
            element = etree.Element("thread")
            element.set("name", xmlSafe(thread.name))
            element.set("id", str(thread.ident))
            element.set("daemon", "true" if thread.daemon else "false")
            if showStack:
                frame = frames.get(thread.ident)
                stack = "".join(traceback.format_stack(frame)) if frame else ""
                setBody(element, stack)
                self.log.info("thread {name} (id {id}):\n{stack}", name=thread.name,
                              id=thread.ident, stack=stack)
            else:
                self.log.info("thread {name} (id {id})", name=thread.name,
                              id=thread.ident)
            answer.append(element)
        return answer

    @method("Log every thread of the daemon, with its stack when showStack is "
            "true; answer one <thread name id daemon> per thread (its stack as "
            "text with showStack).", showStack)
    def testThreadDump(self, call):
        threads = threading.enumerate()
        self.log.info("thread dump: {n} thread(s)", n=len(threads))
        return self._describe(threads, self._flag(call, "showStack"))

    @method("Log the thread called threadName, with its stack when showStack is "
            "true, and answer it as testThreadDump does.  'main', the original's "
            "name for it, is MainThread unless a thread has that name.",
            Param("threadName", "Name of the thread (MainThread is the reactor's)."),
            showStack)
    def testShowThread(self, call):
        wanted = call.params["threadName"]
        showStack = self._flag(call, "showStack")
        threads = threading.enumerate()
        found = [t for t in threads if t.name == wanted]
        if not found and wanted == "main":
            found = [t for t in threads if t is threading.main_thread()]
        if not found:
            known = ", ".join(sorted({t.name for t in threads}))
            raise CallError(f"Unknown thread name={wanted}; the threads are: {known}")
        return self._describe(found, showStack)
