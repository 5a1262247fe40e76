"""Gunicorn settings for the cloud service (``gunicorn -c python:cloud.gunicorn_conf``): tells the
Prometheus multiprocess collector when a worker exits so its live-only samples are dropped."""

from __future__ import annotations

import os


def child_exit(server, worker) -> None:  # gunicorn hook
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid)
