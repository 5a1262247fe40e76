"""Compression–accuracy benchmark (first part of issue #8): for one trained reranker, every method's file size,
max abs diff and Kendall τ against fp32, NDCG@10 on held-out lists and its delta, and latency p50 in its runtime.
Methods today: fp32 ONNX (reference), dynamic int8 with QUInt8 weights, with QInt8 weights, with QInt8 +
reduce_range. Pruning, distillation, static int8, fp16 and the LiteRT / Core ML / MNN variants are not built yet.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

METHODS = {"int8-dynamic-quint8": {"weight_type": "QUInt8"},
           "int8-dynamic-qint8": {"weight_type": "QInt8"},
           "int8-dynamic-qint8-reduce-range": {"weight_type": "QInt8", "reduce_range": True}}


@dataclass
class MethodResult:
    method: str
    file_kb: float
    max_abs_diff: float
    min_kendall_tau: float
    mean_kendall_tau: float
    ndcg10: float
    ndcg10_delta: float
    latency_p50_ms: float


def _scores(run, inputs) -> np.ndarray:
    return np.concatenate([run({k: v[i: i + 1] for k, v in inputs.items()}) for i in range(len(inputs["cand_mask"]))])


def run_benchmark(onnx_fp32: str | Path, valid, out: str | Path, *, n_lists: int = 300) -> list[MethodResult]:
    """`valid`: held-out Samples (inputs + labels) the model never trained on."""
    from cloud.training.metrics import ndcg_at_k
    from compression.quantize import dynamic_int8
    from converters.export import median_latency_ms
    from converters.validate import kendall_tau
    from device_sdk import backends

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    sub = valid.subset(np.arange(min(n_lists, len(valid))))
    mask, labels = sub.mask, sub.labels
    files = {"fp32": Path(onnx_fp32)}
    for name, kw in METHODS.items():
        files[name] = dynamic_int8(onnx_fp32, out / f"{name}.onnx", **kw)
    ref = None
    results = []
    x1 = {k: v[:1] for k, v in sub.inputs.items()}
    for name, path in files.items():
        run = backends.create("onnxruntime", path).run
        s = _scores(run, sub.inputs)
        if ref is None:
            ref = s
        real = mask > 0
        taus = [kendall_tau(ref[i][real[i]], s[i][real[i]]) for i in range(len(s))]
        nd = float(np.nanmean(ndcg_at_k(s, labels, mask, 10)))
        nd_ref = float(np.nanmean(ndcg_at_k(ref, labels, mask, 10)))
        results.append(MethodResult(name, path.stat().st_size / 1024, float(np.abs(s - ref)[real].max()),
                                    float(np.nanmin(taus)), float(np.nanmean(taus)), nd, nd - nd_ref,
                                    median_latency_ms(run, x1, 300)))
    (out / "compression.json").write_text(json.dumps([asdict(r) for r in results], indent=2))
    (out / "compression.md").write_text(to_markdown(results))
    return results


def to_markdown(results: list[MethodResult]) -> str:
    lines = ["| method | size KB | max abs diff vs fp32 | min / mean Kendall τ | NDCG@10 | Δ NDCG@10 | p50 ms |",
             "|---|---|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r.method} | {r.file_kb:.1f} | {r.max_abs_diff:.2e} | {r.min_kendall_tau:.3f} / "
                     f"{r.mean_kendall_tau:.3f} | {r.ndcg10:.4f} | {r.ndcg10_delta:+.4f} | {r.latency_p50_ms:.3f} |")
    return "\n".join(lines) + "\n"
