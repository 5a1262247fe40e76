"""WSGI entry for gunicorn: ``gunicorn 'edge_rerank.cloud.wsgi:app_from_env()'``. Reads the config from the
environment variable EDGE_RERANK_CLOUD_CONFIG (JSON of CloudConfig's fields)."""

from __future__ import annotations

import json
import os

from edge_rerank.cloud.app import CloudConfig, create_app

ENV = "EDGE_RERANK_CLOUD_CONFIG"


def app_from_env():
    raw = os.environ.get(ENV)
    if not raw:
        raise RuntimeError(f"set {ENV} to a JSON CloudConfig, e.g. '{{\"data_dir\": \"runs/demo/cloud_data\"}}'")
    return create_app(CloudConfig(**json.loads(raw)))
