"""The rerank-time fast path of the FeatureBuilder (issue 18): candidate columns cached per item
(``FeatureBuilder(cfg, item_cache=K)``) and events read from the feedback store's columns (``FeedbackStore.snapshot``)
give bit-identical features to the per-object path, across everything that must invalidate or extend a cache: a
new event, the oldest events evicted, a new page, a shifted or reordered window, a new item object with an old id,
a cleared store / new session, a full item table; odd items and events take the per-object path (same values, same
errors)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_rerank.device_sdk.contracts import Context, EventKind, FeedbackEvent, PageItem
from edge_rerank.device_sdk.features import FeatureBuilder, FeatureConfig, FeatureError
from edge_rerank.device_sdk.features.config import DEFAULT_CANDIDATE_OPS, IDENTITY_OPS, FieldSpec
from edge_rerank.device_sdk.feedback_columns import EventColumns
from edge_rerank.device_sdk.feedback_store import FeedbackStore
from tests.conftest import CTX, ScriptedSession, make_events, make_item
from tests.test_features_vectorised import EXTRA_OPS, assert_same


def same_bits(cached: FeatureBuilder, cands, events, ctx=CTX) -> dict[str, np.ndarray]:
    """`cached` (item table, events as columns) against a fresh per-object builder: identical to the bit, same
    unknown counts (a fresh builder's counts are this build's; compared as increments)."""
    before = {k: list(v) for k, v in cached.unknown_counts.items()}
    plain = FeatureBuilder(cached.cfg)
    a = plain.build(cands, list(events), ctx)
    b = cached.build(cands, events, ctx)
    assert list(a) == list(b)
    for k in a:
        assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape, k
        assert a[k].tobytes() == b[k].tobytes(), k
    inc = {k: [v[0] - before[k][0], v[1] - before[k][1]] for k, v in cached.unknown_counts.items()}
    assert inc == plain.unknown_counts
    return b


def _cfg(fcfg: FeatureConfig, **kw) -> FeatureConfig:
    return FeatureConfig(**{**fcfg.to_dict(), **kw})


def test_default_shapes_use_both_caches_and_match(fcfg):
    cfg = _cfg(fcfg, n_max=50, l_max=50)
    rng = np.random.default_rng(0)
    hist = [make_item(1000 + k, rng, cfg, k) for k in range(40)]
    store = FeedbackStore()
    store.add_many("s", make_events(hist, {h.item_id for h in hist[::4]}))
    snap = store.snapshot("s")
    assert isinstance(snap, EventColumns) and snap.plain and not snap.ragged
    cands = [make_item(k, rng, cfg, k) for k in range(50)]
    b = FeatureBuilder(cfg, item_cache=256)
    same_bits(b, cands, snap)
    same_bits(b, cands, snap)
    assert b._table.misses == 50 and b._table.hits == 50  # the second build read every candidate from the table
    assert_same(cfg, cands, list(snap))  # and the per-object path still equals the reference


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**16), max_events=st.integers(1, 30), n_page=st.integers(2, 12),
       steps=st.lists(st.tuples(st.sampled_from(["events", "page", "shift", "reorder", "new_object", "clear"]),
                                st.integers(1, 6)), min_size=1, max_size=10),
       dwell=st.sampled_from([0.0, 1200.0, 5000.0]), l_max=st.integers(1, 30), max_pos=st.integers(1, 6),
       extra=st.lists(st.sampled_from(EXTRA_OPS + IDENTITY_OPS), max_size=5), cache=st.integers(1, 40))
def test_property_a_session_of_reranks_matches_the_per_object_path(fcfg, seed, max_events, n_page, steps, dwell,
                                                                    l_max, max_pos, extra, cache):
    """One builder (one item table) and one store through a session: events arrive (and the oldest are evicted),
    pages arrive, the window shifts and is reordered, an item comes back as a new object with other values, the
    store is cleared; after every step the features equal the per-object path's to the bit."""
    cfg = _cfg(fcfg, n_max=8, l_max=l_max, max_positives=min(max_pos, l_max),
               candidate_ops=DEFAULT_CANDIDATE_OPS + tuple(extra))
    rng = np.random.default_rng(seed)
    builder = FeatureBuilder(cfg, item_cache=cache)
    store = FeedbackStore(max_events_per_session=max_events)
    sess = ScriptedSession(cfg, rng, store, n_page=n_page, dwell=dwell, ctx=Context(1.0, 2.0, seed % 24))
    old = store.snapshot("s")
    for what, k in steps:
        sess.step(what, k)
        old_events = list(old)
        snap = store.snapshot("s")
        if k % 2:  # what a rerank service does: rows for every unseen item of the list first
            builder.prepare_items(sess.items[sess.n_fixed:])
        same_bits(builder, sess.window, snap, sess.ctx)
        assert list(old) == old_events  # a snapshot never changes after later events, evictions or a clear
        old = snap


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**16), odd=st.lists(st.sampled_from([-1, 12, 99, 2**40, 5]), min_size=1, max_size=4),
       where=st.sampled_from(["candidates", "events", "both"]))
