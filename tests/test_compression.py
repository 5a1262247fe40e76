"""The first compression methods (onnxruntime dynamic int8) on the trained test model, measured against fp32."""

import json

from compression.benchmark import run_benchmark


def test_dynamic_int8_is_smaller_and_close_to_fp32(trained, bundle_dir, tmp_path):
    _, _, valid = trained
    onnx_file = next(bundle_dir.glob("*.onnx"))
    results = {r.method: r for r in run_benchmark(onnx_file, valid, tmp_path, n_lists=60)}
    fp32 = results["fp32"]
    assert fp32.max_abs_diff == 0.0 and fp32.ndcg10_delta == 0.0
    for name in ("int8-dynamic-quint8", "int8-dynamic-qint8", "int8-dynamic-qint8-reduce-range"):
        r = results[name]
        assert r.file_kb < 0.8 * fp32.file_kb, name  # the dense weights are 8-bit now
        assert 0 < r.max_abs_diff < 1.0 and r.mean_kendall_tau > 0.9, name  # quantized, and still the same ranking
    rows = json.loads((tmp_path / "compression.json").read_text())
    assert {r["method"] for r in rows} == set(results)
    assert "| int8-dynamic-quint8 |" in (tmp_path / "compression.md").read_text()
