"""A broker restart in the middle of a QoS 1 stream between two bridged
engines, with mosquitto's persistence on and off, stopped by SIGTERM and by
SIGKILL: what B lost, got twice and got out of order.

node-a sends its ``sensor`` topic out (QoS 1), node-b takes it in (QoS 1,
receive-maximum 100), through a real mosquitto on a free loopback port.  A
publishes the numbers 0 to COUNT - 1 at a steady pace.  From number GATE_AT on
B's only local subscriber is busy, so B holds its acks and the broker keeps
what B has not taken (receive-maximum) for it: once A has had KILL_ACKED
messages acknowledged, the broker holds more than a thousand of them for B.
Then the broker is stopped, B's subscriber freed, and the broker started
again on the same port (with the same persistence file) while A goes on
publishing into its own queue.  At B we count:

- lost: numbers never received;
- duplicated: copies received more than once;
- reordered: receptions of a number lower than one already received.

What mosquitto 2 keeps (measured with 2.0.11):

- SIGTERM with ``persistence true``: it saves its whole database on the way
  out (sessions, subscriptions, every message queued or in flight for a
  client), and restores it when started again.
- SIGKILL with ``persistence true``: only what was saved before.  By default
  (``autosave_interval 1800``, in seconds) that is nothing of the last half
  hour -- for a broker started less than that ago, no file at all: a restart
  after kill -9 is a restart without persistence.  With
  ``autosave_on_changes true`` and ``autosave_interval N`` it saves after
  every N changes (a message queued for a client, a subscription, a
  persistent client connecting): it reads one packet per client per turn of
  its loop and acknowledges a PUBLISH before the turn's save, so what it had
  acknowledged and not saved is at most the last N messages it queued.
  (N = 1 saves the whole database at every turn: this stream then took 4 to
  12 s instead of 1.5.)
- ``persistence false``: nothing; the restarted broker knows no session and
  no subscription.

The guarantees asserted (docs/scale-out.md):

- Persistence on, SIGTERM: 0 lost, 0 duplicated, 0 reordered.  The broker
  sends again what B had received and not acknowledged, and A sends again
  what the broker had not acknowledged: the copies are dropped by B's
  recent origins.
- Persistence on, SIGKILL (``autosave_on_changes``, N = AUTOSAVE): 0
  duplicated, 0 reordered; lost: at most N, the last ones the broker
  acknowledged to A before it died.
- Persistence off, SIGTERM or SIGKILL: 0 duplicated, 0 reordered; lost:
  exactly what the broker had acknowledged to A and not yet sent to B (its
  queue for B), and nothing else -- A's reconnection is held until B has
  subscribed again, as the documentation asks (what is sent before that is
  lost for B).

Each case takes about 2 seconds.
"""

from __future__ import annotations

import os
import signal
import time

from twisted.internet import defer, reactor, task, threads
from twisted.logger import Logger
from twisted.trial import unittest

from aiengine.bridge import CONNECTED
from aiengine.config import ServiceConfig
from tests.support import waitFor
from tests.test_bridge import (Mosquitto, bridge, bridgeConnected, requireMosquitto,
                               startEngine)

#: numbers published by A
COUNT = 5000
#: A publishes BATCH numbers every TICK seconds
BATCH, TICK = 20, 0.004
#: B's subscriber is busy from this number on, until the broker is stopped
GATE_AT = 200
#: B's receive-maximum: what the broker sends it without acknowledgement
RECEIVE_MAXIMUM = 100
#: the broker is stopped once A has had this many messages acknowledged
KILL_ACKED = 2000
#: mosquitto's autosave_interval, in changes (autosave_on_changes true)
AUTOSAVE = 100
#: seconds the broker stays down once both bridges noticed
DOWN = 0.2

log = Logger()


class RestartableMosquitto(Mosquitto):
    """The tests' mosquitto, with ``persistence`` on (a database in its
    directory, saved after every AUTOSAVE changes) or off."""

    def __init__(self, case, persistence):
        super().__init__(case)
        self.db = os.path.join(self.dir, "mosquitto.db")
        if persistence:
            self.configure("persistence true", f"persistence_location {self.dir}/",
                           "autosave_on_changes true", f"autosave_interval {AUTOSAVE}")


def tally(received, count):
    """(lost numbers, duplicated, reordered) of ``received``, in arrival order."""
    seen, duplicated, reordered, highest = set(), 0, 0, -1
    for n in received:
        if n in seen:
            duplicated += 1
        seen.add(n)
        if n < highest:
            reordered += 1
        highest = max(highest, n)
    return sorted(set(range(count)) - seen), duplicated, reordered


