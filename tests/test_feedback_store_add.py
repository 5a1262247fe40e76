"""``FeedbackStore.add``'s per-event fast path (issue 18, branch h32): one check (``contracts.plain_valid_event``)
and one column write (``EventColumnsWriter.append_plain``) for the common event. It must refuse exactly what the
general path (``add_many``: ``validate_feedback_event`` + ``append``) refuses, with the same reason, and write the
same columns."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_rerank.device_sdk.contracts import (
    ContractError,
    EventKind,
    FeedbackEvent,
    plain_valid_event,
    validate_feedback_event,
)
from edge_rerank.device_sdk.feedback_store import FeedbackStore

_ODD_NUMBERS = st.sampled_from([0, -1, -2, 1, 7, 2**31, 2**62, 2**63, True, 0.5, float("inf"), float("nan"), -0.0, 3.0,
                                np.int64(4), np.float32(1.0), None, "1"])
_GOOD_INTS = st.integers(-1, 40)
_GOOD_FLOATS = st.floats(0.0, 5000.0, width=32)


def _embedding(kind: str, width: int):
    if kind == "none":
        return None
    if kind == "good":
        return np.arange(width, dtype=np.float32) / 7
    if kind == "other width":
        return np.ones(width + 3, np.float32)
    if kind == "nan":
        v = np.ones(width, np.float32)
        v[-1] = np.nan
        return v
    if kind == "inf":
        v = np.ones(width, np.float32)
        v[0] = np.inf
        return v
    if kind == "big":  # finite, huge: the float64 sum stays finite
        return np.full(width, 3e38, np.float32)
    if kind == "float64":
        return np.ones(width, np.float64)
    if kind == "big-endian":
        return np.ones(width, ">f4")
    if kind == "2-d":
        return np.ones((1, width), np.float32)
    if kind == "empty":
        return np.zeros(0, np.float32)
    if kind == "list":
        return [1.0] * width
    raise AssertionError(kind)


_EMB_KINDS = st.sampled_from(["none", "good", "good", "good", "other width", "nan", "inf", "big", "float64",
                              "big-endian", "2-d", "empty", "list"])


@st.composite
def _events(draw, width: int):
    """Mostly common events, some with one odd field (set past the dataclass's conversions, as a buggy app might)."""
    e = FeedbackEvent(ts_ms=draw(st.integers(0, 10**6)), request_id="r", item_id=draw(_GOOD_INTS),
                      kind=draw(st.sampled_from(list(EventKind))), position=draw(_GOOD_INTS),
                      dwell_ms=draw(_GOOD_FLOATS), category=draw(_GOOD_INTS), brand=draw(_GOOD_INTS),
                      price_level=draw(_GOOD_INTS), lat=draw(st.floats(-2, 2)), lon=draw(st.floats(-2, 2)))
    object.__setattr__(e, "id_embedding", _embedding(draw(_EMB_KINDS), width))
    if draw(st.integers(0, 3)) == 0:
        name = draw(st.sampled_from(["ts_ms", "item_id", "position", "category", "brand", "price_level", "dwell_ms",
                                     "lat", "lon", "kind", "request_id", "kind_name", "attrs"]))
        value = {"kind": st.sampled_from([EventKind.CLICK, 1, 99, True, 0, 2.0]),
                 "request_id": st.sampled_from(["r", "x" * 129, 5]),
                 "kind_name": st.sampled_from(["", "click", 3]),
                 "attrs": st.sampled_from([{}, {"a": 1}, None, {"b": float("nan")}])}.get(name, _ODD_NUMBERS)
        object.__setattr__(e, name, draw(value))
    return e


def _columns(store: FeedbackStore, sid: str) -> dict:
    snap = store.snapshot(sid)
    b, lo, hi = snap._b, snap._lo, snap._hi
    out = {name: getattr(b, name)[lo:hi].tolist() for name in ("item", "kind", "dwell", "position", "lat", "lon",
                                                               "has_emb", "plain")}
    out["cats"] = b.cats[:, lo:hi].tolist()
    out["emb"] = b.emb[lo:hi].tobytes()
    out["width"], out["ragged"], out["n"] = b.width, snap.ragged, len(snap)
    out["events"] = [id(e) for e in snap]
    out["plain_all"] = snap.plain
    return out


@settings(max_examples=250, deadline=None)
@given(data=st.data(), emb_dim=st.sampled_from([None, 4]), max_events=st.sampled_from([1, 3, 8, 100]),
       n=st.integers(1, 40))
def test_property_add_refuses_and_writes_what_the_general_path_does(data, emb_dim, max_events, n):
    """Events added one by one through ``add`` (the fast path where it applies) against the same events through the
    general path one call each: same accepted count per event, same refusal reasons in the same order, same columns
    (bounded stores, growing buffers, first vector setting the width, vectors of another width included)."""
    width = 4
    events = [data.draw(_events(width)) for _ in range(n)]
    sids = [data.draw(st.sampled_from(["s", "t"])) for _ in range(n)]
    fast, general = FeedbackStore(max_events, emb_dim=emb_dim), FeedbackStore(max_events, emb_dim=emb_dim)
    reasons: dict[int, list] = {id(fast): [], id(general): []}
    for s in (fast, general):
        rec = s.faults.record
        s.faults.record = lambda r, rec=rec, s=s: reasons[id(s)].append(r) or rec(r)
    for e, sid in zip(events, sids, strict=True):
        assert fast.add(sid, e) == general.add_many(sid, [e])
    assert reasons[id(fast)] == reasons[id(general)]
    assert fast.faults.counts == general.faults.counts
    for sid in ("s", "t"):
        assert _columns(fast, sid) == _columns(general, sid)


@settings(max_examples=400, deadline=None)
@given(data=st.data(), emb_dim=st.sampled_from([None, 4, 0, 5000]))
def test_property_plain_valid_event_accepts_only_what_validation_accepts(data, emb_dim):
    """``plain_valid_event`` True means ``validate_feedback_event`` returns the event (never a weaker check)."""
    e = data.draw(_events(4))
    if emb_dim == 5000:
        object.__setattr__(e, "id_embedding", np.ones(5000, np.float32))
    try:
        validate_feedback_event(e, emb_dim)
        ok = True
    except ContractError:
        ok = False
    if plain_valid_event(e, emb_dim):
        assert ok


def test_the_fast_path_takes_the_common_event_and_refuses_with_the_reason():
    v = np.arange(4, dtype=np.float32)
    good = FeedbackEvent(ts_ms=5, request_id="r", item_id=3, kind=EventKind.CLICK, position=2, dwell_ms=10.0,
                         category=1, brand=2, price_level=3, lat=0.5, lon=0.25, id_embedding=v)
    assert plain_valid_event(good, 4) and plain_valid_event(good) and not plain_valid_event(good, 5)
    store = FeedbackStore(emb_dim=4)
    assert store.add("s", good) == 1  # (a new session: the general path)
    assert store.add("s", good) == 1  # the fast path
    bad = FeedbackEvent(ts_ms=6, request_id="r", item_id=3, kind=EventKind.CLICK, id_embedding=v.copy())
    bad.id_embedding[1] = np.nan
    assert not plain_valid_event(bad, 4)
    assert store.add("s", bad) == 0
    assert store.faults.last == "bad_event: event 0 dropped: id_embedding has non-finite values"
    neg = FeedbackEvent(ts_ms=6, request_id="r", item_id=3, kind=EventKind.CLICK, dwell_ms=-1.0)
    assert store.add("s", neg) == 0 and "dwell_ms must be >= 0" in store.faults.last
    assert len(store.events("s")) == 2 and store.faults.counts["bad_event"] == 2
