"""Compression (issue 8): ONNX quantization (dynamic, static, fp16), the benchmark with its simulator arm,
presets with budgets, embedding-row quantization on the wire, the dense/sparse split report."""

import json
import sys

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from edge_rerank.compression.benchmark import MethodResult, pareto_front, run_benchmark
from edge_rerank.compression.embedding_rows import page_bytes, roundtrip_rows, row_quant_report
from edge_rerank.compression.presets import PRESETS, Budget, BudgetExceeded, Preset, check_budget, run_preset
from edge_rerank.compression.split import split_report
from edge_rerank.compression_ab import SimulationSetup, benchmark
from edge_rerank.device_sdk.contracts import EmbeddingEncoding

ONNX_QUANT = ["onnx-fp32", "onnx-fp16", "onnx-int8-dynamic-quint8", "onnx-int8-dynamic-qint8",
              "onnx-int8-dynamic-qint8-rr", "onnx-int8-static"]
OTHER_FORMATS = ["mnn-int8-weight", "coreml-int8-linear"]


@pytest.fixture(scope="module")
def bench(trained, split_parts, tmp_path_factory):
    from tests.conftest import WCFG

    model, _, test = trained
    _, train, valid, _ = split_parts
    out = tmp_path_factory.mktemp("compress")
    rows = benchmark(model, train, test, out, tune=valid, methods=ONNX_QUANT + OTHER_FORMATS, n_lists=60,
                     latency_runs=20, simulation=SimulationSetup(WCFG, sessions=60), progress=False,
                         calibration_lists=60)
    return {r.method: r for r in rows}, out


def test_onnx_quantization_is_smaller_and_close_to_fp32(bench):
    results, _ = bench
    fp32 = results["onnx-fp32"]
    assert fp32.status == "ok" and fp32.max_abs_diff == 0.0 and fp32.ndcg10_delta == 0.0
    for name in ONNX_QUANT[1:]:
        r = results[name]
        assert r.status == "ok", (name, r.reason)
        limit = 0.7 if name == "onnx-fp16" else 0.8
        assert r.file_kb < limit * fp32.file_kb, name  # the weights are 16 / 8 bits now
        assert 0 < r.max_abs_diff < 1.0 and r.mean_kendall_tau > 0.9, name  # quantized, and still the same ranking
    # fp16 keeps the order almost exactly; every int8 variant moves scores more than fp16 does
    assert results["onnx-fp16"].max_abs_diff < min(results[n].max_abs_diff for n in ONNX_QUANT[2:])
    assert results["onnx-fp16"].mean_kendall_tau > 0.99


def test_benchmark_outputs_and_simulator_arms(bench):
    results, out = bench
    data = json.loads((out / "compression.json").read_text())
    assert {r["method"] for r in data["results"]} == set(results)
    sim = data["simulation"]
    assert sim["sessions"] == 60 and set(ONNX_QUANT) <= set(sim["qv_ctr"])
    fp32 = results["onnx-fp32"]
    assert fp32.qv_ctr_delta_pp == 0.0  # the reference against itself, same sessions
    for name in ONNX_QUANT:
        lo, hi = results[name].qv_ctr_ci_pp
        assert lo <= results[name].qv_ctr_delta_pp <= hi
    assert "| onnx-int8-static | onnx |" in (out / "compression.md").read_text()
    # another runtime: the MNN file ran as a simulator arm; Core ML off macOS is scored by its MIL program in
    # numpy (no latency, no simulator arm) and says so
    mnn, coreml = results["mnn-int8-weight"], results["coreml-int8-linear"]
    assert mnn.status == "ok" and mnn.qv_ctr_ci_pp is not None and mnn.latency_p50_ms > 0
    assert mnn.mean_kendall_tau > 0.9 and mnn.file_kb < results["onnx-fp32"].file_kb
    assert coreml.status == "ok" and coreml.mean_kendall_tau > 0.9
    if sys.platform != "darwin":
        assert coreml.evaluated_by == "MIL program in numpy" and coreml.latency_p50_ms is None
        assert coreml.qv_ctr_delta_pp is None and "coreml-int8-linear" not in sim["qv_ctr"]
    assert (out / "pareto.png").stat().st_size > 10_000


def test_unknown_method_is_a_clear_error(trained, tmp_path):
    model, _, valid = trained
    with pytest.raises(KeyError, match="unknown compression methods"):
        run_benchmark(model, valid, valid, tmp_path, methods=["onnx-int3"], progress=False)


def _row(name, kb, nd):
    return MethodResult(name, "onnx", "quantization", file_kb=kb, ndcg10=nd)


@given(st.lists(st.tuples(st.floats(1, 1000), st.floats(0, 1)), min_size=1, max_size=12))
def test_pareto_front_is_exactly_the_undominated_set(points):
    rows = [_row(f"m{i}", kb, nd) for i, (kb, nd) in enumerate(points)]
    front = {r.method for r in pareto_front(rows)}
    for r in rows:
        dominated = any(o.file_kb <= r.file_kb and o.ndcg10 >= r.ndcg10 and (o.file_kb < r.file_kb or
                                                                              o.ndcg10 > r.ndcg10) for o in rows)
        assert (r.method in front) == (not dominated)


def test_budget_check_names_every_broken_limit():
    p = Preset("x", "onnx-fp16", Budget(0.1, 0.99, 100), "")
    assert check_budget(p, 90, 0.5, 0.5, 0.995).ok
    c = check_budget(p, 120, 0.49, 0.5, 0.98)
    assert len(c.broken) == 3 and "2.000 %" in c.broken[0] and "0.9800" in c.broken[1] and "120.0 KB" in c.broken[2]


