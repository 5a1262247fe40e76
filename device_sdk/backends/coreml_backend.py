"""Core ML backend (coremltools): runs a zipped ``.mlpackage`` on macOS.

Core ML prediction exists only on macOS (and iOS); elsewhere creating this backend fails with that reason,
so a Core ML bundle is rejected by the model manager and the device keeps its current model.
"""

from __future__ import annotations

import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np

from edge_rerank.device_sdk.backends.base import BackendError, batch_size, register


def _extract(zip_path: Path, into: Path) -> Path:
    with zipfile.ZipFile(zip_path) as z:
        names = z.namelist()
        if any(Path(n).is_absolute() or ".." in Path(n).parts for n in names):
            raise BackendError(f"{zip_path}: unsafe path in the archive")
        roots = {Path(n).parts[0] for n in names}
        if len(roots) != 1 or not next(iter(roots)).endswith(".mlpackage"):
            raise BackendError(f"{zip_path}: expected one .mlpackage directory, found {sorted(roots)}")
        z.extractall(into)
    return into / next(iter(roots))


@register("coreml", "coreml")
class CoreMLBackend:
    name = "coreml"

    def __init__(self, model_path: Path, *, threads: int = 1):
        if sys.platform != "darwin":
            raise BackendError(f"Core ML prediction needs macOS (this is {sys.platform}); "
                               "coremltools can only convert and inspect models here")
        try:
            import coremltools as ct
        except ImportError as exc:  # pragma: no cover - depends on the install
            raise BackendError("the coreml backend needs the [coreml] extra: "
                               "pip install 'edge-rerank[coreml]'") from exc
        model_path = Path(model_path)
        try:
            if model_path.suffix == ".zip":
                self._tmp = tempfile.TemporaryDirectory(prefix="coreml-")
                model_path = _extract(model_path, Path(self._tmp.name))
            self._model = ct.models.MLModel(str(model_path), compute_units=ct.ComputeUnit.CPU_ONLY)
        except BackendError:
            raise
        except Exception as exc:
            raise BackendError(f"coreml cannot load {model_path}: {type(exc).__name__}: {exc}") from exc
        desc = self._model.get_spec().description
        self.input_names = [i.name for i in desc.input]
        self.output_name = desc.output[0].name

    def run(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        batch = batch_size(self.input_names, inputs)
        rows = [np.asarray(self._model.predict({n: np.asarray(inputs[n])[b: b + 1] for n in self.input_names})
                           [self.output_name], dtype=np.float32) for b in range(batch)]
        return np.concatenate(rows, axis=0)
