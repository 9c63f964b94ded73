"""Tests for aiengine.auth and aiengine.logs."""

from twisted.internet.task import Clock
from twisted.trial import unittest

from aiengine.auth import LoginThrottle, SharedSecret
from aiengine.logs import worthLogging


class SharedSecretTests(unittest.TestCase):
    def test_matches(self):
        secret = SharedSecret(b"  s3cret\n")
        self.assertTrue(secret.matches(b"s3cret"))
        self.assertTrue(secret.matches(" s3cret\r\n"))
        for wrong in (b"s3cre", b"s3crett", b"", None, "S3CRET"):
            self.assertFalse(secret.matches(wrong), wrong)

    def test_emptyRefused(self):
        for empty in (b"", b" \n\t", ""):
            self.assertRaises(ValueError, SharedSecret, empty)

    def test_hidden(self):
        self.assertNotIn("s3cret", repr(SharedSecret(b"s3cret")))


class WorthLoggingTests(unittest.TestCase):
    def test_firstAndEveryNth(self):
        self.assertEqual([n for n in range(1, 2501) if worthLogging(n)], [1, 1000, 2000])
        self.assertEqual([n for n in range(1, 301) if worthLogging(n, 100)],
                         [1, 100, 200, 300])


class AddressTests(unittest.TestCase):
    def test_describeAddress(self):
        from twisted.internet.address import IPv4Address, IPv6Address
        from aiengine.logs import describeAddress, peerOf
        self.assertEqual(describeAddress(IPv4Address("TCP", "127.0.0.1", 5)), "127.0.0.1:5")
        self.assertEqual(describeAddress(IPv6Address("TCP", "::1", 5)), "[::1]:5")
        self.assertEqual(describeAddress(None), "None")
        self.assertEqual(peerOf(object()), "?")


class LoginThrottleTests(unittest.TestCase):
    def setUp(self):
        self.clock = Clock()
        self.throttle = LoginThrottle(self.clock, first=0.5, most=4.0, forget=60.0, size=3)

    def test_waitDoublesUpToMost(self):
        waits = [self.throttle.failed("a") for _ in range(6)]
        self.assertEqual(waits, [0.5, 1.0, 2.0, 4.0, 4.0, 4.0])
        self.assertEqual(self.throttle.retryAfter("a"), 4.0)
        self.assertEqual(self.throttle.retryAfter("b"), 0.0)
        self.clock.advance(4)
        self.assertEqual(self.throttle.retryAfter("a"), 0.0)
        self.assertEqual(self.throttle.throttled, 1)

    def test_successAndTimeForget(self):
        self.throttle.failed("a")
        self.throttle.succeeded("a")
        self.assertEqual(self.throttle.failed("a"), 0.5)
        self.throttle.failed("a")
        self.clock.advance(60)
        self.assertEqual(self.throttle.failed("a"), 0.5)

    def test_boundedMemory(self):
        for address in "abcd":
            self.throttle.failed(address)
        self.assertEqual(self.throttle.retryAfter("a"), 0.0)  # the oldest went
        self.assertEqual(self.throttle.retryAfter("d"), 0.5)
