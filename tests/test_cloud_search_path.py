"""The search request's cheaper path (issues 15 / 16) computes what the straightforward code computes, bit for bit:
the request built directly, the page header written directly, the page's dense vectors computed per page, the item
feature columns gathered from a whole-catalog base, the coarse query featurizer for one request; and the caches it
adds are bounded and invalidated (registry assignment state, user buckets, page record templates)."""

from __future__ import annotations

import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_rerank.cloud import page_codec, registry
from edge_rerank.cloud.catalog import load_catalog
from edge_rerank.cloud.embedding_store import FileEmbeddingStore
from edge_rerank.cloud.page_codec import page_head, search_request
from edge_rerank.cloud.ranking import pipeline as pipeline_mod
from edge_rerank.cloud.ranking.coarse_features import CoarseFeatureSpec, QueryFeaturizer
from edge_rerank.cloud.ranking.fine import FineRanker, cloud_features, default_ranker_weights, load_ranker
from edge_rerank.cloud.ranking.pipeline import Ranking, SearchPipeline
from edge_rerank.cloud.registry import Registry, RegistryError, user_bucket
from edge_rerank.device_sdk import wire
from edge_rerank.device_sdk.contracts import Context, ContractError, SearchRequest

_I32 = st.integers(-(2**31), 2**31 - 1)
_TEXT = st.text(max_size=140)


@st.composite
def _request_messages(draw):
    ctx = wire.pb.Context(lat=draw(st.floats(allow_nan=True, allow_infinity=True)),
                          lon=draw(st.floats(allow_nan=True, allow_infinity=True)), hour=draw(_I32),
                          device=draw(_TEXT))
    kw = dict(request_id=draw(_TEXT), session_id=draw(_TEXT), user_id=draw(_TEXT), query=draw(_TEXT),
              page_index=draw(_I32), page_size=draw(st.sampled_from([0, 1, 25, 100, 101, -3]) | _I32))
    if draw(st.booleans()):
        kw["context"] = ctx
    return wire.pb.SearchRequest(**kw)


def _outcome(req: SearchRequest):
    try:
        req.validate()
        return "ok"
    except ContractError as exc:
        return str(exc)


@settings(max_examples=400)
@given(_request_messages())
def test_search_request_is_request_from_proto(m):
    want, got = wire.request_from_proto(m), search_request(m)
    assert type(got) is SearchRequest and type(got.context) is Context
    assert repr(got) == repr(want)  # NaN-safe field-for-field comparison
    if not (np.isnan(m.context.lat) or np.isnan(m.context.lon)):
        assert got == want and hash(got) == hash(want)
    assert _outcome(got) == _outcome(want)
    with pytest.raises(AttributeError):  # still frozen
        got.query = "x"


@settings(max_examples=400)
@given(_TEXT, _TEXT, _I32, st.sampled_from(["", "fallback", "device-reranker@v1", "ü@ß" * 50]) | _TEXT,
       st.booleans())
def test_page_head_is_what_protobuf_serializes(rid, sid, page_index, model_version, more):
    want = wire.pb.SearchPage(request_id=rid, session_id=sid, page_index=page_index, model_version=model_version,
                              has_more=more).SerializeToString()
    assert page_head(rid, sid, page_index, model_version, more) == want


def test_page_head_model_version_memo_is_bounded():
    for k in range(600):
        page_head("r", "s", 1, f"m@{k}", True)
    assert len(page_codec._MODEL_VERSIONS) <= 256
    with pytest.raises(ValueError, match="int32"):
        page_head("r", "s", 1 << 31, "m", False)


# ---- registry: assignment state re-checked at most once per state_check_s ----

@pytest.fixture
def reg_root(tmp_path, fcfg):
    from edge_rerank.converters.bundle import write_bundle

    root = tmp_path / "reg"
    reg = Registry(root)
    for k, v in enumerate(("v1", "v2")):
        model = tmp_path / f"model-{k}.onnx"
        model.write_bytes(np.random.default_rng(k).bytes(1024))
        reg.publish(write_bundle(tmp_path / f"bundle-{v}", model_file=model, fmt="onnx", name="device-reranker",
                                 version=v, feature_config=fcfg))
    return root


