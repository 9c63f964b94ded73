"""Pub/sub throughput client: publishers or subscribers, for aiengine's hub, Redis or MQTT.

One program for every server, so that the comparison measures the servers:
the same reactor, the same 64 KiB writes of pre-built messages, the same
counting (one ``bytes.count`` per read, :mod:`bench.peers.wire`).

``--role sub``: ``--connections`` subscribers; each subscribes (RESP
``SUBSCRIBE``, MQTT ``SUBSCRIBE`` at QoS 0; the hub's ``out`` listener needs
nothing) and counts delivered messages.  Events: ``ready`` once every
connection is subscribed; ``done`` once each has ``--count`` messages:
``first`` (first delivery), ``last`` (when the last connection completed),
``counts``, ``complete`` true.  When deliveries stop for ``--stall``
seconds before that, or a connection is closed, ``done`` comes with
``complete`` false, the counts so far and ``why`` (the runner reports the
loss).

``--role pub``: ``--connections`` publishers.  Events: ``connected`` (every
connection up, MQTT's CONNACK received); after the command ``go``, each
writes ``--count`` messages of ``wire.BODY_SIZE`` bytes as fast as its
socket takes them (a pull producer: a 64 KiB chunk whenever the transport's
buffer is empty); ``started`` (``t``: when the first write was made),
``sent`` (every message handed to the kernel), and, for Redis, ``acked``
(every ``PUBLISH`` answered; ``unheard``: how many reached no subscriber).
"""

from __future__ import annotations

import argparse

from twisted.internet import reactor
from twisted.internet.interfaces import IPullProducer
from twisted.internet.protocol import ClientFactory, Protocol
from zope.interface import implementer

from bench.peers import wire
from bench.peers._common import Stall, addArguments, emit, now, serve, stop

#: messages per write: about 64 KiB
CHUNK_MESSAGES = 600


def chunks(fmt: str, topic: str, count: int, size: int = wire.BODY_SIZE):
    """The writes of one publisher: (chunk, times) pairs, built once."""
    full = b"".join(wire.publish(fmt, topic, wire.body(i, size))
                    for i in range(CHUNK_MESSAGES))
    whole, rest = divmod(count, CHUNK_MESSAGES)
    plan = [(full, whole)] if whole else []
    if rest:
        plan.append((b"".join(wire.publish(fmt, topic, wire.body(i, size))
                              for i in range(rest)), 1))
    return plan


@implementer(IPullProducer)
class Writer:
    """Writes the planned chunks, one whenever the transport asks."""

    def __init__(self, connection, plan):
        self.connection = connection
        self.plan = [list(step) for step in plan]

    def resumeProducing(self):
        transport = self.connection.transport
        while self.plan and self.plan[0][1] == 0:
            self.plan.pop(0)
        if not self.plan:
            transport.unregisterProducer()
            self.connection.factory.written(self.connection)
            return
        step = self.plan[0]
        step[1] -= 1
        transport.write(step[0])

    def stopProducing(self):
        self.plan = []


class Connection(Protocol):
    """One publisher or subscriber connection."""

    def __init__(self):
        self.buffer = b""
        self.state = "hello"
        self.counter = None
        self.replies = None

    def connectionMade(self):
        factory = self.factory
        self.transport.setTcpNoDelay(True)
        self.clientId = f"bench-{factory.role}-{factory.number(self)}"
        greeting = wire.hello(factory.fmt, self.clientId)
        if greeting:
            self.transport.write(greeting)
        else:
            self.helloDone()

    def helloDone(self):
        factory = self.factory
        if factory.role == "pub":
            self.state = "publishing"
            marker = wire.replyMarker(factory.fmt)
            self.replies = wire.Counter(marker) if marker else None
            # Redis answers a PUBLISH that reached no subscriber with :0
            self.unheard = wire.Counter(b":0\r\n")
            factory.connected(self)
        else:
            self.state = "subscribing"
            request = wire.subscribe(factory.fmt, factory.topic)
            if request:
                self.transport.write(request)
            else:
                self.subscribedDone()

    def subscribedDone(self):
        self.state = "counting"
        self.counter = wire.Counter(wire.deliveryMarker(self.factory.fmt,
                                                        self.factory.topic))
        self.factory.subscribed(self)

    def dataReceived(self, data):
        if self.state == "counting":
            self.factory.delivered(self, self.counter.feed(data))
            return
        if self.state == "publishing":
            if self.replies is not None:
                before = self.unheard.count
                self.factory.replied(self, self.replies.feed(data),
                                     self.unheard.feed(data) - before)
            return
        self.buffer += data
        fmt, topic = self.factory.fmt, self.factory.topic
        try:
            if self.state == "hello":
                used = wire.helloDone(fmt, self.buffer)
                if used is None:
                    return
                self.buffer = self.buffer[used:]
                self.helloDone()
            if self.state == "subscribing":
                used = wire.subscribed(fmt, self.buffer, topic)
                if used is None:
                    return
                rest, self.buffer = self.buffer[used:], b""
                self.subscribedDone()
                if rest:
                    self.dataReceived(rest)
        except ValueError as e:
            emit("error", text=str(e))
            stop()

    def connectionLost(self, reason=None):
        self.factory.lost(self, reason)


