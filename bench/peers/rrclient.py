"""Request/response client: a blocking loop with ``--window`` requests in flight.

One program for every request/response comparison, so that only the framing
differs between aiengine and the server it is compared with:

- ``console-ping``: ``Engine.ping`` at aiengine's console (0x01-framed);
- ``console-request``: ``Topics.request`` at the console (``--topic-out``,
  ``--topic-in``, ``--message``), answered by whatever replies on the topic;
- ``redis-ping``: Redis ``PING`` (RESP);
- ``lines``: a page path as a line, its body back as a line (aiengine's
  ``http`` channel behind a duplex listener);
- ``http``: ``GET`` of the path over one persistent HTTP/1.1 connection,
  pipelined when the window is above 1 (nginx directly).

``--warmup`` requests first (not timed), then ``--count`` timed ones.  With a
window of 1 every round trip is timed (``time.perf_counter``).  Event
``done``: ``rate`` (answers per second), ``answers``, ``bad`` (answers that
were not the expected one), and with a window of 1 the round trips in
seconds (``p50``, ``p99``, ``max``).
"""

from __future__ import annotations

import argparse
import socket
import time

from bench.peers import wire
from bench.peers._common import emit

MODES = ("console-ping", "console-request", "redis-ping", "lines", "http")


def consoleCall(method: str, n: int, parameters=()) -> bytes:
    """An ``<xmlcall>`` of class Engine or Topics, ended with 0x01."""
    cls = "Topics" if method == "request" else "Engine"
    if not parameters:
        return b'<xmlcall class="%s" method="%s" requestId="R%d"/>\x01' % (
            cls.encode(), method.encode(), n)
    props = b"".join(b'<property name="%s" value="%s"/>' % (k.encode(), v.encode())
                     for k, v in parameters)
    return (b'<xmlcall class="%s" method="%s" requestId="R%d"><parameters>%s'
            b'</parameters></xmlcall>\x01' % (cls.encode(), method.encode(), n, props))


def httpRequest(path: str, port: int) -> bytes:
    """A GET with the headers aiengine's http channel sends."""
    return (b"GET %s HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nUser-Agent: aiengine/0.1.0\r\n"
            b"Accept: */*\r\n\r\n" % (path.encode(), port))


class Framing:
    """What one mode writes and how it cuts and checks the answers."""

    def __init__(self, mode, port, path="/", topicOut="", topicIn="", message="",
                 size=None):
        self.mode = mode
        self.port = port
        self.path = path
        self.params = (("topic-out", topicOut), ("topic-in", topicIn),
                       ("message", message), ("timeout", "5"))
        self.expect = message
        self.size = size
        self.buffer = b""
        if mode == "redis-ping":
            self.fixed = wire.respCommand("PING")
        elif mode == "lines":
            self.fixed = path.encode() + b"\n"
        elif mode == "http":
            self.fixed = httpRequest(path, port)
        else:
            self.fixed = None

    def request(self, n: int) -> bytes:
        if self.fixed is not None:
            return self.fixed
        if self.mode == "console-ping":
            return consoleCall("ping", n)
        return consoleCall("request", n, self.params)

    def feed(self, data: bytes) -> list:
        """The complete answers so far, each checked: a list of booleans."""
        buffer = self.buffer + data
        out = []
        if self.mode == "http":
            pos = 0
            while True:
                end = buffer.find(b"\r\n\r\n", pos)
                if end < 0:
                    break
                head = buffer[pos:end].lower()
                i = head.find(b"\r\ncontent-length:")
                if i < 0:
                    raise ValueError(f"response without Content-Length: {head[:200]!r}")
                j = head.find(b"\r\n", i + 2)
                length = int(head[i + 17:j if j >= 0 else len(head)])
                if end + 4 + length > len(buffer):
                    break
                out.append(head.startswith(b"http/1.1 200")
                           and (self.size is None or length == self.size))
                pos = end + 4 + length
            self.buffer = buffer[pos:]
            return out
        terminator = {"redis-ping": b"\r\n", "lines": b"\n"}.get(self.mode, b"\x01")
        *answers, self.buffer = buffer.split(terminator)
        for answer in answers:
            if self.mode == "redis-ping":
                out.append(answer == b"+PONG")
            elif self.mode == "lines":
                out.append(self.size is None or len(answer) == self.size)
            elif self.mode == "console-ping":
                out.append(b'status="OK"' in answer and b"<pong" in answer)
            else:
                out.append(b'status="OK"' in answer and b"<message " in answer)
        return out


def loop(sock, framing, count, window, timed) -> dict:
    """``count`` answers with ``window`` requests in flight."""
    perf = time.perf_counter
    recv, send = sock.recv, sock.sendall
    sent = answered = bad = 0
    rtts = []
    start = perf()
    if window == 1:
        for n in range(count):
            t = perf()
            send(framing.request(n))
            answers = []
            while not answers:
                data = recv(65536)
                if not data:
                    raise ConnectionError(f"closed after {answered} answers")
                answers = framing.feed(data)
            rtts.append(perf() - t)
            answered += len(answers)
            bad += answers.count(False)
    else:
        batch = min(window, count)
        send(b"".join(framing.request(n) for n in range(batch)))
        sent = batch
        while answered < count:
            data = recv(65536)
            if not data:
                raise ConnectionError(f"closed after {answered} answers")
            answers = framing.feed(data)
            answered += len(answers)
            bad += answers.count(False)
            more = min(len(answers), count - sent)
            if more > 0:
                send(b"".join(framing.request(n) for n in range(sent, sent + more)))
                sent += more
    elapsed = perf() - start
    result = {"answers": answered, "bad": bad, "seconds": elapsed,
              "rate": answered / elapsed}
    if timed and rtts:
        rtts.sort()
        result.update(p50=rtts[len(rtts) // 2], p99=rtts[int(len(rtts) * 0.99) - 1],
                      max=rtts[-1])
    return result


def main(argv=None):
    """``python -m bench.peers.rrclient --mode M --port P --count N ...``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=MODES, required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--count", type=int, required=True, help="timed requests")
    parser.add_argument("--warmup", type=int, default=200, help="untimed requests first")
    parser.add_argument("--window", type=int, default=1, help="requests in flight")
    parser.add_argument("--path", default="/", help="lines, http: the page")
    parser.add_argument("--size", type=int, help="lines, http: the body size expected")
    parser.add_argument("--topic-out", default="", help="console-request")
    parser.add_argument("--topic-in", default="", help="console-request")
    parser.add_argument("--message", default="", help="console-request")
    args = parser.parse_args(argv)
    try:
        sock = socket.create_connection(("127.0.0.1", args.port), timeout=30)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        framing = Framing(args.mode, args.port, args.path, args.topic_out, args.topic_in,
                          args.message, args.size)
        if args.warmup:
            loop(sock, framing, args.warmup, args.window, False)
        result = loop(sock, framing, args.count, args.window, args.window == 1)
        emit("done", mode=args.mode, window=args.window, **result)
    except (OSError, ValueError) as e:
        emit("error", text=f"{args.mode}: {type(e).__name__}: {e}")


if __name__ == "__main__":
    main()
