"""Fetch, verify, warm up and swap models on the device; never serve a model that failed any check.

``ModelManager.update(source, name, user_id)`` asks the cloud which version this user should run (staged
rollout), downloads the manifest and its ed25519 signature, checks the signature against the key pinned in the app
before downloading anything else, downloads every file into a fresh staging directory, checks every sha256 and the
feature-config version, loads the model and runs warm-up inferences, and only then renames the staging directory
into place and swaps the served model (atomically, under a lock). ``rollback()`` returns to the previous good
model. Downloads use the standard library only.

``install`` and ``update`` never raise into the app: anything failing returns False, leaves the current model
serving and says why in ``last_error`` as ``"kind: detail"`` (also counted in ``faults``, each kind logged once at
WARNING). Kinds: ``unsafe_name`` (a model name, assigned version or file name that is not one safe path component:
checked before any path is built, so nothing is written outside ``root``), ``bad_assignment``, ``download``,
``bad_manifest``, ``bad_feature_config``, ``bad_bundle`` (missing file, sha256, signature), ``backend`` (the
runtime cannot load the model), ``warmup`` (the model does not return finite scores of shape ``(1, n_max)`` on
realistic inputs: a full list with feedback and the shortest list), ``unexpected`` (anything else a runtime
raised). ``ModelManager(strict=True)`` (for developers) raises ``DeviceFault`` instead.
"""

from __future__ import annotations

import http.client
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
from edge_rerank.device_sdk.bundle import (
    MANIFEST,
    SAFE_FILE_NAME,
    Bundle,
    BundleError,
    Manifest,
    check_name,
    parse_json,
    read_bundle,
)
from edge_rerank.device_sdk.contracts import Context, EventKind, FeedbackEvent, PageItem
from edge_rerank.device_sdk.faults import FaultLog
from edge_rerank.device_sdk.features.config import FeatureConfig
from edge_rerank.device_sdk.features.operators import FeatureBuilder
from edge_rerank.device_sdk.signing import SignatureError, verify_manifest

log = logging.getLogger(__name__)

_DEFAULT_BACKEND = backends.DEFAULT_BACKEND


@dataclass
class LoadedModel:
    bundle: Bundle
    backend: Backend

    @property
    def version(self) -> str:
        return self.bundle.manifest.version


class WarmupError(BackendError):
    """The model loaded but does not produce finite scores of the right shape on realistic inputs."""


def warmup_inputs(cfg: FeatureConfig) -> list[tuple[dict[str, np.ndarray], int]]:
    """Realistic model inputs (batch 1) and their number of real candidates: a full list of ``n_max`` candidates
    after clicks and long skips, and the shortest list (one candidate, no feedback). Built with the same feature
    operators as a rerank, from a fixed seed."""
    rng = np.random.default_rng(0)
    items = [PageItem(item_id=k, cloud_position=k, cloud_score=float(rng.normal()),
                      cloud_dense=rng.normal(size=cfg.dense_dim).astype(np.float32),
                      id_embedding=rng.normal(size=cfg.emb_dim).astype(np.float32),
                      category=int(rng.integers(0, cfg.n_categories)), brand=int(rng.integers(0, cfg.n_brands)),
                      price_level=int(rng.integers(0, cfg.n_price_levels)), lat=float(rng.uniform(-0.05, 0.05)),
                      lon=float(rng.uniform(-0.05, 0.05))) for k in range(cfg.n_max)]
    events = []
    for k, it in enumerate(items[: min(len(items), 6)]):
        ts = 1000 * k
        if k % 3 == 1:
            events.append(FeedbackEvent.for_item(it, EventKind.CLICK, ts, "warmup", k))
            events.append(FeedbackEvent.for_item(it, EventKind.DETAIL_RETURN, ts + 400, "warmup", k, 8000.0))
        events.append(FeedbackEvent.for_item(it, EventKind.EXPOSURE, ts + 900, "warmup", k,
                                             cfg.dwell_threshold_ms + 500.0))
    builder, ctx = FeatureBuilder(cfg), Context(lat=0.0, lon=0.0, hour=19)
    cases = [(items, events), (items[:1], [])]
    return [({k: v[None] for k, v in builder.build(c, e, ctx).items()}, len(c)) for c, e in cases]


def _warm_up(be: Backend, cfg: FeatureConfig, rounds: int) -> None:
    try:
        cases = warmup_inputs(cfg)
    except Exception as exc:  # a config the operators cannot serve
        raise WarmupError(f"cannot build warm-up inputs: {type(exc).__name__}: {str(exc)[:200]}") from exc
    for _ in range(max(1, rounds)):
        for x, n in cases:
            try:
                out = np.asarray(be.run(x), dtype=np.float64)
            except Exception as exc:  # runtimes raise their own types (onnxruntime InvalidArgument, ...)
                raise WarmupError(f"inference failed on {n} candidates: {type(exc).__name__}: "
                                  f"{str(exc)[:200]}") from exc
            if out.shape != (1, cfg.n_max):
                raise WarmupError(f"scores of shape {out.shape}, expected (1, {cfg.n_max})")
            bad = np.flatnonzero(~np.isfinite(out[0, :n]))
            if bad.size:
                raise WarmupError(f"non-finite scores at {bad.size} of {n} candidate positions "
                                  f"(first: {int(bad[0])})")


