"""The running daemon: broker, console registry, listeners and channels in one service.

:class:`Engine` is built from a :class:`~aiengine.config.ServiceConfig`.  It
starts listeners before channels, then its MQTT bridges
(:mod:`aiengine.bridge`), and stops them in that order too.  Console
classes find what they need on it: ``broker``, ``channels``, ``media``.

Building the engine reads what the listeners need from disk, once: each
``auth.secret-file`` (surrounding whitespace stripped; an empty one is an
error) and each TLS certificate and key.  Any problem raises
:class:`~aiengine.config.ConfigError` naming the listener and the file, so
nothing starts half-configured.

:meth:`Engine.reload` re-reads media.xml while running (SIGHUP and the
console's ``Engine.reload``): a listener or channel whose settings and files
did not change keeps its connections; a changed one is stopped (a channel's
queue flushed first) and started again; a removed one is stopped; an added
one is started.  A new file that does not load, or whose secrets or TLS files
do not read, changes nothing.
"""

from __future__ import annotations

import dataclasses
import time

from twisted.application.service import MultiService
from twisted.internet import defer, task
from twisted.logger import Logger

import aiengine
from aiengine.broker import Broker
from aiengine.channels import Channel
from aiengine.config import (ConfigError, ListenerConfig, ProtocolConfig,
                             ProtocolSettings, ServiceConfig, checkService, load)
from aiengine.console.builtins import registerBuiltins
from aiengine.console.protocol import ConsoleFactory
from aiengine.console.topics import ConsoleTopics
from aiengine.console.registry import CallRegistry
from aiengine.auth import readSecret, readSecretFile
from aiengine.bridge import MqttBridge
from aiengine.console.bridges import registerBridges
from aiengine.listeners import ListenerFactory, ListenerService
from aiengine.media import Media, registerMedia
from aiengine.tls import serverTLSOptions

__all__ = ["Engine", "DEFAULT_CONSOLE", "ReloadError", "ReloadResult"]

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


class ReloadError(Exception):
    """A reload could not be made (another one is under way)."""


@dataclasses.dataclass
class ReloadResult:
    """What a reload did: ``(kind, name)`` pairs, kind ``listener``, ``channel``
    or ``bridge`` (any change to a bridge restarts it).

    ``failed`` lists what was to start and could not (a listener whose
    address is taken, say), with the reason: ``(kind, name, reason)``.
    """

    added: list = dataclasses.field(default_factory=list)
    removed: list = dataclasses.field(default_factory=list)
    changed: list = dataclasses.field(default_factory=list)
    kept: list = dataclasses.field(default_factory=list)
    failed: list = dataclasses.field(default_factory=list)

    def describe(self) -> str:
        """One line for the log."""
        parts = []
        for label in ("added", "removed", "changed", "kept"):
            items = getattr(self, label)
            parts.append(f"{label} {len(items)}" + (
                " (" + ", ".join(f"{kind} {name}" for kind, name in items) + ")"
                if items and label != "kept" else ""))
        if self.failed:
            parts.append("FAILED " + ", ".join(f"{kind} {name}: {reason}"
                                               for kind, name, reason in self.failed))
        return "; ".join(parts)


def _fileContents(*paths):
    """The bytes of each file named (None for none), or why it cannot be read:
    a reload restarts what reads a file whose contents changed."""
    contents = []
    for path in paths:
        if path is None:
            contents.append(None)
            continue
        try:
            with open(path, "rb") as f:
                contents.append(f.read())
        except OSError as e:
            contents.append(f"unreadable: {e}")
    return tuple(contents)


def _listenerKey(lc: ListenerConfig):
    return (dataclasses.replace(lc, line=None),
            _fileContents(lc.auth_secret_file if lc.auth else None,
                          lc.tls_certificate, lc.tls_key))


def _channelKey(cc):
    return dataclasses.replace(cc, line=None), _fileContents(cc.tls_ca if cc.tls else None)