class PubSubFactory(ClientFactory):
    """Every connection of the process, and the events they make."""

    protocol = Connection
    noisy = False

    def __init__(self, role, fmt, topic, connections, count, stall):
        self.role = role
        self.fmt = fmt
        self.topic = topic
        self.connections = connections
        self.count = count
        self.all = []
        self.ready = []
        self.finished = 0
        self.first = None
        self.counts = {}
        self.unheard = 0
        self.acked = 0
        self.over = False
        self.plan = chunks(fmt, topic, count) if role == "pub" else None
        self.stall = Stall(stall, self.describe)
        self.stallSeconds = stall

    def number(self, connection) -> int:
        self.all.append(connection)
        return len(self.all)

    def describe(self):
        return f"{sum(self.counts.values()):,} of {self.count * self.connections:,}"

    # publishers

    def connected(self, connection):
        self.ready.append(connection)
        if len(self.ready) == self.connections:
            emit("connected", t=now(), connections=self.connections)

    def go(self):
        if self.role != "pub" or len(self.ready) < self.connections:
            emit("error", text="go before every publisher is connected")
            return
        emit("started", t=now())
        for connection in self.ready:
            connection.transport.registerProducer(Writer(connection, self.plan), False)

    def written(self, connection):
        self.finished += 1
        if self.finished == self.connections:
            emit("sent", t=now(), messages=self.count * self.connections)

    def replied(self, connection, total, zeros):
        before = self.counts.get(connection, 0)
        self.counts[connection] = total
        self.acked += total - before
        self.unheard += zeros
        if self.acked == self.count * self.connections:
            emit("acked", t=now(), replies=self.acked, unheard=self.unheard)

    # subscribers

    def subscribed(self, connection):
        self.ready.append(connection)
        self.counts[connection] = 0
        if len(self.ready) == self.connections:
            emit("ready", t=now(), connections=self.connections,
                 ports=[c.transport.getHost().port for c in self.ready])

    def delivered(self, connection, total):
        if self.over:
            return
        t = now()
        if self.first is None:
            self.first = t
        self.stall.progress()
        before = self.counts[connection]
        self.counts[connection] = total
        if before < self.count <= total:
            self.finished += 1
            if self.finished == self.connections:
                self.finish(t, True)

    def finish(self, t, complete, why=None):
        self.over = True
        self.stall.done()
        counts = [self.counts.get(c, 0) for c in self.ready]
        emit("done", first=self.first, last=t, counts=counts, complete=complete,
             expected=self.count, deliveries=sum(min(c, self.count) for c in counts),
             extra=sum(max(0, c - self.count) for c in counts),
             why=why or (None if complete else f"stalled for {self.stallSeconds:g} s"))

    def lost(self, connection, reason):
        if self.over:
            return
        why = (f"{self.role} connection lost: "
               f"{reason.getErrorMessage() if reason else ''}; {self.describe()} so far")
        if self.role == "sub":
            self.finish(now(), False, why)
        else:
            self.over = True
            emit("error", text=why)

    def clientConnectionFailed(self, connector, reason):
        emit("error", text=f"cannot connect: {reason.getErrorMessage()}")
        stop()


def main(argv=None):
    """``python -m bench.peers.pubsubclient --role pub|sub --format F --port P ...``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--role", choices=("pub", "sub"), required=True)
    parser.add_argument("--format", choices=wire.FORMATS, required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--topic", default="bench")
    parser.add_argument("--connections", type=int, default=1)
    parser.add_argument("--count", type=int, required=True,
                        help="messages each publisher sends / each subscriber expects")
    addArguments(parser)
    args = parser.parse_args(argv)
    factory = PubSubFactory(args.role, args.format, args.topic, args.connections,
                            args.count, args.stall)
    if args.role == "sub":
        # a subscriber that stops short reports its counts instead of an error
        factory.stall._stalled = lambda: factory.finish(now(), False)

    def start():
        for _ in range(args.connections):
            reactor.connectTCP("127.0.0.1", args.port, factory)

    reactor.callWhenRunning(start)
    serve({"go": factory.go}, args.timeout)


if __name__ == "__main__":
    main()
