"""Converters (issue 7): every format exported from the real trained device reranker, run in its device
runtime and held to the spec's tolerance against torch and onnxruntime on real lists; bundles load in the
model manager with the right backend; Core ML structure everywhere, numerics on macOS only."""

from __future__ import annotations

import shutil
import sys

import numpy as np
import pytest

from edge_rerank.converters.specs import FORMATS, ExportSpec, ToolchainMissing, get_spec
from edge_rerank.converters.validate import validate, validation_inputs
from edge_rerank.device_sdk.backends import BackendError

NUMERIC = ("onnx", "tflite", "mnn")  # formats with a runtime on Linux


@pytest.fixture(scope="module")
def exported(trained, tmp_path_factory):
    from edge_rerank.converters.export import export_formats

    model, summary, test = trained
    out = tmp_path_factory.mktemp("export_all")
    report = export_formats(model, test.inputs, out, formats=list(FORMATS), version="t", n_validate=40,
                            metrics=summary["test_model"], latency_runs=20, progress=False)
    return report, out


@pytest.fixture(scope="module")
def spec(trained) -> ExportSpec:
    return get_spec("device-reranker", trained[0].fcfg)


def _torch_scores(model, x):
    import torch

    with torch.no_grad():
        return model(*[torch.from_numpy(x[n]) for n in model.input_names]).numpy()


def test_spec_is_the_models_interface(trained, spec):
    model = trained[0]
    assert spec.input_names == model.input_names and spec.output_names == ["scores"]
    assert all(s.shape[0] == 1 for s in spec.inputs)
    assert {s.dtype for s in spec.inputs} == {"int32", "float32"}
    assert spec.outputs[0].shape == (1, model.fcfg.n_max)
    for fmt in FORMATS:
        assert spec.tolerance(fmt).max_abs_diff <= 1e-4
    with pytest.raises(ValueError, match="no export spec"):
        get_spec("nope", model.fcfg)
    x = spec.zeros()
    x["cand_cat"] = x["cand_cat"].astype(np.int64)
    with pytest.raises(ValueError, match="cand_cat"):
        spec.check_inputs(x)


def test_validation_lists_include_empty_feedback_and_full_lists(trained):
    valid = trained[2]
    xs = validation_inputs(valid.inputs, 10)
    assert all(x["cand_mask"].shape[0] == 1 for x in xs)
    fb = [float(x["seq_pos_mask"].sum() + x["seq_neg_mask"].sum()) for x in xs]
    assert 0.0 in fb  # a list with all-padding feedback
    assert max(float(x["cand_mask"].sum()) for x in xs) == float(valid.inputs["cand_mask"].sum(axis=1).max())


def test_validate_gathers_every_kind_of_failure(trained):
    model, _, valid = trained
    xs = validation_inputs(valid.inputs, 8)

    def ref(x):
        return _torch_scores(model, x)

    assert validate(ref, ref, xs).passed
    reversed_ = validate(ref, lambda x: -ref(x), xs, tolerance=1e-4, min_tau=0.98, min_top5=0.8)
    assert not reversed_.passed and reversed_.min_kendall_tau < 0
    assert any("Kendall" in f for f in reversed_.failures) and any("top-5" in f for f in reversed_.failures)

    def crashes(x):
        raise RuntimeError("boom")

    rep = validate(ref, crashes, xs)
    assert not rep.passed and sum("boom" in f for f in rep.failures) == len(xs)
    nan = validate(ref, lambda x: ref(x) * np.nan, xs)
    assert not nan.passed and any("non-finite" in f for f in nan.failures)
    off = validate(ref, lambda x: ref(x) + 1e-3, xs, tolerance=1e-4)
    assert not off.passed and any("max abs diff" in f for f in off.failures)


