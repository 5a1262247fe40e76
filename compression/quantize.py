"""Post-training quantization of the exported ONNX reranker with onnxruntime's quantizer.

Dynamic int8 quantizes the weights of MatMul/Gemm to 8 bits and the activations on the fly. On CPUs without
VNNI, signed int8 weights (``QInt8``) lose accuracy through saturation in the u8s8 kernels (ARCHITECTURE.md);
``QUInt8`` weights (the default here) or ``reduce_range`` avoid it — the benchmark measures both.
"""

from __future__ import annotations

from pathlib import Path


def dynamic_int8(onnx_in: str | Path, onnx_out: str | Path, *, weight_type: str = "QUInt8",
                 reduce_range: bool = False) -> Path:
    try:
        from onnxruntime.quantization import QuantType, quantize_dynamic
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise RuntimeError("quantization needs the [onnx] extra (onnxruntime)") from exc
    if weight_type not in ("QUInt8", "QInt8"):
        raise ValueError(f"weight_type must be QUInt8 or QInt8, got {weight_type!r}")
    import onnx

    onnx_out = Path(onnx_out)
    onnx_out.parent.mkdir(parents=True, exist_ok=True)
    # The dynamo exporter's intermediate value_info can disagree with onnx's own shape inference, which the
    # quantizer runs first ("Inferred shape and existing shape differ"): drop it and let inference redo it.
    model = onnx.load(str(onnx_in))
    model.graph.ClearField("value_info")
    clean = onnx_out.with_suffix(".fp32-clean.onnx")
    onnx.save(model, str(clean))
    try:
        quantize_dynamic(str(clean), str(onnx_out), weight_type=getattr(QuantType, weight_type),
                         reduce_range=reduce_range)
    finally:
        clean.unlink(missing_ok=True)
    return onnx_out