def _bridgeKey(bc):
    topics = tuple(dataclasses.replace(t, line=None) for t in bc.topics)
    return (dataclasses.replace(bc, line=None, topics=topics),
            _fileContents(bc.password_file, bc.tls_ca if bc.tls else None))


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
        registerBridges(self.registry)
        #: name -> MqttBridge, the bridges that run
        self.bridges: dict[str, MqttBridge] = {}
        self._bridgeKeys: dict = {}
        self.listeners: dict[str, ListenerService] = {}
        # What each running listener and channel was built from (with its
        # files' contents), to tell what a reload changes.
        self._listenerKeys: dict = {}
        self._channelKeys: dict = {}
        self._defaultConsole = defaultConsole
        self._reloading = None  # the Deferred of a reload under way
        self._starting = None  # the cooperative task starting the channels
        #: fires (None) once start-up is over: every channel has begun
        #: connecting, or the engine was stopped before they all had
        self.started = defer.Deferred()

        for lc in self._runningListeners(config):
            service = self._listener(lc)
            self.listeners[lc.name] = service
            self._listenerKeys[lc.name] = _listenerKey(lc)
            service.setServiceParent(self)
        for cc in config.channels:
            if self._runs(cc, "channel"):
                self.channels[cc.name] = self._channel(cc)
                self._channelKeys[cc.name] = _channelKey(cc)
        for bc in config.bridges:
            if self._runs(bc, "bridge"):
                self.bridges[bc.name] = self._bridge(bc)
                self._bridgeKeys[bc.name] = _bridgeKey(bc)

    def _runningListeners(self, config, quiet=False) -> list:
        """The listeners of ``config`` that run, the default console included."""
        listeners = [c for c in config.listeners if self._runs(c, "listener", quiet)]
        # A console declared with run="false" is switched off on purpose.
        if self._defaultConsole and not any(c.msgtype == "xmlcall"
                                            for c in config.listeners):
            listeners.append(DEFAULT_CONSOLE)
        return listeners

    def _channel(self, cc, path=None) -> Channel:
        """The channel of ``cc``; raises ConfigError for unusable files."""
        try:
            return Channel(cc, self.broker, self.reactor)
        except ConfigError as e:
            self._locate(e, cc, path)
            raise

    def _bridge(self, bc, path=None) -> MqttBridge:
        """The bridge of ``bc``; its password file read now, or ConfigError."""
        password = None
        if bc.password_file is not None:
            try:
                password = readSecretFile(bc.password_file).decode("utf-8")
            except ValueError as e:
                error = ConfigError(str(e), element=f"bridge '{bc.name}'",
                                    prop="password-file")
                self._locate(error, bc, path)
                raise error from None
        return MqttBridge(bc, self.broker, self.reactor, password=password)

    def _listener(self, lc: ListenerConfig, path=None) -> ListenerService:
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
            elif lc.msgtype == "admin":
                from aiengine.admin import adminSite
                factory = adminSite(self, lc.name, secret=secret)
            else:
                factory = ListenerFactory(lc, self.broker, secret=secret)
            tls = (serverTLSOptions(lc.name, lc.tls_certificate, lc.tls_key)
                   if lc.tls else None)
        except ConfigError as e:
            self._locate(e, lc, path)
            raise
        return ListenerService.fromConfig(lc, factory, self.reactor, tls=tls)

    def _locate(self, error: ConfigError, item, path=None) -> None:
        """Name media.xml and the element's line in an error found at build time."""
        if error.path is None:
            error.path, error.line = path or self.config.path, item.line

    def _runs(self, item, kind, quiet=False):
        if not item.run and not quiet:
            self.log.info("{kind} {name} is not configured to run", kind=kind,
                          name=item.name)
        return item.run

    # -- reload ------------------------------------------------------------------

    def reload(self, path=None) -> defer.Deferred:
        """Re-read media.xml (``path``, by default the file running now) and
        apply the difference; see the module's docstring.

        The Deferred fires with a :class:`ReloadResult`, or fails with
        :class:`~aiengine.config.ConfigError` (file and line; nothing changed)
        or :class:`ReloadError` (a reload is already under way, or start-up
        is not over).
        """
        if self._reloading is not None:
            return defer.fail(ReloadError("a reload is already under way"))
        if not self.running or not self.started.called:
            # Start-up starts the channels it knows, a turn at a time: a reload
            # meanwhile could stop one before it starts, or start one twice.
            return defer.fail(ReloadError("the engine is not running, or its start-up "
                                          "is not over yet"))
        path = path or self.config.path
        self.log.info("reloading {path}", path=path)
        try:
            new = load(path)
            plan = self._plan(new)
        except ConfigError as e:
            self.log.error("reload refused, nothing changed: {error}", error=e)
            return defer.fail(e)
        self._reloading = d = defer.ensureDeferred(self._apply(new, plan))

        def done(result):
            self._reloading = None
            if isinstance(result, ReloadResult):
                self.log.info("reloaded {path}: {summary}", path=path,
                              summary=result.describe())
            return result

        return d.addBoth(done)

    def _plan(self, new: ServiceConfig) -> dict:
        """What to stop, build and keep for ``new``; every new listener and
        channel is built here, so that a file that does not read raises
        before anything has changed."""
        plan = {"stop": [], "start": [], "result": ReloadResult()}
        result = plan["result"]
        for kind, running, keys, wanted, key, build in (
                ("listener", self.listeners, self._listenerKeys,
                 self._runningListeners(new, quiet=True), _listenerKey, self._listener),
                ("channel", self.channels, self._channelKeys,
                 [c for c in new.channels if c.run], _channelKey, self._channel),
                ("bridge", self.bridges, self._bridgeKeys,
                 [b for b in new.bridges if b.run], _bridgeKey, self._bridge)):
            names = set()
            for item in wanted:
                names.add(item.name)
                itemKey = key(item)
                if item.name in running:
                    if keys[item.name] == itemKey:
                        result.kept.append((kind, item.name))
                        continue
                    result.changed.append((kind, item.name))
                    plan["stop"].append((kind, item.name))
                else:
                    result.added.append((kind, item.name))
                plan["start"].append((kind, item.name, build(item, new.path), itemKey))
            for name in running:
                if name not in names:
                    result.removed.append((kind, name))
                    plan["stop"].append((kind, name))
        return plan

    async def _apply(self, new: ServiceConfig, plan: dict) -> ReloadResult:
        # Listeners and channels that go are stopped first (a changed one
        # must release its port, or flush its queue to its server, before
        # its successor starts).
        stops = []
        for kind, name in plan["stop"]:
            if kind == "listener":
                service = self.listeners.pop(name)
                del self._listenerKeys[name]
                stops.append(defer.maybeDeferred(service.disownServiceParent))
            elif kind == "bridge":
                bridge = self.bridges.pop(name)
                del self._bridgeKeys[name]
                stops.append(defer.maybeDeferred(bridge.stop))
            else:
                channel = self.channels.pop(name)
                del self._channelKeys[name]
                stops.append(defer.maybeDeferred(channel.stop))
        await defer.DeferredList(stops, consumeErrors=True)
        result = plan["result"]
        for kind, name, built, key in plan["start"]:
            try:
                if kind == "listener":
                    self.listeners[name] = built
                    self._listenerKeys[name] = key
                    built.setServiceParent(self)
                elif kind == "bridge":
                    self.bridges[name] = built
                    self._bridgeKeys[name] = key
                    built.start()
                else:
                    self.channels[name] = built
                    self._channelKeys[name] = key
                    built.start()
            except Exception as e:
                self.log.error("reload: {kind} {name} could not start: {error}",
                               kind=kind, name=name, error=e)
                result.failed.append((kind, name, str(e)))
                if kind == "listener":
                    self.listeners.pop(name, None)
                    self._listenerKeys.pop(name, None)
                    if built.parent is not None:
                        await defer.maybeDeferred(built.disownServiceParent)
                elif kind == "bridge":
                    self.bridges.pop(name, None)
                    self._bridgeKeys.pop(name, None)
                    await defer.maybeDeferred(built.stop)
                else:
                    self.channels.pop(name, None)
                    self._channelKeys.pop(name, None)
        self.config = new
        return result

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
        # Bridges after the channels have begun: each connects in the
        # background and queues what is published meanwhile.
        for bridge in list(self.bridges.values()):
            try:
                bridge.start()
            except Exception:
                self.log.failure("bridge {name} could not start", name=bridge.name)

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
        yield defer.DeferredList([defer.maybeDeferred(b.stop)
                                  for b in self.bridges.values()])
        self.running = 0
        self.log.info("aiengine stopped")
