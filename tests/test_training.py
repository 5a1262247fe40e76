import numpy as np
import pytest
import torch

from edge_rerank.cloud.training.ranking_metrics import mrr, ndcg_at_k


def test_ndcg_and_mrr_agree_with_ranx():
    ranx = pytest.importorskip("ranx")
    rng = np.random.default_rng(0)
    S, N = 30, 12
    scores = rng.normal(size=(S, N))
    labels = rng.integers(0, 3, size=(S, N)).astype(float)
    labels[:, 0] = 1.0  # every list has a positive
    mask = (np.arange(N)[None, :] < rng.integers(3, N + 1, size=S)[:, None]).astype(float)
    qrels, run = {}, {}
    for s in range(S):
        q = f"q{s}"
        qrels[q] = {f"d{i}": int(labels[s, i]) for i in range(N) if mask[s, i] and labels[s, i] > 0}
        run[q] = {f"d{i}": float(scores[s, i]) for i in range(N) if mask[s, i]}
    ref = ranx.evaluate(ranx.Qrels(qrels), ranx.Run(run), ["ndcg@5", "ndcg@10", "mrr"], make_comparable=True)
    assert np.nanmean(ndcg_at_k(scores, labels, mask, 5)) == pytest.approx(ref["ndcg@5"], abs=1e-9)
    assert np.nanmean(ndcg_at_k(scores, labels, mask, 10)) == pytest.approx(ref["ndcg@10"], abs=1e-9)
    assert np.nanmean(mrr(scores, labels, mask)) == pytest.approx(ref["mrr"], abs=1e-9)


def test_training_beats_cloud_order_offline(trained):
    _, summary, _ = trained
    assert summary["test_model"]["ndcg@10"] > summary["test_cloud_order"]["ndcg@10"]
    assert summary["valid_model"]["ndcg@10"] > summary["valid_cloud_order"]["ndcg@10"]


def test_training_is_deterministic(split_parts, fcfg):
    from edge_rerank.cloud.training.train import TrainConfig, fit, predict

    _, train, valid, _ = split_parts
    a, _ = fit(train, valid, fcfg, tcfg=TrainConfig(epochs=1, threads=1), progress=False)
    b, _ = fit(train, valid, fcfg, tcfg=TrainConfig(epochs=1, threads=1), progress=False)
    assert np.array_equal(predict(a, valid), predict(b, valid))


def test_onnx_export_matches_torch_on_real_inputs(trained, bundle_dir):
    """Parity of the ONNX file (onnxruntime) with the torch model on real logged lists."""
    from edge_rerank.converters.validate import validate
    from edge_rerank.device_sdk.model_manager import load_model

    model, _, valid = trained
    be = load_model(bundle_dir).backend
    inputs = [{k: v[i: i + 1] for k, v in valid.inputs.items()} for i in range(len(valid))]
    empty = {k: v.copy() for k, v in inputs[0].items()}
    for k in ("seq_pos_mask", "seq_neg_mask"):
        empty[k][:] = 0.0  # all-padding feedback
    inputs.append(empty)

    def ref(x):
        with torch.no_grad():
            return model(*[torch.from_numpy(x[n]) for n in model.input_names]).numpy()

    rep = validate(ref, be.run, inputs, tolerance=1e-4)
    assert rep.passed, rep.failures
    assert rep.mean_kendall_tau > 0.999 and rep.mean_top5_overlap == 1.0


def test_checkpoint_roundtrip(trained, tmp_path):
    from edge_rerank.cloud.training.train import load_checkpoint, predict, save_checkpoint

    model, summary, valid = trained
    save_checkpoint(model, tmp_path / "c.pt", summary)
    back, s2 = load_checkpoint(tmp_path / "c.pt")
    assert np.array_equal(predict(model, valid), predict(back, valid))
    assert s2["valid_model"] == summary["valid_model"] and s2["test_model"] == summary["test_model"]


def test_samples_do_not_depend_on_the_order_logs_were_read(logged_rows, fcfg, samples):
    from edge_rerank.cloud.training.data import build_samples

    again = build_samples(list(reversed(logged_rows)), fcfg, progress=False)
    assert again.session_ids == samples.session_ids
    assert all(np.array_equal(again.inputs[k], samples.inputs[k]) for k in samples.inputs)


