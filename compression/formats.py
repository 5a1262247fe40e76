"""The LiteRT, Core ML and MNN builders of the compression registry (``compression.methods``).

Each builder writes one model file from the registry's :class:`~edge_rerank.compression.methods.Context`: the
fp32 ``.tflite`` / ``.mlpackage`` / ONNX export of the same model (made once per run, by ``export_fp32``),
copied as that format's reference or compressed with the format's own toolchain (ai-edge-quantizer,
``coremltools.optimize.coreml``, MNN's weight quantization).

Core ML numbers come from the Core ML runtime on macOS and from the converted MIL program evaluated in numpy
elsewhere (``COREML_EVALUATED_BY``), because Core ML prediction exists only on macOS.
"""

from __future__ import annotations

import shutil
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np

from edge_rerank.compression.coreml_compress import CORE_ML, MIL_NUMPY, compress_coreml
from edge_rerank.compression.litert_quant import quantize_tflite
from edge_rerank.compression.mnn_quant import quantize_mnn_weights
from edge_rerank.converters.coreml.convert import export_coreml
from edge_rerank.converters.mnn.convert import export_mnn
from edge_rerank.converters.onnx.convert import export_onnx
from edge_rerank.converters.specs import get_spec
from edge_rerank.converters.tflite.convert import export_tflite

COREML_EVALUATED_BY = CORE_ML if sys.platform == "darwin" else MIL_NUMPY


def export_fp32(fmt: str, model, example: dict[str, np.ndarray], out: str | Path) -> Path:
    """The fp32 file of `fmt` (onnx | tflite | coreml) the compressed methods start from, under ``out/fp32/``,
    through the converters' own exporters."""
    fp32 = Path(out) / "fp32"
    if fmt == "onnx":
        return export_onnx(model, example, fp32 / "reranker.onnx")
    spec = get_spec("device-reranker", model.fcfg)
    if fmt == "tflite":
        return export_tflite(model, example, fp32 / "reranker.tflite", spec)
    if fmt == "coreml":
        export_coreml(model, example, fp32 / "reranker.mlpackage", spec)
        return fp32 / "reranker.mlpackage"
    raise ValueError(f"no fp32 export for format {fmt!r}")


def _copy(src: Path, dst: Path) -> Path:
    dst.parent.mkdir(parents=True, exist_ok=True)
    if src.is_dir():
        if dst.exists():
            shutil.rmtree(dst)
        shutil.copytree(src, dst)
    else:
        shutil.copyfile(src, dst)
    return dst


def tflite_fp32(ctx, out: Path) -> Path:
    return _copy(Path(ctx.tflite_fp32), out / "tflite-fp32.tflite")


def tflite_quant(mode: str) -> Callable[[object, Path], Path]:
    def build(ctx, out: Path) -> Path:
        cal = ctx.calibration if mode == "full-int8" else None
        return quantize_tflite(ctx.tflite_fp32, out / f"tflite-{mode}.tflite", mode=mode, calibration=cal)

    return build


def coreml_fp32(ctx, out: Path) -> Path:
    return _copy(Path(ctx.mlpackage_fp32), out / "coreml-fp32.mlpackage")


def coreml_compressed(method: str) -> Callable[[object, Path], Path]:
    def build(ctx, out: Path) -> Path:
        return compress_coreml(ctx.mlpackage_fp32, out / f"coreml-{method}.mlpackage", method=method)

    return build


def mnn_fp32(ctx, out: Path) -> Path:
    return export_mnn(ctx.onnx_fp32, out / "mnn-fp32.mnn")


def mnn_weights(bits: int) -> Callable[[object, Path], Path]:
    def build(ctx, out: Path) -> Path:
        name = "mnn-fp16" if bits == 16 else f"mnn-int{bits}-weight"
        return quantize_mnn_weights(ctx.onnx_fp32, out / f"{name}.mnn", bits=bits)

    return build
