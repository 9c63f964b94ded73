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
