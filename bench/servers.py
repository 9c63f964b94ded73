"""The servers users would deploy instead of aiengine: redis-server, mosquitto, nginx.

Each runs as a foreground process started by the benchmark, on a free port of
127.0.0.1, with a configuration written into the work directory (no system
service, no default port), and is stopped by :class:`bench.harness.Cleanup`
like every other process (SIGTERM, then SIGKILL).

A missing server is installed with apt (``apt-get update`` once per run, then
``apt-get install -y <package>``) when the runner is root; when it is not, or
apt fails, :func:`start` raises :class:`Unavailable` and the benchmark reports
that comparison as skipped, with the reason.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Optional

from bench.harness import BenchError, Settings, _Process
from bench.peers import httpserver, wire

__all__ = ["KINDS", "Unavailable", "Server", "start", "freePort", "binary", "install",
           "redisArgs", "mosquittoConf", "nginxConf", "PAGE_SIZE", "PAGE_PATH"]

#: kind -> (binary, Debian package)
KINDS = {
    "redis": ("redis-server", "redis-server"),
    "mosquitto": ("mosquitto", "mosquitto"),
    "nginx": ("nginx", "nginx-light"),
}
#: where the servers' binaries are, beyond PATH (sbin is not on a user's PATH)
EXTRA_PATH = ("/usr/sbin", "/sbin", "/usr/local/sbin", "/usr/bin", "/usr/local/bin")
#: the page nginx serves: 1 KiB, no newline (it comes back to the client as a line)
PAGE_SIZE = 1024
PAGE_PATH = "/page.html"

_apt = {"updated": False, "failed": {}}


class Unavailable(Exception):
    """A comparison's server is not installed and could not be installed."""


def binary(name: str) -> Optional[str]:
    """The path of program ``name``, or None."""
    path = os.pathsep.join([os.environ.get("PATH", ""), *EXTRA_PATH])
    return shutil.which(name, path=path)


def _run(argv, log: Path, timeout: float) -> subprocess.CompletedProcess:
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    with open(log, "ab") as out:
        out.write(("\n$ " + " ".join(argv) + "\n").encode())
        out.flush()
        return subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=out,
                              stderr=subprocess.STDOUT, env=env, timeout=timeout)


def _tail(log: Path) -> str:
    try:
        lines = log.read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return " / ".join(lines[-3:])[-300:]


def install(kind: str, settings: Settings) -> str:
    """The path of ``kind``'s binary, installing its package first if need be.

    Raises :class:`Unavailable` (with what to do) when it is missing and
    cannot be installed: the runner is not root, there is no apt-get, or apt
    failed (the output is in ``<workdir>/apt.log``).
    """
    program, package = KINDS[kind]
    found = binary(program)
    if found:
        return found
    if kind in _apt["failed"]:
        raise Unavailable(_apt["failed"][kind])
    why = None
    if os.geteuid() != 0:
        why = (f"{program} is not installed and the runner is not root "
               f"(apt-get install -y {package})")
    elif not binary("apt-get"):
        why = f"{program} is not installed and there is no apt-get"
    else:
        log = settings.workdir / "apt.log"
        lock = ["-o", "DPkg::Lock::Timeout=300"]
        try:
            settings.say(f"installing {package} with apt-get (log {log})")
            if not _apt["updated"]:
                _apt["updated"] = True
                done = _run(["apt-get", *lock, "update"], log, 600)
                if done.returncode != 0:
                    settings.say(f"apt-get update failed ({done.returncode}); "
                                 "trying the install anyway")
            done = _run(["apt-get", *lock, "install", "-y", "--no-install-recommends",
                         package], log, 900)
            if done.returncode != 0:
                why = (f"apt-get install -y {package} failed ({done.returncode}): "
                       f"{_tail(log)}")
        except (OSError, subprocess.TimeoutExpired) as e:
            why = f"apt-get install -y {package} failed: {e}"
        found = binary(program)
        if not why and not found:
            why = f"apt-get installed {package} but there is no {program}"
    if why:
        _apt["failed"][kind] = why
        raise Unavailable(why)
    return found


def freePort() -> int:
    """A port of 127.0.0.1 nobody listens on (the kernel's pick)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- configurations --------------------------------------------------------------

def redisArgs(port: int, workdir: Path) -> list:
    """redis-server's arguments: loopback, no persistence, no daemon.

    A subscriber that falls behind is not disconnected (by default Redis
    closes one with 32 MB waiting, and its messages are lost): Redis buffers
    instead, as aiengine pauses its publishers, so that both deliver
    everything and the time to the last delivery is what differs.
    """
    return ["--port", str(port), "--bind", "127.0.0.1", "--save", "",
            "--appendonly", "no", "--daemonize", "no", "--dir", str(workdir),
            "--logfile", "", "--protected-mode", "yes",
            "--client-output-buffer-limit", "pubsub 0 0 0"]


def mosquittoConf(port: int) -> str:
    """mosquitto's configuration: one anonymous listener on loopback, nothing kept."""
    return (f"listener {port} 127.0.0.1\n"
            "allow_anonymous true\n"
            "persistence false\n"
            "log_dest stderr\n"
            "log_type error\nlog_type warning\n")


