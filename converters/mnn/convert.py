"""ONNX -> .mnn with MNN's converter (PyPI ``mnn``), the runtime the production system used.

We call the converter's C extension (``_tools.mnnconvert``) in a child process rather than the ``mnnconvert``
console script: that wrapper (MNN 3.6) imports a usage logger which runs ``pip install aliyun-log-python-sdk``
into whatever ``pip`` is on PATH and sends conversion details over the network. The child process also keeps
a converter crash from taking the exporter down.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from edge_rerank.converters.specs import ToolchainMissing

# the extension returns a truthy value on success: success is read from its output and the written file
_CONVERT = "import sys, _tools; _tools.mnnconvert(sys.argv)"


def mnn_available() -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec("_tools") is not None and importlib.util.find_spec("MNN") is not None
    except (ImportError, ValueError):  # a module blocked in sys.modules (None) raises ValueError
        return False


def export_mnn(onnx_path: str | Path, path: str | Path, *, weight_quant_bits: int | None = None,
               fp16: bool = False, timeout_s: float = 300.0) -> Path:
    """Convert the ONNX file at `onnx_path` to MNN at `path` (fp32 weights unless `weight_quant_bits` (int
    weights) or `fp16` (half-float weights, ``--fp16``); the math stays fp32 either way)."""
    if not mnn_available():
        raise ToolchainMissing("MNN export needs the mnn package: pip install 'edge-rerank[mnn]'")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    argv = ["-f", "ONNX", "--modelFile", str(onnx_path), "--MNNModel", str(path), "--bizCode", "edge-rerank"]
    if weight_quant_bits:
        argv += ["--weightQuantBits", str(int(weight_quant_bits))]
    if fp16:
        argv += ["--fp16"]
    r = subprocess.run([sys.executable, "-c", _CONVERT, *argv], capture_output=True, text=True, timeout=timeout_s)
    if r.returncode != 0 or "Converted Success" not in r.stdout or not path.is_file():
        raise RuntimeError(f"mnnconvert failed (exit {r.returncode}): {(r.stdout + r.stderr)[-2000:]}")
    return path