def test_promotion_reaches_this_worker_at_once_and_others_within_the_bound(reg_root):
    name = "device-reranker"
    a, b = Registry(reg_root, state_check_s=60), Registry(reg_root, state_check_s=60)  # two workers
    c = Registry(reg_root, state_check_s=0.3)  # a third, with a short bound
    assert a.assign(name, "u1") is None and b.assign(name, "u1") is None and c.assign(name, "u1") is None
    a.promote(name, "v1")
    t0 = time.monotonic()
    assert a.assign(name, "u1") == "v1"  # the worker that handled the promotion: its next request
    assert b.assign(name, "u1") is None  # another worker: the state it checked less than state_check_s ago
    while c.assign(name, "u1") != "v1":
        assert time.monotonic() - t0 < 0.3 + 2.0, "not within the bound (+ slack for a loaded machine)"
        time.sleep(0.01)
    b.promote(name, "v2")  # the other way round
    assert b.assign(name, "u1") == "v2" and a.assign(name, "u1") == "v1"
    assert a.state(name).stable == "v2"  # admin reads always check
    b.rollback(name)
    assert b.assign(name, "u1") == "v1"
    zero = Registry(reg_root, state_check_s=0.0)  # no caching: every call checks
    assert zero.assign(name, "u1") == "v1"
    a.promote(name, "v2")
    assert zero.assign(name, "u1") == "v2" and a.assign(name, "u1") == "v2"


def test_staged_rollout_buckets_are_the_memoised_user_buckets(reg_root, monkeypatch):
    name = "device-reranker"
    reg = Registry(reg_root)
    reg.promote(name, "v1")
    reg.promote(name, "v2", rollout_percent=40)
    monkeypatch.setattr(registry, "_MAX_BUCKETS", 50)
    users = [f"u{i:05d}" for i in range(300)]
    for _ in range(2):
        got = [reg.assign(name, u) for u in users]
        assert got == ["v2" if user_bucket(name, u) < 40 else "v1" for u in users]
        assert len(reg._buckets) <= 50


def test_unknown_model_errors_are_cached_and_raised_fresh(tmp_path):
    reg = Registry(tmp_path / "empty")
    for _ in range(3):
        with pytest.raises(RegistryError) as e:
            reg.assign("nothing", "u")
        assert e.value.status == 404 and e.value.__traceback__ is not None
    assert len(reg._fresh) == 1
    for k in range(registry._MAX_NAMES + 10):  # names come from URLs: the state memo is bounded
        with pytest.raises(RegistryError):
            reg.assign(f"m{k}", "u")
    assert len(reg._fresh) <= registry._MAX_NAMES


# ---- the page's dense vectors, per page ----

@settings(max_examples=60, deadline=None)
@given(st.integers(0, 450), st.integers(1, 100), st.integers(0, 2**32 - 1))
def test_dense_per_page_is_the_whole_hidden_layer_sliced(n, size, seed):
    rng = np.random.default_rng(seed)
    ranker = FineRanker.from_weights(default_ranker_weights(16, seed % 7))
    x = (rng.standard_normal((n, 6)) * rng.choice([0.1, 1.0, 30.0])).astype(np.float32)
    lazy = Ranking(np.arange(n), np.zeros(n, np.float32), features=x, hidden_of=ranker.hidden)
    full = ranker.hidden(x)
    for start in range(0, n, size):
        sl = np.arange(start, min(start + size, n))
        assert lazy.dense(sl).tobytes() == full[sl].tobytes()
    assert lazy.hidden.tobytes() == full.tobytes()  # materialised on demand, the same


def test_a_ranking_needs_its_hidden_layer_or_a_way_to_compute_it():
    with pytest.raises(ValueError):
        Ranking(np.arange(3), np.zeros(3, np.float32))


