"""Run the cloud companion under gunicorn (the Flask dev server is for debugging only).

Each server gets a fresh ``PROMETHEUS_MULTIPROC_DIR`` so /metrics aggregates all workers, and runs in its
own session (process group) so it can be stopped, or killed outright, as a whole.

Worker class: ``gevent`` (the ``[cloud]`` extra) by default, so a connection that sends its request slowly holds
a greenlet, not a thread, and slow or idle clients cannot starve /healthz; ``gthread`` / ``sync`` when asked
for (or when gevent is missing, with a warning). ``serve_forever`` forwards SIGTERM / SIGINT / SIGHUP to
gunicorn and waits for it, so stopping ``edge-rerank serve`` stops the server.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from edge_rerank.cloud.app import CloudConfig
from edge_rerank.cloud.prometheus import MULTIPROC_ENV
from edge_rerank.cloud.wsgi import ENV
from edge_rerank.device_sdk.extras import importable


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


WORKER_CLASSES = ("gevent", "gthread", "sync")
# gunicorn's HTTP parser: "auto" = the C parser (gunicorn_h1c, in the [cloud] extra) when installed, else gunicorn's
# pure-Python one; "fast" = require the C parser; "python" = the pure-Python one. Both give the same statuses on
# every malformed request the tests and bench/cloud_fuzz.py send; the C one costs less per request.
HTTP_PARSERS = ("auto", "fast", "python")


def default_worker_class(threads: int = 1) -> str:
    """gevent when installed; else gthread (threads > 1) or sync, both of which a few slow clients can starve."""
    if importable("gevent"):
        return "gevent"
    return "gthread" if threads > 1 else "sync"


def gunicorn_command(host: str, port: int, workers: int, threads: int = 1, worker_class: str | None = None,
                     worker_connections: int = 1000, timeout_s: int = 30, keepalive_s: int = 5,
                     http_parser: str = "auto") -> list[str]:
    """The gunicorn command line: `worker_class` (default: :func:`default_worker_class`), `http_parser` (one of
    :data:`HTTP_PARSERS`), request-line and header limits, a worker timeout, keep-alive, graceful shutdown."""
    wc = worker_class or default_worker_class(threads)
    if wc not in WORKER_CLASSES:
        raise ValueError(f"worker_class must be one of {WORKER_CLASSES}, got {wc!r}")
    if http_parser not in HTTP_PARSERS:
        raise ValueError(f"http_parser must be one of {HTTP_PARSERS}, got {http_parser!r}")
    if http_parser == "fast" and not importable("gunicorn_h1c"):
        raise ImportError("http_parser='fast' needs gunicorn's C parser: pip install 'edge-rerank[cloud]'")
    if wc == "gthread" and threads < 2:
        threads = 2
    worker = {"gevent": "GeventWorker", "gthread": "ThreadWorker", "sync": "SyncWorker"}[wc]
    cmd = [sys.executable, "-m", "gunicorn", "-c", "python:edge_rerank.cloud.gunicorn_conf", "--workers", str(workers),
           "--worker-class", f"edge_rerank.cloud.gunicorn_workers.{worker}", "--bind", f"{host}:{port}",
           "--log-level", "warning",
           "--graceful-timeout", "5", "--backlog", "2048", "--timeout", str(timeout_s),
           "--keep-alive", str(keepalive_s), "--http-parser", http_parser,
           "--limit-request-line", "8190", "--limit-request-fields", "100", "--limit-request-field_size", "8190"]
    if wc == "gthread":
        cmd += ["--threads", str(threads)]
    if wc == "gevent":
        cmd += ["--worker-connections", str(worker_connections)]
    return [*cmd, "edge_rerank.cloud.wsgi:app_from_env()"]


def _server_env(config: CloudConfig, metrics_dir: str) -> dict[str, str]:
    return {**os.environ, ENV: json.dumps(asdict(config)), MULTIPROC_ENV: metrics_dir,
            "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}


_FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


def serve_forever(config: CloudConfig, host: str = "127.0.0.1", port: int = 8080, workers: int = 2,
                  threads: int = 1, worker_class: str | None = None, http_parser: str = "auto") -> int:
    """Run gunicorn until it exits. SIGTERM / SIGINT / SIGHUP sent to this process are forwarded to the gunicorn
    master (graceful stop; HUP reloads workers), so a process manager stopping ``edge-rerank serve`` stops the
    server too; a second SIGINT / SIGTERM after the graceful timeout kills it."""
    metrics_dir = tempfile.mkdtemp(prefix="edge-rerank-metrics-")
    proc = subprocess.Popen(gunicorn_command(host, port, workers, threads, worker_class, http_parser=http_parser),
                            env=_server_env(config, metrics_dir))
    stopping = [0.0]

    def forward(signum, _frame):
        if signum != signal.SIGHUP:
            if stopping[0] and time.monotonic() - stopping[0] > 10:
                signum = signal.SIGKILL
            stopping[0] = stopping[0] or time.monotonic()
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signum)

    old = {s: signal.signal(s, forward) for s in _FORWARDED}
    try:
        while True:
            try:
                return proc.wait()
            except InterruptedError:
                continue
    finally:
        for s, h in old.items():
            signal.signal(s, h)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        shutil.rmtree(metrics_dir, ignore_errors=True)


@dataclass
class ServerProcess:
    url: str
    proc: subprocess.Popen
    metrics_dir: Path

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Signal the whole gunicorn process group (master and workers)."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, sig)


def _wait_healthy(proc: subprocess.Popen, base: str, timeout_s: float, log_file) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"cloud server exited with code {proc.returncode} (log: {log_file})")
        try:
            with urllib.request.urlopen(base + "/healthz", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"cloud server did not become healthy within {timeout_s}s")
        time.sleep(0.1)


@contextlib.contextmanager
def running_server(config: CloudConfig, *, workers: int = 1, threads: int = 1, host: str = "127.0.0.1",
                   port: int | None = None, timeout_s: float = 60.0, log_file: str | Path | None = None,
                   worker_class: str | None = None, http_parser: str = "auto") -> Iterator[str]:
    """Start gunicorn in a child process, wait for /healthz, yield the base URL, stop it on exit."""
    with server_process(config, workers=workers, threads=threads, host=host, port=port, timeout_s=timeout_s,
                        log_file=log_file, worker_class=worker_class, http_parser=http_parser) as server:
        yield server.url


@contextlib.contextmanager
def server_process(config: CloudConfig, *, workers: int = 1, threads: int = 1, host: str = "127.0.0.1",
                   port: int | None = None, timeout_s: float = 60.0, log_file: str | Path | None = None,
                   worker_class: str | None = None, http_parser: str = "auto") -> Iterator[ServerProcess]:
    """Like running_server, but yields the process handle too (for tests that kill -9 it)."""
    port = port or free_port()
    metrics_dir = tempfile.mkdtemp(prefix="edge-rerank-metrics-")
    out = open(log_file, "ab") if log_file else subprocess.DEVNULL  # noqa: SIM115
    proc = subprocess.Popen(gunicorn_command(host, port, workers, threads, worker_class, http_parser=http_parser),
                            env=_server_env(config, metrics_dir),
                            stdout=out, stderr=out, start_new_session=True)
    server = ServerProcess(url=f"http://{host}:{port}", proc=proc, metrics_dir=Path(metrics_dir))
    try:
        _wait_healthy(proc, server.url, timeout_s, log_file)
        yield server
    finally:
        if proc.poll() is None:
            server.kill(signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                server.kill(signal.SIGKILL)
                proc.wait()
        server.kill(signal.SIGKILL)  # any worker left behind by a killed master
        if log_file:
            out.close()
        shutil.rmtree(metrics_dir, ignore_errors=True)