def load_model(bundle_dir: str | Path, *, backend: str | None = None, threads: int = 1,
               expected_fingerprint: str | None = None, warmup: int = 3, public_key: bytes | None = None
               ) -> LoadedModel:
    """Verify the bundle (signature with `public_key`), create its backend, and run `warmup` rounds of inference
    on realistic inputs (``warmup_inputs``), requiring shape ``(1, n_max)`` and finite scores at every real
    candidate position. Raises BundleError / BackendError (WarmupError) with the reason."""
    bundle = read_bundle(bundle_dir, expected_fingerprint=expected_fingerprint, public_key=public_key)
    fmt = bundle.manifest.format
    name = backend or _DEFAULT_BACKEND.get(fmt)
    if name is None:
        raise BackendError(f"no default backend for format {fmt!r}; pass backend=")
    if name in backends.available() and backends.model_format(name) != fmt:
        raise BackendError(f"backend {name!r} runs {backends.model_format(name)!r}, the bundle is {fmt!r}")
    try:
        be = backends.create(name, bundle.model_path, threads=threads)
    except BackendError:
        raise
    except Exception as exc:  # a runtime that raises its own types on a bad file
        raise BackendError(f"{name} cannot load {bundle.manifest.model_file}: {type(exc).__name__}: "
                           f"{str(exc)[:200]}") from exc
    _warm_up(be, bundle.feature_config, warmup)
    return LoadedModel(bundle=bundle, backend=be)


class BundleSource(Protocol):
    """Where bundles come from (the cloud's model registry)."""

    def assignment(self, name: str, user_id: str) -> str | None: ...

    def fetch(self, name: str, version: str, rel: str) -> bytes:
        """``manifest.json``, ``manifest.sig`` or a file the manifest lists."""
        ...


class HttpBundleSource:
    """The cloud's ``/v1/models`` API over HTTP (urllib, no third-party client)."""

    def __init__(self, base_url: str, timeout_s: float = 10.0, max_bytes: int = 64 << 20,
                 max_assignment_bytes: int = 64 << 10):
        self.base = base_url.rstrip("/")
        self.timeout_s, self.max_bytes, self.max_assignment_bytes = timeout_s, max_bytes, max_assignment_bytes

    def _get(self, path: str, max_bytes: int | None = None) -> bytes:
        limit = self.max_bytes if max_bytes is None else max_bytes
        try:
            with urllib.request.urlopen(self.base + path, timeout=self.timeout_s) as r:
                data = r.read(limit + 1)
                expected = r.headers.get("Content-Length")
        except (urllib.error.URLError, OSError, http.client.HTTPException, ValueError) as exc:
            raise BundleError(f"download of {path} failed: {type(exc).__name__}: {exc}", kind="download") from exc
        if len(data) > limit:
            raise BundleError(f"{path} is larger than {limit} bytes", kind="download")
        if expected is not None and (not expected.isdigit() or int(expected) != len(data)):
            raise BundleError(f"{path}: truncated download ({len(data)} of {expected!r:.20} bytes)", kind="download")
        return data

    def assignment(self, name: str, user_id: str) -> str | None:
        """The version assigned to `user_id`, or None; BundleError (``bad_assignment``) for any other answer."""
        q = urllib.parse.urlencode({"user_id": user_id})
        raw = self._get(f"/v1/models/{urllib.parse.quote(name)}/assignment?{q}", self.max_assignment_bytes)
        d = parse_json(raw, "assignment", "bad_assignment")
        if not isinstance(d, dict):
            raise BundleError(f"assignment is not a JSON object: {type(d).__name__}", kind="bad_assignment")
        version = d.get("version")
        if version is not None and not isinstance(version, str):
            raise BundleError(f"assigned version is not a string: {version!r:.60}", kind="bad_assignment")
        return version

    def fetch(self, name: str, version: str, rel: str) -> bytes:
        n, v = urllib.parse.quote(name), urllib.parse.quote(version)
        if rel in (MANIFEST, "manifest.sig"):
            return self._get(f"/v1/models/{n}/{v}/{'manifest' if rel == MANIFEST else rel}")
        return self._get(f"/v1/models/{n}/{v}/files/{urllib.parse.quote(rel)}")