@pytest.mark.parametrize("padded", [True, False])
def test_fused_training_attention_is_the_written_out_attention(padded):
    """Training runs the candidates' self-attention through torch's fused kernel, eval (and every export) through
    matmul-softmax-matmul: the same scores and the same gradients, with padding (additive mask) and without
    (no mask at all)."""
    from edge_rerank.cloud.training.model import SelfAttentionBlock

    torch.manual_seed(0)
    block = SelfAttentionBlock(32, 2, 64).train()
    x = torch.randn(6, 40, 32)
    mask = torch.ones(6, 40)
    if padded:
        mask[:, 25:] = 0
        mask[2, 3:] = 0
    outs, grads = [], []
    for fused in (True, False):
        SelfAttentionBlock.fused_in_training = fused
        try:
            block.zero_grad()
            y = block(x, mask)
            (y * mask[:, :, None]).square().sum().backward()
        finally:
            SelfAttentionBlock.fused_in_training = True
        outs.append(y.detach() * mask[:, :, None])
        grads.append(torch.cat([p.grad.reshape(-1) for p in block.parameters()]))
    assert torch.allclose(outs[0], outs[1], atol=1e-5)
    assert torch.allclose(grads[0], grads[1], atol=1e-4, rtol=1e-4)
    block.eval()
    assert torch.allclose(block(x, mask) * mask[:, :, None], outs[0], atol=1e-5)


def test_fit_distils_a_lightgbm_teacher_by_default_and_labels_only_on_request(split_parts, fcfg):
    """TrainConfig.gbdt_teacher: a LightGBM lambdarank fitted on the training lists first (recorded in the
    summary), its scores pulled in by a list-KL term; the teacher can be passed in (tune shares one) with the
    same result; 0 trains on the labels alone; gbdt_teacher_choice (the default) trains both and keeps the one
    with the higher validation NDCG@10."""
    from edge_rerank.cloud.training.train import TrainConfig, evaluate_lists, fit, gbdt_teacher_scores, predict

    _, train, valid, _ = split_parts
    tcfg = TrainConfig(epochs=1, threads=1, gbdt_teacher_choice=False)
    with_t, s = fit(train, valid, fcfg, tcfg=tcfg, progress=False)
    assert s["gbdt_teacher"]["weight"] == 2.0 and s["gbdt_teacher"]["best_iteration"] >= 1
    assert "kept" not in s["gbdt_teacher"]
    teacher = gbdt_teacher_scores(train, valid, tcfg)
    assert teacher[0].shape == train.labels.shape and np.isfinite(teacher[0]).all()
    shared, _ = fit(train, valid, fcfg, tcfg=tcfg, progress=False, teacher=teacher)
    assert np.array_equal(predict(shared, valid), predict(with_t, valid))
    plain, s0 = fit(train, valid, fcfg, tcfg=TrainConfig(epochs=1, threads=1, gbdt_teacher=0), progress=False)
    assert s0["gbdt_teacher"] == {}
    assert not np.array_equal(predict(plain, valid), predict(with_t, valid))
    chosen, sc = fit(train, valid, fcfg, tcfg=TrainConfig(epochs=1, threads=1), progress=False, teacher=teacher)
    info, ndcg = sc["gbdt_teacher"], (lambda m: evaluate_lists(predict(m, valid), valid)["ndcg@10"])
    assert info["valid_ndcg10_with"] == ndcg(with_t) and info["valid_ndcg10_without"] == ndcg(plain)
    assert info["kept"] == (ndcg(with_t) >= ndcg(plain))
    assert np.array_equal(predict(chosen, valid), predict(with_t if info["kept"] else plain, valid))


@pytest.mark.parametrize("field,bad", [("gbdt_teacher", -1.0), ("gbdt_teacher", float("nan")),
                                       ("gbdt_teacher", float("inf")), ("gbdt_teacher", 1e9),
                                       ("gbdt_teacher", "2"), ("gbdt_teacher", True), ("gbdt_teacher", [2.0]),
                                       ("gbdt_teacher_choice", 1), ("gbdt_teacher_choice", "yes")])
def test_gbdt_teacher_settings_of_the_wrong_type_or_range_are_refused(field, bad):
    from edge_rerank.cloud.training.configs import TrainConfig

    with pytest.raises((TypeError, ValueError), match=field):
        TrainConfig(**{field: bad})
