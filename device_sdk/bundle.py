"""Model bundles: ``manifest.json`` + model file(s) + feature config, verified before use.

The manifest format is defined here (the device must read it); ``converters.bundle`` writes it.

Everything in a bundle is untrusted until verified: the manifest is size-limited (``MAX_MANIFEST_BYTES``) and
checked field by field (``Manifest.from_dict``: required keys present, no unknown keys, every value of its type;
names, versions and file names are single safe path components, ``check_name``), the feature config likewise
(``FeatureConfig.from_dict``). Every refusal is a ``BundleError`` whose ``kind`` types the reason
(``bad_manifest``, ``unsafe_name``, ``bad_feature_config``, ``bad_bundle``); ``err.reason`` is ``"kind: detail"``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

from edge_rerank.device_sdk.features.config import FeatureConfig
from edge_rerank.device_sdk.features.operators import check_operators
from edge_rerank.device_sdk.signing import SIGNATURE_FILE, SignatureError, verify_manifest

MANIFEST = "manifest.json"
SCHEMA_VERSION = 1
MAX_MANIFEST_BYTES = 1 << 20  # manifests and feature configs are a few kB
MAX_FILES = 64
MAX_TENSORS = 256
# a name, version or file name: one path component, no leading dot, no separators (the cloud registry's rule)
SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
SAFE_FILE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


class BundleError(RuntimeError):
    """The bundle is missing files, fails verification, or does not fit this device. ``kind`` types the reason."""

    def __init__(self, message: str, kind: str = "bad_bundle"):
        super().__init__(message)
        self.kind = kind

    @property
    def reason(self) -> str:
        return f"{self.kind}: {self}"


def check_name(what: str, value: object, pattern: re.Pattern = SAFE_NAME) -> str:
    """`value` if it is a safe single path component (so it can name a directory or file); BundleError
    (``unsafe_name``) otherwise: not a string, empty, too long, ``..``, ``/``, ``\\``, NUL, a leading dot..."""
    if not isinstance(value, str) or not pattern.fullmatch(value):
        raise BundleError(f"{what} {value!r:.80} is not a safe name ({pattern.pattern})", kind="unsafe_name")
    return value


def parse_json(data: bytes, what: str, kind: str) -> object:
    """JSON from untrusted bytes: BundleError(kind) for oversize, non-UTF-8, invalid or too deeply nested input."""
    if len(data) > MAX_MANIFEST_BYTES:
        raise BundleError(f"{what} is {len(data)} bytes, more than {MAX_MANIFEST_BYTES}", kind=kind)
    try:
        return json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise BundleError(f"{what}: not valid JSON: {type(exc).__name__}: {str(exc)[:200]}", kind=kind) from exc


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
        """Parse and check a manifest; BundleError (``bad_manifest`` / ``unsafe_name``) names the first problem."""
        def bad(msg: str) -> BundleError:
            return BundleError(f"manifest is malformed: {msg}", kind="bad_manifest")

        if not isinstance(d, dict):
            raise bad(f"a JSON object is needed, got {type(d).__name__}")
        fields = cls.__dataclass_fields__
        required = [k for k, f in fields.items()
                    if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
        missing = [k for k in required if k not in d]
        unknown = [str(k) for k in d if k not in fields]
        if missing or unknown:
            raise bad(f"missing keys {missing}, unknown keys {sorted(unknown)[:10]}")
        d = dict(d)
        check_name("name", d["name"])
        check_name("version", d["version"])
        for key in ("model_file", "feature_config_file"):
            check_name(key, d[key], SAFE_FILE_NAME)
        for key, limit in (("format", 32), ("feature_config_fingerprint", 64), ("created_by", 256)):
            if key in d and not (isinstance(d[key], str) and 0 < len(d[key]) <= limit):
                raise bad(f"{key} must be a string of 1..{limit} characters, got {d[key]!r:.60}")
        sv = d.get("schema_version", SCHEMA_VERSION)
        if not isinstance(sv, int) or isinstance(sv, bool):
            raise bad(f"schema_version must be an int, got {sv!r:.40}")
        for key in ("inputs", "outputs"):
            d[key] = _tensor_specs(key, d[key], bad)
        for key, ok in (("files", lambda v: isinstance(v, str) and re.fullmatch(r"[0-9a-f]{64}", v) is not None),
                        ("sizes", lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0)):
            v = d[key]
            if not isinstance(v, dict) or not 0 < len(v) <= MAX_FILES:
                raise bad(f"{key} must be an object of 1..{MAX_FILES} entries")
            for rel, value in v.items():
                check_name(f"file name in {key}", rel, SAFE_FILE_NAME)
                if not ok(value):
                    raise bad(f"{key}[{rel!r}] is {value!r:.60}")
        for key in ("tolerance", "validation", "metrics"):
            v = d.get(key, {})
            if not isinstance(v, dict) or len(v) > 1024 or not all(
                    isinstance(k, str) and isinstance(x, int | float) and not isinstance(x, bool)
                    for k, x in v.items()):
                raise bad(f"{key} must be an object of at most 1024 names -> numbers")
        return cls(**d)

    @property
    def model_bytes(self) -> int:
        return self.sizes.get(self.model_file, 0)


def _tensor_specs(key: str, value: object, bad) -> list[TensorSpec]:
    if not isinstance(value, list) or len(value) > MAX_TENSORS:
        raise bad(f"{key} must be a list of at most {MAX_TENSORS} tensor specs")
    out = []
    for t in value:
        if not isinstance(t, dict) or set(t) != {"name", "shape", "dtype"}:
            raise bad(f"a tensor spec in {key} is not {{name, shape, dtype}}: {t!r:.80}")
        name, shape, dtype = t["name"], t["shape"], t["dtype"]
        if not (isinstance(name, str) and 0 < len(name) <= 128 and isinstance(dtype, str) and 0 < len(dtype) <= 32
                and isinstance(shape, list) and len(shape) <= 8
                and all(isinstance(n, int) and not isinstance(n, bool) and -1 <= n < 1 << 31 for n in shape)):
            raise bad(f"a tensor spec in {key} has a bad name, shape or dtype: {t!r:.80}")
        out.append(TensorSpec(name, list(shape), dtype))
    return out


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
        if not (root / SIGNATURE_FILE).is_file():
            raise BundleError(f"{root}: no {SIGNATURE_FILE}, and this app only loads signed bundles",
                              kind="bad_signature")
        try:
            verify_manifest(mpath.read_bytes(), (root / SIGNATURE_FILE).read_bytes(), public_key)
        except SignatureError as exc:
            raise BundleError(str(exc), kind="bad_signature") from exc
    if mpath.stat().st_size > MAX_MANIFEST_BYTES:
        raise BundleError(f"{mpath} is larger than {MAX_MANIFEST_BYTES} bytes", kind="bad_manifest")
    manifest = Manifest.from_dict(parse_json(mpath.read_bytes(), str(mpath), "bad_manifest"))
    if manifest.schema_version != SCHEMA_VERSION:
        raise BundleError(f"bundle schema {manifest.schema_version} is not supported (want {SCHEMA_VERSION})",
                          kind="bad_manifest")
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
    cpath = root / manifest.feature_config_file
    if cpath.stat().st_size > MAX_MANIFEST_BYTES:
        raise BundleError(f"feature config {cpath} is larger than {MAX_MANIFEST_BYTES} bytes",
                          kind="bad_feature_config")
    try:
        cfg = FeatureConfig.load(cpath)
    except (ValueError, TypeError, AttributeError, RecursionError, UnicodeDecodeError) as exc:
        raise BundleError(f"feature config unreadable: {type(exc).__name__}: {str(exc)[:200]}",
                          kind="bad_feature_config") from exc
    try:  # an operator this version cannot compute: refused before any model is loaded
        check_operators(cfg)
    except ValueError as exc:
        raise BundleError(str(exc), kind="bad_feature_config") from exc
    if cfg.fingerprint() != manifest.feature_config_fingerprint:
        raise BundleError("feature config does not match the manifest's fingerprint", kind="bad_feature_config")
    if expected_fingerprint is not None and cfg.fingerprint() != expected_fingerprint:
        raise BundleError(f"bundle needs feature config {cfg.fingerprint()}, the app expects {expected_fingerprint}",
                          kind="bad_feature_config")
    return Bundle(root=root, manifest=manifest, feature_config=cfg)
