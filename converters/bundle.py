"""Write bundles in the format ``device_sdk.bundle`` reads and verifies."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from edge_rerank.device_sdk.bundle import MANIFEST, Manifest, TensorSpec, read_bundle, sha256_file
from edge_rerank.device_sdk.features import FeatureConfig, input_specs

if TYPE_CHECKING:
    from edge_rerank.converters.specs import ExportSpec

FEATURE_CONFIG_FILE = "feature_config.json"


def write_bundle(out_dir: str | Path, *, model_file: str | Path, fmt: str, name: str, version: str,
                 feature_config: FeatureConfig, tolerance: dict | None = None, validation: dict | None = None,
                 metrics: dict | None = None, spec: ExportSpec | None = None) -> Path:
    """Copy the model file and the feature config into `out_dir`, write the manifest with checksums, and
    read it back through the device's verifier. With `spec`, the manifest's names/shapes/dtypes come from the
    export spec (``converters.specs``); without, from the feature config's input specs (batch 1)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model_file = Path(model_file)
    target = out / model_file.name
    if model_file.resolve() != target.resolve():
        shutil.copyfile(model_file, target)
    feature_config.save(out / FEATURE_CONFIG_FILE)
    files = [target.name, FEATURE_CONFIG_FILE]
    manifest = Manifest(
        name=name, version=version, format=fmt, model_file=target.name, feature_config_file=FEATURE_CONFIG_FILE,
        feature_config_fingerprint=feature_config.fingerprint(),
        inputs=([TensorSpec(s.name, list(s.shape), s.dtype) for s in spec.inputs] if spec else
                [TensorSpec(n, [1, *shape], dt) for n, shape, dt in input_specs(feature_config)]),
        outputs=([TensorSpec(s.name, list(s.shape), s.dtype) for s in spec.outputs] if spec else
                 [TensorSpec("scores", [1, feature_config.n_max], "float32")]),
        files={f: sha256_file(out / f) for f in files}, sizes={f: (out / f).stat().st_size for f in files},
        tolerance=tolerance or {}, validation=validation or {}, metrics=metrics or {})
    (out / MANIFEST).write_text(manifest.to_json())
    read_bundle(out)
    return out
