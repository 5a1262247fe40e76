"""The rerank-time build in few numpy calls (issue 18, third round: ``features/rerank_path.py``): per-row value ids,
per-snapshot value tables for the Match&Aggregate operators. Bit-identical to the per-object path through sessions
of reranks (hypothesis over configs it covers: windows, field combinations of 2 and 3 fields, ``vocab`` fields,
``seen`` views, haversine, no positives slot, dwell thresholds), and it steps aside (same bits, same errors) for
what it does not cover: values in a matched field's unknown bucket, events without vectors, identity operators.
Also this round's two other shortcuts on the rerank call's path: the one-expression check of a common feedback event
(never accepts what the full checks refuse) and reinsertion by Python loops (equal to its numpy definition)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_rerank.device_sdk.contracts import Context, EventKind, FeedbackEvent
from edge_rerank.device_sdk.features import FeatureBuilder, FeatureConfig, FeatureError
from edge_rerank.device_sdk.features.config import DEFAULT_CANDIDATE_OPS, IDENTITY_OPS, FieldSpec
from edge_rerank.device_sdk.feedback_store import FeedbackStore
from tests.conftest import CTX, ScriptedSession, make_events, make_item
from tests.test_features_cached import _cfg, same_bits

COVERED_OPS = ("freq:brand+price_level:skip@3", "step:category+brand:seen@4", "sim_max:seen", "sim_mean:skip@1",
               "hit:category:seen", "step:price_level:click@1", "hit:category+brand+price_level:click",
               "freq:category+price_level:seen", "sim_mean:seen@2", "step:brand:skip@2")


def _path_builds(b: FeatureBuilder) -> int:
    return b._fast.builds


def test_default_config_takes_the_path_and_matches(fcfg):
    cfg = _cfg(fcfg, n_max=50, l_max=50)
    rng = np.random.default_rng(0)
    hist = [make_item(1000 + k, rng, cfg, k) for k in range(40)]
    store = FeedbackStore()
    store.add_many("s", make_events(hist, {h.item_id for h in hist[::4]}))
    cands = [make_item(k, rng, cfg, k) for k in range(50)]
    b = FeatureBuilder(cfg, item_cache=256)
    assert b._fast is not None
    for _ in range(2):  # the second build reuses the snapshot's state
        same_bits(b, cands, store.snapshot("s"))
    same_bits(b, cands[:7], [])  # no feedback yet
    assert _path_builds(b) == 3 and b._fast.fallbacks == 0


def test_configs_the_path_does_not_cover_keep_the_general_path(fcfg):
    assert FeatureBuilder(fcfg)._fast is None  # no item table
    assert FeatureBuilder(_cfg(fcfg, candidate_ops=DEFAULT_CANDIDATE_OPS + IDENTITY_OPS), item_cache=64)._fast is None
    hashed = FeatureConfig(fields=(FieldSpec("category", mode="hash", size=7), FieldSpec("brand", size=48),
                                   FieldSpec("price_level", size=5)), candidate_ops=("hit:category:click",))
    assert FeatureBuilder(hashed, item_cache=64)._fast is None  # buckets of a hash collide: not a value's identity
    big = FeatureConfig(n_categories=1 << 12, n_brands=1 << 12, candidate_ops=("hit:category+brand:click",))
    assert FeatureBuilder(big, item_cache=64)._fast is None  # 2^24 combined values: no table
    wide = FeatureConfig(n_brands=1 << 20, candidate_ops=("hit:brand:click",))
    assert FeatureBuilder(wide, item_cache=64)._fast is None  # 2^20 brands: a table per state would cost more


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**16), max_events=st.integers(1, 40), n_page=st.integers(2, 12),
       steps=st.lists(st.tuples(st.sampled_from(["events", "page", "shift", "reorder", "new_object", "clear",
                                                 "same", "context"]), st.integers(1, 6)), min_size=1, max_size=10),
       dwell=st.sampled_from([0.0, 1200.0, 5000.0]), l_max=st.integers(1, 30), max_pos=st.integers(0, 6),
       extra=st.lists(st.sampled_from(COVERED_OPS), max_size=5), geo=st.sampled_from(["planar", "haversine"]),
       vocab=st.booleans())
def test_property_sessions_match_the_per_object_path(fcfg, seed, max_events, n_page, steps, dwell, l_max, max_pos,
                                                     extra, geo, vocab):
    """Events arrive (the oldest evicted), pages arrive, the window shifts and is reordered, an item returns as a new
    object, the store is cleared, the same state is built again, the search location moves: after every step the
    rerank path built (nothing in these sessions is outside it) and equals the per-object path to the bit."""
    fields = ()
    if vocab:  # category as a vocabulary of ints (ids 0..11 in another order); brand, price_level as ids
        fields = (FieldSpec("category", mode="vocab", vocab=tuple(range(11, -1, -1))), FieldSpec("brand", size=48),
                  FieldSpec("price_level", size=5))
    cfg = _cfg(fcfg, n_max=8, l_max=l_max, max_positives=min(max_pos, l_max), geo=geo,
               candidate_ops=DEFAULT_CANDIDATE_OPS + tuple(extra))
    if fields:
        cfg = FeatureConfig(**{**cfg.__dict__, "fields": fields})
    rng = np.random.default_rng(seed)
    builder = FeatureBuilder(cfg, item_cache=64)
    assert builder._fast is not None
    store = FeedbackStore(max_events_per_session=max_events)
    sess = ScriptedSession(cfg, rng, store, n_page=n_page, dwell=dwell, ctx=Context(1.0, 2.0, seed % 24))
    builds = empty = 0
    for what, k in steps:
        sess.step(what, k)
        window = sess.window
        if k % 2:
            builder.prepare_items(sess.items[sess.n_fixed:])
        same_bits(builder, window, store.snapshot("s"), sess.ctx)
        builds += bool(window)
        empty += not window  # (an empty window is the general path's: nothing to gather)
    assert _path_builds(builder) == builds and builder._fast.fallbacks == empty


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**16), odd=st.sampled_from([60, 99, 1000]),
       where=st.sampled_from(["candidates", "events"]))
def test_property_unknown_values_step_aside_with_the_same_bits(fcfg, seed, odd, where):
    """A matched value in the unknown bucket (out of range) has no row in a value table: that build takes the
    general path (values still match by value: 99 matches 99, not 60), and the next build without one takes the
    rerank path again."""
    cfg = _cfg(fcfg, n_max=10, l_max=12)
    rng = np.random.default_rng(seed)
    hist = [make_item(100 + k, rng, cfg, k) for k in range(10)]
    cands = [make_item(k, rng, cfg, k) for k in range(10)]
    if where == "candidates":
        cands[3].category = odd
        hist[2].category = odd
    else:
        hist[4].brand = odd
    b = FeatureBuilder(cfg, item_cache=64)
    store = FeedbackStore()
    store.add_many("s", make_events(hist, {h.item_id for h in hist[::3]}))
    same_bits(b, cands, store.snapshot("s"))
    assert b._fast.fallbacks == 1 and _path_builds(b) == 0
    if where == "candidates":  # a window without the odd item, a session without the odd event
        other = FeedbackStore()
        other.add_many("s", make_events(hist[3:], {hist[3].item_id}))
        same_bits(b, cands[4:], other.snapshot("s"))
        assert _path_builds(b) == 1
    else:  # the odd event stays in the session: every later build of it steps aside
        store.add("s", FeedbackEvent.for_item(cands[0], EventKind.CLICK, 99_000, "r", 0))
        same_bits(b, cands, store.snapshot("s"))
        assert b._fast.fallbacks == 2
        same_bits(b, cands, FeedbackStore().snapshot("t"))  # another session without it
        assert _path_builds(b) == 1


def test_events_without_vectors_and_an_old_snapshot(fcfg):
    """A session whose events carry no vector has no event columns of the model's width (general path); an older
    snapshot of a session built after newer ones gets its own state (same bits as the per-object path)."""
    cfg = _cfg(fcfg, n_max=6, l_max=8)
    rng = np.random.default_rng(4)
    cands = [make_item(k, rng, cfg, k) for k in range(6)]
    evs = make_events([make_item(100 + k, rng, cfg, k) for k in range(4)], {101})
    for e in evs:
        e.id_embedding = None
    store = FeedbackStore()
    store.add_many("s", evs)
    b = FeatureBuilder(cfg, item_cache=64)
    same_bits(b, cands, store.snapshot("s"))
    assert b._fast.fallbacks == 1
    store = FeedbackStore()
    store.add_many("t", make_events([make_item(200 + k, rng, cfg, k) for k in range(3)], {200}))
    old = store.snapshot("t")
    store.add_many("t", make_events([make_item(300 + k, rng, cfg, k) for k in range(3)], {301}))
    new = store.snapshot("t")
    for snap in (new, old, new, old):
        same_bits(b, cands, snap)
    assert _path_builds(b) == 4


def test_same_errors_on_the_rerank_path(fcfg):
    """Non-finite inputs the columns can carry (a location far enough that its distance overflows) raise what the
    general path raises."""
    cfg = _cfg(fcfg, n_max=6, l_max=8)
    rng = np.random.default_rng(5)
    cands = [make_item(k, rng, cfg, k) for k in range(6)]
    store = FeedbackStore()
    store.add_many("s", make_events(cands[:2], {0}))
    far = Context(lat=1e300, lon=0.0, hour=3)
    msgs = []
    for b in (FeatureBuilder(cfg), FeatureBuilder(cfg, item_cache=64)):
        with pytest.raises(FeatureError) as exc:
            b.build(cands, store.snapshot("s"), far)
        msgs.append(str(exc.value))
    assert msgs[0] == msgs[1]
    same_bits(FeatureBuilder(cfg, item_cache=64), cands, store.snapshot("s"), CTX)


_ODD_NUMBERS = st.sampled_from([0, -1, -2, 1, 2**31, 2**62, 2**63, True, 0.5, float("inf"), float("nan"), -0.0, 3.0,
                                np.int64(4), np.float32(1.0), None, "1"])


@settings(max_examples=300, deadline=None)
@given(vals=st.lists(_ODD_NUMBERS, min_size=9, max_size=9), kind=st.sampled_from([EventKind.CLICK, 1, 99, True, 0]),
       request_id=st.sampled_from(["r", "x" * 129, 5]), kind_name=st.sampled_from(["", "click", 3]),
       attrs=st.sampled_from([{}, {"a": 1}, None]))
def test_property_the_event_fast_check_accepts_only_what_every_check_accepts(vals, kind, request_id, kind_name,
                                                                              attrs):
    """``validate_feedback_event``'s one-expression check of the common event never accepts an event the full checks
    refuse (the store's validation is per event, on the simulator's hot path)."""
    from edge_rerank.device_sdk.contracts import ContractError, _check_event_scalars, _plain_event_scalars

    e = FeedbackEvent(ts_ms=1, request_id="r", item_id=1, kind=EventKind.CLICK)
    for name, v in zip(("ts_ms", "item_id", "position", "category", "brand", "price_level", "dwell_ms", "lat", "lon"),
                       vals, strict=True):
        object.__setattr__(e, name, v)
    for name, v in (("kind", kind), ("request_id", request_id), ("kind_name", kind_name), ("attrs", attrs)):
        object.__setattr__(e, name, v)
    try:
        _check_event_scalars(e)
        full = True
    except ContractError:
        full = False
    if _plain_event_scalars(e):
        assert full


def test_the_event_fast_check_takes_the_common_events(fcfg):
    from edge_rerank.device_sdk.contracts import _plain_event_scalars

    rng = np.random.default_rng(6)
    evs = make_events([make_item(k, rng, fcfg, k) for k in range(4)], {1})
    assert all(_plain_event_scalars(e) for e in evs)


@settings(max_examples=200, deadline=None)
@given(n=st.integers(0, 60), fixed=st.integers(0, 70), window=st.integers(1, 60), seed=st.integers(0, 2**16),
       np_int=st.booleans())
def test_property_reinsertion_keeps_its_order_and_moved_count(n, fixed, window, seed, np_int):
    """The rerank call's reinsertion (Python loops over the window since this round) against its numpy definition:
    seen positions stay, the window is sorted by score (stable: ties keep the cloud order), the rest keep their place;
    plain ints out, whatever int type came in."""
    from edge_rerank.device_sdk.reranker import _reinsert

    scores = np.random.default_rng(seed).integers(0, 4, size=window + 3).astype(np.float32)  # ties on purpose
    n_fixed = min(fixed, n)
    order, moved = _reinsert(n, np.int64(n_fixed) if np_int else n_fixed, window, scores)
    end = min(n, n_fixed + window)
    ranked = np.argsort(-scores[: end - n_fixed].astype(np.float64), kind="stable")
    assert order == list(range(n_fixed)) + (ranked + n_fixed).tolist() + list(range(end, n))
    assert moved == int(np.count_nonzero(ranked != np.arange(len(ranked))))
    assert all(type(x) is int for x in order) and type(moved) is int