@pytest.mark.parametrize("fmt", NUMERIC)
def test_format_matches_torch_and_onnxruntime_in_its_runtime(exported, spec, fmt):
    report, _ = exported
    r = report.by_format(fmt)
    assert r.status == "passed", r.errors
    tol = spec.tolerance(fmt)
    assert r.vs_torch.passed and r.vs_torch.max_abs_diff <= tol.max_abs_diff
    assert r.vs_torch.min_kendall_tau >= tol.min_kendall_tau and r.vs_torch.n_lists == report.n_lists >= 40
    if fmt != "onnx":
        assert r.vs_onnxruntime.passed and r.vs_onnxruntime.max_abs_diff <= tol.max_abs_diff
    assert r.size_bytes > 10_000 and r.latency_ms > 0
    assert f"| {fmt} |" in report.table()


@pytest.mark.parametrize("fmt", NUMERIC)
def test_bundle_loads_with_its_runtime_and_reproduces_torch(exported, trained, spec, fmt):
    from edge_rerank.device_sdk.model_manager import _DEFAULT_BACKEND, load_model

    model, _, valid = trained
    report, out = exported
    loaded = load_model(out / fmt)
    m = loaded.bundle.manifest
    assert m.format == fmt and loaded.backend.name == _DEFAULT_BACKEND[fmt]
    assert m.name == ("device-reranker" if fmt == "onnx" else f"device-reranker-{fmt}")  # one registry name each
    assert [t.name for t in m.inputs] == spec.input_names and m.outputs[0].shape == [1, model.fcfg.n_max]
    assert m.validation["torch.passed"] == 1.0 and m.validation["numeric_parity_checked"] == 1.0
    assert m.tolerance["max_abs_diff"] == spec.tolerance(fmt).max_abs_diff
    x = validation_inputs(valid.inputs, 3)[1]
    n = int(x["cand_mask"].sum())
    got = loaded.backend.run(x)
    assert got.shape == (1, model.fcfg.n_max)
    np.testing.assert_allclose(got[0, :n], _torch_scores(model, x)[0, :n], atol=1e-4)
    if fmt != "onnx":  # the new backends run fixed-batch files row by row (the onnxruntime one needs batch 1)
        batch = {k: np.concatenate([v[:1], v[1:2]]) for k, v in valid.inputs.items()}
        np.testing.assert_allclose(loaded.backend.run(batch), _torch_scores(model, batch), atol=1e-4)


def test_tampered_bundle_is_rejected(exported, tmp_path):
    from edge_rerank.device_sdk.bundle import BundleError
    from edge_rerank.device_sdk.model_manager import ModelManager, load_model

    _, out = exported
    bad = tmp_path / "tflite"
    shutil.copytree(out / "tflite", bad)
    model_file = bad / "reranker.tflite"
    data = bytearray(model_file.read_bytes())
    data[len(data) // 2] ^= 0xFF
    model_file.write_bytes(bytes(data))
    with pytest.raises(BundleError, match="sha256"):
        load_model(bad)
    mm = ModelManager()
    assert mm.install(out / "mnn") and not mm.install(bad) and mm.current.bundle.manifest.format == "mnn"


@pytest.mark.parametrize("runtime", ["litert", "mnn"])
def test_backends_reject_a_file_that_is_not_a_model(tmp_path, runtime):
    from edge_rerank.device_sdk import backends

    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"not a model" * 100)
    with pytest.raises(BackendError):
        backends.create(runtime, junk)


def test_litert_backend_runs_on_the_primary_subgraph_with_the_signature_runners_bits(exported, trained):
    """The LiteRT backend skips the signature runner's per-call resize + re-plan on our fixed-shape files: same
    bits as the runner for real lists, one at a time and in batches; other dtypes are converted; a wrong shape
    or a missing input is a BackendError naming it."""
    from ai_edge_litert.interpreter import Interpreter

    from edge_rerank.device_sdk import backends

    _, out = exported
    path = out / "tflite" / "reranker.tflite"
    be = backends.create("litert", path)
    assert be._feed is not None, "the file the converter writes should take the direct path"
    runner = Interpreter(model_path=str(path), num_threads=1).get_signature_runner("serving_default")
    inputs = validation_inputs(trained[2].inputs, 12)
    for x in inputs:
        feeds = {n: np.ascontiguousarray(x[n], dtype=be._dtypes[n]) for n in be.input_names}
        ref = runner(**feeds)[be.output_name]
        assert np.array_equal(be.run(x), ref)
        wide = {n: v.astype(np.float64) if v.dtype == np.float32 else v for n, v in x.items()}
        assert np.array_equal(be.run(wide), ref)  # converted, same bits
    batch = {n: np.concatenate([x[n] for x in inputs[:5]]) for n in be.input_names}
    assert np.array_equal(be.run(batch), np.concatenate([be.run(x) for x in inputs[:5]]))
    x = inputs[0]
    name = next(n for n in be.input_names[1:] if x[n].ndim >= 2)
    with pytest.raises(BackendError, match=name):
        be.run({**x, name: x[name][..., :-1]})
    with pytest.raises(BackendError, match="missing"):
        be.run({k: v for k, v in x.items() if k != name})
    assert np.array_equal(be.run(x), be.run(x))  # a refused call leaves the backend usable