class ModelManager:
    """Holds the current model; `install` swaps only after the new one verified and warmed up."""

    def __init__(self, *, backend: str | None = None, threads: int = 1, expected_fingerprint: str | None = None,
                 public_key: bytes | None = None, root: str | Path | None = None, strict: bool = False,
                 logger: logging.Logger | None = None):
        self._backend = backend
        self._threads = threads
        self._expected = expected_fingerprint
        self._public_key = public_key  # pinned in the app config; None: unsigned bundles are accepted
        self.root = Path(root) if root is not None else None  # where downloaded bundles live
        self.current: LoadedModel | None = None
        self.previous: LoadedModel | None = None
        self.last_error: str | None = None
        self.faults = FaultLog(logger or log, strict=strict)
        self._lock = threading.Lock()

    def _reject(self, reason: str) -> bool:
        self.last_error = reason
        log.debug("model install rejected, keeping %s", self.current.version if self.current else "cloud order")
        self.faults.record(reason)  # raises DeviceFault in strict mode
        return False

    @staticmethod
    def _reason(exc: Exception) -> str:
        if isinstance(exc, BundleError):
            return exc.reason
        if isinstance(exc, WarmupError):
            return f"warmup: {exc}"
        if isinstance(exc, BackendError):
            return f"backend: {exc}"
        return f"unexpected: {type(exc).__name__}: {str(exc)[:200]}"

    def install(self, bundle_dir: str | Path) -> bool:
        """Verify and warm up the bundle in `bundle_dir`, then swap it in; on any failure keep the current one."""
        try:
            model = load_model(bundle_dir, backend=self._backend, threads=self._threads,
                               expected_fingerprint=self._expected, public_key=self._public_key)
        except Exception as exc:  # every failure is a refusal with a reason, never an exception into the app
            return self._reject(self._reason(exc))
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
            return self._reject("config: ModelManager(root=...) is needed to download bundles")
        try:
            check_name("model name", name)
            version = source.assignment(name, user_id)
            if version is None:
                return False
            if not isinstance(version, str):
                raise BundleError(f"assigned version is not a string: {version!r:.60}", kind="bad_assignment")
            check_name("assigned version", version)  # before any path is built from it
        except BundleError as exc:
            return self._reject(exc.reason if exc.kind != "bad_bundle" else f"bad_assignment: {exc}")
        except Exception as exc:  # a source raising its own types
            return self._reject(f"bad_assignment: {type(exc).__name__}: {str(exc)[:200]}")
        if self.current is not None and self.current.bundle.manifest.name == name and self.current.version == version:
            return False
        target = self.root / name / version
        if self.root.resolve() not in target.resolve().parents:  # cannot happen with checked names; belt and braces
            return self._reject(f"unsafe_name: {name}/{version} resolves outside {self.root}")
        if not (target / MANIFEST).is_file():
            try:
                self._download(source, name, version, target)
            except Exception as exc:
                return self._reject(self._reason(exc) if isinstance(exc, BundleError)
                                    else f"download: {type(exc).__name__}: {str(exc)[:200]}")
        return self.install(target)

    @staticmethod
    def _fetch(source: BundleSource, name: str, version: str, rel: str) -> bytes:
        data = source.fetch(name, version, rel)
        if not isinstance(data, bytes):
            raise BundleError(f"{rel}: the source returned {type(data).__name__}, not bytes", kind="download")
        return data

    def _download(self, source: BundleSource, name: str, version: str, target: Path) -> None:
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=".staging-"))
        try:
            raw = self._fetch(source, name, version, MANIFEST)
            manifest = Manifest.from_dict(parse_json(raw, "downloaded manifest", "bad_manifest"))
            if (manifest.name, manifest.version) != (name, version):
                raise BundleError(f"asked for {name}@{version}, got {manifest.name}@{manifest.version}",
                                  kind="bad_manifest")
            (staging / MANIFEST).write_bytes(raw)
            if self._public_key is not None:
                try:
                    sig = self._fetch(source, name, version, "manifest.sig")
                except BundleError as exc:
                    raise BundleError(f"{name}@{version} is not signed (or its signature is unavailable): {exc}"
                                      ) from exc
                (staging / "manifest.sig").write_bytes(sig)
                try:  # before any file is downloaded: an unsigned or forged manifest costs one small request
                    verify_manifest(raw, sig, self._public_key)
                except SignatureError as exc:
                    raise BundleError(f"{name}@{version}: {exc}", kind="bad_signature") from exc
            for rel in manifest.files:
                check_name("file name", rel, SAFE_FILE_NAME)  # (Manifest.from_dict checked it already)
                p = (staging / rel).resolve()
                if staging.resolve() not in p.parents:
                    raise BundleError(f"manifest path {rel!r} escapes the bundle directory", kind="unsafe_name")
                data = self._fetch(source, name, version, rel)
                if len(data) > manifest.sizes.get(rel, len(data)):
                    raise BundleError(f"{rel} is {len(data)} bytes, the manifest says {manifest.sizes[rel]}",
                                      kind="download")
                p.write_bytes(data)
            read_bundle(staging, expected_fingerprint=self._expected, public_key=self._public_key)
            if target.exists():  # a leftover without a manifest (an interrupted earlier attempt)
                shutil.rmtree(target)
            os.replace(staging, target)  # a complete, verified bundle appears in one step
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
