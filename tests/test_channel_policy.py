"""classifyEnd: how a channel's connection ended, from what the connection
recorded; a pure function, tested without a channel."""

from twisted.internet import error
from twisted.python.failure import Failure
from twisted.trial import unittest

from aiengine.channels.policy import DROPPED, FAILED, IDLE_END, OURS, classifyEnd

ADDRESS = "127.0.0.1:4000"


class Ended:
    """What a ChannelConnection records, as plain fields."""

    def __init__(self, up=True, proven=False, closedByUs=False, idleClosed=False,
                 protocolFailure=None, failReason=None, bytesIn=0, verifyResult=None):
        self.up = up
        self.proven = proven
        self.closedByUs = closedByUs
        self.idleClosed = idleClosed
        self.protocolFailure = protocolFailure
        self.failReason = failReason
        self.bytesIn = bytesIn
        self.verifyResult = verifyResult

    def isProven(self, clean):
        # The connection's own rule, tested with it; here only its answer counts.
        return self.proven


DONE = Failure(error.ConnectionDone())
LOST = Failure(error.ConnectionLost("reset by peer"))


class ClassifyEndTests(unittest.TestCase):

    def classify(self, connection, reason=DONE, **kw):
        return classifyEnd(connection, reason, ADDRESS, **kw)

    def test_stoppingOrClosedByUsIsOurs(self):
        self.assertEqual(self.classify(Ended(), ours=True), (OURS, "closed"))
        kind, why = self.classify(Ended(closedByUs=True), LOST)
        self.assertEqual(kind, OURS)
        self.assertIn("reset by peer", why)

    def test_idleTimer(self):
        self.assertEqual(self.classify(Ended(idleClosed=True, proven=True)),
                         (IDLE_END, "idle timeout"))

    def test_provenConnectionIsADrop(self):
        self.assertEqual(self.classify(Ended(proven=True)),
                         (DROPPED, "closed by the server"))
        kind, why = self.classify(Ended(proven=True), LOST)
        self.assertEqual(kind, DROPPED)
        self.assertIn("reset by peer", why)

    def test_unprovenEndsAreFailedAttempts(self):
        cases = [
            (Ended(failReason="TLS handshake did not complete within 3 s"), DONE,
             "connection to 127.0.0.1:4000 failed: TLS handshake did not complete"),
            (Ended(up=False), LOST, "connection to 127.0.0.1:4000 failed: "),
            (Ended(protocolFailure="message longer than 5 bytes"), DONE,
             "protocol error from 127.0.0.1:4000: message longer than 5 bytes"),
            (Ended(), DONE, "closed by the server right after it was made"),
            (Ended(bytesIn=3), LOST, "lost before a whole message arrived: "),
            (Ended(), LOST, "lost right after it was made: "),
        ]
        for connection, reason, expected in cases:
            kind, why = self.classify(connection, reason)
            self.assertEqual(kind, FAILED, why)
            self.assertIn(expected, why)