def nginxConf(port: int, root: Path, asRoot: bool) -> str:
    """nginx's configuration: one worker, the page directory, keepalive.

    Every path is in the work directory (``-p``), so nothing of the system's
    nginx is used.  As root, the worker would run as ``nobody``, which cannot
    read the work directory (0700): the worker stays root then.
    """
    temp = root / "temp"
    return (("user root;\n" if asRoot else "")
            + "worker_processes 1;\n"
            f"pid {root}/nginx.pid;\n"
            f"error_log {root}/error.log warn;\n"
            "events { worker_connections 1024; }\n"
            "http {\n"
            "    access_log off;\n"
            "    default_type text/plain;\n"
            "    keepalive_timeout 300s;\n"
            "    keepalive_requests 100000000;\n"
            f"    client_body_temp_path {temp}/body;\n"
            f"    proxy_temp_path {temp}/proxy;\n"
            f"    fastcgi_temp_path {temp}/fastcgi;\n"
            f"    uwsgi_temp_path {temp}/uwsgi;\n"
            f"    scgi_temp_path {temp}/scgi;\n"
            "    server {\n"
            f"        listen 127.0.0.1:{port};\n"
            f"        root {root}/www;\n"
            "    }\n"
            "}\n")


def page() -> bytes:
    """The page nginx serves: 1 KiB of letters, no newline."""
    return httpserver.body(0, PAGE_SIZE)


# -- processes -------------------------------------------------------------------

class Server(_Process):
    """A started server: ``kind``, ``port``, its output in ``<workdir>/<kind>.out``."""

    def __init__(self, settings: Settings, kind: str, argv, port: int, cwd: Path):
        self.kind = kind
        self.name = kind
        self.port = port
        self.outPath = settings.workdir / f"{kind}.out"
        with open(self.outPath, "ab") as out:
            self.popen = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out,
                                          stderr=subprocess.STDOUT, cwd=cwd,
                                          start_new_session=True)

    def output(self) -> str:
        try:
            return self.outPath.read_text(errors="replace").strip()[-500:]
        except OSError:
            return ""

    def waitReady(self, timeout: float = 15.0) -> None:
        """Wait until the server answers its protocol's hello on its port."""
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            if not self.alive():
                raise BenchError(f"{self.kind} exited ({self.popen.returncode}): "
                                 f"{self.output() or 'no output'}")
            try:
                if _hello(self.kind, self.port):
                    return
            except OSError as e:
                last = e
            time.sleep(0.05)
        raise BenchError(f"{self.kind} did not answer on port {self.port} within "
                         f"{timeout:g} s ({last}): {self.output()}")

    def stop(self, grace: float = 5.0):
        """SIGTERM, SIGKILL after ``grace``; then whatever is left of the
        server's own process group (nginx's worker, should its master have been
        killed) is killed too."""
        status = super().stop(grace)
        try:
            os.killpg(self.popen.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        return status


def _hello(kind: str, port: int) -> bool:
    with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
        if kind == "redis":
            s.sendall(wire.respCommand("PING"))
            return s.recv(100).startswith(b"+PONG")
        if kind == "mosquitto":
            s.sendall(wire.mqttConnect("bench-probe"))
            return wire.helloDone("mqtt", s.recv(100)) == 4
        s.sendall(b"GET %s HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
                  % PAGE_PATH.encode())
        answer = b""
        while True:
            data = s.recv(65536)
            if not data:
                break
            answer += data
        return answer.startswith(b"HTTP/1.1 200") and answer.endswith(page())


def start(kind: str, settings: Settings, mosquittoExtra: str = "",
          name: str = "mosquitto") -> Server:
    """Start ``kind`` (installing it first if need be) and wait until it answers.

    mosquitto's configuration is :func:`mosquittoConf` and ``mosquittoExtra``,
    written to ``<name>.conf`` in the work directory.
    :class:`Unavailable` when it cannot be installed; :class:`BenchError`
    when it does not start.  The caller registers the result with its
    ``Cleanup``; a server that fails to start is stopped here.
    """
    program = install(kind, settings)
    workdir = settings.workdir
    for attempt in range(3):  # a free port may be taken before the server binds it
        port = freePort()
        if kind == "redis":
            argv = [program, *redisArgs(port, workdir)]
        elif kind == "mosquitto":
            conf = workdir / f"{name}.conf"
            conf.write_text(mosquittoConf(port) + mosquittoExtra)
            argv = [program, "-c", str(conf)]
        else:
            root = workdir / "nginx"
            (root / "www").mkdir(parents=True, exist_ok=True)
            (root / "temp").mkdir(exist_ok=True)
            (root / "www" / PAGE_PATH.lstrip("/")).write_bytes(page())
            conf = root / "nginx.conf"
            conf.write_text(nginxConf(port, root, os.geteuid() == 0))
            argv = [program, "-p", str(root), "-e", str(root / "error.log"),
                    "-c", str(conf), "-g", "daemon off;"]
        server = Server(settings, kind, argv, port, workdir)
        try:
            server.waitReady()
            return server
        except BenchError:
            server.stop()
            if attempt == 2:
                raise
    raise AssertionError("unreachable")