def test_litert_backend_sets_only_the_inputs_the_file_reads_and_still_checks_the_others(exported, trained,
                                                                                         monkeypatch):
    """The lean graph never reads the eight seq_* feedback inputs but the two masks: the backend does not copy
    them in per call (same bits as the signature runner whatever they hold) but still refuses a wrong shape or a
    missing one by name; a byte-swapped float32 array is converted, not copied in as raw bytes; an op list that
    misses an input the file does read is caught at load (the probe), and so are wrapper calls that disagree."""
    from ai_edge_litert.interpreter import Interpreter

    from edge_rerank.device_sdk import backends
    from edge_rerank.device_sdk.backends import litert_backend

    _, out = exported
    path = out / "tflite" / "reranker.tflite"
    be = backends.create("litert", path)
    ops = {o["op_name"] for o in Interpreter(model_path=str(path))._get_ops_details()}
    assert "EXP" in ops and "SOFTMAX" not in ops  # converters.lean.for_tflite: the softmax written out
    unread = {n for n, _, _ in be._unread}
    assert unread == {n for n in be.input_names if n.startswith("seq_") and not n.endswith("_mask")}
    assert {n for n, _, _ in be._feed} == set(be.input_names) - unread
    runner = Interpreter(model_path=str(path), num_threads=1).get_signature_runner("serving_default")
    rng = np.random.default_rng(3)
    for x in validation_inputs(trained[2].inputs, 6):
        ref = runner(**{n: np.ascontiguousarray(x[n], dtype=be._dtypes[n]) for n in be.input_names})[be.output_name]
        assert np.array_equal(be.run(x), ref)
        junk = {n: (rng.integers(-9, 9, x[n].shape) if x[n].dtype.kind == "i" else rng.standard_normal(x[n].shape)
                    ).astype(x[n].dtype) for n in unread}
        assert np.array_equal(be.run({**x, **junk}), ref)
        swapped = {n: v.astype(v.dtype.newbyteorder()) if v.dtype == np.float32 and n not in unread else v
                   for n, v in x.items()}
        assert np.array_equal(be.run(swapped), ref)  # converted: the interpreter would take the raw bytes
    x = validation_inputs(trained[2].inputs, 1)[0]
    for name in ("seq_emb", "seq_cat"):
        with pytest.raises(BackendError, match=name):
            be.run({**x, name: x[name][..., :-1]})
        with pytest.raises(BackendError, match=name):
            be.run({k: v for k, v in x.items() if k != name})
    assert np.array_equal(be.run({**x, "seq_emb": x["seq_emb"].astype(np.float64)}), be.run(x))

    read = litert_backend._read_tensors
    monkeypatch.setattr(litert_backend, "_read_tensors",
                        lambda interp: read(interp) - {int(interp.get_input_details()[0]["index"])} - {
                            int(d["index"]) for d in interp.get_input_details() if "cand_mask" in d["name"]})
    fooled = backends.create("litert", path)
    assert fooled._feed is not None and fooled._unread == []  # the probe saw cand_mask change the scores
    assert np.array_equal(fooled.run(x), be.run(x))
    monkeypatch.setattr(litert_backend, "_read_tensors", read)
    monkeypatch.setattr(litert_backend, "_wrapper_calls", lambda interp: (
        interp._interpreter.SetTensor, interp._interpreter.Invoke, lambda i: np.zeros((1, be._shapes["cand_mask"][1]),
                                                                                      np.float32)))
    public = backends.create("litert", path)
    assert public._feed is not None and public._calls[1].__name__ == "invoke"  # the public API's calls
    assert np.array_equal(public.run(x), be.run(x))