def test_property_values_outside_an_ids_field_match_by_value(fcfg, seed, odd, where):
    """The histogram path of the sequence operators (every matched field an ``ids`` field, every value in range)
    steps aside when a candidate or event value falls in the unknown bucket (-1, too large): matching then goes by
    value (12 matches 12, not 99), as the reference does."""
    cfg = _cfg(fcfg, n_max=10, l_max=12)
    rng = np.random.default_rng(seed)
    hist = [make_item(100 + k, rng, cfg, k) for k in range(10)]
    cands = [make_item(k, rng, cfg, k) for k in range(10)]
    for k, v in enumerate(odd):
        if where in ("candidates", "both"):
            cands[(3 * k) % 10].category = v
        if where in ("events", "both"):
            hist[(7 * k) % 10].category = v
            hist[(7 * k + 1) % 10].brand = v
    store = FeedbackStore()
    store.add_many("s", make_events(hist, {h.item_id for h in hist[::3]}))
    assert_same(cfg, cands, store.events("s"))
    same_bits(FeatureBuilder(cfg, item_cache=64), cands, store.snapshot("s"))


def test_eviction_and_growth_keep_old_snapshots_intact(fcfg):
    rng = np.random.default_rng(1)
    store = FeedbackStore(max_events_per_session=5)
    hist = [make_item(k, rng, fcfg, k) for k in range(40)]
    snaps = []
    for k, it in enumerate(hist):
        store.add("s", FeedbackEvent.for_item(it, EventKind.EXPOSURE, 1, "r", 0, 3000.0))
        snaps.append((store.snapshot("s"), [h.item_id for h in hist[max(0, k - 4): k + 1]]))  # the newest 5
    for snap, ids in snaps:
        assert [e.item_id for e in snap] == ids == snap.item.tolist()
        assert np.array_equal(snap.emb, np.stack([e.id_embedding for e in snap]))
        assert snap[-1] is snap[len(snap) - 1] and snap[:2] == list(snap)[:2]
    with pytest.raises(IndexError):
        snaps[-1][0][5]
    assert len(store.snapshot("nobody")) == 0 and store.events("nobody") == []


