"""``FeatureBuilder.build_many`` (issue 18, branch h29): many builds stacked on a batch axis, the candidate gathers
and Match&Aggregate lookups of the rerank-time path done once for the whole batch. Row b must be, to the bit, what
``build`` returns for request b (against a fresh per-object builder and against a cached builder building one at a
time), with the same errors, through hypothesis-driven sessions advancing side by side (events, pages, shifted and
reordered windows, cleared stores, moved search locations), with items shared between requests of different search
locations, with an item table too small for the batch, with requests the path does not take, and with empty
batches."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_rerank.device_sdk.contracts import Context
from edge_rerank.device_sdk.features import FeatureBuilder, FeatureError
from edge_rerank.device_sdk.features.config import DEFAULT_CANDIDATE_OPS
from edge_rerank.device_sdk.features.operators import input_specs
from edge_rerank.device_sdk.feedback_store import FeedbackStore
from tests.conftest import ScriptedSession, make_events, make_item
from tests.test_features_cached import _cfg
from tests.test_features_rerank_path import COVERED_OPS

STEPS = ["events", "page", "shift", "reorder", "new_object", "clear", "same", "context"]


def _single(builder: FeatureBuilder, req) -> tuple[dict[str, np.ndarray] | None, Exception | None]:
    try:
        return builder.build(*req), None
    except Exception as exc:  # noqa: BLE001 - compared with build_many's error for the same request
        return None, exc


def _check(batched: FeatureBuilder, requests, *others: FeatureBuilder) -> tuple[dict, list]:
    """build_many on `batched` against build on each of `others` (and a fresh per-object builder), row by row."""
    out, errors = batched.build_many(requests)
    specs = input_specs(batched.cfg)
    assert list(out) == [name for name, _, _ in specs]
    for name, shape, dtype in specs:
        assert out[name].shape == (len(requests), *shape) and out[name].dtype == np.dtype(dtype), name
    assert len(errors) == len(requests)
    for b, req in enumerate(requests):
        plain = FeatureBuilder(batched.cfg)
        refs = [_single(plain, (req[0], list(req[1]), req[2]))] + [_single(o, req) for o in others]
        for ref, err in refs:
            if err is not None:
                assert errors[b] is not None and type(errors[b]) is type(err) and str(errors[b]) == str(err), b
                assert all(not v[b].any() for v in out.values())  # a failed request's row is zeros
                continue
            assert errors[b] is None, (b, errors[b])
            for name, v in ref.items():
                assert out[name][b].tobytes() == v.tobytes(), (b, name)
    return out, errors


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**16), n_sessions=st.integers(1, 6), n_page=st.integers(2, 12),
       steps=st.lists(st.lists(st.tuples(st.sampled_from(STEPS), st.integers(1, 6)), min_size=1, max_size=6),
                      min_size=1, max_size=6),
       dwell=st.sampled_from([0.0, 1200.0]), l_max=st.integers(1, 20), max_pos=st.integers(0, 6),
       extra=st.lists(st.sampled_from(COVERED_OPS), max_size=4), geo=st.sampled_from(["planar", "haversine"]),
       cache=st.sampled_from([16, 64, 4096]), shared=st.booleans())
def test_property_lockstep_sessions_match_one_build_at_a_time(fcfg, seed, n_sessions, n_page, steps, dwell, l_max,
                                                             max_pos, extra, geo, cache, shared):
    """Sessions advance side by side (each round: every session takes its own step, then one build_many over all of
    their windows); each row equals the build of that request alone, with a builder that builds one at a time and
    with a fresh per-object builder. ``shared``: the first two sessions show the same item objects (from different
    search locations), so a later request rewrites a row's distance after an earlier one read it. ``cache`` 16: the
    item table cannot hold a round's windows (it starts afresh, or the round goes to ``build``)."""
    cfg = _cfg(fcfg, n_max=8, l_max=l_max, max_positives=min(max_pos, l_max), geo=geo,
               candidate_ops=DEFAULT_CANDIDATE_OPS + tuple(extra))
    rng = np.random.default_rng(seed)
    batched, single = FeatureBuilder(cfg, item_cache=cache), FeatureBuilder(cfg, item_cache=cache)
    assert batched._fast is not None
    store = FeedbackStore(max_events_per_session=30)
    sessions = [ScriptedSession(cfg, rng, store, n_page=n_page, dwell=dwell, session=f"s{k}",
                                ctx=Context(float(k), 2.0 + k, (seed + k) % 24)) for k in range(n_sessions)]
    if shared and n_sessions > 1:
        sessions[1].items = list(sessions[0].items)
    for round_ in steps:
        for k, sess in enumerate(sessions):
            what, m = round_[k % len(round_)]
            sess.step(what, m)
        requests = [(s.window, store.snapshot(s.session), s.ctx) for s in sessions]
        _check(batched, requests, single)
        assert batched.unknown_counts == single.unknown_counts  # (the windows' unknown buckets, counted once each)
    assert batched._fast.builds > 0 or all(not s.window for s in sessions)


