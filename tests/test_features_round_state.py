"""The round-wide feedback-state work of ``FeatureBuilder.build_many`` (issue 18, branches h32 and h34): the new
events' per-event rows of every request derived in one pass (``RerankPath._derive_round``: ``EventRows.derive`` /
``write``), their planar distances to each request's search location in one pass, and every new feedback state of the
round computed in one pass over an arena of the round's event rows (``RerankPath._round_states``: the sequence
selection, the gathers of the event half of the outputs, the finiteness checks and the value tables). Each row must be,
to the bit, what ``build`` returns for that request alone (a fresh per-object builder, and a cached builder building
one at a time), through hypothesis-driven rounds where events arrive one by one or in bursts, the per-session bound
evicts old events (and buffers are copied), stores are cleared, one store session is in a round twice (an older and a
newer snapshot of the same buffer, or the same snapshot from two search locations), search locations move or are
ints, rows are derived by a single build between rounds, and sessions show items with the same ids (a positive in
one session must not drop a negative in another). Checked to fail when the arena's segment offsets of the sequences,
of the value-table pairs or of the steps-ago column are wrong, and when the positive-item mask ignores segments."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_rerank.device_sdk.contracts import Context
from edge_rerank.device_sdk.features import FeatureBuilder
from edge_rerank.device_sdk.features.config import DEFAULT_CANDIDATE_OPS
from edge_rerank.device_sdk.feedback_store import FeedbackStore
from tests.conftest import make_events, make_item
from tests.test_features_build_many import _check
from tests.test_features_cached import _cfg
from tests.test_features_rerank_path import COVERED_OPS

ACTIONS = ["one", "burst", "none", "clear", "move", "int_context", "twice", "twice_moved", "single"]


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**16), n_sessions=st.integers(2, 6),
       rounds=st.lists(st.lists(st.sampled_from(ACTIONS), min_size=1, max_size=6), min_size=1, max_size=7),
       max_events=st.sampled_from([1, 3, 7, 40]), l_max=st.integers(1, 12), max_pos=st.integers(0, 5),
       dwell=st.sampled_from([0.0, 1200.0]), extra=st.lists(st.sampled_from(COVERED_OPS), max_size=3),
       geo=st.sampled_from(["planar", "planar", "haversine"]), shared_ids=st.booleans())
def test_property_round_wide_state_matches_one_build_at_a_time(fcfg, seed, n_sessions, rounds, max_events, l_max,
                                                               max_pos, dwell, extra, geo, shared_ids):
    cfg = _cfg(fcfg, n_max=6, l_max=l_max, max_positives=min(max_pos, l_max), geo=geo,
               candidate_ops=DEFAULT_CANDIDATE_OPS + tuple(extra))
    rng = np.random.default_rng(seed)
    batched, single = FeatureBuilder(cfg, item_cache=4096), FeatureBuilder(cfg, item_cache=4096)
    store = FeedbackStore(max_events_per_session=max_events, max_sessions=64)
    # (`shared_ids`: every session shows items with the same ids, so one session's positive is another's negative)
    pages = [[make_item(100 * (0 if shared_ids else k) + j, rng, cfg, j) for j in range(10)] for k in range(n_sessions)]
    ctxs = [Context(float(k), 1.5 + k, k % 24) for k in range(n_sessions)]
    t = 0
    for actions in rounds:
        requests = []
        for k in range(n_sessions):
            sid, what = f"s{k}", actions[k % len(actions)]
            old = store.snapshot(sid)
            if what in ("one", "burst", "twice", "twice_moved", "single"):
                m = 1 if what == "one" else int(rng.integers(2, 9))
                seen = [pages[k][int(j)] for j in rng.integers(0, 10, m)]
                evs = make_events(seen, {it.item_id for it in seen if rng.random() < 0.4}, dwell)
                for e in evs:
                    t += 1
                    e.ts_ms = t
                    store.add(sid, e)  # one by one, as a session records them
            elif what == "clear":
                store.clear()
            elif what == "move":
                ctxs[k] = Context(float(rng.uniform(0, 5)), float(rng.uniform(0, 5)), 3)
            elif what == "int_context":
                ctxs[k] = Context(int(rng.integers(0, 5)), int(rng.integers(0, 5)), 4)
            window = pages[k][int(rng.integers(0, 4)):][:cfg.n_max]
            requests.append((window, store.snapshot(sid), ctxs[k]))
            if what == "twice":  # the same buffer in the round again, at its older end
                requests.append((window[1:], old, ctxs[k]))
            elif what == "twice_moved":  # the same snapshot from another search location
                requests.append((window, store.snapshot(sid), Context(ctxs[k].lat + 0.5, ctxs[k].lon, 5)))
            elif what == "single":  # this one's rows derived by a single build before the round
                single_b = batched.build(window, store.snapshot(sid), ctxs[k])
                assert single_b["seq_emb"].shape[0] == cfg.l_max
        _check(batched, requests, single)
    assert batched._fast.builds > 0


def test_the_round_derives_rows_once_for_every_request(fcfg):
    """A round of sessions with new events: after ``build_many`` every store buffer's rows are derived up to its
    snapshot's end, their distances are for the request's location, no request's state derived its own rows, and
    the new states came from one round-wide pass (``_round_states``), none from the per-request ``_state``; a second
    round with the same snapshots finds every state memoised."""
    cfg = _cfg(fcfg, n_max=6, l_max=10)
    rng = np.random.default_rng(2)
    store = FeedbackStore()
    requests = []
    for k in range(4):
        items = [make_item(10 * k + j, rng, cfg, j) for j in range(8)]
        for e in make_events(items[:5], {items[1].item_id}):
            store.add(f"s{k}", e)
        requests.append((items[5:], store.snapshot(f"s{k}"), Context(float(k), 1.0, 2)))
    b = FeatureBuilder(cfg, item_cache=256)
    rows_cls = type(b._event_rows(requests[0][1], update=False))
    calls, states, rounds = [], [], []
    update, path_cls = rows_cls.update, type(b._fast)
    one, many = path_cls._state, path_cls._round_states
    try:
        rows_cls.update = lambda self, *a, **kw: (calls.append(1), update(self, *a, **kw))[1]
        path_cls._state = lambda self, *a, **kw: (states.append(1), one(self, *a, **kw))[1]
        path_cls._round_states = lambda self, bld, recs: (rounds.append(len(recs)), many(self, bld, recs))[1]
        out, errors = b.build_many(requests)
        again, _ = b.build_many(requests)
    finally:
        rows_cls.update, path_cls._state, path_cls._round_states = update, one, many
    assert calls == [] and errors == [None] * 4  # (the per-buffer update found every row derived)
    assert states == [] and rounds == [4]  # (the second round: every state memoised)
    assert all(again[name].tobytes() == v.tobytes() for name, v in out.items())
    for k, (_, snap, ctx) in enumerate(requests):
        d = b._event_rows(snap, update=False)
        assert d.upto == snap._hi and d.ctx == (ctx.lat, ctx.lon) and d.ctx_upto == snap._hi
        ref = FeatureBuilder(cfg).build(*requests[k])
        assert all(out[name][k].tobytes() == v.tobytes() for name, v in ref.items())


def test_a_round_when_the_item_table_runs_out_of_location_ids(fcfg):
    """The item table keeps ids for 1,024 search locations (``ItemTable.stale`` forgets all of them when full): a
    round whose new locations do not fit forgets them before the round; rows read before that, shared items from
    several locations, and the next round (its rows' distances recomputed) keep the bits of one build at a time."""
    cfg = _cfg(fcfg, n_max=6, l_max=8)
    rng = np.random.default_rng(4)
    store = FeedbackStore()
    items = [make_item(k, rng, cfg, k) for k in range(9)]
    for s in range(6):
        store.add_many(f"s{s}", make_events([make_item(100 * (s + 1) + k, rng, cfg, k) for k in range(5)],
                                            {100 * (s + 1) + 1}))
    batched, single = FeatureBuilder(cfg, item_cache=256), FeatureBuilder(cfg, item_cache=256)
    for round_ in range(3):
        requests = [(items[s % 3:][:6], store.snapshot(f"s{s}"), Context(0.25 * s + round_, 1.0, s)) for s in range(6)]
        if round_ == 1:  # nearly full: the round's six new locations do not fit
            for k in range(1022 - len(batched._table._ctx_ids)):
                batched._table._ctx_ids[(-1.0 - k, 0.0)] = len(batched._table._ctx_ids)
        _check(batched, requests, single)
        if round_ == 1:
            assert len(batched._table._ctx_ids) == 6  # (forgotten, then the round's own)