@pytest.mark.parametrize("max_results", [30, 200])
def test_pages_served_equal_the_eager_pipeline(cloud_data, max_results, opaque_ranker):
    cat = load_catalog(cloud_data)
    ranker = load_ranker(cloud_data)
    kw = dict(catalog=cat, store=FileEmbeddingStore(cloud_data / "embeddings"), max_results=max_results)
    fast, slow = SearchPipeline(ranker=ranker, **kw), SearchPipeline(ranker=opaque_ranker(ranker), **kw)
    from edge_rerank.device_sdk.contracts import EmbeddingEncoding

    for i, query in enumerate(["dinner", "lunch", "sushi", "something sweet", "unknown words"]):
        for page in range(3):
            req = SearchRequest(f"r{i}", f"s{i}", f"u{i:05d}", query, Context(1.0 + i, 8.0 - i, 8 + i),
                                page_index=page, page_size=10)
            for enc in (EmbeddingEncoding.FP16, EmbeddingEncoding.INT8):
                assert fast.search_encoded(req, enc)[:2] == slow.search_encoded(req, enc)[:2]
            a, b = fast.search(req), slow.search(req)
            assert [it.cloud_dense.tobytes() for it in a.items] == [it.cloud_dense.tobytes() for it in b.items]


# ---- item feature columns gathered from the whole catalog's base ----

def test_features_of_any_rows_equal_cloud_features(cloud_data, monkeypatch):
    cat = load_catalog(cloud_data)
    store = FileEmbeddingStore(cloud_data / "embeddings")
    p = SearchPipeline(catalog=cat, store=store, ranker=load_ranker(cloud_data), cache_size=0)
    monkeypatch.setattr(pipeline_mod, "_ALL_BASE_BYTES", 0)  # over the bound: no whole-catalog base
    q = SearchPipeline(catalog=cat, store=store, ranker=load_ranker(cloud_data), cache_size=0)
    assert p._all_base_ok and not q._all_base_ok and p._all_base is None  # built by the first request needing it
    it, emb = cat.items, p._item_emb
    rng = np.random.default_rng(0)
    users = [*list(cat.user_index)[:5], "nobody"]
    for k in range(60):
        idx = rng.choice(cat.n_items, size=int(rng.integers(0, 300)), replace=bool(k % 2))
        if k % 3 == 0:
            idx = np.sort(idx)
        ctx = Context(float(rng.uniform(-1, 11)), float(rng.uniform(-1, 11)), int(rng.integers(0, 24)))
        u = users[k % len(users)]
        ui = cat.user_index.get(u)
        want = cloud_features(
            quality=it["quality"][idx], popularity=it["popularity"][idx], item_emb=emb[idx],
            user_pref=cat.user_pref[ui] if ui is not None else np.zeros(store.dim, np.float32),
            distance_km=np.hypot(it["lat"][idx] - ctx.lat, it["lon"][idx] - ctx.lon),
            price_level=it["price_level"][idx].astype(np.float32),
            price_pref=float(cat.user_price_pref[ui]) if ui is not None else 2.0)
        for pipe in (p, q):
            got = pipe.features_for(u, ctx, idx)
            assert got.dtype == want.dtype and got.tobytes() == want.tobytes()
    assert p._all_base is not None and q._all_base is None


# ---- the coarse query featurizer for one request ----

