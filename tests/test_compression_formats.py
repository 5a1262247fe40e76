"""Per-format compression (issue 8): LiteRT int8 (ai-edge-quantizer), Core ML weight compression (linear int8,
k-means palettization), MNN weight int8 — each built from the trained test model's fp32 export, scored in its
runtime (Core ML: the MIL program in numpy off macOS) and compared with the fp32 file of the same format on
real held-out lists. The constexpr ops mil_eval learned are checked against coremltools' own decompression."""

from __future__ import annotations

import dataclasses
import sys

import numpy as np
import pytest

from edge_rerank.compression.benchmark import run_benchmark
from edge_rerank.compression.methods import METHODS, Context, get_method
from edge_rerank.converters.validate import validation_inputs

FORMAT_METHODS = [m for m in METHODS if m.format != "onnx"]
COMPRESSED = [m.name for m in FORMAT_METHODS if m.reference is not None]
N_LISTS = 40


@pytest.fixture(scope="module")
def calibration(split_parts):
    return split_parts[1].inputs  # the training lists of the `trained` model (its recorded split)


@pytest.fixture(scope="module")
def lists(trained):
    xs = validation_inputs(trained[2].inputs, N_LISTS)
    return xs, {k: np.concatenate([x[k] for x in xs]) for k in xs[0]}


@pytest.fixture(scope="module")
def ctx(trained, split_parts, tmp_path_factory):
    import torch

    torch.set_num_threads(1)
    return Context(trained[0], split_parts[1], trained[2], tmp_path_factory.mktemp("fmt_fp32"))


@pytest.fixture(scope="module")
def rows(trained, split_parts, tmp_path_factory):
    """The one harness on the format methods (and the ONNX reference it adds), on N_LISTS test lists."""
    out = tmp_path_factory.mktemp("fmt_methods")
    rows = run_benchmark(trained[0], split_parts[1], trained[2], out, methods=[m.name for m in FORMAT_METHODS],
                         n_lists=N_LISTS, latency_runs=0, progress=False)
    return {r.method: r for r in rows}


def _row(rows, name):
    r = rows[name]
    if r.status == "unavailable" and "missing" in r.reason:
        pytest.skip(r.reason)  # only a toolchain that is not installed here is skipped
    assert r.status == "ok", r.reason
    return r


def test_registry_names_and_references():
    names = [m.name for m in FORMAT_METHODS]
    assert len(set(names)) == len(names)
    assert set(names) >= {"tflite-fp32", "tflite-int8-weight-only", "tflite-int8-dynamic", "tflite-int8-full",
                          "coreml-fp32", "coreml-int8-linear", "coreml-palettize-6bit", "coreml-palettize-4bit",
                          "mnn-fp32", "mnn-int8-weight", "tflite-fp16", "mnn-fp16"}
    for m in FORMAT_METHODS:
        if m.reference is not None:
            ref = get_method(m.reference)
            assert ref.reference is None and ref.format == m.format and ref.runtime == m.runtime
    assert get_method("coreml-fp32").evaluated_by == ("coreml" if sys.platform == "darwin" else
                                                      "MIL program in numpy")
    assert len({m.name for m in METHODS}) == len(METHODS)
    assert all(get_method(m.reference).format == m.format for m in METHODS if m.reference)
    with pytest.raises(KeyError, match="unknown compression method"):
        get_method("nope")


@pytest.mark.parametrize("name", ["tflite-fp32", "coreml-fp32", "mnn-fp32"])
def test_fp32_references(rows, lists, name):
    r = _row(rows, name)
    assert r.reference is None and r.vs_reference == (0.0, 1.0, 1.0)
    assert r.scores.shape == (N_LISTS, lists[1]["cand_mask"].shape[1]) and np.all(np.isfinite(r.scores))


@pytest.mark.parametrize("name", COMPRESSED)
def test_compressed_method_is_smaller_quantized_and_keeps_the_ranking(rows, lists, name):
    r = _row(rows, name)
    ref = _row(rows, r.reference)
    m = get_method(name)
    assert r.evaluated_by == m.evaluated_by
    assert r.scores.shape == (N_LISTS, lists[1]["cand_mask"].shape[1]) and np.all(np.isfinite(r.scores)), name
    if m.shrinks:
        assert r.file_kb < 0.8 * ref.file_kb == 0.8 * r.reference_kb, (name, r.file_kb, ref.file_kb)
    diff, _, mean_tau = r.vs_reference
    assert diff > 0, f"{name} gives the fp32 scores exactly: nothing was quantized"
    assert diff < 1.0 and mean_tau > 0.9, (name, diff, mean_tau)


