"""Tests for aiengine.broker."""

from __future__ import annotations

from twisted.internet.defer import Deferred, TimeoutError
from twisted.internet.task import Clock
from twisted.trial import unittest

from aiengine.broker import Broker


class Producer:
    """Records pause/resume calls like a transport would receive them."""

    def __init__(self):
        self.paused = False
        self.calls = []

    def pauseProducing(self):
        self.paused = True
        self.calls.append("pause")

    def resumeProducing(self):
        self.paused = False
        self.calls.append("resume")


class BrokerTests(unittest.TestCase):
    def setUp(self):
        self.clock = Clock()
        self.broker = Broker(clock=self.clock)

    def test_idsCountPerTopic(self):
        ids = [self.broker.publish("a", b"x").id for _ in range(3)]
        ids.append(self.broker.publish("b", "y").id)
        self.assertEqual(ids, ["a-1", "a-2", "a-3", "b-1"])

    def test_strBodyIsUtf8(self):
        message = self.broker.publish("t", "é")
        self.assertEqual(message.body, "é".encode("utf-8"))
        self.assertEqual(message.text, "é")

    def test_deliveryInOrderToEverySubscriber(self):
        first, second = [], []
        self.broker.subscribe("t", lambda m: first.append(m.body))
        self.broker.subscribe("t", lambda m: second.append(m.body))
        for i in range(5):
            self.broker.publish("t", b"%d" % i)
        expected = [b"0", b"1", b"2", b"3", b"4"]
        self.assertEqual(first, expected)
        self.assertEqual(second, expected)

    def test_reentrantPublishKeepsOrder(self):
        """A subscriber publishing on the same topic does not overtake."""
        seen = []

        def echo(message):
            seen.append(("a", message.body))
            if message.body == b"1":
                self.broker.publish("t", b"2")

        self.broker.subscribe("t", echo)
        self.broker.subscribe("t", lambda m: seen.append(("b", m.body)))
        self.broker.publish("t", b"1")
        self.assertEqual(seen, [("a", b"1"), ("b", b"1"), ("a", b"2"), ("b", b"2")])

    def test_sessions(self):
        everyone, s1, s2 = [], [], []
        self.broker.subscribe("t", lambda m: everyone.append(m.body))
        self.broker.subscribe("t", lambda m: s1.append(m.body), session="s1")
        self.broker.subscribe("t", lambda m: s2.append(m.body), session="s2")
        self.broker.publish("t", b"all")
        self.broker.publish("t", b"one", session="s1")
        self.assertEqual(everyone, [b"all", b"one"])
        self.assertEqual(s1, [b"all", b"one"])
        self.assertEqual(s2, [b"all"])

    def test_failingSubscriberIsolated(self):
        seen = []

        def broken(message):
            raise RuntimeError("boom")

        sub = self.broker.subscribe("t", broken, name="broken")
        self.broker.subscribe("t", lambda m: seen.append(m.body))
        self.broker.publish("t", b"x")
        self.broker.publish("t", b"y")
        self.assertEqual(seen, [b"x", b"y"])
        self.assertEqual(sub.failed, 2)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 2)

    def test_failingDeferredIsLogged(self):
        sub = self.broker.subscribe("t", lambda m: Deferred())
        d = Deferred()
        sub.callback = lambda m: d
        self.broker.publish("t", b"x")
        d.errback(RuntimeError("later"))
        self.assertEqual(sub.failed, 1)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_cancel(self):
        seen = []
        sub = self.broker.subscribe("t", lambda m: seen.append(m.body))
        self.broker.publish("t", b"1")
        sub.cancel()
        sub.cancel()
        self.broker.publish("t", b"2")
        self.assertEqual(seen, [b"1"])
        self.assertEqual(self.broker.topic("t").subscriptions, ())

    def test_topicsCreatedOnUse(self):
        self.broker.publish("b", b"")
        self.broker.subscribe("a", lambda m: None)
        self.assertEqual([t.name for t in self.broker.topics()], ["a", "b"])
        self.assertEqual(self.broker.topic("b").published, 1)


