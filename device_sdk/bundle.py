"""Model bundles: ``manifest.json`` + model file(s) + feature config, verified before use.

The manifest format is defined here (the device must read it); ``converters.bundle`` writes it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from edge_rerank.device_sdk.features.config import FeatureConfig

MANIFEST = "manifest.json"
SCHEMA_VERSION = 1


class BundleError(RuntimeError):
    """The bundle is missing files, fails verification, or does not fit this device."""


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@dataclass
class TensorSpec:
    name: str
    shape: list[int]
    dtype: str


@dataclass
class Manifest:
    name: str
    version: str
    format: str  # "onnx" | "tflite" | "coreml" | ...
    model_file: str
    feature_config_file: str
    feature_config_fingerprint: str
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    files: dict[str, str]  # relative path -> sha256
    sizes: dict[str, int]  # relative path -> bytes
    tolerance: dict[str, float] = field(default_factory=dict)  # what the export was validated to
    validation: dict[str, float] = field(default_factory=dict)  # measured parity vs the reference
    metrics: dict[str, float] = field(default_factory=dict)  # offline evaluation of the model
    schema_version: int = SCHEMA_VERSION
    created_by: str = "edge-rerank"

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict) -> Manifest:
        try:
            d = dict(d)
            d["inputs"] = [TensorSpec(**t) for t in d["inputs"]]
            d["outputs"] = [TensorSpec(**t) for t in d["outputs"]]
            return cls(**d)
        except (KeyError, TypeError) as exc:
            raise BundleError(f"manifest is malformed: {exc}") from exc

    @property
    def model_bytes(self) -> int:
        return self.sizes.get(self.model_file, 0)


@dataclass
class Bundle:
    root: Path
    manifest: Manifest
    feature_config: FeatureConfig

    @property
    def model_path(self) -> Path:
        return self.root / self.manifest.model_file


def read_bundle(root: str | Path, *, expected_fingerprint: str | None = None,
                public_key: bytes | None = None) -> Bundle:
    """Read and verify a bundle directory: with `public_key`, ``manifest.sig`` must be its ed25519 signature of
    the manifest; the manifest parses, every file exists with its sha256, the feature config matches its
    fingerprint (and `expected_fingerprint` if given)."""
    root = Path(root)
    mpath = root / MANIFEST
    if not mpath.is_file():
        raise BundleError(f"{root}: no {MANIFEST}")
    if public_key is not None:
        from edge_rerank.device_sdk.signing import SIGNATURE, verify_manifest

        if not (root / SIGNATURE).is_file():
            raise BundleError(f"{root}: no {SIGNATURE}, and this app only loads signed bundles")
        verify_manifest(mpath.read_bytes(), (root / SIGNATURE).read_bytes(), public_key)
    try:
        manifest = Manifest.from_dict(json.loads(mpath.read_text()))
    except json.JSONDecodeError as exc:
        raise BundleError(f"{mpath}: not valid JSON: {exc}") from exc
    if manifest.schema_version != SCHEMA_VERSION:
        raise BundleError(f"bundle schema {manifest.schema_version} is not supported (want {SCHEMA_VERSION})")
    for rel in (manifest.model_file, manifest.feature_config_file):
        if rel not in manifest.files:
            raise BundleError(f"manifest does not checksum {rel}")
    for rel, digest in manifest.files.items():
        p = (root / rel).resolve()
        if root.resolve() not in p.parents:
            raise BundleError(f"manifest path {rel!r} escapes the bundle directory")
        if not p.is_file():
            raise BundleError(f"bundle file missing: {rel}")
        actual = sha256_file(p)
        if actual != digest:
            raise BundleError(f"sha256 mismatch for {rel}: manifest {digest[:12]}…, file {actual[:12]}…")
    try:
        cfg = FeatureConfig.load(root / manifest.feature_config_file)
    except (ValueError, TypeError, json.JSONDecodeError) as exc:
        raise BundleError(f"feature config unreadable: {exc}") from exc
    if cfg.fingerprint() != manifest.feature_config_fingerprint:
        raise BundleError("feature config does not match the manifest's fingerprint")
    if expected_fingerprint is not None and cfg.fingerprint() != expected_fingerprint:
        raise BundleError(f"bundle needs feature config {cfg.fingerprint()}, the app expects {expected_fingerprint}")
    return Bundle(root=root, manifest=manifest, feature_config=cfg)
