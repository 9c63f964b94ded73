"""Tests for aiengine.broker."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.defer import Deferred, TimeoutError
from twisted.internet.task import Clock
from twisted.trial import unittest

from aiengine.broker import Broker, NoSubscriber


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
        """A session restricts a reply to its own subscribers; a message that is
        not a reply reaches everyone, whatever its session."""
        everyone, s1, s2 = [], [], []
        self.broker.subscribe("t", lambda m: everyone.append(m.body))
        self.broker.subscribe("t", lambda m: s1.append(m.body), session="s1")
        self.broker.subscribe("t", lambda m: s2.append(m.body), session="s2")
        self.broker.publish("t", b"all")
        self.broker.publish("t", b"said by s1", session="s1")
        self.broker.publish("t", b"reply to s1", session="s1",
                            attributes={"in-reply-to": "q-1"})
        self.assertEqual(everyone, [b"all", b"said by s1", b"reply to s1"])
        self.assertEqual(s1, [b"all", b"said by s1", b"reply to s1"])
        self.assertEqual(s2, [b"all", b"said by s1"])

    def test_unroutedCountedAndLogged(self):
        """A message that reaches no subscriber is counted and logged, also one
        whose only subscriber is another session's."""
        events = []
        from twisted.logger import globalLogPublisher
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        self.broker.publish("t", b"nobody")
        self.broker.subscribe("t", lambda m: None, session="s2")
        self.broker.publish("t", b"not for s2", session="s1",
                            attributes={"in-reply-to": "q-1"})
        self.broker.publish("t", b"for s2", session="s2",
                            attributes={"in-reply-to": "q-2"})
        topic = self.broker.topic("t")
        self.assertEqual((topic.published, topic.unrouted, topic.delivered), (2, 1, 1))
        # The first went with the topic it made, idle at once: counted there.
        self.assertEqual((self.broker.reclaimed["published"],
                          self.broker.reclaimed["unrouted"]), (1, 1))
        logged = [e for e in events if "reached no subscriber" in e.get("log_format", "")]
        # The first, then every 1000th, over all topics.
        self.assertEqual([e["id"] for e in logged], ["t-1"])
        self.assertEqual(self.broker.unrouted, 2)

    def test_deliveredCountsGoneSubscribers(self):
        sub = self.broker.subscribe("t", lambda m: None)
        self.broker.subscribe("t", lambda m: None)
        self.broker.publish("t", b"1")
        sub.cancel()
        self.broker.publish("t", b"2")
        self.assertEqual(self.broker.topic("t").delivered, 3)

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

    def test_manySubscribersCancelInAnyOrder(self):
        """20,000 subscribers on one topic, half cancelled out of order:
        subscribe and cancel are O(1), delivery keeps subscribe order."""
        seen = []
        subs = [self.broker.subscribe("t", lambda m, i=i: seen.append(i), name=str(i))
                for i in range(20000)]
        self.broker.publish("t", b"1")
        for sub in reversed(subs[::2]):
            sub.cancel()
        seen.clear()
        self.broker.publish("t", b"2")
        self.assertEqual(seen, list(range(1, 20000, 2)))
        self.assertEqual(self.broker.topic("t").delivered, 20000 + 10000)

    def test_topicsCreatedOnUse(self):
        self.broker.publish("b", b"")
        self.broker.subscribe("a", lambda m: None)
        self.broker.topic("c", pin=True)
        self.assertEqual([t.name for t in self.broker.topics()], ["a", "c"])
        # b was used and is idle: forgotten, what it counted kept.
        self.assertEqual((self.broker.reclaimed["topics"],
                          self.broker.reclaimed["published"],
                          self.broker.reclaimed["unrouted"]), (1, 1, 1))

    def test_idleTopicsReclaimed(self):
        """Topics nothing holds are forgotten: after publishes nobody takes,
        after the last subscriber leaves, after the last request gives up."""
        for i in range(5000):
            self.broker.publish(f"gone.{i}", b"x")
        for i in range(1000):
            self.broker.subscribe(f"sub.{i}", lambda m: None).cancel()
        d = self.broker.request("q", "r", b"x", timeout=1)  # nothing subscribes to q
        self.failureResultOf(d, NoSubscriber)
        self.broker.subscribe("q", lambda m: None)
        d = self.broker.request("q", "r", b"x", timeout=1)
        self.assertEqual([t.name for t in self.broker.topics()], ["q", "r"])
        self.clock.advance(1)
        self.failureResultOf(d, TimeoutError)
        self.assertEqual([t.name for t in self.broker.topics()], ["q"])
        # q and r after the first request, r after the second.
        self.assertEqual(self.broker.reclaimed["topics"], 6000 + 3)

    def test_idsGoOnAfterReclaim(self):
        ids = [self.broker.publish("a", b"x").id for _ in range(3)]
        self.assertEqual(ids, ["a-1", "a-2", "a-3"])

    def test_pinnedTopicKept(self):
        topic = self.broker.topic("kept", pin=True)
        self.broker.publish("kept", b"x")
        self.broker.subscribe("kept", lambda m: None).cancel()
        self.assertIs(self.broker.topic("kept"), topic)
        self.assertEqual(topic.unrouted, 1)

    def test_topicNameBounded(self):
        self.broker.topic("x" * 256)
        error = self.assertRaises(ValueError, self.broker.publish, "x" * 257, b"m")
        self.assertEqual(str(error), "a topic name has at most 256 characters, not 257")
        self.assertRaises(ValueError, self.broker.subscribe, "", lambda m: None)


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
        """Replies naming their request in in-reply-to go to that request, in
        whatever order they come."""
        self.broker.topic("r", pin=True)  # its counters are read after it is idle
        pending = []
        self.broker.subscribe("q", pending.append)
        d1 = self.broker.request("q", "r", b"one", timeout=1)
        d2 = self.broker.request("q", "r", b"two", timeout=1)
        for request in reversed(pending):
            self.broker.publish("r", request.body + b"!",
                                attributes={"in-reply-to": request.id})
        self.assertEqual(self.successResultOf(d1).body, b"one!")
        self.assertEqual(self.successResultOf(d2).body, b"two!")
        self.assertEqual(self.broker.topic("r").replies, 2)
        self.assertEqual(self.broker.topic("r").waiting, 0)

    def test_unstampedRepliesOneEach(self):
        """Replies that name no request go to the waiting requests first come,
        first served, one each: never the same reply twice."""
        self.broker.topic("r", pin=True)  # its counters are read after it is idle
        self.broker.subscribe("q", lambda m: None)
        waits = [self.broker.request("q", "r", b"%d" % i, timeout=1) for i in range(3)]
        for i in range(3):
            self.broker.publish("r", b"reply %d" % i)
        self.assertEqual([self.successResultOf(d).body for d in waits],
                         [b"reply 0", b"reply 1", b"reply 2"])
        # A fourth reply finds no request: nobody else subscribes, so it is unrouted.
        self.broker.publish("r", b"late")
        self.assertEqual(self.broker.topic("r").unrouted, 1)

    def test_replyToAnotherRequestNotTaken(self):
        """A reply naming a request that does not wait here is not handed to
        a request waiting for something else."""
        self.broker.subscribe("q", lambda m: None)
        d = self.broker.request("q", "r", b"mine", timeout=1)
        seen = []
        self.broker.subscribe("r", seen.append)
        self.broker.publish("r", b"yours", attributes={"in-reply-to": "q-99"})
        self.assertNoResult(d)
        self.assertEqual([m.body for m in seen], [b"yours"])
        d.cancel()
        self.failureResultOf(d)

    def test_requestTimeout(self):
        requests = []
        self.broker.subscribe("q", requests.append)
        d = self.broker.request("q", "r", b"x", timeout=2)
        self.assertFalse(requests[0].withdrawn)
        self.clock.advance(2)
        self.failureResultOf(d, TimeoutError)
        # Given up: a channel that has not written it yet will not.
        self.assertTrue(requests[0].withdrawn)
        self.assertEqual(self.broker.topic("r").waiting, 0)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_requestCancelWithdraws(self):
        self.broker.topic("r", pin=True)  # its counters are read after it is idle
        requests = []
        self.broker.subscribe("q", requests.append)
        d = self.broker.request("q", "r", b"x", timeout=2)
        d.cancel()
        self.failureResultOf(d)
        self.assertTrue(requests[0].withdrawn)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        # Its reply, should it come, is nobody's.
        self.broker.publish("r", b"late", attributes={"in-reply-to": requests[0].id})
        self.assertEqual(self.broker.topic("r").unrouted, 1)

    def test_requestTtlDefaultsToTimeout(self):
        requests = []
        self.broker.subscribe("q", requests.append)
        self.broker.request("q", "r", b"x", timeout=2).addErrback(lambda f: None)
        self.broker.request("q", "r", b"y", timeout=2, ttl=7).addErrback(lambda f: None)
        self.assertEqual([m.expires for m in requests], [2, 7])
        self.clock.advance(2)

    def test_requestNoSubscriber(self):
        """A request nobody can receive fails at once instead of timing out."""
        d = self.broker.request("q", "r", b"x", timeout=2)
        failure = self.failureResultOf(d, NoSubscriber)
        self.assertIn("nothing subscribes to q", str(failure.value))
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(self.broker.topic("r").waiting, 0)

    def test_requestOnItsReplyTopic(self):
        """A request published where its reply comes is not its own reply."""
        seen = []
        self.broker.subscribe("t", seen.append)
        d = self.broker.request("t", "t", b"ask", timeout=1)
        self.assertNoResult(d)
        self.broker.publish("t", b"answer")
        self.assertEqual(self.successResultOf(d).body, b"answer")

    def test_manyWaitersCheap(self):
        """Requests waiting on one topic are found and removed in constant time."""
        self.broker.subscribe("q", lambda m: None)
        # No timeout: Clock's own timers are a sorted list, the reactor's a heap.
        waits = [self.broker.request("q", "r", b"x") for _ in range(20000)]
        for d in waits[::2]:
            d.cancel()
            self.failureResultOf(d)
        self.broker.publish("r", b"first")
        self.assertEqual(self.successResultOf(waits[1]).body, b"first")
        self.assertEqual(self.broker.topic("r").waiting, 9999)
        for d in waits[3::2]:
            d.cancel()
            self.failureResultOf(d)


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

    def test_resumedProducerThatRefillsKeepsTheRestPaused(self):
        """Resuming producers in turn stops as soon as one of them makes the
        subscriber busy again: the others stay paused (none would be paused
        again, and they would fill the queue until it drops), and the next
        resume starts with the next producer."""
        topic = self.broker.topic("t")
        pending = []
        self.broker.subscribe("t", lambda m: pending.append(Deferred()) or pending[-1])
        producers = []

        class Publishing(Producer):
            def resumeProducing(self):
                super().resumeProducing()
                self.broker.publish("t", b"from %d" % producers.index(self))

        for _ in range(3):
            producer = Publishing()
            producer.broker = self.broker
            producers.append(producer)
            topic.registerProducer(producer)
        self.broker.publish("t", b"first")
        self.assertEqual([p.paused for p in producers], [True] * 3)
        pending.pop(0).callback(None)
        # One producer resumed and published: busy again, the other two
        # were never resumed.
        self.assertEqual([p.calls.count("resume") for p in producers].count(1), 1)
        first = next(p for p in producers if p.calls.count("resume"))
        self.assertTrue(all(p.paused for p in producers))
        pending.pop(0).callback(None)
        second = next(p for p in producers if p is not first and p.calls.count("resume"))
        self.assertIsNot(first, second)
        self.assertEqual(self.broker.topic("t").dropped, 0)

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

    def test_queueBoundedInBytes(self):
        """Big messages fill a busy subscriber's queue by size first (16 MiB);
        one message always fits into an empty queue."""
        broker = Broker(clock=Clock())
        sub = broker.subscribe("t", lambda m: Deferred())
        body = b"x" * (6 << 20)
        for _ in range(6):
            broker.publish("t", body)
        self.assertEqual((sub.delivered, sub.queued, sub.dropped), (1, 2, 3))
        self.assertEqual(sub.queuedBytes, 12 << 20)
        sub.cancel()
        self.assertEqual((sub.queuedBytes, sub.dropped), (0, 5))
        huge = Broker(clock=Clock()).subscribe("u", lambda m: Deferred())
        huge.topic.publish(huge.topic.message(b"first"))
        huge.topic.publish(huge.topic.message(b"y" * (20 << 20)))
        self.assertEqual((huge.queued, huge.dropped), (1, 0))

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
        self.topic = self.broker.topic("t", pin=True)

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

    def test_sessionDoesNotFilterBatches(self):
        """What a connection reads is not a reply: its session filters nothing."""
        other, mine = [], []
        self.broker.subscribe("t", other.append, session="s2")
        self.broker.subscribe("t", mine.append, session="s1",
                              batchCallback=lambda ms: mine.extend(ms))
        self.publish(b"a", b"b", session="s1")
        self.assertEqual([m.body for m in other], [b"a", b"b"])
        self.assertEqual([m.body for m in mine], [b"a", b"b"])

    def test_batchUnroutedAndReplies(self):
        """A batch reaching no subscriber is counted unrouted, except what a
        waiting request takes."""
        self.broker.subscribe("q", lambda m: None)
        d = self.broker.request("q", "t", b"ask", timeout=1)
        self.publish(b"a", b"b")
        self.assertEqual(self.successResultOf(d).body, b"a")
        self.assertEqual((self.topic.unrouted, self.topic.replies), (1, 1))

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


