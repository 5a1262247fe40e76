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


def _residual_with_weights(model):
    """A residual model's head starts at zero (it *is* the cloud order): give it weights so parity means something."""
    if model.mcfg.residual:
        with torch.no_grad():
            model.head[2].weight.normal_(0.0, 0.3)
            model.cloud_weight.fill_(0.7)
    return model


@pytest.mark.parametrize("mcfg", [ModelConfig(), ModelConfig(use_feedback=False), ModelConfig(cross=False),
                                  ModelConfig(views=("id",), wide=True, n_layers=2), ModelConfig(residual=True),
                                  ModelConfig(residual=True, use_feedback=False)], ids=str)
def test_numpy_backend_matches_torch_on_real_inputs(samples, fcfg, tmp_path, mcfg):
    torch.manual_seed(3)
    model = _residual_with_weights(DeviceReranker(fcfg, mcfg).eval())
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


def test_residual_model_exports_to_onnx_with_parity(samples, fcfg, tmp_path):
    import onnxruntime as ort

    from edge_rerank.converters.onnx.convert import export_onnx

    torch.manual_seed(4)
    model = _residual_with_weights(DeviceReranker(fcfg, ModelConfig(residual=True)).eval())
    model.fit_input_stats(samples.inputs)
    batch = {k: v[:32] for k, v in samples.inputs.items()}
    path = export_onnx(model, {k: v[:1] for k, v in batch.items()}, tmp_path / "r.onnx")
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = np.concatenate([sess.run(None, {k: batch[k][i: i + 1] for k in model.input_names})[0]
                          for i in range(len(batch["cand_mask"]))])
    m = batch["cand_mask"] > 0
    np.testing.assert_allclose(got[m], _torch_scores(model, batch)[m], atol=2e-5, rtol=1e-4)


def test_residual_model_keeps_the_cloud_order_without_feedback(samples, fcfg):
    """The skip path: untrained it is the cloud score's order everywhere; trained (random head), still exactly the
    cloud score's order on every list whose session has no feedback yet."""
    model = DeviceReranker(fcfg, ModelConfig(residual=True)).eval()
    model.fit_input_stats(samples.inputs)
    x = {k: v[:300].copy() for k, v in samples.inputs.items()}
    for key in ("seq_pos_mask", "seq_neg_mask"):  # the first 100 lists as at a session's start: no feedback
        x[key][:100] = 0.0
    k = fcfg.candidate_ops.index("cloud_score")
    cloud = x["cand_num"][:, :, k]
    m = x["cand_mask"] > 0

    def same_order(scores, rows):
        for i in rows:
            n = int(m[i].sum())
            assert list(np.argsort(-scores[i, :n], kind="stable")) == list(np.argsort(-cloud[i, :n], kind="stable"))

    untrained = _torch_scores(model, x)
    same_order(untrained, range(min(len(untrained), 200)))
    _residual_with_weights(model)
    scores = _torch_scores(model, x)
    no_feedback = np.flatnonzero((x["seq_pos_mask"] + x["seq_neg_mask"]).sum(axis=1) == 0)
    with_feedback = np.flatnonzero((x["seq_pos_mask"] + x["seq_neg_mask"]).sum(axis=1) > 0)
    assert len(no_feedback) and len(with_feedback)
    same_order(scores, no_feedback)
    moved = [i for i in with_feedback[:200] if list(np.argsort(-scores[i, :int(m[i].sum())], kind="stable"))
             != list(np.argsort(-cloud[i, :int(m[i].sum())], kind="stable"))]
    assert moved  # with feedback the model does add to the cloud score
