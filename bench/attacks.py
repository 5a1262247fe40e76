"""Raw-socket HTTP attacks on the cloud service (shared by bench/cloud_hardening_bench.py, bench/cloud_fuzz.py and
tests/test_cloud_hardening.py): malformed chunked framing, deep JSON nesting, over-limit bodies, slow clients, and
the gunicorn worker pids / peak memory to watch while they run."""

from __future__ import annotations

import os
import random
import socket
import threading
import time
from dataclasses import dataclass, field


def raw_request(url: str, data: bytes, timeout_s: float = 10.0) -> tuple[int, bytes]:
    """Send raw bytes (a whole HTTP request, however malformed) and return (status, body); status 0 when the
    server closed the connection without an answer."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=timeout_s) as s:
        try:
            s.sendall(data)
            s.shutdown(socket.SHUT_WR)
        except OSError:  # the server answered (413, 400) and closed before reading everything
            pass
        buf = b""
        try:
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                buf += chunk
        except (ConnectionResetError, TimeoutError):
            pass
    if not buf.startswith(b"HTTP/1."):
        return 0, buf
    try:
        status = int(buf.split(b" ", 2)[1])
    except (IndexError, ValueError):
        return 0, buf
    return status, buf.partition(b"\r\n\r\n")[2]


def request_bytes(method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None, *,
                  chunked: bool = False, chunks: list[bytes] | None = None, raw_body: bytes | None = None) -> bytes:
    """An HTTP/1.1 request. `chunked` frames `body` (or `chunks`) correctly; `raw_body` is sent as is after the
    headers (for malformed framing)."""
    h = {"Host": "localhost", "Connection": "close", **(headers or {})}
    if raw_body is not None:
        payload = raw_body
    elif chunked:
        parts = chunks if chunks is not None else [body[i:i + 65536] for i in range(0, len(body), 65536)]
        payload = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in parts if p) + b"0\r\n\r\n"
        h["Transfer-Encoding"] = "chunked"
    else:
        payload = body
        h.setdefault("Content-Length", str(len(body)))
    head = f"{method} {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in h.items()) + "\r\n"
    return head.encode("latin-1") + payload


def deep_json(depth: int, kind: str = "[") -> bytes:
    close = {"[": "]", "{": "}"}[kind]
    if kind == "{":
        return (b'{"a":' * depth) + b"1" + b"}" * depth
    return kind.encode() * depth + close.encode() * depth


def framing_attacks(rng: random.Random, path: str, headers: dict[str, str]) -> list[bytes]:
    """One round of malformed-framing requests against `path`."""
    ok = b'{"x": 1}'
    bad_size = rng.choice([b"zz", b"-1", b"ffffffffffffffffffff", b"1g", b"", b" ", b"0x10", b"10;" + b"e" * 300])
    return [
        request_bytes("POST", path, headers=headers | {"Transfer-Encoding": "chunked"},
                      raw_body=bad_size + b"\r\n" + ok + b"\r\n0\r\n\r\n"),
        request_bytes("POST", path, headers=headers | {"Transfer-Encoding": "chunked"},
                      raw_body=b"%x\r\n" % len(ok) + ok),  # no chunk terminator, no last chunk
        request_bytes("POST", path, headers=headers | {"Transfer-Encoding": "chunked"},
                      raw_body=b"%x\r\n" % (len(ok) + rng.randint(1, 50)) + ok + b"\r\n0\r\n\r\n"),  # size too big
        request_bytes("POST", path, headers=headers | {"Transfer-Encoding": "chunked"},
                      raw_body=b"%x\r\n" % len(ok) + ok + b"XX0\r\n\r\n"),  # garbage after the chunk
        request_bytes("POST", path, headers=headers | {"Transfer-Encoding": "chunked", "Content-Length": "5"},
                      raw_body=b"5\r\nhello\r\n0\r\n\r\n"),  # both framings
        request_bytes("POST", path, headers=headers | {"Content-Length": rng.choice(["-1", "abc", "1e3", "99999"])},
                      raw_body=ok),
        request_bytes("POST", path, headers=headers | {"Transfer-Encoding": rng.choice(["gzip", "chunked, gzip",
                                                                                        "identity", "xchunked"])},
                      raw_body=ok),
        request_bytes("POST", path, headers=headers | {"Transfer-Encoding": "chunked"},
                      raw_body=rng.randbytes(rng.randint(1, 200))),
    ]


@dataclass
class TrickleClients:
    """`n` connections that send a request one byte every `interval_s` seconds (slowloris)."""

    url: str
    n: int = 32
    interval_s: float = 0.5
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)
    bytes_sent: int = 0

    def _run(self) -> None:
        host, port = self.url.removeprefix("http://").split(":")
        payload = request_bytes("POST", "/v1/search", b"x" * 4096, {"Content-Type": "application/x-protobuf"})
        while not self._stop.is_set():
            try:
                with socket.create_connection((host, int(port)), timeout=5) as s:
                    for b in payload:
                        if self._stop.wait(self.interval_s):
                            return
                        s.sendall(bytes([b]))
                        self.bytes_sent += 1
            except OSError:
                self._stop.wait(self.interval_s)  # the server closed it: reconnect, as an attacker would

    def __enter__(self) -> TrickleClients:
        for _ in range(self.n):
            t = threading.Thread(target=self._run, daemon=True)
            t.start()
            self._threads.append(t)
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=5)


def worker_pids(master_pid: int) -> list[int]:
    """The gunicorn workers of a master (children in /proc)."""
    try:
        with open(f"/proc/{master_pid}/task/{master_pid}/children") as f:
            return [int(x) for x in f.read().split()]
    except OSError:
        out = []
        for d in os.listdir("/proc"):
            if d.isdigit():
                try:
                    with open(f"/proc/{d}/stat") as f:
                        if int(f.read().rsplit(")", 1)[1].split()[1]) == master_pid:
                            out.append(int(d))
                except OSError:
                    continue
        return out


def _status_kb(pid: int, key: str) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


def reset_peak(pids: list[int]) -> dict[int, int]:
    """Reset each process's peak RSS (VmHWM) to its current RSS; return the current RSS (KiB) per pid."""
    out = {}
    for pid in pids:
        try:
            with open(f"/proc/{pid}/clear_refs", "w") as f:
                f.write("5")
        except OSError:
            pass
        out[pid] = _status_kb(pid, "VmRSS")
    return out


def peak_growth_mib(before: dict[int, int]) -> float:
    """The largest growth of peak RSS (VmHWM) over the RSS in `before`, MiB, over the processes in it."""
    growth = 0
    for pid, rss in before.items():
        try:
            growth = max(growth, _status_kb(pid, "VmHWM") - rss)
        except OSError:
            continue
    return growth / 1024


def timed_get(url: str, timeout_s: float) -> float | None:
    """Seconds for one GET on a fresh connection, or None when not answered within `timeout_s`."""
    import urllib.request

    t0 = time.perf_counter()
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as r:
            r.read()
            return time.perf_counter() - t0 if r.status == 200 else None
    except OSError:
        return None
