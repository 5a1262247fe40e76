from dataclasses import replace

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_rerank.device_sdk.contracts import Context, EventKind, FeedbackEvent
from edge_rerank.device_sdk.features import FeatureBuilder, FeatureConfig, FeatureError, input_specs
from edge_rerank.device_sdk.features.operators import compile_op, pair_terms, split_feedback
from tests.conftest import CTX, make_events, make_item


def _check_specs(out, cfg):
    for name, shape, dtype in input_specs(cfg):
        assert out[name].shape == shape, name
        assert out[name].dtype == np.dtype(dtype), name
        if out[name].dtype == np.float32:
            assert np.all(np.isfinite(out[name])), name


def test_empty_feedback_and_padding(fcfg):
    rng = np.random.default_rng(0)
    items = [make_item(k, rng, fcfg, k) for k in range(7)]
    out = FeatureBuilder(fcfg).build(items, [], CTX)
    _check_specs(out, fcfg)
    assert out["cand_mask"].tolist() == [1.0] * 7 + [0.0] * (fcfg.n_max - 7)
    assert not out["seq_pos_mask"].any() and not out["seq_neg_mask"].any()
    assert np.all(out["cand_num"][7:] == 0) and np.all(out["cand_emb"][7:] == 0)


def test_match_aggregate_by_hand(fcfg):
    rng = np.random.default_rng(1)
    items = [make_item(k, rng, fcfg, k) for k in range(6)]
    for k, it in enumerate(items):
        it.category = [1, 2, 1, 3, 1, 2][k]
    # clicked item 0 (cat 1); items 1..2 exposed long without click (cats 2, 1); item 3 short exposure
    ev = [FeedbackEvent.for_item(items[0], EventKind.CLICK, 0, "r", 0),
          FeedbackEvent.for_item(items[0], EventKind.EXPOSURE, 1, "r", 0, 3000),
          FeedbackEvent.for_item(items[1], EventKind.EXPOSURE, 2, "r", 1, 3000),
          FeedbackEvent.for_item(items[2], EventKind.EXPOSURE, 3, "r", 2, 3000),
          FeedbackEvent.for_item(items[3], EventKind.EXPOSURE, 4, "r", 3, 100)]
    pos, neg = split_feedback(ev, fcfg)
    assert [e.item_id for _, e in pos] == [0] and [e.item_id for _, e in neg] == [1, 2]
    cands = items[4:]  # categories 1, 2
    out = FeatureBuilder(fcfg).build(cands, ev, CTX)
    col = {op: out["cand_num"][:2, k] for k, op in enumerate(fcfg.candidate_ops)}
    assert col["hit:category:click"].tolist() == [1.0, 0.0]
    assert col["freq:category:skip"].tolist() == [0.5, 0.5]
    # most recent skip is item 2 (cat 1): step 1 for cat 1; item 1 (cat 2) is 2 back
    np.testing.assert_allclose(col["step:category:skip"], [1 / fcfg.l_max, 2 / fcfg.l_max])
    assert out["seq_kind"][:3].tolist() == [1, 2, 2] and out["seq_kind"][3:].sum() == 0


def test_last_k_window_counts_only_the_latest_events(fcfg):
    rng = np.random.default_rng(4)
    items = [make_item(k, rng, fcfg, k) for k in range(5)]
    for k, it in enumerate(items):
        it.brand = [7, 8, 9, 7, 9][k]
    # clicks on brands 7, 8, 9 in that order; candidates have brands 7 and 9
    ev = [FeedbackEvent.for_item(items[k], EventKind.CLICK, k, "r", k) for k in range(3)]
    cfg = FeatureConfig(**{**fcfg.to_dict(), "candidate_ops": ("hit:brand:click", "hit:brand:click@2",
                                                                "freq:brand:click@1", "step:brand:click@2")})
    out = FeatureBuilder(cfg).build(items[3:], ev, CTX)["cand_num"][:2]
    assert out[:, 0].tolist() == [1.0, 1.0]  # all clicks: both brands were clicked
    assert out[:, 1].tolist() == [0.0, 1.0]  # last two clicks: brands 8, 9
    assert out[:, 2].tolist() == [0.0, 1.0]  # last click only: brand 9
    np.testing.assert_allclose(out[:, 3], [1.0, 1 / cfg.l_max])  # no match in the window -> 1.0


@pytest.mark.parametrize("expr", ["hit:brand:click@0", "hit:brand:click@x", "sim_max:click@-1", "cloud_score@2"])
def test_bad_windows_are_clear_errors(expr):
    with pytest.raises(FeatureError):
        compile_op(expr)


@given(values=st.lists(st.floats(-1e6, 1e6, allow_nan=False), max_size=30),
       edges=st.lists(st.floats(-100, 100, allow_nan=False), min_size=1, max_size=8, unique=True))
