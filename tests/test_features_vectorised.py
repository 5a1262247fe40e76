"""The vectorised FeatureBuilder (issue 18) against the per-operator reference it replaced
(``device_sdk.features.reference_builder``): same keys, dtypes, shapes; integer inputs bit-identical, float inputs
within 1e-6 (the similarity operators reduce in another order); same errors; same unknown-bucket counts."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_rerank.device_sdk.contracts import Context, EventKind, FeedbackEvent, PageItem
from edge_rerank.device_sdk.features import FeatureBuilder, FeatureConfig, FeatureError
from edge_rerank.device_sdk.features.config import DEFAULT_CANDIDATE_OPS, IDENTITY_OPS, FieldSpec
from edge_rerank.device_sdk.features.reference_builder import ReferenceFeatureBuilder
from tests.conftest import CTX, make_events, make_item

EXTRA_OPS = ("hit:item:click", "freq:brand+price_level:skip@3", "step:category+brand:seen@4", "sim_max:seen",
             "sim_mean:skip@1", "hit:category:seen", "freq:item:seen", "step:price_level:click@1")


def assert_same(cfg: FeatureConfig, cands, events, ctx=CTX) -> dict[str, np.ndarray]:
    new, ref = FeatureBuilder(cfg), ReferenceFeatureBuilder(cfg)
    a, b = new.build(cands, events, ctx), ref.build(cands, events, ctx)
    assert list(a) == list(b)
    for k in a:
        assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape, k
        if a[k].dtype.kind == "f":
            np.testing.assert_allclose(a[k], b[k], rtol=0, atol=1e-6, err_msg=k)
        else:
            assert np.array_equal(a[k], b[k]), k
    # everything but the similarity columns is bit-identical
    exact = [j for j, op in enumerate(cfg.candidate_ops) if not op.startswith("sim_")]
    assert a["cand_num"][:, exact].tobytes() == b["cand_num"][:, exact].tobytes()
    assert new.unknown_counts == ref.unknown_counts
    return a


def _world(seed: int, n_items: int, n_hist: int, cfg: FeatureConfig, dwell: float, reshow: bool):
    rng = np.random.default_rng(seed)
    history = [make_item(1000 + k, rng, cfg, k) for k in range(n_hist)]
    clicks = {it.item_id for it in history if rng.random() < 0.3}
    events = make_events(history, clicks, dwell)
    if reshow and history:  # the same items again: identity operators have something to count
        events += make_events(history[: max(1, n_hist // 2)], set(), dwell / 2)
    cands = [make_item(k, rng, cfg, k) for k in range(n_items)]
    if reshow:
        for k, h in enumerate(history[: min(n_items, n_hist) // 2]):
            cands[k] = make_item(h.item_id, rng, cfg, k)
    return rng, cands, events


def test_default_config_is_bit_identical_on_benchmark_shapes(fcfg):
    cfg = FeatureConfig(**{**fcfg.to_dict(), "n_max": 50, "l_max": 50})
    for seed in range(4):
        _, cands, events = _world(seed, 50, 40, cfg, 2000.0, False)
        a = assert_same(cfg, cands, events)
        b = ReferenceFeatureBuilder(cfg).build(cands, events, CTX)
        for k in a:  # on the shop defaults even the similarity columns agree to the bit
            assert a[k].tobytes() == b[k].tobytes(), k


@settings(max_examples=80, deadline=None)
@given(seed=st.integers(0, 2**16), n_items=st.integers(0, 25), n_hist=st.integers(0, 40),
       dwell=st.sampled_from([0.0, 500.0, 1200.0, 5000.0]), reshow=st.booleans(), max_pos=st.integers(1, 8),
       l_max=st.integers(1, 40), extra=st.lists(st.sampled_from(EXTRA_OPS + IDENTITY_OPS), max_size=6))
def test_property_vectorised_equals_reference(fcfg, seed, n_items, n_hist, dwell, reshow, max_pos, l_max, extra):
    cfg = FeatureConfig(**{**fcfg.to_dict(), "l_max": l_max, "max_positives": min(max_pos, l_max),
                           "candidate_ops": DEFAULT_CANDIDATE_OPS + tuple(extra)})
    _, cands, events = _world(seed, n_items, n_hist, cfg, dwell, reshow)
    assert_same(cfg, cands, events, Context(1.0, 2.0, seed % 24))


VALUES = st.one_of(st.none(), st.integers(-3, 20), st.sampled_from(["a", "b", "x"]), st.floats(0, 3),
                   st.just(True), st.just(2**70))


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**16), vals=st.lists(VALUES, min_size=12, max_size=12),
       nums=st.lists(st.one_of(st.none(), st.floats(-5, 5), st.just("7")), min_size=6, max_size=6),
       ident=st.booleans())
def test_property_declared_fields_and_odd_values(seed, vals, nums, ident):
    """Vocab / hash / id fields, values in ``attrs`` (str, None, bool, floats, ints out of range or huge), a
    numeric field: keys, encodings and unknown counts as the reference computes them."""
    cfg = FeatureConfig(emb_dim=4, dense_dim=3, n_max=8, l_max=10, max_positives=3,
                        fields=(FieldSpec("topic", mode="vocab", vocab=("a", "b", 3)),
                                FieldSpec("publisher", mode="hash", size=7), FieldSpec("lang", size=5),
                                FieldSpec("score", kind="numeric", edges=(-1.0, 0.0, 2.0))),
                        candidate_ops=("cloud_score", "hit:topic:click", "freq:publisher:skip", "step:lang:seen",
                                       "hit:topic+lang:seen@3", "num:score", "sim_mean:click", "dist_min:click",
                                       *(IDENTITY_OPS if ident else ())))
    rng = np.random.default_rng(seed)

    def item(k: int) -> PageItem:
        it = PageItem(item_id=k % 5, cloud_position=k, cloud_score=float(rng.normal()),
                      cloud_dense=rng.normal(size=3).astype(np.float32),
                      id_embedding=rng.normal(size=4).astype(np.float32) if k % 4 else np.zeros(0, np.float32),
                      category=0, brand=0, price_level=0, lat=float(rng.uniform(0, 3)), lon=float(rng.uniform(0, 3)))
        it.attrs = {"topic": vals[k % 12], "publisher": vals[(k + 3) % 12], "score": nums[k % 6]}
        if k % 3:
            it.attrs["lang"] = vals[(k + 7) % 12]
        return it

    items = [item(k) for k in range(14)]
    kinds = [EventKind.CLICK, EventKind.EXPOSURE, EventKind.DETAIL_RETURN, EventKind.EXPOSURE]
    events = []
    for k, it in enumerate(items[:8]):
        ev = FeedbackEvent.for_item(it, kinds[k % 4], 100 * k, "r", k, [0.0, 2000.0, 900.0][k % 3])
        if k == 5:
            ev.id_embedding = None
        events.append(ev)
    events.append(FeedbackEvent(ts_ms=999, request_id="r", item_id=-1, kind=EventKind.LEAVE))
    assert_same(cfg, items[6:], events)


def test_same_errors_as_the_reference(fcfg):
    rng = np.random.default_rng(3)
    items = [make_item(k, rng, fcfg) for k in range(4)]
    events = make_events(items[:2], {items[0].item_id})
    bad_event = [*events[:-1], FeedbackEvent.for_item(items[1], EventKind.EXPOSURE, 5, "r", 1, 5000)]
    bad_event[-1].id_embedding = np.zeros(3, np.float32)
    cases = []
    for k in range(2):
        it = [make_item(j, rng, fcfg) for j in range(3)]
        if k == 0:
            it[1].cloud_dense = np.zeros(3, np.float32)
        else:
            it[2].id_embedding = np.full(fcfg.emb_dim, np.inf, np.float32)
        cases.append((it, events))
    cases.append((items, bad_event))
    cases.append(([make_item(k, rng, fcfg) for k in range(fcfg.n_max + 1)], events))
    for cands, evs in cases:
        msgs = []
        for b in (FeatureBuilder(fcfg), ReferenceFeatureBuilder(fcfg)):
            with pytest.raises(FeatureError) as exc:
                b.build(cands, evs, CTX)
            msgs.append(str(exc.value))
        assert msgs[0] == msgs[1]


def test_empty_page_and_no_feedback(fcfg):
    cfg = FeatureConfig(**{**fcfg.to_dict(), "candidate_ops": DEFAULT_CANDIDATE_OPS + IDENTITY_OPS})
    rng = np.random.default_rng(0)
    assert_same(cfg, [], [])
    assert_same(cfg, [make_item(1, rng, cfg)], [])
    only_leave = [FeedbackEvent(ts_ms=1, request_id="r", item_id=-1, kind=EventKind.LEAVE)]
    assert_same(cfg, [make_item(k, rng, cfg) for k in range(5)], only_leave)
