"""Start a throw-away ``redis-server`` on loopback (random free port, temp dir, no persistence) for tests
and benchmarks; it is killed on exit."""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator


def redis_server_binary() -> str | None:
    return shutil.which("redis-server")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def running_redis(timeout_s: float = 20.0) -> Iterator[str]:
    """Yield ``redis://127.0.0.1:<port>/0`` of a fresh redis-server; raise RuntimeError if there is none."""
    binary = redis_server_binary()
    if binary is None:
        raise RuntimeError("redis-server is not installed (apt-get install -y redis-server)")
    import redis

    with tempfile.TemporaryDirectory(prefix="edge-rerank-redis-") as tmp:
        port = _free_port()
        proc = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", tmp, "--save", "",
                                 "--appendonly", "no", "--protected-mode", "yes", "--logfile", f"{tmp}/redis.log"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        url = f"redis://127.0.0.1:{port}/0"
        try:
            deadline = time.monotonic() + timeout_s
            client = redis.Redis.from_url(url, socket_connect_timeout=1)
            while True:
                if proc.poll() is not None:
                    raise RuntimeError(f"redis-server exited with code {proc.returncode}")
                try:
                    if client.ping():
                        break
                except redis.exceptions.ConnectionError:
                    pass
                if time.monotonic() > deadline:
                    raise TimeoutError(f"redis-server did not answer within {timeout_s}s")
                time.sleep(0.05)
            client.close()
            yield url
        finally:
            proc.kill()
            proc.wait()