def test_legacy_tflite_runtime_is_checked_or_says_why_not(exported):
    r = exported[0].by_format("tflite")
    (rc,) = [c for c in r.other_runtimes if c.runtime == "tflite-runtime"]
    if int(np.__version__.split(".")[0]) >= 2:
        assert not rc.ran and "numpy" in rc.reason
    else:  # pragma: no cover - only in a numpy<2 environment with tflite-runtime installed
        assert rc.ran or "tflite_runtime" in rc.reason


def test_coreml_program_structure(exported, spec):
    from edge_rerank.converters.coreml.convert import EXPECTED_OPS

    r = exported[0].by_format("coreml")
    assert r.structure is not None and r.structure["problems"] == [], r.errors
    assert [i[0] for i in r.structure["inputs"]] == spec.input_names and r.structure["outputs"] == ["scores"]
    assert [i[1] for i in r.structure["inputs"]] == [list(s.shape) for s in spec.inputs]
    ops = r.structure["op_counts"]
    assert set(ops) <= EXPECTED_OPS and ops["softmax"] >= 1 and ops["layer_norm"] >= 2
    if sys.platform != "darwin":
        assert r.status == "program-verified" and any("macOS" in n for n in r.notes) and not r.errors
        assert r.bundle is not None  # shipped with numeric_parity_checked = 0 in its manifest


def test_coreml_converted_program_matches_torch_off_macos(exported, spec):
    """The converted MIL program, evaluated op by op in numpy, within the Core ML tolerance of torch and ORT."""
    r = exported[0].by_format("coreml")
    tol = spec.tolerance("coreml")
    assert r.vs_torch is not None and r.vs_torch.passed, r.vs_torch
    assert r.vs_torch.max_abs_diff <= tol.max_abs_diff and r.vs_onnxruntime.max_abs_diff <= tol.max_abs_diff
    if sys.platform != "darwin":
        assert r.evaluated_by == "MIL program in numpy" and r.latency_ms is None


def test_mil_evaluation_detects_a_wrong_program(trained, spec, tmp_path):
    """A program converted from a different (untrained) model must fail against the trained model."""
    import torch

    from edge_rerank.cloud.training.model import DeviceReranker
    from edge_rerank.converters.coreml.convert import export_coreml
    from edge_rerank.converters.coreml.mil_eval import MILEvaluator

    model, _, valid = trained
    xs = validation_inputs(valid.inputs, 6)
    torch.manual_seed(1)
    other = DeviceReranker(model.fcfg, model.mcfg).eval()
    run = MILEvaluator(export_coreml(other, xs[0], tmp_path / "o.mlpackage", spec)).run
    rep = validate(lambda x: _torch_scores(model, x), run, xs, tolerance=1e-4)
    assert not rep.passed and rep.max_abs_diff > 1e-2
    same = validate(lambda x: _torch_scores(other, x), run, xs, tolerance=1e-4)
    assert same.passed, same.failures


def test_coreml_bundle_is_marked_and_refused_where_it_cannot_run(exported):
    from edge_rerank.device_sdk.bundle import read_bundle
    from edge_rerank.device_sdk.model_manager import ModelManager, load_model

    _, out = exported
    m = read_bundle(out / "coreml").manifest
    assert m.format == "coreml" and m.model_file.endswith(".mlpackage.zip")
    if sys.platform == "darwin":  # pragma: no cover
        assert m.validation["numeric_parity_checked"] == 1.0
        return
    assert m.validation["numeric_parity_checked"] == 0.0 and m.validation["structure.passed"] == 1.0
    assert m.validation["program_parity_checked"] == 1.0 and m.validation["torch.max_abs_diff"] <= 1e-4
    with pytest.raises(BackendError, match="macOS"):
        load_model(out / "coreml")
    mm = ModelManager()
    assert not mm.install(out / "coreml") and mm.current is None and "macOS" in mm.last_error


