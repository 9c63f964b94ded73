"""MQTT 5 client with paho-mqtt, driven by the reactor as aiengine's bridge first drove it.

The baseline of ``bench.bridge``: a publisher and a subscriber talking
through the broker directly, with the library the bridge uses, driven the
way the bridge's first stage drove it (commit b938022, ``aiengine/bridge.py``):
``Client(CallbackAPIVersion.VERSION2, protocol=MQTTv5)``,
``max_inflight_messages_set(0)`` with the application's own window of
:data:`WINDOW` unacknowledged QoS 1 messages (one more published at each
``PUBACK``), paho's socket a reader and (while paho has bytes to send) a
writer of the reactor calling paho's ``loop_read``/``loop_write`` (its
external-loop API: three ``recv`` per packet read, one ``send`` per packet),
``loop_misc`` every second, a clean start, and subscriptions with No Local.
``on_publish`` is only set for QoS 1 (for QoS 0 paho would build two objects
per message to call it).  Messages carry no properties (the bridge adds its
``origin`` to each: that is part of what it costs).

``--role pub``: connects; event ``connected`` once the CONNACK is in.  After
the command ``go``, event ``started`` (``t``: the first publish) and
``--count`` messages of ``wire.BODY_SIZE`` bytes at ``--qos``: as fast as
they go (QoS 0: a batch of :data:`BATCH` whenever paho has written the
previous one; QoS 1: within the window), or with ``--rate``, message ``i``
at ``start + i / rate`` carrying its send time (``wire.stampedBody``, taken
just before ``publish``).  Event ``sent`` (``rate``, ``late``) once all are
handed to paho, ``acked`` once every QoS 1 message is acknowledged.

``--role sub``: subscribes; event ``ready`` once the SUBACK is in.  It
counts messages; ``done`` once ``--count`` have come (``first``, ``last``:
the first and last delivery, ``deliveries``, ``complete`` true), or with
``complete`` false and the count so far when nothing comes for ``--stall``
seconds or the connection ends.  With ``--skip``, each message's one-way
latency is taken too (the time of the ``doRead`` that brought it minus its
send time; the first ``--skip`` are a warm-up): ``done`` then also has
``received``, ``lost`` and ``p50``, ``p90``, ``p99``, ``p999``, ``max``,
``mean`` in seconds, as ``bench.peers.latencyclient`` reports them.
"""

from __future__ import annotations

import argparse
import os
import time

from twisted.internet import reactor
from twisted.internet.interfaces import IReadWriteDescriptor
from twisted.internet.task import LoopingCall
from zope.interface import implementer

from bench.peers import wire
from bench.peers._common import Stall, addArguments, emit, now, serve, stop
from bench.peers.latencyclient import summary

#: QoS 1 messages published and not yet acknowledged, at most (the bridge's WINDOW)
WINDOW = 1000
#: QoS 0 messages handed to paho at once, when it has written the previous ones
BATCH = 1000


@implementer(IReadWriteDescriptor)
class PahoSocket:
    """paho's socket as a reactor file descriptor (``aiengine.bridge._PahoSocket``)."""

    def __init__(self, peer, sock):
        self.peer = peer
        self.sock = sock
        self.writing = False

    def fileno(self):
        return self.sock.fileno()

    def logPrefix(self):
        return "mqttclient"

    def doRead(self):
        self.peer.readTime = time.monotonic()
        self.peer.client.loop_read()

    def doWrite(self):
        self.peer.client.loop_write()
        self.peer.written()

    def connectionLost(self, reason):
        self.peer.gone(f"the reactor lost the socket: {reason.getErrorMessage()}")