def test_property_bucketiser_ids_are_in_range_and_monotone(values, edges):
    edges = sorted(edges)
    ids = FeatureBuilder.bucketise(np.array(values, dtype=np.float64), edges)
    assert ids.dtype == np.int32
    assert np.all((ids >= 0) & (ids <= len(edges)))
    order = np.argsort(values, kind="stable")
    assert np.all(np.diff(ids[order]) >= 0)
    for v, b in zip(values, ids, strict=True):
        assert sum(e <= v for e in edges) == b


def test_bucket_inputs_follow_the_config(fcfg):
    rng = np.random.default_rng(5)
    items = [make_item(k, rng, fcfg, position=p) for k, p in enumerate([0, 3, 30, 120])]
    out = FeatureBuilder(fcfg).build(items, make_events(items[:2], clicks={1}), CTX)
    assert out["cand_pos_b"][:4].tolist() == [0, 3, 9, 11]
    assert np.all(out["cand_dist_b"][:4] < fcfg.n_distance_buckets)
    assert np.all(out["seq_pos_b"] < fcfg.n_position_buckets) and np.all(out["seq_dist_b"] < fcfg.n_distance_buckets)
    with pytest.raises(ValueError, match="ascending"):
        FeatureConfig(position_buckets=(3.0, 1.0))
    with pytest.raises(ValueError, match="unknown feature config keys"):
        FeatureConfig.from_dict({**fcfg.to_dict(), "typo_field": 1})


def test_unknown_ids_go_to_the_unknown_bucket(fcfg):
    rng = np.random.default_rng(2)
    items = [make_item(k, rng, fcfg) for k in range(3)]
    items[0].category, items[1].brand, items[2].price_level = 999, -5, 77
    out = FeatureBuilder(fcfg).build(items, [], CTX)
    assert out["cand_cat"][0] == fcfg.n_categories
    assert out["cand_brand"][1] == fcfg.n_brands
    assert out["cand_price"][2] == fcfg.n_price_levels


def test_oversize_and_non_finite_and_bad_shapes_raise(fcfg):
    rng = np.random.default_rng(3)
    b = FeatureBuilder(fcfg)
    with pytest.raises(FeatureError, match="exceed n_max"):
        b.build([make_item(k, rng, fcfg) for k in range(fcfg.n_max + 1)], [], CTX)
    items = [make_item(k, rng, fcfg) for k in range(3)]
    items[1].cloud_dense = np.full(fcfg.dense_dim, np.nan, np.float32)
    with pytest.raises(FeatureError, match="non-finite"):
        b.build(items, [], CTX)
    items[1].cloud_dense = np.zeros(3, np.float32)
    with pytest.raises(FeatureError, match="expected"):
        b.build(items, [], CTX)


def test_unknown_operator_is_a_clear_error():
    with pytest.raises(FeatureError, match="unknown feature operator"):
        compile_op("nonsense")
    with pytest.raises(FeatureError, match="unknown field"):
        compile_op("hit:colour:click")


def test_config_json_roundtrip_and_fingerprint(tmp_path, fcfg):
    fcfg.save(tmp_path / "f.json")
    assert FeatureConfig.load(tmp_path / "f.json") == fcfg
    other = FeatureConfig(dwell_threshold_ms=999.0)
    assert other.fingerprint() != FeatureConfig().fingerprint()
    text = (tmp_path / "f.json").read_text().replace('"l_max": 32', '"l_max": 31')
    (tmp_path / "g.json").write_text(text)
    with pytest.raises(ValueError, match="fingerprint"):
        FeatureConfig.load(tmp_path / "g.json")


@settings(max_examples=60, deadline=None)
@given(n_items=st.integers(0, 25), n_events=st.integers(0, 80), seed=st.integers(0, 2**16),
       dwell=st.floats(0, 10_000), hour=st.integers(0, 23))
