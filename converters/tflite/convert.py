"""torch -> .tflite with litert-torch (no TensorFlow), fixed shapes, inputs and output named as the spec.

The model is wrapped so litert-torch sees keyword inputs (they become the signature's input names) and a dict
output (``scores``); the LiteRT interpreter then runs it through the ``serving_default`` signature.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from edge_rerank.converters.specs import ExportSpec, ToolchainMissing


def export_tflite(model, example: dict[str, np.ndarray], path: str | Path, spec: ExportSpec) -> Path:
    """Convert `model` (a DeviceReranker in eval mode) to `path`. `example` is one real batch-1 input."""
    try:
        import torch
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise ToolchainMissing("TFLite export needs torch: pip install 'edge-rerank[train,tflite]'") from exc
    # litert-torch imports TensorFlow-free MLIR bindings, jax and transformers; keep its logs quiet
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        import litert_torch
    except ImportError as exc:
        raise ToolchainMissing("TFLite export needs litert-torch: pip install 'edge-rerank[tflite]'") from exc
    spec.check_inputs(example)
    names, out_name = spec.input_names, spec.output_names[0]
    from edge_rerank.converters.lean import for_tflite

    model = for_tflite(model)  # the lean graph with the softmax written out (faster under XNNPACK)

    class _Named(torch.nn.Module):
        def __init__(self, inner: torch.nn.Module):
            super().__init__()
            self.inner = inner

        def forward(self, **kw):
            return {out_name: self.inner(*[kw[n] for n in names])}

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model.eval()
    kwargs = {n: torch.from_numpy(np.ascontiguousarray(example[n])) for n in names}
    with torch.no_grad():
        edge = litert_torch.convert(_Named(model).eval(), sample_kwargs=kwargs)
    edge.export(str(path))
    return path