class Peer:
    """One paho client: a publisher or a subscriber."""

    def __init__(self, args):
        from paho.mqtt.client import CallbackAPIVersion, Client, MQTTv5
        self.args = args
        self.role = args.role
        self.qos = args.qos
        self.topic = args.topic
        self.count = args.count
        self.client = Client(CallbackAPIVersion.VERSION2, protocol=MQTTv5,
                             client_id=f"bench-direct-{args.role}-{os.getpid()}")
        self.client.max_inflight_messages_set(0)
        self.client.on_connect = self.onConnect
        self.client.on_disconnect = self.onDisconnect
        self.client.on_subscribe = self.onSubscribe
        self.client.on_message = self.onMessage
        if args.qos:
            # for QoS 0, paho would build two objects per message to call it
            self.client.on_publish = self.onPublish
        self.client.on_socket_register_write = self.registerWrite
        self.client.on_socket_unregister_write = self.unregisterWrite
        self.client.on_socket_close = self.socketClosed
        self.socket = None
        self.readTime = None
        self.over = False
        # publisher
        self.published = 0
        self.inflight = 0
        self.acked = 0
        self.going = False
        self.bodies = [wire.body(i) for i in range(BATCH)]
        self.start = None
        self.late = 0.0
        # subscriber
        self.received = 0
        self.first = None
        self.last = None
        self.latencies = []
        self.stall = Stall(args.stall, self.describe)
        self.stall._stalled = lambda: self.finish(False, f"stalled for {args.stall:g} s")

    # -- connection -------------------------------------------------------------

    def connect(self):
        from paho.mqtt.packettypes import PacketTypes
        from paho.mqtt.properties import Properties
        client = self.client
        try:
            # paho connects blocking (the bridge: in a thread); the reactor is
            # not running yet here
            client.connect("127.0.0.1", self.args.port, 60, clean_start=True,
                           properties=Properties(PacketTypes.CONNECT))
        except OSError as e:
            emit("error", text=f"cannot connect: {e}")
            stop()
            return
        self.socket = PahoSocket(self, client.socket())
        reactor.addReader(self.socket)
        reactor.addWriter(self.socket)  # the CONNECT packet queued by connect()
        self.socket.writing = True
        misc = LoopingCall(client.loop_misc)
        misc.start(1.0, now=False)

    def registerWrite(self, client, userdata, sock):
        if self.socket is not None and not self.socket.writing:
            self.socket.writing = True
            reactor.addWriter(self.socket)

    def unregisterWrite(self, client, userdata, sock):
        if self.socket is not None and self.socket.writing:
            self.socket.writing = False
            reactor.removeWriter(self.socket)

    def socketClosed(self, client, userdata, sock):
        # paho closes the socket right after: it must leave the reactor first
        self.dropSocket()

    def dropSocket(self):
        descriptor, self.socket = self.socket, None
        if descriptor is not None:
            reactor.removeReader(descriptor)
            reactor.removeWriter(descriptor)

    def gone(self, why):
        self.dropSocket()
        if self.role == "sub":
            self.finish(False, why)
        elif not self.over:
            self.over = True
            emit("error", text=f"pub: {why}")
            stop()

    def onConnect(self, client, userdata, flags, reasonCode, properties):
        if reasonCode.is_failure:
            emit("error", text=f"connection refused: {reasonCode}")
            stop()
            return
        if self.role == "pub":
            emit("connected", t=now())
            return
        from paho.mqtt.subscribeoptions import SubscribeOptions
        client.subscribe([(self.topic, SubscribeOptions(qos=self.qos, noLocal=True))])

    def onSubscribe(self, client, userdata, mid, reasonCodes, properties):
        refused = [str(code) for code in reasonCodes if code.is_failure]
        if refused:
            emit("error", text=f"subscription refused: {', '.join(refused)}")
            stop()
            return
        emit("ready", t=now())

    def onDisconnect(self, client, userdata, flags, reasonCode, properties):
        if not self.over:
            self.gone(f"disconnected: {reasonCode}")

    # -- publisher ----------------------------------------------------------------

    def publishOne(self, body):
        self.client.publish(self.topic, body, self.qos)
        self.published += 1
        if self.qos:
            self.inflight += 1
        if self.published == self.count:
            end = now()
            rate = ((self.count - 1) / (end - self.start)
                    if self.args.rate and end > self.start else None)
            emit("sent", t=end, messages=self.count, rate=rate, late=self.late)
            if not self.qos:
                self.over = True

    def go(self):
        if self.role != "pub" or self.going:
            emit("error", text="go: not a publisher, or going already")
            return
        self.going = True
        self.start = now()
        emit("started", t=self.start)
        if self.args.rate:
            self.tick()
        else:
            self.fill()

    def fill(self):
        """Publish as fast as they go: QoS 1 up to the window, QoS 0 a batch."""
        bodies = self.bodies
        if self.qos:
            while self.published < self.count and self.inflight < WINDOW:
                self.publishOne(bodies[self.published % BATCH])
        else:
            for _ in range(min(BATCH, self.count - self.published)):
                self.publishOne(bodies[self.published % BATCH])

    def tick(self):
        """Publish the stamped messages that are due, then wait for the next."""
        interval = 1.0 / self.args.rate
        t = now()
        while self.published < self.count:
            due = self.start + self.published * interval
            if t < due:
                break
            if self.qos and self.inflight >= WINDOW:
                break  # the next PUBACK publishes it
            self.late = max(self.late, t - due)
            self.publishOne(wire.stampedBody(t))
            t = now()
        if self.published < self.count and not (self.qos and self.inflight >= WINDOW):
            reactor.callLater(max(0.0, self.start + self.published * interval - now()),
                              self.tick)

    def written(self):
        """paho has written what it could: QoS 0 gets its next batch."""
        if (self.role == "pub" and self.going and not self.qos and not self.args.rate
                and self.published < self.count and not self.client.want_write()):
            self.fill()

    def onPublish(self, client, userdata, mid, reasonCode, properties):
        if not self.qos:
            return
        self.inflight -= 1
        self.acked += 1
        if self.acked == self.count:
            self.over = True
            emit("acked", t=now(), replies=self.acked)
        elif self.published < self.count and self.inflight < WINDOW:
            if self.args.rate:
                if self.inflight == WINDOW - 1:
                    self.tick()  # the window had stopped the clock
            else:
                self.publishOne(self.bodies[self.published % BATCH])

    # -- subscriber ----------------------------------------------------------------

    def describe(self):
        return f"{self.received:,} of {self.count:,}"

    def onMessage(self, client, userdata, message):
        if self.over:
            return
        t = self.readTime
        self.received += 1
        if self.first is None:
            self.first = t
        self.last = t
        self.stall.progress()
        if self.args.skip is not None and self.received > self.args.skip:
            self.latencies.append(t - wire.stampOf(message.payload))
        if self.received == self.count:
            self.finish(True)

    def finish(self, complete, why=None):
        if self.over:
            return
        self.over = True
        self.stall.done()
        deliveries = min(self.received, self.count)
        fields = dict(first=self.first, last=self.last if complete else now(),
                      counts=[self.received], complete=complete, expected=self.count,
                      deliveries=deliveries, extra=max(0, self.received - self.count),
                      why=why)
        if self.args.skip is not None:
            fields.update(received=self.received, lost=self.count - deliveries,
                          counted=len(self.latencies), **summary(self.latencies))
        emit("done", **fields)


def main(argv=None):
    """``python -m bench.peers.mqttclient --role pub|sub --port P --qos Q ...``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--role", choices=("pub", "sub"), required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--topic", default="bench/direct")
    parser.add_argument("--qos", type=int, choices=(0, 1), default=0)
    parser.add_argument("--count", type=int, required=True,
                        help="messages to publish / to receive")
    parser.add_argument("--rate", type=float, default=None,
                        help="publish this many stamped messages a second")
    parser.add_argument("--skip", type=int, default=None,
                        help="sub: take latencies, the first SKIP messages untimed")
    addArguments(parser)
    args = parser.parse_args(argv)
    peer = Peer(args)
    reactor.callWhenRunning(peer.connect)
    serve({"go": peer.go}, args.timeout)


if __name__ == "__main__":
    main()
