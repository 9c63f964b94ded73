"""The twistd entry point in-process: options, makeService and start-up."""

from __future__ import annotations

import os

from twisted.internet.testing import MemoryReactorClock
from twisted.trial import unittest

from aiengine import tap

MEDIA_XML = """<service>
  <listeners>
    <listener name="console">
      <property name="port" value="0"/>
      <property name="msgtype" value="xmlcall"/>
    </listener>
  </listeners>
  <directchannels>
{channels}
  </directchannels>
</service>
"""

CHANNEL = """    <channel name="c{n}">
      <property name="host" value="127.0.0.1"/>
      <property name="port" value="{port}"/>
      <property name="protocol" value="text-messages"/>
    </channel>"""


class FakeCollector:
    """Stands in for the gc module: records what the tap asks of it."""

    def __init__(self):
        self.calls = []

    def __getattr__(self, name):
        if name in ("disable", "enable", "freeze"):
            return lambda *args: self.calls.append(name)
        raise AttributeError(name)


class StartUpTests(unittest.TestCase):
    """Start-up keeps the cyclic collector out of the way, then freezes what it made."""

    def setUp(self):
        self.collector = FakeCollector()
        self.patch(tap, "gc", self.collector)

    @staticmethod
    def runSlices(clock, turns=10):
        """Let the cooperator starting the channels take its turns."""
        for _ in range(turns):
            clock.advance(0)

    def options(self, channels=3):
        path = os.path.abspath(self.mktemp())
        with open(path, "w") as f:
            f.write(MEDIA_XML.format(channels="\n".join(
                CHANNEL.format(n=n, port=10000 + n) for n in range(channels))))
        options = tap.Options()
        options.parseOptions(["-c", path])
        return options

    def test_collectorPausedUntilChannelsStarted(self):
        options = self.options(channels=3)
        self.assertEqual(self.collector.calls, ["disable"])

        clock = MemoryReactorClock()
        engine = tap.makeService(options, reactor=clock)
        engine.startService()
        self.addCleanup(engine.stopService)
        self.assertEqual(self.collector.calls, ["disable"])
        self.assertFalse(engine.started.called)

        self.runSlices(clock)
        self.assertTrue(engine.started.called)
        self.assertEqual(len(clock.tcpClients), 3)
        self.assertEqual(self.collector.calls, ["disable", "freeze", "enable"])

    def test_brokenChannelDoesNotStopTheOthers(self):
        """A channel whose start raises is logged; the rest still start and
        start-up still ends."""
        clock = MemoryReactorClock()
        engine = tap.makeService(self.options(channels=3), reactor=clock)

        def broken():
            raise RuntimeError("bug")

        engine.channels["c1"].start = broken
        engine.startService()
        self.addCleanup(engine.stopService)
        self.runSlices(clock)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.assertEqual(sorted(port for _, port, *_ in clock.tcpClients), [10000, 10002])
        self.assertTrue(engine.started.called)
        self.assertEqual(self.collector.calls, ["disable", "freeze", "enable"])

    def test_collectorResumedWhenStoppedEarly(self):
        """A stop before every channel has started also ends start-up."""
        engine = tap.makeService(self.options(channels=3), reactor=MemoryReactorClock())
        engine.startService()
        engine.stopService()
        self.assertTrue(engine.started.called)
        self.assertEqual(self.collector.calls, ["disable", "freeze", "enable"])
