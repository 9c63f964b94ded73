"""Console baseline: the least work one ping call takes, in a loop in one process.

For each of ``--count`` requests (the same bytes the console client sends):
parse it with lxml, build the ``<xmlcallresult>`` with its ``<pong/>`` and
serialise it as the console does (UTF-8, indented, then ``\\n\\x01``).  Event
``done``: ``rate`` (calls per second).
"""

from __future__ import annotations

import argparse
import time

from lxml import etree

from bench.peers._common import emit
from bench.peers.consoleclient import request


def answer(data: bytes) -> bytes:
    """The reply to one ping request."""
    root = etree.fromstring(data)
    result = etree.Element("xmlcallresult")
    result.set("requestId", root.get("requestId"))
    result.set("status", "OK")
    etree.SubElement(result, "pong")
    return etree.tostring(result, encoding="utf-8", pretty_print=True).rstrip(b"\n") \
        + b"\n\x01"


def main(argv=None):
    """``python -m bench.peers.xmlloop --count N``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=20000, help="calls")
    args = parser.parse_args(argv)
    requests = [request(n) for n in range(1, args.count + 1)]
    answer(requests[0])  # imports and lxml's first-use set-up are not the point
    start = time.perf_counter()
    size = 0
    for data in requests:
        size += len(answer(data))
    seconds = time.perf_counter() - start
    emit("done", answers=len(requests), bytes=size, seconds=seconds,
         rate=len(requests) / seconds)


if __name__ == "__main__":
    main()