def test_property_any_feedback_gives_finite_fixed_shape_inputs(fcfg, n_items, n_events, seed, dwell, hour):
    rng = np.random.default_rng(seed)
    history = [make_item(1000 + k, rng, fcfg, k) for k in range(max(1, n_events // 2))]
    clicks = {it.item_id for it in history if rng.random() < 0.3}
    ev = make_events(history, clicks, dwell)[:n_events]
    cands = [make_item(k, rng, fcfg, k) for k in range(n_items)]
    out = FeatureBuilder(fcfg).build(cands, ev, Context(1.0, 2.0, hour))
    _check_specs(out, fcfg)
    assert out["cand_mask"].sum() == n_items
    n_pos, n_neg = out["seq_pos_mask"].sum(), out["seq_neg_mask"].sum()
    assert n_pos <= fcfg.max_positives and n_pos + n_neg <= fcfg.l_max
    assert not np.any(out["seq_pos_mask"] * out["seq_neg_mask"])


def test_training_and_device_features_are_bit_identical(logged_rows, fcfg, tmp_path):
    """Training builds features from logs after a Parquet round trip; the device builds them from its live
    page and events. Same operators, same inputs -> identical bytes."""
    import pyarrow.parquet as pq

    from edge_rerank.cloud.logs import read_logs, rows_to_table
    from edge_rerank.cloud.training.data import samples_from_row

    pq.write_table(rows_to_table(logged_rows), tmp_path / "logs.parquet")
    reloaded = read_logs(tmp_path / "logs.parquet")
    b = FeatureBuilder(fcfg)
    n = 0
    for live, stored in zip(logged_rows, reloaded, strict=True):
        for a, c in zip(samples_from_row(live, b), samples_from_row(stored, b), strict=True):
            assert np.array_equal(a.labels, c.labels) and np.array_equal(a.item_ids, c.item_ids)
            assert a.point == c.point
            for k in a.features:
                assert a.features[k].tobytes() == c.features[k].tobytes(), k
            n += 1
    assert n > 50


# sha256 of the operators' output on the fixed input below, per OPERATORS_VERSION. If this test fails, the
# operators now compute something else: bump OPERATORS_VERSION in device_sdk/features/config.py (old bundles are
# then refused by their fingerprint, as they must be) and add the new digest here.
OPERATOR_OUTPUT_DIGESTS = {"ops-3": "c0a9fc7320ef170cb8e1c690c2e7aefcad28c13a16da3cb8a4134fe1d05d183d"}


def _operator_output_digest() -> str:
    import hashlib

    cfg = FeatureConfig(n_categories=12, n_brands=48)
    rng = np.random.default_rng(1234)
    items = [make_item(k, rng, cfg, k) for k in range(cfg.n_max)]
    events = make_events(items[:9], {items[2].item_id, items[5].item_id})
    feats = FeatureBuilder(cfg).build(items[9:], events, CTX)
    h = hashlib.sha256()
    for name in sorted(feats):
        a = feats[name]
        a = np.ascontiguousarray(np.round(a, 4) if a.dtype.kind == "f" else a)  # robust to last-ulp SIMD differences
        h.update(name.encode() + str(a.dtype).encode() + str(a.shape).encode() + a.tobytes())
    return h.hexdigest()


def test_operator_code_changes_change_the_fingerprint():
    from edge_rerank.device_sdk.features.config import OPERATORS_VERSION

    expected = OPERATOR_OUTPUT_DIGESTS.get(OPERATORS_VERSION)
    assert expected is not None, f"no digest pinned for {OPERATORS_VERSION}: {_operator_output_digest()}"
    assert _operator_output_digest() == expected, "operators' output changed: bump OPERATORS_VERSION"


def test_fingerprint_covers_the_operators_version(monkeypatch):
    import edge_rerank.device_sdk.features.config as config

    before = FeatureConfig().fingerprint()
    monkeypatch.setattr(config, "OPERATORS_VERSION", "ops-next")
    assert FeatureConfig().fingerprint() != before


@settings(max_examples=40, deadline=None)
@given(n_items=st.integers(1, 25), n_clicks=st.integers(1, 8), seed=st.integers(0, 2**16))
def test_property_pair_terms_are_what_the_aggregate_operators_aggregate(fcfg, n_items, n_clicks, seed):
    """One notion of "alike": the heuristic's and the env's pairwise terms (pair_terms) aggregate to exactly the
    Match&Aggregate / similarity / distance operators over the same click sequence."""
    rng = np.random.default_rng(seed)
    items = [make_item(i, rng, fcfg, i) for i in range(n_items)]
    clicked = [make_item(100 + i, rng, fcfg, i) for i in range(n_clicks)]
    for k, it in enumerate(clicked):  # some clicked items share a brand / category with a candidate
        if k % 2 and n_items:
            src = items[k % n_items]
            clicked[k] = replace(it, brand=src.brand, category=src.category)
    events = [FeedbackEvent.for_item(it, EventKind.CLICK, 1000 * k, "r", k) for k, it in enumerate(clicked)]
    ops = ("freq:brand:click", "hit:category:click", "freq:brand+category:click", "sim_max:click",
           "sim_mean:click", "dist_min:click", "dist_last:click")
    cfg = replace(fcfg, candidate_ops=ops, max_positives=8, l_max=max(fcfg.l_max, 8))
    got = FeatureBuilder(cfg).build(items, events, CTX)["cand_num"][:n_items]
    t = pair_terms(items, events, cfg)
    both = t.match["brand"] & t.match["category"]
    want = np.stack([t.match["brand"].mean(1), t.match["category"].any(1), both.mean(1), t.cosine.max(1),
                     t.cosine.mean(1), np.log1p(t.km.min(1)), np.log1p(t.km[:, -1])], axis=1)
    np.testing.assert_allclose(got, want.astype(np.float32), rtol=1e-6, atol=1e-6)
    assert t.match["item"].shape == (n_items, n_clicks) and not t.match["item"].any()  # ids never collide here


def test_a_config_without_positive_slots_builds(fcfg):
    """max_positives=0 is a valid config (every feedback slot for skips): it builds instead of dividing by zero."""
    cfg = replace(fcfg, max_positives=0)
    rng = np.random.default_rng(0)
    items = [make_item(i, rng, cfg, i) for i in range(5)]
    out = FeatureBuilder(cfg).build(items, make_events(items, {1}), CTX)
    assert np.all(np.isfinite(out["ctx"])) and out["ctx"][2] == 0.0 and out["seq_pos_mask"].sum() == 0
