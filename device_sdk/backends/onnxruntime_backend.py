"""onnxruntime backend (CPU, single-threaded by default).

Batches: a model exported with a symbolic batch dimension (``export_onnx(..., dynamic_batch=True)``) scores a batch
in one call; a fixed batch-1 file (the bundles' default: every format shares its fixed shapes) runs row by row.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edge_rerank.device_sdk.backends.base import BackendError, batch_size, register


@register("onnxruntime", "onnx")
class OnnxRuntimeBackend:
    name = "onnxruntime"

    def __init__(self, model_path: Path, *, threads: int = 1):
        try:
            import onnxruntime as ort
        except ImportError as exc:  # pragma: no cover - depends on the install
            raise BackendError("the onnxruntime backend needs the [onnx] extra: "
                               "pip install 'edge-rerank[onnx]'") from exc
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        try:
            self._session = ort.InferenceSession(str(model_path), sess_options=opts,
                                                 providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own exception types for bad files
            raise BackendError(f"onnxruntime cannot load {model_path}: {exc}") from exc
        self.input_names = [i.name for i in self._session.get_inputs()]
        self.output_name = self._session.get_outputs()[0].name
        first = self._session.get_inputs()[0].shape
        self.batched = bool(first) and not isinstance(first[0], int)  # a symbolic (or unknown) batch dimension

    def run(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        batch = batch_size(self.input_names, inputs)
        if batch == 1 or self.batched:
            return self._session.run([self.output_name], {k: inputs[k] for k in self.input_names})[0]
        rows = [self._session.run([self.output_name], {k: inputs[k][b: b + 1] for k in self.input_names})[0]
                for b in range(batch)]
        return np.concatenate(rows, axis=0) if rows else np.zeros((0, 0), np.float32)