@pytest.mark.parametrize("fmt", ["tflite", "mnn"])
def test_fp16_weights_are_closer_to_fp32_than_int8(rows, fmt):
    fp16, int8 = _row(rows, f"{fmt}-fp16"), _row(rows, f"{fmt}-int8-weight" if fmt == "mnn" else
                                                   f"{fmt}-int8-weight-only")
    assert 0 < fp16.vs_reference[0] < 0.01 and fp16.vs_reference[2] > 0.99 and int8.vs_reference[0] > 0
    if fmt != "mnn":  # MNN's weight-int8 leaves small layers in float: on the small default model it can come
        assert fp16.vs_reference[0] < int8.vs_reference[0]  # out closer than fp16 (0.0007 vs 0.0012 max diff)


def test_full_int8_keeps_the_float_interface(ctx, calibration, tmp_path):
    from edge_rerank.compression.litert_quant import quantize_tflite
    from edge_rerank.device_sdk import backends

    if get_method("tflite-int8-full").unavailable_reason(ctx):
        pytest.skip(get_method("tflite-int8-full").unavailable_reason(ctx))
    info: dict = {}
    path = quantize_tflite(ctx.tflite_fp32, tmp_path / "full.tflite", mode="full-int8", calibration=calibration,
                           n_calibration=50, info=info)
    fp32, q = backends.create("litert", ctx.tflite_fp32), backends.create("litert", path)
    assert q.input_names == fp32.input_names and q._dtypes == fp32._dtypes  # float32/int32, as for fp32
    assert q.output_dtype == np.float32
    assert info["n_calibration"] == 50
    kept = {op for op, _ in info["float_ops"]}
    assert "SOFTMAX" in kept  # the masked softmaxes (logits + (1 - mask) * -1e4) stay float
    with pytest.raises(ValueError, match="calibration"):
        quantize_tflite(ctx.tflite_fp32, tmp_path / "x.tflite", mode="full-int8")
    with pytest.raises(ValueError, match="unknown LiteRT quantization mode"):
        quantize_tflite(ctx.tflite_fp32, tmp_path / "x.tflite", mode="int4")


def test_coreml_fp32_program_from_disk_matches_torch(trained, ctx, lists, tmp_path):
    import torch

    from edge_rerank.compression.coreml_compress import coreml_scores, package_size
    from edge_rerank.converters.coreml.convert import zip_package

    if get_method("coreml-fp32").unavailable_reason(ctx):
        pytest.skip(get_method("coreml-fp32").unavailable_reason(ctx))
    model, xs = trained[0], lists[0][:8]
    x = {k: np.concatenate([x[k] for x in xs]) for k in xs[0]}
    with torch.no_grad():
        ref = model(*[torch.from_numpy(x[n]) for n in model.input_names]).numpy()
    s = coreml_scores(ctx.mlpackage_fp32, x)
    assert s.evaluated_by in ("coreml", "MIL program in numpy")
    real = x["cand_mask"] > 0
    assert np.abs(s - ref)[real].max() < 1e-4
    zipped = zip_package(ctx.mlpackage_fp32, tmp_path / "m.mlpackage.zip")
    np.testing.assert_allclose(coreml_scores(zipped, x), s, atol=1e-6)  # the bundle's zip runs too
    assert package_size(ctx.mlpackage_fp32) == zipped.stat().st_size


def test_compressed_programs_constexpr_ops_match_coremltools(rows):
    """Every constexpr op of the compressed programs, evaluated by mil_eval, equals coremltools' own
    materialization of that op."""
    from edge_rerank.converters.coreml.mil_eval import OPS, load_program

    seen = set()
    for name in ("coreml-int8-linear", "coreml-palettize-6bit", "coreml-palettize-4bit"):
        prog = load_program(_row(rows, name).file)
        ops = [op for op in prog.functions["main"].operations if op.op_type.startswith("constexpr_")]
        assert len(ops) >= 10, name  # the weight matrices really are compressed
        for op in ops:
            ours = OPS[op.op_type](**{k: v.val for k, v in op.inputs.items()})
            theirs = op.materialized_val_inference()
            assert ours.dtype == theirs.dtype and ours.shape == theirs.shape
            np.testing.assert_allclose(ours, theirs, rtol=1e-6, atol=0)
            seen.add(op.op_type)
    assert seen == {"constexpr_affine_dequantize", "constexpr_lut_to_dense"}


