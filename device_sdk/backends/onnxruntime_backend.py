"""onnxruntime backend (CPU, single-threaded by default)."""

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

    def run(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        batch_size(self.input_names, inputs)
        feeds = {k: inputs[k] for k in self.input_names}
        return self._session.run([self.output_name], feeds)[0]
