"""Run the cloud companion under gunicorn (the Flask dev server is for debugging only)."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path

from cloud.app import CloudConfig
from cloud.wsgi import ENV


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def gunicorn_command(host: str, port: int, workers: int, threads: int = 1) -> list[str]:
    return [sys.executable, "-m", "gunicorn", "--workers", str(workers), "--threads", str(threads),
            "--bind", f"{host}:{port}", "--log-level", "warning", "--graceful-timeout", "5",
            "cloud.wsgi:app_from_env()"]


def serve_forever(config: CloudConfig, host: str = "127.0.0.1", port: int = 8080, workers: int = 2) -> int:
    env = {**os.environ, ENV: json.dumps(asdict(config))}
    return subprocess.call(gunicorn_command(host, port, workers), env=env)


@contextlib.contextmanager
def running_server(config: CloudConfig, *, workers: int = 1, threads: int = 1, host: str = "127.0.0.1",
                   port: int | None = None, timeout_s: float = 60.0,
                   log_file: str | Path | None = None) -> Iterator[str]:
    """Start gunicorn in a child process, wait for /healthz, yield the base URL, stop it on exit."""
    port = port or free_port()
    env = {**os.environ, ENV: json.dumps(asdict(config))}
    out = open(log_file, "ab") if log_file else subprocess.DEVNULL  # noqa: SIM115
    proc = subprocess.Popen(gunicorn_command(host, port, workers, threads), env=env, stdout=out, stderr=out)
    base = f"http://{host}:{port}"
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"cloud server exited with code {proc.returncode} (log: {log_file})")
            try:
                with urllib.request.urlopen(base + "/healthz", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"cloud server did not become healthy within {timeout_s}s")
            time.sleep(0.1)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if log_file:
            out.close()