class WaitTests(unittest.TestCase):
    def setUp(self):
        self.clock = Clock()
        self.broker = Broker(clock=self.clock)

    def test_nextMessage(self):
        d = self.broker.nextMessage("t", timeout=5)
        self.assertNoResult(d)
        self.broker.publish("t", b"x")
        self.assertEqual(self.successResultOf(d).body, b"x")
        self.assertEqual(self.broker.topic("t").subscriptions, ())
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_nextMessageMatch(self):
        d = self.broker.nextMessage("t", match=lambda m: m.body == b"b")
        self.broker.publish("t", b"a")
        self.assertNoResult(d)
        self.broker.publish("t", b"b")
        self.assertEqual(self.successResultOf(d).id, "t-2")

    def test_nextMessageTimeout(self):
        d = self.broker.nextMessage("t", timeout=5)
        self.clock.advance(4.9)
        self.assertNoResult(d)
        self.clock.advance(0.2)
        self.failureResultOf(d, TimeoutError)
        self.assertEqual(self.broker.topic("t").subscriptions, ())

    def test_nextMessageCancel(self):
        d = self.broker.nextMessage("t", timeout=5)
        d.cancel()
        self.failureResultOf(d)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(self.broker.topic("t").subscriptions, ())

    def test_requestSynchronousReply(self):
        """A reply published while the request is delivered is not missed."""
        self.broker.subscribe("q", lambda m: self.broker.publish("r", m.body.upper()))
        d = self.broker.request("q", "r", b"hi", timeout=1)
        self.assertEqual(self.successResultOf(d).body, b"HI")

    def test_requestCorrelates(self):
        pending = []
        self.broker.subscribe("q", pending.append)

        def isReply(request, reply):
            return reply.attributes.get("in-reply-to") == request.id

        d1 = self.broker.request("q", "r", b"one", timeout=1, match=isReply)
        d2 = self.broker.request("q", "r", b"two", timeout=1, match=isReply)
        for request in reversed(pending):
            self.broker.publish("r", request.body + b"!",
                                attributes={"in-reply-to": request.id})
        self.assertEqual(self.successResultOf(d1).body, b"one!")
        self.assertEqual(self.successResultOf(d2).body, b"two!")

    def test_requestTimeout(self):
        d = self.broker.request("q", "r", b"x", timeout=2)
        self.clock.advance(2)
        self.failureResultOf(d, TimeoutError)


class BackpressureTests(unittest.TestCase):
    def setUp(self):
        self.broker = Broker(clock=Clock(), queueLimit=3)

    def test_busySubscriberPausesProducers(self):
        producer = Producer()
        topic = self.broker.topic("t")
        topic.registerProducer(producer)
        pending = []
        received = []

        def slow(message):
            received.append(message.body)
            d = Deferred()
            pending.append(d)
            return d

        self.broker.subscribe("t", slow)
        self.broker.publish("t", b"1")
        self.assertTrue(producer.paused)
        self.broker.publish("t", b"2")
        self.assertEqual(received, [b"1"])
        pending.pop(0).callback(None)
        # Message 2 is delivered now and makes the subscriber busy again.
        self.assertEqual(received, [b"1", b"2"])
        self.assertTrue(producer.paused)
        pending.pop(0).callback(None)
        self.assertFalse(producer.paused)
        self.assertEqual(producer.calls, ["pause", "resume"])

    def test_queueBoundedDropsCounted(self):
        d = Deferred()
        sub = self.broker.subscribe("t", lambda m: d if m.body == b"0" else None)
        for i in range(6):
            self.broker.publish("t", b"%d" % i)
        self.assertEqual(len(sub.queue), 3)
        self.assertEqual(sub.dropped, 2)
        self.assertEqual(self.broker.topic("t").dropped, 2)
        d.callback(None)
        self.assertEqual(len(sub.queue), 0)
        self.assertEqual(sub.delivered, 4)

    def test_otherSubscribersNotDelayed(self):
        fast = []
        self.broker.subscribe("t", lambda m: Deferred())
        self.broker.subscribe("t", lambda m: fast.append(m.body))
        self.broker.publish("t", b"1")
        self.broker.publish("t", b"2")
        self.assertEqual(fast, [b"1", b"2"])

    def test_unregisterResumes(self):
        producer = Producer()
        topic = self.broker.topic("t")
        topic.registerProducer(producer)
        self.broker.subscribe("t", lambda m: Deferred())
        self.broker.publish("t", b"1")
        self.assertTrue(producer.paused)
        topic.unregisterProducer(producer)
        self.assertFalse(producer.paused)

    def test_cancelBusyResumes(self):
        producer = Producer()
        self.broker.topic("t").registerProducer(producer)
        sub = self.broker.subscribe("t", lambda m: Deferred())
        self.broker.publish("t", b"1")
        sub.cancel()
        self.assertFalse(producer.paused)