def test_odd_items_and_events_take_the_per_object_path(fcfg):
    """attrs (declared fields from attrs), a v2 kind name, a vector of another width, ids that are not plain ints,
    a numeric field: the caches step aside and the values stay the per-object path's."""
    cfg = FeatureConfig(emb_dim=4, dense_dim=3, n_max=8, l_max=10, max_positives=3,
                        fields=(FieldSpec("category", size=12), FieldSpec("brand", size=48),
                                FieldSpec("topic", mode="hash", size=7)),
                        candidate_ops=("cloud_score", "hit:topic:click", "freq:brand:skip", "step:category:seen",
                                       "hit:category+topic:seen@3", "sim_mean:click", "sim_max:skip", "dist_min:click",
                                       *IDENTITY_OPS))
    rng = np.random.default_rng(2)

    def item(k: int) -> PageItem:
        it = make_item(k, rng, cfg, k)
        it.attrs = {"topic": ["a", "b", None][k % 3]}
        return it

    items = [item(k) for k in range(12)]
    store = FeedbackStore()
    store.add_many("s", [FeedbackEvent.for_item(it, [EventKind.CLICK, EventKind.EXPOSURE][k % 2], k, "r", k, 2000.0)
                         for k, it in enumerate(items[:6])])
    b = FeatureBuilder(cfg, item_cache=64)
    assert b._table is None  # topic is no attribute: the table cannot hold it
    same_bits(b, items[6:], store.snapshot("s"))

    plain_cfg = _cfg(fcfg, n_max=8, l_max=10)
    b = FeatureBuilder(plain_cfg, item_cache=64)
    cands = [make_item(k, rng, plain_cfg, k) for k in range(8)]
    cands[3].category = np.int64(2)  # not a plain int: the item is not cached
    cands[5].attrs = {"note": "x"}
    evs = make_events([make_item(100 + k, rng, plain_cfg, k) for k in range(6)], {100, 103})
    evs[1].kind_name = "exposure"
    evs[4].id_embedding = None
    store = FeedbackStore()
    store.add_many("s", evs)
    snap = store.snapshot("s")
    assert not snap.plain
    same_bits(b, cands, snap)
    assert b.build(cands, snap, CTX) is not None and b._table.rows_of(cands) is None
    evs[1].kind_name = ""
    store2 = FeedbackStore()
    store2.add_many("s", evs)
    assert store2.snapshot("s").plain
    same_bits(b, cands[:3], store2.snapshot("s"))
    # a column of another width (the store takes any vector without emb_dim): vectors come from the events
    store2.add("s", FeedbackEvent.for_item(cands[0], EventKind.EXPOSURE, 99, "r", 0, 5000.0))
    odd = FeedbackEvent.for_item(cands[1], EventKind.EXPOSURE, 100, "r", 1, 5000.0)
    odd.id_embedding = np.zeros(3, np.float32)
    store2.add("s", odd)
    snap = store2.snapshot("s")
    assert snap.ragged
    for builder in (FeatureBuilder(plain_cfg), b):
        with pytest.raises(FeatureError, match="event embedding has shape"):
            builder.build(cands[:3], snap, CTX)


def test_same_errors_with_the_caches(fcfg):
    rng = np.random.default_rng(3)
    events = make_events([make_item(100 + k, rng, fcfg, k) for k in range(3)], {100})
    store = FeedbackStore()
    store.add_many("s", events)
    snap = store.snapshot("s")
    cases = []
    for k in range(3):
        it = [make_item(j, rng, fcfg) for j in range(3)]
        if k == 0:
            it[1].cloud_dense = np.zeros(3, np.float32)
        elif k == 1:
            it[2].id_embedding = np.full(fcfg.emb_dim, np.inf, np.float32)
        else:
            it[0].cloud_score = float("nan")
        cases.append(it)
    cases.append([make_item(k, rng, fcfg) for k in range(fcfg.n_max + 1)])
    for cands in cases:
        msgs = []
        for b in (FeatureBuilder(fcfg), FeatureBuilder(fcfg, item_cache=64)):
            with pytest.raises(FeatureError) as exc:
                b.build(cands, snap, CTX)
            msgs.append(str(exc.value))
        assert msgs[0] == msgs[1]


def test_empty_page_and_no_feedback_with_the_caches(fcfg):
    cfg = _cfg(fcfg, candidate_ops=DEFAULT_CANDIDATE_OPS + IDENTITY_OPS)
    rng = np.random.default_rng(0)
    b = FeatureBuilder(cfg, item_cache=64)
    empty = FeedbackStore().snapshot("s")
    same_bits(b, [], empty)
    same_bits(b, [make_item(1, rng, cfg)], empty)
    store = FeedbackStore()
    store.add("s", FeedbackEvent(ts_ms=1, request_id="r", item_id=-1, kind=EventKind.LEAVE))
    same_bits(b, [make_item(k, rng, cfg) for k in range(5)], store.snapshot("s"))
