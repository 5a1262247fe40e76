"""Gunicorn settings for the cloud service (``gunicorn -c python:cloud.gunicorn_conf``): tells the
Prometheus multiprocess collector when a worker exits so its live-only samples are dropped."""

from __future__ import annotations

import os


def child_exit(server, worker) -> None:  # gunicorn hook
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid)


def post_worker_init(worker) -> None:  # gunicorn hook: the app is loaded in this worker
    # the catalog, rankers and store index live as long as the worker: keep them out of the cyclic GC's scans
    import gc

    gc.collect()
    gc.freeze()