class BrokerRestartTests(unittest.TestCase):
    """The four cases: persistence on/off x SIGTERM/SIGKILL."""

    timeout = 30

    def setUp(self):
        requireMosquitto()

    @defer.inlineCallbacks
    def engine(self, port, node, direction, **settings):
        engine = startEngine(self, ServiceConfig(path="<test>", bridges=(
            bridge(port, node, ("sensor", "aie/sensor", direction, 1),
                   receive_maximum=RECEIVE_MAXIMUM, **settings),)))
        yield bridgeConnected(engine, f"{node} connected")
        return engine

    @defer.inlineCallbacks
    def restart(self, persistence, sig):
        """Run one case; returns what the assertions need."""
        mosquitto = RestartableMosquitto(self, persistence)
        yield threads.deferToThread(mosquitto.start)
        # a persistent session (clean start off) only where the broker keeps it
        settings = {"session_expiry": 3600} if persistence else {}
        a = yield self.engine(mosquitto.port, "node-a", "out", **settings)
        b = yield self.engine(mosquitto.port, "node-b", "in", **settings)
        bridgeA, bridgeB = a.bridges["cluster"], b.bridges["cluster"]
        got, gate = [], defer.Deferred()

        def subscriber(message):
            got.append(int(message.text))
            if len(got) == GATE_AT:
                return gate  # busy until the broker is stopped
            return None

        subscription = b.broker.subscribe("sensor", subscriber, name="numbers")
        if not persistence:
            # The restarted broker knows no subscription: A may connect
            # again only once B has subscribed again (see test_brokerRestart).
            connect = bridgeA._connect
            bridgeA._connect = lambda: (
                connect() if bridgeB.state == CONNECTED and bridgeB.counters["reconnects"]
                else bridgeA._schedule(0.05))

        running = [True]

        @defer.inlineCallbacks
        def stream():
            for n in range(COUNT):
                if not running[0]:
                    return
                a.broker.publish("sensor", str(n))
                if n % BATCH == BATCH - 1:
                    yield task.deferLater(reactor, TICK, lambda: None)

        started = time.monotonic()
        streaming = stream()

        def stopStream():  # a failed case stops it before the engines stop
            running[0] = False
            return streaming

        self.addCleanup(stopStream)
        yield waitFor(lambda: bridgeA.counters["messagesOut"] >= KILL_ACKED,
                      timeout=10, interval=0.002, what=f"{KILL_ACKED} acknowledged")
        mosquitto.process.send_signal(sig)
        yield threads.deferToThread(mosquitto.process.wait, 10)
        hadDatabase = os.path.exists(mosquitto.db)
        gate.callback(None)
        # Once both bridges noticed and B's subscriber has everything B
        # received, nothing changes until the broker is back: A had acked
        # 0 .. ackedA - 1, B received 0 .. receivedB - 1, and the broker held
        # the difference for B.
        yield waitFor(lambda: bridgeA.state != CONNECTED and bridgeB.state != CONNECTED
                      and subscription.queued == 0 and not subscription.busy,
                      timeout=10, what="both bridges noticed")
        ackedA, receivedB = bridgeA.counters["messagesOut"], len(got)
        yield task.deferLater(reactor, DOWN, lambda: None)
        yield threads.deferToThread(mosquitto.start)
        yield streaming
        yield waitFor(lambda: COUNT - 1 in got and bridgeA.status()["queued"] == 0,
                      timeout=10, what="the last number at B")
        yield task.deferLater(reactor, 0.3, lambda: None)  # none more may come
        lost, duplicated, reordered = tally(got, COUNT)
        result = dict(lost=lost, duplicated=duplicated, reordered=reordered,
                      ackedA=ackedA, receivedB=receivedB, hadDatabase=hadDatabase,
                      duplicatesDropped=bridgeB.counters["duplicatesDropped"])
        log.info("broker restart, persistence {persistence}, {sig}: lost {lost} "
                 "{range}, duplicated {duplicated}, reordered {reordered}; at the "
                 "stop A acked {ackedA}, B had {receivedB}; B dropped {dropped} "
                 "duplicates; {seconds:.2f} s", persistence=persistence,
                 sig=signal.Signals(sig).name, lost=len(lost),
                 range=(lost[0], lost[-1]) if lost else "", duplicated=duplicated,
                 reordered=reordered, ackedA=ackedA, receivedB=receivedB,
                 dropped=result["duplicatesDropped"],
                 seconds=time.monotonic() - started)
        # The case is what it says: the broker held messages for B when it
        # stopped (more than AUTOSAVE), and both bridges connected again.
        self.assertGreater(ackedA - receivedB, AUTOSAVE)
        self.assertGreaterEqual(bridgeA.counters["reconnects"], 1)
        self.assertGreaterEqual(bridgeB.counters["reconnects"], 1)
        return result

    @defer.inlineCallbacks
    def test_persistenceSigterm(self):
        """The broker saves everything on SIGTERM: nothing lost, duplicated
        or reordered (the copies sent again are dropped by B)."""
        result = yield self.restart(True, signal.SIGTERM)
        self.assertTrue(result["hadDatabase"])
        self.assertEqual((result["lost"], result["duplicated"], result["reordered"]),
                         ([], 0, 0))

    @defer.inlineCallbacks
    def test_persistenceSigkill(self):
        """kill -9 loses what the broker acknowledged after its last save,
        at most AUTOSAVE messages, the last ones before it died; nothing is
        duplicated or reordered."""
        result = yield self.restart(True, signal.SIGKILL)
        lost, ackedA = result["lost"], result["ackedA"]
        self.assertTrue(result["hadDatabase"])
        self.assertEqual((result["duplicated"], result["reordered"]), (0, 0))
        self.assertLessEqual(len(lost), AUTOSAVE)
        self.assertEqual(lost, list(range(ackedA - len(lost), ackedA)))

    @defer.inlineCallbacks
    def noPersistence(self, sig):
        result = yield self.restart(False, sig)
        self.assertFalse(result["hadDatabase"])
        self.assertEqual((result["duplicated"], result["reordered"]), (0, 0))
        self.assertEqual(result["lost"], list(range(result["receivedB"],
                                                    result["ackedA"])))

    def test_noPersistenceSigterm(self):
        """Without persistence the broker's queue for B is lost, exactly it;
        nothing is duplicated or reordered."""
        return self.noPersistence(signal.SIGTERM)

    def test_noPersistenceSigkill(self):
        """The same with kill -9."""
        return self.noPersistence(signal.SIGKILL)
