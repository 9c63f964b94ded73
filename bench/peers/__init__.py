"""Peer processes of the benchmarks.

Each module is a small program run as ``python -m bench.peers.<name>``: a
server or client that talks to aiengine (or to a baseline) over 127.0.0.1
only.  A peer reports what happens as JSON lines on stdout (see
:func:`bench.peers._common.emit`), takes commands as lines on stdin, and
stops by itself: when its stdin closes, on ``SIGTERM``, or after
``--timeout`` seconds.
"""
