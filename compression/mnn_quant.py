"""MNN weight-only int8: the converter's ``--weightQuantBits 8`` on the fp32 ONNX export.

MNN stores the weights of the matmuls/convolutions as int8 with a per-channel scale and dequantizes them at load
time (the math stays fp32). The conversion goes through ``converters.mnn.convert.export_mnn``, which calls the
converter's extension in a child process (never the ``mnnconvert`` console script, see its docstring).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edge_rerank.converters.mnn import convert as mnn_convert
from edge_rerank.device_sdk import backends

EXTRA = "pip install 'edge-rerank[mnn]'"


def quantize_mnn_weights(onnx_fp32: str | Path, out_path: str | Path, *, bits: int = 8,
                         verify: bool = True) -> Path:
    """Convert `onnx_fp32` to a weight-int`bits` ``.mnn`` at `out_path` (``bits=16``: half-float weights, the
    converter's ``--fp16``); with `verify`, load it in the ``mnn`` backend and run one all-zero list
    (RuntimeError if it does not load, run, or give finite [1, N] scores)."""
    if not mnn_convert.mnn_available():
        raise RuntimeError(f"MNN quantization needs the mnn package (the [mnn] extra): {EXTRA}")
    if bits not in (2, 3, 4, 5, 6, 7, 8, 16):
        raise ValueError(f"MNN weight quantization supports 2..8 bits (int) or 16 (fp16), got {bits}")
    path = mnn_convert.export_mnn(onnx_fp32, out_path, weight_quant_bits=None if bits == 16 else bits, fp16=bits == 16)
    if verify:
        verify_mnn(path)
    return path


def verify_mnn(path: str | Path) -> None:
    """Load `path` in the ``mnn`` backend and score one zero-filled list of the file's own input shapes."""
    try:
        be = backends.create("mnn", path, threads=1)
        x = {n: np.zeros(be._shapes[n], dtype=np.int32 if n in be._int else np.float32) for n in be.input_names}
        s = be.run(x)
    except Exception as exc:
        raise RuntimeError(f"the quantized MNN file {path} does not run in the mnn backend: "
                           f"{type(exc).__name__}: {exc}") from exc
    if s.ndim != 2 or s.shape[0] != 1 or not np.all(np.isfinite(s)):
        raise RuntimeError(f"the quantized MNN file {path} gave scores of shape {s.shape} (finite: "
                           f"{bool(np.all(np.isfinite(s)))}), expected finite [1, N]")