def test_constexpr_formulas_against_numpy_and_coremltools():
    from coremltools.converters.mil.mil.ops.defs.iOS16.constexpr_ops import constexpr_affine_dequantize as ct_aff
    from coremltools.converters.mil.mil.ops.defs.iOS16.constexpr_ops import constexpr_lut_to_dense as ct_lut16
    from coremltools.converters.mil.mil.ops.defs.iOS18.compression import constexpr_blockwise_shift_scale as ct_bss
    from coremltools.converters.mil.mil.ops.defs.iOS18.compression import constexpr_lut_to_dense as ct_lut18
    from coremltools.optimize._utils import pack_elements_into_bits

    from edge_rerank.converters.coreml.mil_eval import (
        constexpr_affine_dequantize,
        constexpr_blockwise_shift_scale,
        constexpr_lut_to_dense,
    )

    rng = np.random.default_rng(0)
    q = rng.integers(-128, 128, size=(6, 10)).astype(np.int8)
    for axis in (0, 1):
        scale = rng.uniform(0.01, 0.1, q.shape[axis]).astype(np.float32)
        zp = rng.integers(-5, 5, q.shape[axis]).astype(np.int8)
        shape = [1, 1]
        shape[axis] = -1
        direct = (q.astype(np.float32) - zp.reshape(shape)) * scale.reshape(shape)
        ours = constexpr_affine_dequantize(q, zp, scale, axis)
        np.testing.assert_allclose(ours, direct, rtol=1e-6)
        np.testing.assert_allclose(ours, ct_aff.decompress(q, zp, scale, axis), rtol=1e-6)
    np.testing.assert_allclose(constexpr_affine_dequantize(q, np.int8(3), np.float32(0.5), 0),
                               (q.astype(np.float32) - 3) * 0.5)
    for nbits in (1, 2, 4, 6, 8):  # packed LSB first; 6-bit keys straddle bytes
        shape = np.array([5, 7], dtype=np.uint32)
        keys = rng.integers(0, 2 ** nbits, size=35).astype(np.uint8)
        lut = rng.normal(size=2 ** nbits).astype(np.float32)
        packed = pack_elements_into_bits(keys, nbits)
        ours = constexpr_lut_to_dense(packed, lut, shape)
        np.testing.assert_array_equal(ours, lut[keys].reshape(5, 7))
        np.testing.assert_array_equal(ours, ct_lut16.decompress(lut, packed, shape))
    idx = rng.integers(0, 4, size=(6, 4)).astype(np.uint8)  # iOS18: two palettes over the first axis
    lut18 = rng.normal(size=(2, 1, 4, 1)).astype(np.float32)
    direct = np.stack([lut18[i // 3, 0, idx[i], 0] for i in range(6)])
    np.testing.assert_array_equal(constexpr_lut_to_dense(idx, lut18), direct)
    np.testing.assert_array_equal(constexpr_lut_to_dense(idx, lut18), ct_lut18.decompress(idx, lut18, None))
    data = rng.integers(-8, 8, size=(4, 6)).astype(np.int8)  # blocks of 2 x 3
    scale = rng.uniform(0.1, 1, size=(2, 2)).astype(np.float32)
    offset = rng.integers(-2, 2, size=(2, 2)).astype(np.int8)
    direct = np.array([[scale[i // 2, j // 3] * (data[i, j] - offset[i // 2, j // 3]) for j in range(6)]
                       for i in range(4)], dtype=np.float32)
    np.testing.assert_allclose(constexpr_blockwise_shift_scale(data, scale, offset), direct, rtol=1e-6)
    np.testing.assert_allclose(constexpr_blockwise_shift_scale(data, scale, offset),
                               ct_bss.decompress(data, scale, offset), rtol=1e-6)
    np.testing.assert_allclose(constexpr_blockwise_shift_scale(data, scale), ct_bss.decompress(data, scale, None),
                               rtol=1e-6)


def test_missing_toolchain_or_export_is_reported_not_raised(trained, tmp_path):
    ghost = dataclasses.replace(get_method("tflite-int8-dynamic"), name="ghost", requires=("no_such_toolchain_xyz",))
    reason = ghost.unavailable_reason()
    assert reason is not None and "no_such_toolchain_xyz" in reason and "edge-rerank[tflite]" in reason
    boom = {"coreml": "fp32 coreml export failed: boom"}
    no_coreml = Context(None, None, trained[2], tmp_path / "ctx", missing=dict(boom))
    assert "boom" in get_method("coreml-int8-linear").unavailable_reason(no_coreml)
    rows = {r.method: r for r in run_benchmark(trained[0], None, trained[2], tmp_path, n_lists=2, latency_runs=0,
                                               methods=["coreml-fp32", ghost], progress=False, missing=dict(boom))}
    assert rows["ghost"].status == "unavailable" and "no_such_toolchain_xyz" in rows["ghost"].reason
    assert rows["coreml-fp32"].status == "unavailable" and "boom" in rows["coreml-fp32"].reason


def test_mnn_verify_rejects_a_broken_file(tmp_path):
    from edge_rerank.compression.mnn_quant import verify_mnn

    bad = tmp_path / "bad.mnn"
    bad.write_bytes(b"not a model")
    with pytest.raises(RuntimeError, match="does not run in the mnn backend"):
        verify_mnn(bad)


def test_missing_toolchains_raise_runtime_errors_naming_the_extra(monkeypatch, tmp_path):
    import edge_rerank.converters.mnn.convert as mnn_convert
    from edge_rerank.compression.coreml_compress import compress_coreml
    from edge_rerank.compression.litert_quant import quantize_tflite
    from edge_rerank.compression.mnn_quant import quantize_mnn_weights

    monkeypatch.setitem(sys.modules, "ai_edge_quantizer", None)
    with pytest.raises(RuntimeError, match=r"\[tflite\]"):
        quantize_tflite(tmp_path / "a.tflite", tmp_path / "b.tflite", mode="dynamic-int8")
    monkeypatch.setitem(sys.modules, "coremltools", None)
    monkeypatch.setitem(sys.modules, "coremltools.optimize.coreml", None)
    with pytest.raises(RuntimeError, match=r"\[coreml\]"):
        compress_coreml(tmp_path / "a.mlpackage", tmp_path / "b.mlpackage", method="linear-int8")
    monkeypatch.setattr(mnn_convert, "mnn_available", lambda: False)
    with pytest.raises(RuntimeError, match=r"\[mnn\]"):
        quantize_mnn_weights(tmp_path / "a.onnx", tmp_path / "b.mnn")


def test_ios18_compressed_programs_evaluate_like_coremltools(trained, lists, tmp_path, monkeypatch):
    """An iOS18 target turns linear int8 into constexpr_blockwise_shift_scale and palettes into the iOS18
    constexpr_lut_to_dense: mil_eval must agree with coremltools' materialization there too."""
    pytest.importorskip("coremltools")
    import torch

    import edge_rerank.converters.coreml.convert as cc
    from edge_rerank.compression.coreml_compress import compress_coreml, coreml_scores
    from edge_rerank.converters.coreml.mil_eval import OPS, load_program
    from edge_rerank.converters.specs import get_spec
    from edge_rerank.converters.validate import fidelity

    torch.set_num_threads(1)
    model, (xs, _) = trained[0], lists
    x = {k: np.concatenate([x[k] for x in xs[:10]]) for k in xs[0]}
    monkeypatch.setattr(cc, "MIN_TARGET", "iOS18")
    fp32 = tmp_path / "ios18.mlpackage"
    cc.export_coreml(model, xs[0], fp32, get_spec("device-reranker", model.fcfg))
    ref = coreml_scores(fp32, x)
    with torch.no_grad():
        t = model(*[torch.from_numpy(x[n]) for n in model.input_names]).numpy()
    assert fidelity(ref, t, x["cand_mask"])[0] < 1e-4
    seen = set()
    for method in ("linear-int8", "palettize-6bit"):
        path = compress_coreml(fp32, tmp_path / f"{method}.mlpackage", method=method)
        for op in load_program(path).functions["main"].operations:
            if op.op_type.startswith("constexpr_"):
                ours = OPS[op.op_type](**{k: v.val for k, v in op.inputs.items()})
                np.testing.assert_allclose(ours, op.materialized_val_inference(), rtol=1e-6, atol=0)
                seen.add(op.op_type)
        diff, _, mean_tau = fidelity(coreml_scores(path, x), ref, x["cand_mask"])
        assert 0 < diff < 1.0 and mean_tau > 0.9, (method, diff, mean_tau)
    assert seen == {"constexpr_blockwise_shift_scale", "constexpr_lut_to_dense"}