def test_one_request_featurizer_equals_the_batch_featurizer(cloud_data):
    cat = load_catalog(cloud_data)
    f = QueryFeaturizer(CoarseFeatureSpec.fit(cat, emb_dim=cat.user_pref.shape[1]), cat)
    rng = np.random.default_rng(3)
    users = [*list(cat.user_index)[:20], "nobody", ""]
    queries = [*f.spec.queries, "no such query", " Dinner "]
    for k in range(3000):
        lat, lon = (float(v) for v in rng.uniform(-5, 15, 2))
        if k % 5 == 0:
            lat = float(rng.choice([0.0, -0.0, 1e-300, 10.0, 1e6]))
        hour = int(rng.integers(0, 24)) if k % 50 else int(rng.choice([-1, 24, 99]))  # odd hours: the batch path
        ctx = Context(lat, lon, hour)
        u, q = users[k % len(users)], queries[k % len(queries)]
        (ia, da), (ib, db) = f([q], [u], [ctx]), f.one(q, u, ctx)
        assert ia.tobytes() == ib.tobytes() and ia.dtype == ib.dtype
        assert da.shape == db.shape and da.dtype == db.dtype and da.tobytes() == db.tobytes()


# ---- page records ----

def test_page_record_templates_are_fresh_per_page_and_grow(cloud_data):
    from edge_rerank.cloud.page_codec import _encode, static_fields
    from edge_rerank.device_sdk.contracts import EmbeddingEncoding

    def page(n, seed):
        r = np.random.default_rng(seed)
        return ([static_fields(int(i), 1, 2, 3, 4.5, -6.0) for i in r.integers(0, 1 << 40, n)], 0,
                r.standard_normal(n).astype(np.float32), r.standard_normal((n, 8)).astype(np.float32),
                r.standard_normal((n, 4)).astype(np.float32), r.random(n) < 0.5)

    for enc in (EmbeddingEncoding.FP16, EmbeddingEncoding.INT8):
        a1 = _encode(*page(25, 1), enc)
        b = _encode(*page(25, 2), enc)
        big = _encode(*page(300, 3), enc)  # past the template's first size
        a2 = _encode(*page(25, 1), enc)
        assert a1 == a2 and a1 != b and len(big) > len(a1)
        parsed = wire.pb.SearchPage.FromString(big)
        assert len(parsed.items) == 300 and [i.cloud_position for i in parsed.items] == list(range(300))


# ---- coarse soft-attention scores in scratch rows ----

@pytest.mark.parametrize("variant", ["dot", "soft"])
def test_block_scores_in_scratch_rows_are_the_plain_formula(variant):
    import threading

    from edge_rerank.cloud.ranking.coarse import TwoTowerCoarse

    c = object.__new__(TwoTowerCoarse)  # only what _block_scores reads
    c.nq, c.nd, c.dim, c.variant, c._inv_beta, c._tls = 3, 3, 16, variant, 1 / 0.5, threading.local()
    rng = np.random.default_rng(0)
    outs = []
    for n in (1, 7, 200, 1300, 40_000, 5):  # growing past the scratch size, then small again
        q = rng.standard_normal((3, 16)).astype(np.float32)
        block = (rng.standard_normal((16, 3 * n)) * 3).astype(np.float32)
        s = (q @ block).reshape(9, n)
        if variant == "dot":
            want = s[0]
        else:
            w = np.exp((s - s.max(axis=0)) * np.float32(c._inv_beta))
            want = (w * s).sum(axis=0) / w.sum(axis=0)
        got = c._block_scores(q, block, n)
        assert got.dtype == want.dtype and got.tobytes() == want.tobytes()
        outs.append((got, got.copy()))
    for got, kept in outs:  # results do not alias the scratch rows
        assert got.tobytes() == kept.tobytes()