@pytest.mark.skipif(sys.platform != "darwin", reason="Core ML prediction needs macOS; coremltools on Linux only "
                                                      "converts (the structure test covers it here)")
def test_coreml_numeric_parity_on_macos(exported, spec):  # pragma: no cover - macOS only
    r = exported[0].by_format("coreml")
    assert r.status == "passed", r.errors
    assert r.vs_torch.max_abs_diff <= spec.tolerance("coreml").max_abs_diff


def test_missing_toolchains_give_clear_errors(trained, spec, tmp_path, monkeypatch):
    from edge_rerank.converters.coreml.convert import export_coreml
    from edge_rerank.converters.mnn.convert import export_mnn
    from edge_rerank.converters.tflite.convert import export_tflite

    model, _, valid = trained
    x = validation_inputs(valid.inputs, 1)[0]
    for mod in ("litert_torch", "coremltools", "_tools", "MNN"):
        monkeypatch.setitem(sys.modules, mod, None)
    with pytest.raises(ToolchainMissing, match=r"\[tflite\]"):
        export_tflite(model, x, tmp_path / "m.tflite", spec)
    with pytest.raises(ToolchainMissing, match=r"\[coreml\]"):
        export_coreml(model, x, tmp_path / "m.mlpackage", spec)
    with pytest.raises(ToolchainMissing, match=r"\[mnn\]"):
        export_mnn(tmp_path / "m.onnx", tmp_path / "m.mnn")


def test_export_cli_writes_bundle_and_parity_table(trained, split_parts, logged_rows, tmp_path, capsys):
    import pyarrow.parquet as pq

    from edge_rerank.cli import main
    from edge_rerank.cloud.logs import rows_to_table
    from edge_rerank.cloud.training.train import save_checkpoint
    from edge_rerank.device_sdk.model_manager import load_model

    model, summary, _ = trained
    pq.write_table(rows_to_table(logged_rows), tmp_path / "logs.parquet")
    save_checkpoint(model, tmp_path / "ckpt.pt", summary, split_parts[0])  # the split `trained` used
    rc = main(["--no-progress", "export", "--checkpoint", str(tmp_path / "ckpt.pt"), "--logs",
               str(tmp_path / "logs.parquet"), "--format", "mnn", "--validate-lists", "20", "--out",
               str(tmp_path / "out")])
    printed = capsys.readouterr().out
    assert rc == 0, printed
    assert "| mnn | mnn |" in printed and "passed" in printed
    assert load_model(tmp_path / "out" / "mnn").backend.name == "mnn"
    assert (tmp_path / "out" / "export_report.json").is_file()


def test_every_formats_bundle_publishes_to_the_registry_under_one_version(exported, tmp_path):
    from edge_rerank.cloud.registry import Registry

    report, out = exported
    reg = Registry(tmp_path / "registry")
    names = {reg.publish(out / r.format).name for r in report.results if r.bundle}
    assert names == {"device-reranker", "device-reranker-tflite", "device-reranker-coreml", "device-reranker-mnn"}


@pytest.mark.parametrize("fmt", NUMERIC)
def test_every_runtime_matches_the_numpy_reference_on_real_lists(exported, trained, tmp_path, fmt):
    """ARCHITECTURE's rule: device_sdk's numpy backend is the reference every exported format is checked against."""
    from edge_rerank.converters.numpy_ref.convert import export_numpy
    from edge_rerank.converters.validate import validate
    from edge_rerank.device_sdk import backends
    from edge_rerank.device_sdk.model_manager import load_model

    model, _, valid = trained
    _, out = exported
    ref = backends.create("numpy", export_numpy(model, tmp_path / "reranker.npz"))
    inputs = validation_inputs(valid.inputs, 40)
    rep = validate(ref.run, load_model(out / fmt).backend.run, inputs, tolerance=1e-4)
    assert rep.passed, rep.failures
    assert rep.max_abs_diff < 1e-4 and rep.mean_top5_overlap == 1.0