# -- a model of the broker, checked against random interleavings -----------------

_operations = st.lists(st.one_of(
    st.tuples(st.just("subscribe"), st.sampled_from(["plain", "slow", "batch"])),
    st.tuples(st.just("cancel"), st.integers(0, 7)),
    st.tuples(st.just("publish"), st.integers(1, 4)),
    st.tuples(st.just("batch"), st.integers(1, 4)),
    st.tuples(st.just("release"), st.integers(0, 7)),
), max_size=60)


class BrokerModelTests(unittest.TestCase):
    """Random publish/subscribe/cancel/busy interleavings: every message a
    subscriber was subscribed for is delivered to it once, in publish order,
    or counted as dropped; every message nobody was subscribed for is counted
    as unrouted."""

    @settings(max_examples=300, deadline=None)
    @given(_operations)
    def test_deliveredOnceInOrderOrCounted(self, operations):
        broker = Broker(clock=Clock(), queueLimit=3)
        topic = broker.topic("t", pin=True)
        subs = []  # [subscription, received ids, expected ids, pending Deferreds]

        def callback(record, slow):
            def receive(message):
                record[1].append(message._seq)
                if slow:
                    d = Deferred()
                    record[3].append(d)
                    return d
            return receive

        seq = 0
        unrouted = 0
        for op, arg in operations:
            if op == "subscribe":
                record = [None, [], [], []]
                single = callback(record, arg == "slow")

                def batch(messages, record=record):
                    record[1].extend(m._seq for m in messages)

                record[0] = topic.subscribe(
                    single, name=f"s{len(subs)}",
                    batchCallback=batch if arg == "batch" else None)
                subs.append(record)
            elif op == "cancel" and arg < len(subs):
                subs[arg][0].cancel()
            elif op == "release" and arg < len(subs) and subs[arg][3]:
                subs[arg][3].pop(0).callback(None)
            elif op in ("publish", "batch"):
                bodies = [b"m"] * arg
                active = [r for r in subs if r[0].active]
                ids = list(range(seq + 1, seq + arg + 1))
                seq += arg
                for record in active:
                    record[2].extend(ids)
                if not active:
                    unrouted += arg
                if op == "publish":
                    for body in bodies:
                        broker.publish("t", body)
                else:
                    topic.publishBatch(topic.messages(bodies))
        # Let every slow subscriber catch up.
        for record in subs:
            while record[3]:
                record[3].pop(0).callback(None)
        for record in subs:
            sub, received, expected, _ = record
            self.assertEqual(received, sorted(set(received)), "twice or out of order")
            self.assertTrue(set(received) <= set(expected), "not subscribed for it")
            self.assertEqual(len(received) + sub.dropped, len(expected),
                             f"{sub.name}: neither delivered nor counted")
            self.assertEqual(sub.queued, 0)
        self.assertEqual(topic.unrouted, unrouted)
        self.assertEqual(topic.published, seq)
        self.assertEqual(topic.dropped, sum(r[0].dropped for r in subs))
        self.assertEqual(topic.delivered, sum(len(r[1]) for r in subs))
        self.assertEqual(topic._busy, 0)
