"""The running daemon: broker, console registry, listeners and channels in one service.

:class:`Engine` is built from a :class:`~aiengine.config.ServiceConfig`.  It
starts listeners before channels and stops them in that order too.  Console
classes find what they need on it: ``broker``, ``channels``, ``media``.

Building the engine reads what the listeners need from disk, once: each
``auth.secret-file`` (surrounding whitespace stripped; an empty one is an
error) and each TLS certificate and key.  Any problem raises
:class:`~aiengine.config.ConfigError` naming the listener and the file, so
nothing starts half-configured.
"""

from __future__ import annotations

import time

from twisted.application.service import MultiService
from twisted.internet import defer, task
from twisted.logger import Logger

import aiengine
from aiengine.broker import Broker
from aiengine.channels import Channel
from aiengine.config import (ConfigError, ListenerConfig, ProtocolConfig,
                             ProtocolSettings, ServiceConfig, checkService)
from aiengine.console.builtins import registerBuiltins
from aiengine.console.protocol import ConsoleFactory
from aiengine.console.topics import ConsoleTopics
from aiengine.console.registry import CallRegistry
from aiengine.auth import readSecret
from aiengine.listeners import ListenerFactory, ListenerService
from aiengine.media import Media, registerMedia
from aiengine.tls import serverTLSOptions

__all__ = ["Engine", "DEFAULT_CONSOLE"]

_xml = ProtocolSettings(name="xml-messages")

#: The console used when media.xml declares no xmlcall listener.
DEFAULT_CONSOLE = ListenerConfig(
    name="console", port=20001, interface="127.0.0.1", msgtype="xmlcall",
    protocol=ProtocolConfig(name="xml-messages", inbound=_xml, outbound=_xml))


#: Seconds of channel starting per reactor turn.  Each start is followed by
#: its connection's completion in a later turn, so short slices keep every
#: turn short: with 10,000 channels, console pings during start-up took 200 ms
#: at worst with Twisted's default of 10 ms, and 40 ms with 2 ms.
START_SLICE = 0.002


def _slice():
    deadline = time.monotonic() + START_SLICE
    return lambda: time.monotonic() >= deadline


class Engine(MultiService):
    """aiengine as a Twisted service.

    :param config: a :class:`~aiengine.config.ServiceConfig`, from media.xml
        (:func:`~aiengine.config.load`) or built in code; either way it is
        checked as media.xml is (:func:`~aiengine.config.checkService`).
    :param reactor: the reactor (the global one when None).
    :param defaultConsole: add the console on ``127.0.0.1:20001`` when
        ``config`` declares none, as ``twistd aiengine`` does.
    :raises ConfigError: the settings do not fit together, or a secret, TLS
        or CA file is unusable.
    """

    version = aiengine.__version__

    def __init__(self, config: ServiceConfig, reactor=None, defaultConsole: bool = False):
        super().__init__()
        if reactor is None:
            from twisted.internet import reactor
        # A configuration built in code gets media.xml's checks too (one read
        # from media.xml has had them, with file and line).
        checkService(config)
        self.reactor = reactor
        self.config = config
        self.log = Logger(namespace="Engine")
        self.broker = Broker(clock=reactor)
        self.registry = CallRegistry()
        registerBuiltins(self.registry)
        self.channels: dict[str, Channel] = {}
        self.media = Media(self.channels)
        registerMedia(self.registry)
        self.listeners: dict[str, ListenerService] = {}
        self._starting = None  # the cooperative task starting the channels
        #: fires (None) once start-up is over: every channel has begun
        #: connecting, or the engine was stopped before they all had
        self.started = defer.Deferred()

        listeners = [c for c in config.listeners if self._runs(c, "listener")]
        # A console declared with run="false" is switched off on purpose.
        if defaultConsole and not any(c.msgtype == "xmlcall" for c in config.listeners):
            listeners.append(DEFAULT_CONSOLE)
        for lc in listeners:
            service = self._listener(lc)
            self.listeners[lc.name] = service
            service.setServiceParent(self)
        for cc in config.channels:
            if self._runs(cc, "channel"):
                try:
                    self.channels[cc.name] = Channel(cc, self.broker, reactor)
                except ConfigError as e:
                    self._locate(e, cc)
                    raise

    def _listener(self, lc: ListenerConfig) -> ListenerService:
        """The service of one listener; raises ConfigError for unusable files."""
        try:
            secret = readSecret(lc.auth_secret_file, lc.name) if lc.auth else None
            if lc.msgtype == "xmlcall":
                factory = ConsoleFactory(self.registry, self, name=lc.name,
                                         maxSize=lc.protocol.inbound.max_packet_size,
                                         secret=secret,
                                         showMessages=lc.protocol.inbound.show_messages)
                if lc.topic_in is not None or lc.topic_out is not None:
                    factory.topics = ConsoleTopics(factory, self.broker, lc.topic_in,
                                                   lc.topic_out)
            else:
                factory = ListenerFactory(lc, self.broker, secret=secret)
            tls = (serverTLSOptions(lc.name, lc.tls_certificate, lc.tls_key)
                   if lc.tls else None)
        except ConfigError as e:
            self._locate(e, lc)
            raise
        return ListenerService.fromConfig(lc, factory, self.reactor, tls=tls)

    def _locate(self, error: ConfigError, item) -> None:
        """Name media.xml and the element's line in an error found at build time."""
        if error.path is None:
            error.path, error.line = self.config.path, item.line

    def _runs(self, item, kind):
        if not item.run:
            self.log.info("{kind} {name} is not configured to run", kind=kind,
                          name=item.name)
        return item.run

    def startService(self):
        self.log.info("aiengine {version} starting from {path}", version=self.version,
                      path=self.config.path)
        # Listeners first (MultiService starts children in order), then channels.
        super().startService()
        # Channels start a slice at a time, so that with thousands of them the
        # console and the listeners still answer while they connect.
        cooperator = task.Cooperator(
            scheduler=lambda work: self.reactor.callLater(0, work),
            terminationPredicateFactory=_slice)
        began = self.reactor.seconds()
        self._starting = cooperator.cooperate(self._startChannels())
        done = self._starting.whenDone()
        done.addCallback(lambda _: self.log.info(
            "started {count} channel(s) in {seconds:.2f} s", count=len(self.channels),
            seconds=self.reactor.seconds() - began))
        done.addErrback(lambda failure: failure.trap(task.TaskStopped, task.TaskFinished))
        done.addBoth(self._startupOver)

    def _startChannels(self):
        for channel in list(self.channels.values()):
            try:
                channel.start()
            except Exception:
                # A bug in one channel must not keep the others down.
                self.log.failure("channel {name} could not start", name=channel.name)
            yield None

    def _startupOver(self, result):
        if not self.started.called:
            self.started.callback(None)
        return result  # an unexpected failure stays unhandled, so it is logged

    @defer.inlineCallbacks
    def stopService(self):
        self.log.info("aiengine stopping")
        if self._starting is not None:
            try:
                self._starting.stop()
            except (task.TaskDone, task.TaskFinished, task.TaskStopped):
                pass
            self._starting = None
        # Listeners close first, then channels.
        yield defer.DeferredList([defer.maybeDeferred(s.stopService)
                                  for s in self.listeners.values()])
        yield defer.DeferredList([defer.maybeDeferred(c.stop)
                                  for c in self.channels.values()])
        self.running = 0
        self.log.info("aiengine stopped")
