"""Cloud ranker, joint training, the LightGBM baseline and the train CLI on the shared small world."""

import json

import numpy as np
import pytest
import torch

from edge_rerank.cloud.training.cloud_ranker import CloudFeaturizer, CloudRanker, export_cloud_ranker_onnx, page_lists
from edge_rerank.cloud.training.data import split_by_session
from edge_rerank.cloud.training.joint import JointModel, cloud_features_for, with_cloud_outputs
from edge_rerank.cloud.training.model import DeviceReranker, to_tensors


@pytest.fixture(scope="module")
def featurizer(cloud_data):
    return CloudFeaturizer(cloud_data)


def test_cloud_features_match_what_the_search_pipeline_computes(cloud_data, featurizer, inproc_cloud):
    """The featurizer recomputes, for logged items, the features the server ranked them with: the fixed
    ranker's score on them must equal the score the page carried."""
    from edge_rerank.cloud.ranking.fine import load_ranker
    from edge_rerank.device_sdk.contracts import Context, SearchRequest

    req = SearchRequest(request_id="r", session_id="s", user_id="u3", query=next(iter(featurizer.catalog.queries)),
                        context=Context(lat=3.0, lon=4.0, hour=12), page_index=0, page_size=25)
    page = inproc_cloud.search(req)
    x = featurizer("u3", req.context, [it.item_id for it in page.items])
    score, hidden = load_ranker(cloud_data).forward(x)
    np.testing.assert_allclose(score, [it.cloud_score for it in page.items], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(hidden, [it.cloud_dense for it in page.items], rtol=1e-5, atol=1e-5)


def test_cloud_ranker_onnx_matches_torch_for_any_list_length(tmp_path, logged_rows, featurizer):
    ort = pytest.importorskip("onnxruntime")
    torch.manual_seed(0)
    model = CloudRanker(featurizer.n_features).eval()
    path = export_cloud_ranker_onnx(model, tmp_path / "ranker.onnx")
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    pages = page_lists(logged_rows, featurizer)
    for n in (1, 7, 25, 200):
        x = np.resize(pages.features.reshape(-1, featurizer.n_features), (n, featurizer.n_features))
        score, hidden = sess.run(["score", "hidden"], {"features": x.astype(np.float32)})
        ts, th = model(torch.from_numpy(x.astype(np.float32)))
        assert score.shape == (n,) and hidden.shape == (n, model.cfg.dense_dim)
        np.testing.assert_allclose(score, ts.detach().numpy(), atol=1e-5)
        np.testing.assert_allclose(hidden, th.detach().numpy(), atol=1e-5)


def test_joint_graph_equals_materialised_cloud_outputs_and_trains_the_cloud(samples, fcfg, featurizer):
    torch.manual_seed(1)
    sub = samples.subset(np.arange(16))
    cx = cloud_features_for(sub, featurizer)
    cloud, device = CloudRanker(featurizer.n_features), DeviceReranker(fcfg)
    joint = JointModel(cloud, device).eval()
    names = device.input_names
    inputs = dict(zip(names, to_tensors(sub.inputs, names), strict=True))
    s_joint, _ = joint(torch.from_numpy(cx), inputs)
    served = with_cloud_outputs(sub, cloud, cx, fcfg)
    s_served = device(*to_tensors(served.inputs, names))
    torch.testing.assert_close(s_joint, s_served, atol=1e-5, rtol=1e-5)
    # padding keeps zero dense vectors, the cloud score column is the clipped new score
    pad = served.inputs["cand_mask"] == 0
    assert np.all(served.inputs["cand_dense"][pad] == 0)
    joint.train()
    s, c = joint(torch.from_numpy(cx), inputs)
    (s.sum() + c.sum()).backward()
    assert cloud.trunk[0].weight.grad is not None and cloud.trunk[0].weight.grad.abs().sum() > 0


def test_lightgbm_baseline_runs_through_the_device_rerank_path(samples, fcfg, tmp_path):
    pytest.importorskip("lightgbm")
    from edge_rerank.cloud.training.gbdt import GBDTConfig, fit_gbdt, predict_gbdt, save_gbdt
    from edge_rerank.converters.bundle import write_bundle
    from edge_rerank.device_sdk.model_manager import load_model

    train, valid = split_by_session(samples)
    model, info = fit_gbdt(train, valid, GBDTConfig(n_estimators=20, threads=1))
    path = save_gbdt(model, tmp_path / "model.txt")
    bundle = write_bundle(tmp_path / "bundle", model_file=path, fmt="lightgbm", name="gbdt", version="t",
                          feature_config=fcfg)
    loaded = load_model(bundle, expected_fingerprint=fcfg.fingerprint())
    batch = {k: v[:8] for k, v in valid.inputs.items()}
    got = loaded.backend.run(batch)
    np.testing.assert_allclose(got, predict_gbdt(model, valid.subset(np.arange(8))), rtol=1e-5, atol=1e-5)


def test_train_cli_joint_from_parquet_logs(logged_rows, fcfg, cloud_data, tmp_path):
    import pyarrow.parquet as pq

    from edge_rerank.cli import main
    from edge_rerank.cloud.logs import rows_to_table
    from edge_rerank.cloud.training.train import load_checkpoint, read_checkpoint

    pq.write_table(rows_to_table(logged_rows), tmp_path / "logs.parquet")
    fcfg.save(tmp_path / "features.json")
    out = tmp_path / "run"
    rc = main(["--no-progress", "train", "--logs", str(tmp_path / "logs.parquet"), "--out", str(out),
               "--feature-config", str(tmp_path / "features.json"), "--epochs", "1", "--joint", str(cloud_data)])
    assert rc == 0
    summary = json.loads((out / "summary.json").read_text())
    for key in ("valid_model", "valid_cloud_order", "valid_new_cloud_ranker", "cloud_ranker", "test_model",
                "test_cloud_order", "test_new_cloud_ranker", "split"):
        assert key in summary
    model, _ = load_checkpoint(out / "checkpoint.pt")
    assert model.fcfg == fcfg
    split = read_checkpoint(out / "checkpoint.pt").require_split()  # joint training records its split too
    assert split.sessions_sha256 == summary["split"]["sessions_sha256"] and len(split.test) > 0
    # export / compress / evaluate see its test lists as the cloud serving the joint ranker would send them
    from edge_rerank.api import evaluate, load_held_out

    held = load_held_out(out / "checkpoint.pt", tmp_path / "logs.parquet")
    assert set(held.test.session_ids) == set(split.test) and len(held.test) == summary["test_lists"]
    ev = evaluate(out / "checkpoint.pt", tmp_path / "logs.parquet")
    assert ev.model["ndcg@10"] == pytest.approx(summary["test_model"]["ndcg@10"], abs=1e-6)
    assert (out / "ranker.onnx").stat().st_size > 0 and (out / "cloud_ranker.pt").exists()


def test_ablation_runs_every_variant_offline_and_online(tmp_path):
    """A tiny ablation end to end: every row evaluated offline; every shipped variant A/B-tested online."""
    from edge_rerank.ablation import AblationConfig, run_ablation

    data = run_ablation(AblationConfig(out=str(tmp_path), log_sessions=250, ab_sessions=30, epochs=1),
                        progress=False)
    rows = {r["name"]: r for r in data["rows"]}
    assert list(rows)[:3] == ["cloud order", "heuristic", "LightGBM lambdarank"]
    for name, r in rows.items():
        assert 0.0 < r["offline"]["ndcg@10"] <= 1.0, name
    online = {n for n, r in rows.items() if r["online"]}
    assert online == {"cloud order", "heuristic", "LightGBM lambdarank", "PRM, no feedback", "+ Match&Aggregate",
                      "+ MVFAN", "M&A + residual on the cloud score (default)", "+ joint training"}
    assert "delta_qv_ctr" in rows["+ MVFAN"]["online"] and "delta_qv_ctr" not in rows["cloud order"]["online"]
    md = (tmp_path / "ablation.md").read_text()
    assert all(f"| {n} |" in md for n in rows)
    assert (tmp_path / "ablation.png").stat().st_size > 10_000