def test_default_preset_writes_a_loadable_bundle(trained, split_parts, fcfg, tmp_path):
    from edge_rerank.device_sdk.model_manager import load_model

    model, _, test = trained
    train = split_parts[1]
    check, bundle = run_preset("default", model, train, test, tmp_path, n_lists=40)
    assert check.ok and check.method == "onnx-fp16"
    loaded = load_model(bundle, backend="onnxruntime", expected_fingerprint=fcfg.fingerprint())
    assert loaded.bundle.manifest.validation["mean_kendall_tau_vs_fp32"] >= 0.99
    strict = Preset("strict", "onnx-int8-dynamic-qint8", Budget(0.0, 0.99999, 10), "impossible on purpose")
    with pytest.raises(BudgetExceeded, match="broke its budget.*KB"):
        run_preset(strict, model, train, test, tmp_path / "strict", n_lists=40)
    assert not (tmp_path / "strict" / "bundle").exists()


@given(arrays(np.float32, st.tuples(st.integers(1, 4), st.integers(1, 16)),
              elements=st.floats(-50, 50, width=32)))
def test_int8_rows_roundtrip_within_half_a_step(emb):
    back = roundtrip_rows(emb, EmbeddingEncoding.INT8)
    step = np.abs(emb).max(axis=1, keepdims=True) / 127.0
    assert back.shape == emb.shape
    assert np.all(np.abs(back - emb) <= step / 2 + 1e-6 * (1 + np.abs(emb)))
    assert np.all(roundtrip_rows(np.zeros_like(emb), EmbeddingEncoding.INT8) == 0)


def test_int8_rows_cost_little_ranking_and_save_page_bytes(trained):
    from edge_rerank.converters.export import torch_reference

    model, _, test = trained
    sub = test.subset(np.arange(min(80, len(test))))
    rep = row_quant_report(torch_reference(model), sub)
    assert 0 < rep.max_abs_row_error < 0.1 and rep.mean_kendall_tau > 0.95
    assert abs(rep.ndcg10_int8 - rep.ndcg10_fp16) < 0.02
    pages = {p.encoding: p for p in page_bytes(sub.inputs)}
    assert pages["int8"].page_bytes < pages["fp16"].page_bytes
    assert pages["fp16"].embedding_bytes_per_item == 2 * model.fcfg.emb_dim


def test_split_report_counts_the_table_that_stays_in_the_cloud(trained):
    model, _, _ = trained
    rep = split_report(model, n_items=1_000_000)
    assert rep.device_params == sum(p.numel() for p in model.parameters())
    assert rep.table_params == 1_000_000 * model.fcfg.emb_dim
    assert rep.share_moved == pytest.approx(rep.table_params / (rep.table_params + rep.device_params))
    assert "id_proj" in rep.part_params and rep.monolithic_kb_fp32 > rep.device_kb_fp32


def test_simulated_cost_follows_parameters_not_file_bytes(bench):
    """A quantized file holds the same multiply-adds as fp32: the simulator's modelled latency must not drop
    just because the file is smaller (it did when params were inferred as bytes / 4)."""
    from edge_rerank.device_sdk.model_manager import load_model
    from edge_rerank.device_sdk.reranker import RerankService
    from edge_rerank.simulator.ab import Arm

    _, out = bench
    arms = {n: Arm(n, RerankService(load_model(out / "bundles" / n, backend="onnxruntime")))
            for n in ("onnx-fp32", "onnx-int8-dynamic-quint8")}
    fp32, int8 = arms["onnx-fp32"].cost_model, arms["onnx-int8-dynamic-quint8"].cost_model
    assert fp32.fixed_flops == int8.fixed_flops and fp32.per_candidate_flops == int8.per_candidate_flops
    assert int8.weight_bytes < 0.6 * fp32.weight_bytes


def test_compress_cli_preset_passes_or_fails_with_reasons(trained, split_parts, logged_rows, tmp_path, capsys,
                                                         monkeypatch):
    import pyarrow.parquet as pq

    from edge_rerank.cli import main
    from edge_rerank.cloud.logs import rows_to_table
    from edge_rerank.cloud.training.train import save_checkpoint

    model, summary, _ = trained
    pq.write_table(rows_to_table(logged_rows), tmp_path / "logs.parquet")
    save_checkpoint(model, tmp_path / "ckpt.pt", summary, split_parts[0])  # the split `trained` used
    common = ["--checkpoint", str(tmp_path / "ckpt.pt"), "--logs", str(tmp_path / "logs.parquet"), "--lists", "40"]
    assert main(["--no-progress", "compress", "--preset", "default", "--out", str(tmp_path / "ok"), *common]) == 0
    out = capsys.readouterr().out
    assert "within budget" in out and (tmp_path / "ok" / "bundle" / "manifest.json").is_file()
    assert json.loads((tmp_path / "ok" / "preset.json").read_text())["ok"]
    monkeypatch.setitem(PRESETS, "strict", Preset("strict", "onnx-int8-dynamic-qint8", Budget(0.0, 0.99999, 10), ""))
    rc = main(["--no-progress", "compress", "--preset", "strict", "--out", str(tmp_path / "strict"), *common])
    err = capsys.readouterr().err
    assert rc == 1 and "broke its budget" in err and "KB > 10 KB" in err
    assert not (tmp_path / "strict" / "bundle").exists()
    assert main(["--no-progress", "compress", "--preset", "huge", *common, "--out", str(tmp_path / "x")]) == 2  # usage
    assert "unknown preset 'huge'" in capsys.readouterr().err
    assert main(["--no-progress", "compress", "--list"]) == 0
    listed = capsys.readouterr().out
    assert "default" in listed and "onnx-int8-static" in listed and "coreml-int8-linear" in listed
