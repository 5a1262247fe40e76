"""LightGBM backend: runs a gradient-boosted ranker (the classical baseline of the ablation) on the same
feature operators' outputs, one row per candidate (``device_sdk.features.operators.candidate_table``).
Not a production phone runtime: it lets the simulator A/B the baseline through the same rerank service."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edge_rerank.device_sdk.backends.base import BackendError, register
from edge_rerank.device_sdk.features.operators import candidate_table


@register("lightgbm", "lightgbm")
class LightGBMBackend:
    name = "lightgbm"

    def __init__(self, model_path: Path, *, threads: int = 1):
        try:
            import lightgbm
        except ImportError as exc:  # pragma: no cover - depends on the install
            raise BackendError("the lightgbm backend needs lightgbm: pip install 'edge-rerank[train]'") from exc
        try:
            self._booster = lightgbm.Booster(model_file=str(model_path))
        except Exception as exc:  # lightgbm raises LightGBMError for bad files
            raise BackendError(f"lightgbm cannot load {model_path}: {exc}") from exc
        self._threads = threads

    def run(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        B, N = inputs["cand_mask"].shape
        table = candidate_table(inputs)
        if table.shape[1] != self._booster.num_feature():
            raise BackendError(f"the model expects {self._booster.num_feature()} columns, inputs give {table.shape[1]}")
        return self._booster.predict(table, num_threads=self._threads).reshape(B, N).astype(np.float32)