@pytest.mark.parametrize("variant", ["dot", "soft"])
def test_coarse_selection_never_prefers_items_without_a_vector(variant, tmp_path):
    """Recall sets with every vector stored skip the -inf mask; sets with missing vectors keep it."""
    import threading

    from edge_rerank.cloud.ranking.coarse import TwoTowerCoarse, _BlockCache
    from edge_rerank.cloud.ranking.coarse_index import exact_top

    rng = np.random.default_rng(1)
    n_items, nd, d = 500, 3, 8
    ids = np.arange(1000, 1000 + n_items, dtype=np.int64)
    stored = np.sort(rng.choice(n_items, 400, replace=False))
    FileEmbeddingStore.write(tmp_path / "v", ids[stored], rng.standard_normal((400, nd * d)).astype(np.float32) + 5)
    c = object.__new__(TwoTowerCoarse)
    c.nq, c.nd, c.dim, c.variant, c._inv_beta, c._tls = 3, nd, d, variant, 2.0, threading.local()
    c.store, c._ids, c._blocks = FileEmbeddingStore(tmp_path / "v"), ids, _BlockCache(1 << 20)
    q = rng.standard_normal((3, d)).astype(np.float32)
    for rows in (stored[:300], np.arange(n_items), np.sort(rng.choice(n_items, 250, replace=False))):
        vec, found = c.store.get(ids[rows])
        blk = vec.reshape(len(rows), nd, d).transpose(2, 1, 0).reshape(d, nd * len(rows))
        s = (q @ blk).reshape(9, len(rows))
        if variant == "dot":
            ref = s[0]
        else:
            w = np.exp((s - s.max(axis=0)) * np.float32(2.0))
            ref = (w * s).sum(axis=0) / w.sum(axis=0)
        want = rows[exact_top(np.where(found, ref, -np.inf), 50)]
        for _ in range(2):  # computed, then from the block cache
            got = c._exact(q, rows, 50)
            assert got.tobytes() == want.tobytes()
            assert found.all() or set(got.tolist()) <= set(stored.tolist()) or (~found).sum() > len(rows) - 50


def test_store_positions_resolved_once_give_the_same_pages(cloud_data, tmp_path):
    """A file store's rows looked up by positions resolved at start-up equal ``get`` by id (unknown ids included),
    and the pages served equal those of a store behind the plain ``get`` interface."""
    cat = load_catalog(cloud_data)
    store = FileEmbeddingStore(cloud_data / "embeddings")
    ids = np.concatenate([cat.items["item_id"][:50], [-5, 10**12, int(cat.items["item_id"].max()) + 1]])
    (a, fa), (b, fb) = store.get(ids), store.rows_at(store.positions(ids))
    assert a.tobytes() == b.tobytes() and fa.tolist() == fb.tolist() and not fb[-3:].any()

    class Plain:  # the same table behind the interface only
        def __init__(self, s):
            self.s, self.dim = s, s.dim

        def get(self, ids):
            return self.s.get(ids)

    ranker = load_ranker(cloud_data)
    fast = SearchPipeline(catalog=cat, store=store, ranker=ranker)
    plain = SearchPipeline(catalog=cat, store=Plain(store), ranker=ranker)
    assert fast._store_pos is not None and plain._store_pos is None
    for i, query in enumerate(["dinner", "lunch", "sushi"]):
        for page in range(2):
            req = SearchRequest(f"r{i}", f"s{i}", f"u{i:05d}", query, Context(2.0, 3.0, 9), page_index=page)
            assert fast.search_encoded(req) == plain.search_encoded(req)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_numpy_ranker_hidden_layer_in_place_is_the_plain_expression(dtype):
    rng = np.random.default_rng(5)
    r = FineRanker.from_weights(default_ranker_weights(16, 3))
    for n in (0, 1, 25, 200, 1000):
        x = (rng.standard_normal((n, 6)) * 4).astype(dtype)
        want = np.tanh(x @ r.w1.T + r.b1).astype(np.float32)
        got = r.hidden(x)
        assert got.dtype == np.float32 and got.shape == want.shape and got.tobytes() == want.tobytes()


@pytest.mark.parametrize("bad", [-1.0, float("nan"), float("inf"), 1e9, "1", None, True])
def test_registry_refuses_a_state_bound_that_is_not_seconds(tmp_path, bad):
    """A NaN bound would never re-check (every comparison false): every bad value is refused with a reason."""
    with pytest.raises(ValueError, match="state_check_s"):
        Registry(tmp_path / "reg", state_check_s=bad)
    assert not (tmp_path / "reg").exists()  # refused before anything is written
