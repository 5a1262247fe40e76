"""The numpy reference backend against the torch model, and onnxruntime against the numpy reference, on real
inputs from simulated logs (max abs diff, Kendall tau, top-5 overlap), for every model variant."""

import numpy as np
import pytest
import torch

from edge_rerank.cloud.training.model import DeviceReranker, ModelConfig, to_tensors
from edge_rerank.converters.numpy_ref.convert import export_numpy
from edge_rerank.converters.validate import validate
from edge_rerank.device_sdk import backends
from edge_rerank.device_sdk.backends import BackendError


def _torch_scores(model, batch):
    with torch.no_grad():
        return model(*to_tensors(batch, model.input_names)).numpy()


@pytest.mark.parametrize("mcfg", [ModelConfig(), ModelConfig(use_feedback=False), ModelConfig(cross=False),
                                  ModelConfig(views=("id",), wide=True, n_layers=2)], ids=str)
def test_numpy_backend_matches_torch_on_real_inputs(samples, fcfg, tmp_path, mcfg):
    torch.manual_seed(3)
    model = DeviceReranker(fcfg, mcfg).eval()
    model.fit_input_stats(samples.inputs)
    be = backends.create("numpy", export_numpy(model, tmp_path / "reranker.npz"))
    batch = {k: v[:64] for k, v in samples.inputs.items()}
    got, ref = be.run(batch), _torch_scores(model, batch)
    m = batch["cand_mask"] > 0
    assert got.shape == ref.shape and got.dtype == np.float32
    np.testing.assert_allclose(got[m], ref[m], atol=2e-5, rtol=1e-4)


def test_trained_model_parity_reports_numpy_vs_torch_and_onnxruntime_vs_numpy(trained, bundle_dir, tmp_path):
    model, _, valid = trained
    ref_be = backends.create("numpy", export_numpy(model, tmp_path / "reranker.npz"))
    ort_be = backends.create("onnxruntime", next(bundle_dir.glob("*.onnx")))
    inputs = [{k: v[i: i + 1] for k, v in valid.inputs.items()} for i in range(min(60, len(valid)))]
    vs_torch = validate(lambda x: _torch_scores(model, x), ref_be.run, inputs, tolerance=1e-4)
    vs_numpy = validate(ref_be.run, ort_be.run, inputs, tolerance=1e-4)
    for rep in (vs_torch, vs_numpy):
        assert rep.passed, rep.failures
        assert rep.max_abs_diff < 1e-4 and rep.mean_top5_overlap == 1.0


def test_numpy_backend_rejects_foreign_files(tmp_path):
    bad = tmp_path / "x.npz"
    bad.write_bytes(b"not a zip")
    with pytest.raises(BackendError):
        backends.create("numpy", bad)
    np.savez(tmp_path / "y.npz", a=np.zeros(3))
    with pytest.raises(BackendError, match="__model_config__"):
        backends.create("numpy", tmp_path / "y.npz")