def test_default_shapes_and_the_path_takes_the_batch(fcfg):
    cfg = _cfg(fcfg, n_max=50, l_max=50)
    rng = np.random.default_rng(0)
    store = FeedbackStore()
    requests = []
    for s in range(5):
        hist = [make_item(1000 * (s + 1) + k, rng, cfg, k) for k in range(10 + 7 * s)]
        store.add_many(f"s{s}", make_events(hist, {h.item_id for h in hist[::3 + s]}))
        cands = [make_item(100 * s + k, rng, cfg, k) for k in range(50 - 9 * s)]
        requests.append((cands, store.snapshot(f"s{s}"), Context(1.0 + s, 2.0, 3 * s)))
    requests.append((requests[0][0][:4], FeedbackStore().snapshot("none"), Context(0.5, 0.5, 1)))  # no events
    b = FeatureBuilder(cfg, item_cache=4096)
    _check(b, requests, FeatureBuilder(cfg, item_cache=4096))
    assert b._fast.builds == len(requests) and b._fast.fallbacks == 0  # all of them on the path, none handed over


def test_requests_the_path_does_not_take_and_errors(fcfg):
    """A request with an unknown matched value (general path), one with too many candidates, one with a
    non-finite item, an empty one, and good ones in the same batch: each gets its own row or its own error."""
    cfg = _cfg(fcfg, n_max=6, l_max=8)
    rng = np.random.default_rng(3)
    store = FeedbackStore()
    store.add_many("s", make_events([make_item(100 + k, rng, cfg, k) for k in range(6)], {101, 104}))
    good = [make_item(k, rng, cfg, k) for k in range(6)]
    odd = [make_item(10 + k, rng, cfg, k) for k in range(6)]
    odd[2].category = 999  # unknown bucket of a matched field
    bad = [make_item(20 + k, rng, cfg, k) for k in range(6)]
    bad[1].cloud_score = float("nan")
    many = [make_item(30 + k, rng, cfg, k) for k in range(7)]
    snap = store.snapshot("s")
    requests = [(good, snap, Context(1.0, 1.0, 1)), (odd, snap, Context(1.0, 1.0, 1)), (many, snap,
                Context(1.0, 1.0, 1)), (bad, snap, Context(1.0, 1.0, 1)), ([], snap, Context(1.0, 1.0, 1)),
                (good[3:], snap, Context(2.0, 1.0, 5))]
    b, one = FeatureBuilder(cfg, item_cache=64), FeatureBuilder(cfg, item_cache=64)
    out, errors = _check(b, requests, one)
    assert b.unknown_counts == one.unknown_counts  # (each window's unknown buckets counted once, as by build)
    assert errors[0] is None and errors[1] is None and errors[5] is None
    assert isinstance(errors[2], FeatureError) and "exceed n_max" in str(errors[2])
    assert isinstance(errors[3], FeatureError)
    assert out["cand_mask"][4].sum() == 0 and errors[4] is None


def test_empty_batch_and_no_item_cache(fcfg):
    b = FeatureBuilder(fcfg)  # no item table: every request through build
    out, errors = b.build_many([])
    assert errors == [] and all(v.shape[0] == 0 for v in out.values())
    rng = np.random.default_rng(1)
    store = FeedbackStore()
    store.add_many("s", make_events([make_item(100 + k, rng, fcfg, k) for k in range(4)], {101}))
    cands = [make_item(k, rng, fcfg, k) for k in range(5)]
    _check(b, [(cands, store.snapshot("s"), Context(1.0, 1.0, 1)), (cands[1:], store.events("s"),
                                                                      Context(1.0, 1.0, 2))])


@pytest.mark.parametrize("cache", [8, 12])
def test_a_batch_larger_than_the_item_table(fcfg, cache):
    """Windows of 6 items, 3 requests: 18 distinct items do not fit 8 or 12 rows: the batch is built one request at a
    time (the table starts afresh as often as it must), with the same bits."""
    cfg = _cfg(fcfg, n_max=6, l_max=8)
    rng = np.random.default_rng(5)
    store = FeedbackStore()
    store.add_many("s", make_events([make_item(100 + k, rng, cfg, k) for k in range(5)], {102}))
    snap = store.snapshot("s")
    requests = [([make_item(10 * r + k, rng, cfg, k) for k in range(6)], snap, Context(1.0, 1.0, r))
                for r in range(3)]
    _check(FeatureBuilder(cfg, item_cache=cache), requests, FeatureBuilder(cfg, item_cache=cache))
