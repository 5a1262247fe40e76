"""Fetch, verify, warm up and swap models on the device; never serve a model that failed any check.

``ModelManager.update(source, name, user_id)`` asks the cloud which version this user should run (staged
rollout), downloads the manifest, its ed25519 signature and every file into a fresh staging directory, checks the
signature against the key pinned in the app, every sha256 and the feature-config version, loads the model and
runs warm-up inferences, and only then renames the staging directory into place and swaps the served model
(atomically, under a lock). Anything failing leaves the current model serving and says why (``last_error``);
``rollback()`` returns to the previous good model. Downloads use the standard library only.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import threading
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from edge_rerank.device_sdk import backends
from edge_rerank.device_sdk.backends import Backend, BackendError
from edge_rerank.device_sdk.bundle import MANIFEST, Bundle, BundleError, Manifest, read_bundle
from edge_rerank.device_sdk.features.operators import input_specs

log = logging.getLogger(__name__)

_DEFAULT_BACKEND = backends.DEFAULT_BACKEND


@dataclass
class LoadedModel:
    bundle: Bundle
    backend: Backend

    @property
    def version(self) -> str:
        return self.bundle.manifest.version


def load_model(bundle_dir: str | Path, *, backend: str | None = None, threads: int = 1,
               expected_fingerprint: str | None = None, warmup: int = 3, public_key: bytes | None = None
               ) -> LoadedModel:
    """Verify the bundle (signature with `public_key`), create its backend, and run `warmup` inferences on
    padding inputs, checking the output shape and finiteness. Raises BundleError/BackendError with the reason."""
    bundle = read_bundle(bundle_dir, expected_fingerprint=expected_fingerprint, public_key=public_key)
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


class BundleSource(Protocol):
    """Where bundles come from (the cloud's model registry)."""

    def assignment(self, name: str, user_id: str) -> str | None: ...

    def fetch(self, name: str, version: str, rel: str) -> bytes:
        """``manifest.json``, ``manifest.sig`` or a file the manifest lists."""
        ...


class HttpBundleSource:
    """The cloud's ``/v1/models`` API over HTTP (urllib, no third-party client)."""

    def __init__(self, base_url: str, timeout_s: float = 10.0, max_bytes: int = 64 << 20):
        self.base = base_url.rstrip("/")
        self.timeout_s, self.max_bytes = timeout_s, max_bytes

    def _get(self, path: str) -> bytes:
        try:
            with urllib.request.urlopen(self.base + path, timeout=self.timeout_s) as r:
                data = r.read(self.max_bytes + 1)
                expected = r.headers.get("Content-Length")
        except (urllib.error.URLError, OSError) as exc:
            raise BundleError(f"download of {path} failed: {exc}") from exc
        if len(data) > self.max_bytes:
            raise BundleError(f"{path} is larger than {self.max_bytes} bytes")
        if expected is not None and int(expected) != len(data):
            raise BundleError(f"{path}: truncated download ({len(data)} of {expected} bytes)")
        return data

    def assignment(self, name: str, user_id: str) -> str | None:
        q = urllib.parse.urlencode({"user_id": user_id})
        return json.loads(self._get(f"/v1/models/{urllib.parse.quote(name)}/assignment?{q}")).get("version")

    def fetch(self, name: str, version: str, rel: str) -> bytes:
        n, v = urllib.parse.quote(name), urllib.parse.quote(version)
        if rel in (MANIFEST, "manifest.sig"):
            return self._get(f"/v1/models/{n}/{v}/{'manifest' if rel == MANIFEST else rel}")
        return self._get(f"/v1/models/{n}/{v}/files/{urllib.parse.quote(rel)}")


class ModelManager:
    """Holds the current model; `install` swaps only after the new one verified and warmed up."""

    def __init__(self, *, backend: str | None = None, threads: int = 1, expected_fingerprint: str | None = None,
                 public_key: bytes | None = None, root: str | Path | None = None):
        self._backend = backend
        self._threads = threads
        self._expected = expected_fingerprint
        self._public_key = public_key  # pinned in the app config; None: unsigned bundles are accepted
        self.root = Path(root) if root is not None else None  # where downloaded bundles live
        self.current: LoadedModel | None = None
        self.previous: LoadedModel | None = None
        self.last_error: str | None = None
        self._lock = threading.Lock()

    def _reject(self, exc: Exception) -> bool:
        self.last_error = str(exc)
        log.warning("model install rejected, keeping %s: %s",
                    self.current.version if self.current else "cloud order", exc)
        return False

    def install(self, bundle_dir: str | Path) -> bool:
        """Verify and warm up the bundle in `bundle_dir`, then swap it in; on any failure keep the current one."""
        try:
            model = load_model(bundle_dir, backend=self._backend, threads=self._threads,
                               expected_fingerprint=self._expected, public_key=self._public_key)
        except (BundleError, BackendError) as exc:
            return self._reject(exc)
        with self._lock:
            self.previous, self.current = self.current, model
        self.last_error = None
        return True

    def rollback(self) -> bool:
        """Serve the previous good model again (after a bad release was noticed)."""
        with self._lock:
            if self.previous is None:
                return False
            self.current, self.previous = self.previous, self.current
            return True

    def update(self, source: BundleSource, name: str, user_id: str) -> bool:
        """Install the version the cloud assigns to `user_id`, if it is not the one serving. True if it changed."""
        if self.root is None:
            raise ValueError("ModelManager(root=...) is needed to download bundles")
        try:
            version = source.assignment(name, user_id)
        except (BundleError, ValueError) as exc:
            return self._reject(exc)
        if version is None or (self.current is not None and self.current.bundle.manifest.name == name
                               and self.current.version == version):
            return False
        target = self.root / name / version
        if not (target / MANIFEST).is_file():
            try:
                self._download(source, name, version, target)
            except (BundleError, ValueError, OSError) as exc:
                return self._reject(exc)
        return self.install(target)

    def _download(self, source: BundleSource, name: str, version: str, target: Path) -> None:
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=".staging-"))
        try:
            raw = source.fetch(name, version, MANIFEST)
            manifest = Manifest.from_dict(json.loads(raw))
            if (manifest.name, manifest.version) != (name, version):
                raise BundleError(f"asked for {name}@{version}, got {manifest.name}@{manifest.version}")
            (staging / MANIFEST).write_bytes(raw)
            if self._public_key is not None:
                try:
                    sig = source.fetch(name, version, "manifest.sig")
                except BundleError as exc:
                    raise BundleError(f"{name}@{version} is not signed (or its signature is unavailable): {exc}"
                                      ) from exc
                (staging / "manifest.sig").write_bytes(sig)
            for rel in manifest.files:
                p = (staging / rel).resolve()
                if staging.resolve() not in p.parents:
                    raise BundleError(f"manifest path {rel!r} escapes the bundle directory")
                p.parent.mkdir(parents=True, exist_ok=True)
                p.write_bytes(source.fetch(name, version, rel))
            read_bundle(staging, expected_fingerprint=self._expected, public_key=self._public_key)
            os.replace(staging, target)  # a complete, verified bundle appears in one step
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
