"""Tests for aiengine.auth and aiengine.logs."""

from twisted.trial import unittest

from aiengine.auth import SharedSecret
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
