"""The coarse two-tower stage (issue 16): training beats baselines on held-out sessions, fine-ranker distillation
raises consistency, ONNX / numpy serving matches torch, ANN retrieval matches exact, the service answers
/v1/search with the coarse stage and falls back to pass-through when the model is missing or broken, Redis item
vectors, registry publication, and the CLI."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_rerank.cloud.app import CloudConfig, create_app
from edge_rerank.cloud.ranking.coarse import (
    COARSE_DIR,
    QUERY_ONNX,
    CoarseServing,
    PassThroughCoarse,
    TwoTowerCoarse,
    load_coarse,
)
from edge_rerank.cloud.ranking.coarse_index import AnnConfig, build_ivf, search_heads
from edge_rerank.cloud.training.coarse_data import CoarseWorld, query_views
from edge_rerank.cloud.training.coarse_export import publish_coarse, write_coarse_bundle
from edge_rerank.cloud.training.coarse_model import CoarseModelConfig
from edge_rerank.cloud.training.coarse_train import (
    CoarseTrainConfig,
    baseline_scores,
    evaluate_coarse,
    fit_coarse,
    fit_teacher,
    mean_ci,
)
from edge_rerank.device_sdk import wire
from edge_rerank.device_sdk.contracts import Context, SearchRequest

VARIANTS = ("dot", "soft", "esim")
PB = "application/x-protobuf"


@pytest.fixture(scope="module")
def cworld(cloud_data) -> CoarseWorld:
    return CoarseWorld.load(cloud_data)


@pytest.fixture(scope="module")
def views(cworld, logged_rows):
    return query_views(logged_rows, cworld)


@pytest.fixture(scope="module")
def models(cworld, views):
    """One model per variant: click loss + pairwise teacher distillation + fine-ranker distillation."""
    torch.set_num_threads(1)
    tr = views.split("train")
    cfg = CoarseTrainConfig(epochs=4, teacher="pairwise", teacher_epochs=2, fine_weight=1.0)
    teacher = fit_teacher(cworld, tr, cfg)  # one teacher for the three students
    return {v: fit_coarse(cworld, tr, CoarseModelConfig(variant=v), cfg, teacher=teacher)[0] for v in VARIANTS}


@pytest.fixture(scope="module")
def bundles(models, cworld, views, tmp_path_factory):
    """Serving bundles of every variant; exact threshold 100 < 600 items, so each has a faiss index."""
    root = tmp_path_factory.mktemp("coarse_bundles")
    return {v: write_coarse_bundle(m, cworld, root / v, version="v1", views=views.split("test"),
                                   serving=CoarseServing(top_k=20, exact_threshold=100,
                                                         ann=AnnConfig(nlist=8, nprobe=4)))
            for v, m in models.items()}


def _req(i: int, query: str = "dinner", user: str = "u00003") -> SearchRequest:
    return SearchRequest(f"r{i}", f"s{i}", user, query, Context(lat=1.0 + 0.7 * (i % 11), lon=8.0 - 0.5 * (i % 13),
                                                               hour=8 + i % 12))


def test_views_split_by_session_and_label_clicks(views):
    assert set(np.unique(views.part)) == {"train", "valid", "test"}
    for part in ("train", "test"):
        assert len(views.split(part)) > 50
    parts = {p: set(views.split(p).session_ids) for p in ("train", "valid", "test")}
    assert not (parts["train"] & parts["test"]) and not (parts["train"] & parts["valid"])  # split by session
    assert views.labels[views.exposed].mean() > 0.0 and views.labels[~views.exposed & views.mask].sum() == 0


@pytest.fixture(scope="module")
def baseline_auc(cworld, views):
    return {k: baseline_scores(cworld, views.split("test"), k, recall_views=0)["auc"] for k in ("random", "popularity")}


@pytest.mark.parametrize("variant", VARIANTS)
def test_variants_beat_random_and_popularity_on_heldout_auc(variant, models, cworld, views, baseline_auc):
    m = evaluate_coarse(models[variant], cworld, views.split("test"), recall_views=0)
    base = baseline_auc
    assert m["auc"] > max(0.5, *base.values()) + 0.03, (m["auc"], base)  # random's draw may land below 0.5
    assert m["consistency"]["lo"] > 0.55  # orders recall items like the fine ranker far more often than chance
    assert m["query_tower_flops"] > 0 and m["params"] > 0


def test_fine_ranker_distillation_raises_consistency(cworld, views):
    tr, te = views.split("train"), views.split("test")
    base, _ = fit_coarse(cworld, tr, CoarseModelConfig(variant="dot"), CoarseTrainConfig(epochs=4))
    fine, _ = fit_coarse(cworld, tr, CoarseModelConfig(variant="dot"), CoarseTrainConfig(epochs=4, fine_weight=1.0))
    a, b = (evaluate_coarse(m, cworld, te, k=30, recall_views=60) for m in (base, fine))
    assert b["recall@30_of_fine_page1"]["mean"] > a["recall@30_of_fine_page1"]["mean"]
    gain = mean_ci(b["consistency_per_view"] - a["consistency_per_view"])
    assert gain["lo"] > 0.0, gain


def _head_abs_cos(model, views) -> float:
    with torch.no_grad():
        q = model.query(torch.from_numpy(views.query_id), torch.from_numpy(views.query_dense))
    u = torch.nn.functional.normalize(q, dim=-1)
    c = (u @ u.transpose(-1, -2)).abs()
    off = ~torch.eye(q.shape[1], dtype=torch.bool)
    return float(c[:, off].mean())


def test_head_orthogonality_pushes_multi_head_query_heads_apart(cworld, views):
    tr, te = views.split("train"), views.split("test")
    soft = CoarseModelConfig(variant="soft")
    plain, _ = fit_coarse(cworld, tr, soft, CoarseTrainConfig(epochs=3))
    ortho, _ = fit_coarse(cworld, tr, soft, CoarseTrainConfig(epochs=3, head_orthogonality=1.0))
    a, b = _head_abs_cos(plain, te), _head_abs_cos(ortho, te)
    assert b < 0.2 < a, (a, b)  # plain heads drift toward one direction; the penalty keeps them apart
    # a single-vector model has no heads to push apart: the option changes nothing there
    dot = CoarseModelConfig(variant="dot")
    d0, _ = fit_coarse(cworld, tr, dot, CoarseTrainConfig(epochs=2))
    d1, _ = fit_coarse(cworld, tr, dot, CoarseTrainConfig(epochs=2, head_orthogonality=1.0))
    for x, y in zip(d0.state_dict().values(), d1.state_dict().values(), strict=True):
        torch.testing.assert_close(x, y)
    for bad in (-0.1, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="head_orthogonality"):
            CoarseTrainConfig(head_orthogonality=bad)


def test_validation_selection_returns_the_best_epochs_model(cworld, views):
    tr, va = views.split("train"), views.split("valid")
    model, summary = fit_coarse(cworld, tr, CoarseModelConfig(variant="dot"), CoarseTrainConfig(epochs=5), valid=va)
    aucs = [h["valid_auc"] for h in summary["history"]]
    assert len(aucs) == 5 and summary["best_epoch"] == int(np.argmax(aucs))
    assert summary["best_valid_auc"] == max(aucs)
    # the returned weights are that epoch's: its validation AUC is measured again on them
    again = evaluate_coarse(model, cworld, va, recall_views=0)["auc"]
    assert abs(again - max(aucs)) < 1e-9
    # the same run without `valid` is the last epoch's model
    _, last = fit_coarse(cworld, tr, CoarseModelConfig(variant="dot"), CoarseTrainConfig(epochs=5))
    assert last["best_epoch"] == 4 and "valid_auc" not in last["history"][-1]


@pytest.mark.parametrize("variant", VARIANTS)
def test_onnx_and_numpy_serving_match_torch(variant, models, bundles, cworld, views):
    import json

    manifest = json.loads((bundles[variant] / "manifest.json").read_text())
    assert manifest["validation"]["scorer_max_abs_diff"] <= 1e-4
    model = models[variant]
    coarse = TwoTowerCoarse(bundles[variant], cworld.catalog)
    rows = np.arange(cworld.catalog.n_items)
    for i in range(5):
        req = _req(i, query=("sushi", "dinner", "lunch", "nowhere", "cafe")[i])
        q = coarse.query_heads(req)
        qid, qd = coarse.featurizer([req.query], [req.user_id], [req.context])
        with torch.no_grad():
            tq = model.query(torch.from_numpy(qid), torch.from_numpy(qd))
            it = cworld.items
            d = model.item(torch.from_numpy(it["category"]), torch.from_numpy(it["brand"]),
                           torch.from_numpy(it["dense"]))
            ts = model.score_heads(tq[:, None], d[None])[0].numpy()
        np.testing.assert_allclose(q, tq[0].numpy(), atol=1e-5)
        np.testing.assert_allclose(coarse.scores(req, rows), ts, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("variant", ["dot", "soft"])
def test_ann_selection_recalls_the_exact_top_k(variant, bundles, cworld):
    ann = TwoTowerCoarse(bundles[variant], cworld.catalog)
    exact = TwoTowerCoarse(bundles[variant], cworld.catalog, use_index=False)
    assert ann.index is not None and exact.index is None
    everything = np.arange(cworld.catalog.n_items)
    rec = []
    for i in range(30):
        a, e = ann.select(_req(i), everything), exact.select(_req(i), everything)
        assert len(a) == len(e) == 20 and len(np.unique(a)) == 20
        rec.append(len(set(a.tolist()) & set(e.tolist())) / 20)
    assert np.mean(rec) >= 0.95, rec
    dinner = cworld.pipeline.recall("dinner")  # a part of the catalog: ANN hits are filtered to the recall set
    got = ann.select(_req(0), dinner)
    assert set(got.tolist()) <= set(dinner.tolist()) and len(got) == 20
    shuffled = np.random.default_rng(0).permutation(dinner)  # unsorted recall sets take the mask path
    assert set(ann.select(_req(0), shuffled).tolist()) == set(got.tolist())


def test_ivf_maximum_inner_product_on_clustered_vectors_with_offset_and_skewed_norms():
    """Like trained item vectors: clustered, a shared offset, varied norms; 16 of 128 lists probed."""
    rng = np.random.default_rng(0)
    n = 20_000
    centers = 1.5 * rng.standard_normal((50, 16))
    x = ((centers[rng.integers(0, 50, n)] + 0.5 * rng.standard_normal((n, 16))) * rng.lognormal(0, 0.4, (n, 1))
         + 2.0).astype(np.float32)
    index = build_ivf(x, AnnConfig(nlist=128, nprobe=16))
    rec = []
    for _ in range(20):
        q = rng.standard_normal((1, 16)).astype(np.float32)
        got = search_heads(index, q, 100, 1)
        rec.append(len(set(got.tolist()) & set(np.argsort(-(x @ q[0]))[:100].tolist())) / 100)
    assert np.mean(rec) >= 0.9, rec


def _data_with(cloud_data, tmp_path, bundle=None):
    data = tmp_path / "data"
    shutil.copytree(cloud_data, data)
    if bundle is not None:
        shutil.copytree(bundle, data / COARSE_DIR)
    return data


def _search(client, req: SearchRequest):
    r = client.post("/v1/search", data=wire.request_to_proto(req).SerializeToString(), content_type=PB)
    assert r.status_code == 200, r.data[:200]
    return wire.page_from_proto(wire.pb.SearchPage.FromString(r.data))


def test_service_answers_with_the_coarse_stage(cloud_data, bundles, tmp_path):
    app = create_app(CloudConfig(data_dir=str(_data_with(cloud_data, tmp_path, bundles["soft"]))))
    pipe = app.extensions["edge_rerank.pipeline"]
    assert isinstance(pipe.coarse, TwoTowerCoarse)
    client = app.test_client()
    req = _req(1)
    page = _search(client, req)
    assert len(page.items) == 20 and not page.has_more  # the coarse top-20 is what the fine ranker ordered
    kept = set(pipe.catalog.items["item_id"][pipe.coarse.select(req, pipe.recall(req.query))].tolist())
    assert {it.item_id for it in page.items} == kept


def test_service_falls_back_to_pass_through(cloud_data, bundles, tmp_path, caplog):
    # no model: pass-through, every recalled item reaches the fine ranker
    app = create_app(CloudConfig(data_dir=str(_data_with(cloud_data, tmp_path / "none"))))
    assert app.extensions["edge_rerank.pipeline"].coarse == PassThroughCoarse()
    full = _search(app.test_client(), _req(2))
    assert len(full.items) == 25 and full.has_more
    # a tampered file (checksum) and an unreadable model (re-checksummed): pass-through with the reason, service up
    bad_sum = _data_with(cloud_data, tmp_path / "sum", bundles["dot"])
    (bad_sum / COARSE_DIR / QUERY_ONNX).write_bytes(b"not a model")
    bad_onnx = _data_with(cloud_data, tmp_path / "onnx", bundles["dot"])
    _rewrite_with_checksum(bad_onnx / COARSE_DIR, QUERY_ONNX, b"not a model")
    bad_conf = _data_with(cloud_data, tmp_path / "conf", bundles["dot"])
    _rewrite_with_checksum(bad_conf / COARSE_DIR, "coarse.json", b"{}")
    for data, why in ((bad_sum, "sha256"), (bad_onnx, "onnxruntime"), (bad_conf, "coarse config")):
        app = create_app(CloudConfig(data_dir=str(data)))
        coarse = app.extensions["edge_rerank.pipeline"].coarse
        assert isinstance(coarse, PassThroughCoarse) and why in coarse.reason, coarse
        page = _search(app.test_client(), _req(2))
        assert [it.item_id for it in page.items] == [it.item_id for it in full.items]


def _rewrite_with_checksum(bundle, rel: str, data: bytes) -> None:
    import json

    from edge_rerank.device_sdk.bundle import sha256_file

    (bundle / rel).write_bytes(data)
    m = json.loads((bundle / "manifest.json").read_text())
    m["files"][rel], m["sizes"][rel] = sha256_file(bundle / rel), len(data)
    (bundle / "manifest.json").write_text(json.dumps(m))


def test_registry_published_model_and_redis_item_vectors(cloud_data, bundles, cworld, tmp_path):
    from edge_rerank.cloud.embedding_store.redis_server import redis_server_binary, running_redis
    from edge_rerank.cloud.registry import Registry

    m = publish_coarse(bundles["soft"], tmp_path / "registry")
    reg = Registry(tmp_path / "registry")
    assert reg.state(m.name).stable == "v1"
    data = _data_with(cloud_data, tmp_path)
    from_reg = load_coarse(data, cworld.catalog, registry=reg)
    assert isinstance(from_reg, TwoTowerCoarse) and from_reg.version == "v1"
    local = TwoTowerCoarse(bundles["soft"], cworld.catalog, use_index=False)
    recall = cworld.pipeline.recall("dinner")
    if redis_server_binary() is None:
        pytest.skip("redis-server binary not installed")
    with running_redis() as url:
        via_redis = load_coarse(data, cworld.catalog, store_kind="redis", redis_url=url, registry=reg)
        assert type(via_redis.store).__name__ == "RedisEmbeddingStore"
        for i in range(5):
            np.testing.assert_array_equal(np.sort(via_redis._exact(via_redis.query_heads(_req(i)), recall, 20)),
                                          np.sort(local.select(_req(i), recall)))


def test_cli_coarse_train_export_publish(cloud_data, logged_rows, tmp_path, capsys):
    import pyarrow.parquet as pq

    from edge_rerank.cli import main
    from edge_rerank.cloud.logs import rows_to_table

    (tmp_path / "logs").mkdir()
    pq.write_table(rows_to_table(logged_rows), tmp_path / "logs" / "part-0.parquet")
    data = _data_with(cloud_data, tmp_path)
    assert main(["coarse", "train", "--data-dir", str(data), "--logs", str(tmp_path / "logs"), "--out",
                 str(tmp_path / "run"), "--variant", "dot", "--epochs", "2", "--teacher", "none"]) == 0
    assert "consistency with the fine ranker" in capsys.readouterr().out
    assert main(["coarse", "export", "--checkpoint", str(tmp_path / "run" / "coarse.pt"), "--data-dir", str(data),
                 "--out", str(tmp_path / "bundle"), "--version", "c1", "--top-k", "30", "--install"]) == 0
    assert isinstance(create_app(CloudConfig(data_dir=str(data))).extensions["edge_rerank.pipeline"].coarse,
                      TwoTowerCoarse)
    assert main(["coarse", "publish", "--bundle", str(tmp_path / "bundle"), "--registry-dir",
                 str(tmp_path / "reg")]) == 0
    assert "coarse-ranker@c1 (stable)" in capsys.readouterr().out
    with pytest.raises(SystemExit) as e:
        main(["coarse", "train", "--data-dir", str(data), "--logs", str(tmp_path / "missing"), "--out", "x"])
    assert e.value.code == 2


def test_shown_list_reader_gives_the_same_views_as_read_logs(cworld, logged_rows, tmp_path):
    """The coarse stage's projected Parquet reader (only the columns it uses) builds the very views the full
    contract reader does; a damaged file is skipped, not fatal."""
    import pyarrow.parquet as pq

    from edge_rerank.cloud.logs import read_logs, rows_to_table
    from edge_rerank.cloud.training.coarse_data import read_shown_lists

    half = len(logged_rows) // 2
    pq.write_table(rows_to_table(logged_rows[:half]), tmp_path / "part-0.parquet")
    pq.write_table(rows_to_table(logged_rows[half:]), tmp_path / "part-1.parquet")
    a = query_views(read_logs(tmp_path), cworld, n_fine_top=8)
    lists = read_shown_lists(tmp_path)
    b = query_views(lists, cworld, n_fine_top=8)
    for k in ("rows", "labels", "exposed", "mask", "fine_rows", "fine_scores", "query_id", "query_dense", "part"):
        assert np.array_equal(getattr(a, k), getattr(b, k)), k
    (tmp_path / "part-2.parquet").write_bytes(b"not parquet")
    assert len(read_shown_lists(tmp_path)) == len(lists)


def test_top_heavy_fine_samples_come_from_the_fine_rankers_top(cworld, logged_rows):
    v = query_views(logged_rows[:200], cworld, n_fine_top=16, fine_top_pool=25)
    u = query_views(logged_rows[:200], cworld)  # uniform over the recall set
    in_top_v, in_top_u = [], []
    for i in range(len(v)):
        rows = cworld.pipeline.recall(v.queries[i])
        fine = cworld.fine_scores(v.user_ids[i], v.contexts[i], rows)
        top = set(rows[np.argsort(-fine, kind="stable")[:25]].tolist())
        assert set(v.fine_rows[i, :16].tolist()) <= top
        in_top_v.append(sum(r in top for r in v.fine_rows[i].tolist()))
        in_top_u.append(sum(r in top for r in u.fine_rows[i].tolist()))
    assert np.mean(in_top_v) > np.mean(in_top_u) + 6
    with pytest.raises(ValueError, match="n_fine_top"):
        query_views(logged_rows[:5], cworld, n_fine_top=40)


def test_healthz_names_the_coarse_stage(cloud_data, bundles, tmp_path):
    data = _data_with(cloud_data, tmp_path)
    client = create_app(CloudConfig(data_dir=str(data))).test_client()
    assert client.get("/healthz").get_json()["coarse"]["kind"] == "pass-through"
    shutil.copytree(bundles["soft"], data / COARSE_DIR)
    h = create_app(CloudConfig(data_dir=str(data))).test_client().get("/healthz").get_json()["coarse"]
    assert h["kind"] == "two-tower" and h["version"] == "v1"


@pytest.mark.parametrize("variant", ["dot", "soft"])
def test_block_scoring_and_cache_match_the_matching_layer(variant, bundles, cworld):
    """Serving's head-block path (one matmul per request, recall sets cached by identity or content) gives the
    matching layer's scores and the same top-k as scoring the store's rows item by item; a cache too small to
    hold a set changes nothing."""
    from edge_rerank.cloud.ranking.coarse_index import exact_top

    cat = cworld.catalog
    big = TwoTowerCoarse(bundles[variant], cat)
    tiny = TwoTowerCoarse(bundles[variant], cat, serving=CoarseServing(top_k=20, block_cache_bytes=16))
    for i, query in enumerate(["dinner", "lunch", "sushi", "dinner"]):
        req = _req(i, query)
        rows = cworld.pipeline.recall(query)
        q = big.query_heads(req)
        vec, _ = big.store.get(big._ids[rows])
        ref = big.score_items(q, vec.reshape(-1, big.nd, big.dim))
        block, found = big._block(rows, cache=True)
        assert found is None  # None: every row has a vector
        np.testing.assert_allclose(big._block_scores(q, block, len(rows)), ref, rtol=1e-5, atol=1e-6)
        want = set(rows[exact_top(ref, 20)].tolist())
        for c in (big, tiny):
            for cand in (rows, rows.copy()):  # the memoised array (identity) and an equal copy (content)
                assert set(c.select(req, cand).tolist()) == want
    assert len(big._blocks._d) == 3 and big._blocks.nbytes <= big.serving.block_cache_bytes
    assert len(tiny._blocks._d) == 0


def test_search_path_caches_keep_the_ranking(cloud_data, opaque_ranker):
    """The pipeline's per-recall-set item columns and the fine ranker's hidden layer computed for the kept rows only
    give the very ranking (bit for bit) of gathering every request and running the whole forward pass."""
    from edge_rerank.cloud.catalog import load_catalog
    from edge_rerank.cloud.embedding_store import FileEmbeddingStore
    from edge_rerank.cloud.ranking.fine import load_ranker
    from edge_rerank.cloud.ranking.pipeline import SearchPipeline

    cat = load_catalog(cloud_data)
    ranker = load_ranker(cloud_data)
    kw = dict(catalog=cat, store=FileEmbeddingStore(cloud_data / "embeddings"), cache_size=0, max_results=30)
    fast, slow = SearchPipeline(ranker=ranker, **kw), SearchPipeline(ranker=opaque_ranker(ranker), **kw)
    for i, query in enumerate(["dinner", "lunch", "sushi", "something sweet", "unknown words"]):
        req = _req(i, query)
        idx = fast.recall(query)
        np.testing.assert_array_equal(fast.features_for(req.user_id, req.context, idx),
                                      fast.features_for(req.user_id, req.context, idx.copy()))
        a, b = fast.rank(req), slow.rank(req)
        for f in ("rows", "scores", "hidden"):
            np.testing.assert_array_equal(getattr(a, f), getattr(b, f))



@settings(max_examples=200, deadline=None)
@given(st.integers(0, 700), st.integers(1, 60), st.integers(0, 2**32 - 1))
def test_top_order_is_the_exact_sort_with_ties_by_id(n, m, seed):
    """Both ways of cutting a scored list to max_results (one sort for short lists, partition then sort for long
    ones) give the exact order: by score, ties by id; scores drawn with many ties."""
    from edge_rerank.cloud.ranking.pipeline import SearchPipeline

    rng = np.random.default_rng(seed)
    s = np.round(rng.normal(size=n), 1).astype(np.float32)
    ids = rng.permutation(10 * n + 1)[:n].astype(np.int64)
    p = SearchPipeline.__new__(SearchPipeline)
    p.max_results = m
    np.testing.assert_array_equal(p._top_order(s, ids), np.lexsort((ids, -s))[:m])

def test_demo_coarse_flags_reach_the_demo_config():
    from dataclasses import fields

    from edge_rerank.cli import build_parser
    from edge_rerank.pipeline import DemoConfig

    a = build_parser().parse_args(["demo", "--coarse-top-k", "0", "--coarse-epochs", "2"])
    given = {f.name: getattr(a, f.name) for f in fields(DemoConfig) if getattr(a, f.name, None) is not None}
    assert given["coarse_top_k"] == 0 and given["coarse_epochs"] == 2
    assert DemoConfig().coarse_top_k == 100  # on by default: the demo's cloud serves through the coarse stage


def test_query_tower_direct_run_equals_the_public_run(bundles, cworld):
    """The query tower called through onnxruntime's C++ session (no per-call wrapper checks) gives the public
    ``run``'s outputs; without that session object the public call is used; wrong input names are refused."""
    from edge_rerank.cloud.ranking.coarse import CoarseError, _direct_run

    for v in VARIANTS:
        c = TwoTowerCoarse(bundles[v], cworld.catalog)
        for i, query in enumerate(["dinner", "lunch", "sushi", "nothing known"] * 5):
            req = _req(i, query, user=f"u{i:05d}")
            qid, dense = c.featurizer.one(req.query, req.user_id, req.context)
            feed = {"query_id": qid, "query_dense": dense}
            (want,) = c._q.run(None, feed)
            (got,) = c._run_q(feed)
            assert got.dtype == want.dtype and got.tobytes() == want.tobytes()

    class Public:  # a session object without the C++ session attribute
        def __init__(self, s):
            self.s = s

        def get_inputs(self):
            return self.s.get_inputs()

        def get_outputs(self):
            return self.s.get_outputs()

        def run(self, names, feed):
            return self.s.run(names, feed)

    run = _direct_run(Public(c._q), {"query_id", "query_dense"})
    assert run(feed)[0].tobytes() == c._q.run(None, feed)[0].tobytes()
    with pytest.raises(CoarseError, match="inputs"):
        _direct_run(c._q, {"query", "dense"})