class BatchTests(unittest.TestCase):
    """Topic.publishBatch: several messages of one packet at once."""

    def setUp(self):
        self.broker = Broker(clock=Clock())
        self.topic = self.broker.topic("t")

    def publish(self, *bodies, session=None):
        messages = self.topic.messages(list(bodies), session=session)
        self.topic.publishBatch(messages)
        return messages

    def test_idsContinue(self):
        self.broker.publish("t", b"first")
        messages = self.publish(b"a", b"b")
        self.assertEqual([m.id for m in messages], ["t-2", "t-3"])
        self.assertEqual(self.broker.publish("t", b"last").id, "t-4")

    def test_batchAndSingleSubscribers(self):
        batches, singles = [], []
        self.broker.subscribe("t", lambda m: self.fail("batch subscriber called singly"),
                              batchCallback=lambda ms: batches.append([m.body for m in ms]))
        self.broker.subscribe("t", lambda m: singles.append(m.body))
        self.publish(b"a", b"b", b"c")
        self.assertEqual(batches, [[b"a", b"b", b"c"]])
        self.assertEqual(singles, [b"a", b"b", b"c"])

    def test_sessionFilter(self):
        other, mine = [], []
        self.broker.subscribe("t", other.append, session="s2")
        self.broker.subscribe("t", mine.append, session="s1",
                              batchCallback=lambda ms: mine.extend(ms))
        self.publish(b"a", b"b", session="s1")
        self.assertEqual(other, [])
        self.assertEqual([m.body for m in mine], [b"a", b"b"])

    def test_busyMidBatchQueuesTheRest(self):
        gate = Deferred()
        seen = []

        def slow(message):
            seen.append(message.body)
            return gate if message.body == b"b" else None

        self.broker.subscribe("t", slow)
        self.publish(b"a", b"b", b"c", b"d")
        self.assertEqual(seen, [b"a", b"b"])
        gate.callback(None)
        self.assertEqual(seen, [b"a", b"b", b"c", b"d"])

    def test_busyBatchSubscriberPausesProducers(self):
        producer = Producer()
        self.topic.registerProducer(producer)
        gate = Deferred()
        got = []
        self.broker.subscribe("t", got.append, batchCallback=lambda ms: gate)
        self.publish(b"a", b"b")
        self.assertTrue(producer.paused)
        self.publish(b"c", b"d")  # queued, delivered one by one later
        gate.callback(None)
        self.assertFalse(producer.paused)
        self.assertEqual([m.body for m in got], [b"c", b"d"])

    def test_failingBatchSubscriberIsolated(self):
        singles = []

        def broken(messages):
            raise RuntimeError("boom")

        sub = self.broker.subscribe("t", None, batchCallback=broken)
        self.broker.subscribe("t", singles.append)
        self.publish(b"a", b"b")
        self.assertEqual(len(singles), 2)
        self.assertEqual(sub.failed, 1)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_reentrantKeepsOrder(self):
        seen = []

        def echo(message):
            seen.append(message.body)
            if message.body == b"a":
                self.publish(b"x", b"y")

        self.broker.subscribe("t", echo)
        self.publish(b"a", b"b")
        self.assertEqual(seen, [b"a", b"b", b"x", b"y"])
