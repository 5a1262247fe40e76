"""Load a verified bundle into a backend and warm it up before it serves.

Download, signature checks, atomic swap and rollback come with the device-runtime issue (#5); today the
manager loads bundles from a local directory and keeps the last good model if a new one fails.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from device_sdk import backends
from device_sdk.backends import Backend, BackendError
from device_sdk.bundle import Bundle, BundleError, read_bundle
from device_sdk.features.operators import input_specs

log = logging.getLogger(__name__)

_DEFAULT_BACKEND = {"onnx": "onnxruntime", "lightgbm": "lightgbm", "tflite": "litert", "mnn": "mnn", "coreml": "coreml",
                    "numpy": "numpy"}


@dataclass
class LoadedModel:
    bundle: Bundle
    backend: Backend

    @property
    def version(self) -> str:
        return self.bundle.manifest.version


def load_model(bundle_dir: str | Path, *, backend: str | None = None, threads: int = 1,
               expected_fingerprint: str | None = None, warmup: int = 3) -> LoadedModel:
    """Verify the bundle, create its backend, and run `warmup` inferences on padding inputs, checking
    the output shape and finiteness. Raises BundleError/BackendError with the reason."""
    bundle = read_bundle(bundle_dir, expected_fingerprint=expected_fingerprint)
    fmt = bundle.manifest.format
    name = backend or _DEFAULT_BACKEND.get(fmt)
    if name is None:
        raise BackendError(f"no default backend for format {fmt!r}; pass backend=")
    if name in backends.available() and backends.model_format(name) != fmt:
        raise BackendError(f"backend {name!r} runs {backends.model_format(name)!r}, the bundle is {fmt!r}")
    be = backends.create(name, bundle.model_path, threads=threads)
    cfg = bundle.feature_config
    dummy = {n: np.zeros((1, *shape), dtype=dt) for n, shape, dt in input_specs(cfg)}
    dummy["cand_mask"][0, :2] = 1.0
    for _ in range(warmup):
        out = np.asarray(be.run(dummy))
        if out.shape != (1, cfg.n_max) or not np.all(np.isfinite(out[0, :2])):
            raise BackendError(f"warm-up produced shape {out.shape} / non-finite scores")
    return LoadedModel(bundle=bundle, backend=be)


class ModelManager:
    """Holds the current model; `install` swaps only after the new one verified and warmed up."""

    def __init__(self, *, backend: str | None = None, threads: int = 1, expected_fingerprint: str | None = None):
        self._backend = backend
        self._threads = threads
        self._expected = expected_fingerprint
        self.current: LoadedModel | None = None
        self.last_error: str | None = None

    def install(self, bundle_dir: str | Path) -> bool:
        try:
            model = load_model(bundle_dir, backend=self._backend, threads=self._threads,
                               expected_fingerprint=self._expected)
        except (BundleError, BackendError) as exc:
            self.last_error = str(exc)
            log.warning("model install rejected, keeping %s: %s",
                        self.current.version if self.current else "cloud order", exc)
            return False
        self.current = model
        self.last_error = None
        return True
