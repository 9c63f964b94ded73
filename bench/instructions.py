"""Console cost in CPU instructions: a figure that this machine's noise cannot move.

``python -m bench.instructions`` (needs valgrind) counts the instructions
one ``Engine.ping`` takes, in one process without sockets or reactor: the
console's protocol fed the same 0x01-framed requests as the ``console``
benchmark (answers written to a transport that discards them), and the
``xmlloop`` baseline's ``answer()``.  Each side runs twice under
``valgrind --tool=callgrind``, with 0 and with ``--calls`` requests; the
difference over ``--calls`` is the cost of one call, start-up left out.

Wall-clock rates swing by a factor of two on a shared VM; instruction counts
do not, so this tells whether a change made the console cheaper.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile

from bench.harness import ROOT, childEnvironment

_COLLECTED = re.compile(r"Collected\s*:\s*(\d+)")


def runConsole(count: int) -> None:
    """Feed ``count`` ping requests to a console protocol, 64 KiB at a time."""
    from types import SimpleNamespace

    from twisted.internet.testing import StringTransport

    from aiengine.broker import Broker
    from aiengine.console.builtins import registerBuiltins
    from aiengine.console.protocol import ConsoleFactory
    from aiengine.console.registry import CallRegistry
    from bench.peers.consoleclient import request

    class Discard(StringTransport):
        def write(self, data):
            pass

    registry = CallRegistry()
    registerBuiltins(registry)
    factory = ConsoleFactory(registry, SimpleNamespace(broker=Broker()), name="bench")
    protocol = factory.buildProtocol(None)
    protocol.makeConnection(Discard())
    data = b"".join(request(n) + b"\x01" for n in range(1, count + 1))
    for start in range(0, len(data), 65536):
        protocol.dataReceived(data[start:start + 65536])
    if factory.requests != count or factory.errors:
        raise SystemExit(f"console read {factory.requests} of {count} requests, "
                         f"{factory.errors} failed")


def runBaseline(count: int) -> None:
    """The ``xmlloop`` baseline's work for ``count`` requests."""
    from bench.peers.consoleclient import request
    from bench.peers.xmlloop import answer

    for data in [request(n) for n in range(1, count + 1)]:
        answer(data)


_WORKLOADS = {"console": runConsole, "baseline": runBaseline}


def instructions(valgrind: str, workload: str, count: int) -> int:
    """Instructions of one whole run of ``workload`` with ``count`` calls."""
    # A fixed hash seed: dict and set probing then takes the same steps.
    env = dict(childEnvironment(ROOT), PYTHONHASHSEED="0")
    with tempfile.TemporaryDirectory() as tmp:
        result = subprocess.run(
            [valgrind, "--tool=callgrind", f"--callgrind-out-file={tmp}/out",
             sys.executable, "-m", "bench.instructions", "--run", workload, str(count)],
            capture_output=True, text=True, env=env, cwd=ROOT)
    match = _COLLECTED.search(result.stderr)
    if result.returncode != 0 or match is None:
        raise SystemExit(f"{workload} under valgrind failed ({result.returncode}):\n"
                         f"{result.stderr[-2000:]}")
    return int(match.group(1))


def main(argv=None):
    """``python -m bench.instructions [--calls N]``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=3000, help="calls per run")
    parser.add_argument("--run", nargs=2, metavar=("WORKLOAD", "COUNT"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.run:
        _WORKLOADS[args.run[0]](int(args.run[1]))
        return
    valgrind = shutil.which("valgrind")
    if valgrind is None:
        raise SystemExit("valgrind is not installed (it counts the instructions)")
    perCall = {}
    for workload in ("console", "baseline"):
        print(f"{workload} ...", file=sys.stderr, flush=True)
        empty = instructions(valgrind, workload, 0)
        full = instructions(valgrind, workload, args.calls)
        perCall[workload] = (full - empty) / args.calls
    print(f"console:  {perCall['console']:,.0f} instructions per ping")
    print(f"baseline: {perCall['baseline']:,.0f} instructions per ping")
    print(f"ratio (baseline / console, as the console benchmark's calls/s ratio): "
          f"{perCall['baseline'] / perCall['console']:.2f}")


if __name__ == "__main__":
    main()
