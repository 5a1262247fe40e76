"""device_sdk.budgets (latency/energy accounting) and device_sdk.heuristic (the click/skip baseline)."""

import dataclasses

import numpy as np
import pytest

from edge_rerank.device_sdk.budgets import (
    PROFILES,
    CostModel,
    DeviceClock,
    InferenceCost,
    compute_ms,
    energy_mj,
    get_profile,
)
from edge_rerank.device_sdk.contracts import EventKind, FeedbackEvent
from edge_rerank.device_sdk.heuristic import HeuristicReranker
from tests.conftest import CTX, make_item


def test_profiles_order_and_validation():
    lo, hi = get_profile("low_end_android"), get_profile("recent_iphone")
    c = InferenceCost(flops=2e6, bytes_moved=2e5)
    assert compute_ms(lo, c) > compute_ms(hi, c) > 0
    assert energy_mj(lo, c, woke=True) > energy_mj(lo, c, woke=False) > 0
    with pytest.raises(ValueError, match="unknown device profile"):
        get_profile("pager")
    with pytest.raises(ValueError, match="flops_per_s"):
        dataclasses.replace(lo, flops_per_s=0)


def test_device_clock_wakes_when_idle_and_queues_when_busy():
    p = dataclasses.replace(PROFILES["low_end_android"], idle_after_ms=1000.0)
    clock = DeviceClock(p)
    c = InferenceCost(1e6, 0.0)
    run = compute_ms(p, c)
    s0, d0, lat0, e0 = clock.schedule(0.0, c)
    assert clock.wakeups == 1 and lat0 == pytest.approx(run + p.wake_ms)
    s1, d1, lat1, e1 = clock.schedule(d0 - 0.1, c)  # requested while the first still runs: waits, no wake-up
    assert s1 == pytest.approx(d0) and clock.wakeups == 1 and e1 < e0
    s2, d2, lat2, _ = clock.schedule(d1 + 5000.0, c, busy_ms=7.0)  # idle again: wakes; busy time adds up
    assert clock.wakeups == 2 and lat2 == pytest.approx(7.0 + run + p.wake_ms)
    assert clock.battery_share() == pytest.approx(clock.total_mj / (p.battery_wh * 3.6e6))


def test_cost_models_scale_with_list_and_feedback():
    dense = CostModel.for_dense_model(30_000)
    a, b = dense.cost(10, 5), dense.cost(25, 20)
    assert b.flops > a.flops and b.bytes_moved > a.bytes_moved >= 4 * 30_000
    assert CostModel.for_heuristic().cost(25, 20).flops < dense.cost(25, 20).flops


def _events(items, clicked=(), long_skipped=(), short_skipped=()):
    ev = []
    for k, it in enumerate(items):
        if it.item_id in clicked:
            ev.append(FeedbackEvent.for_item(it, EventKind.CLICK, k, "r", k))
        if it.item_id in long_skipped:
            ev.append(FeedbackEvent.for_item(it, EventKind.EXPOSURE, k, "r", k, 3000.0))
        if it.item_id in short_skipped:
            ev.append(FeedbackEvent.for_item(it, EventKind.EXPOSURE, k, "r", k, 300.0))
    return ev


def test_heuristic_boosts_clicked_brand_and_buries_long_skips_only(fcfg):
    rng = np.random.default_rng(0)
    items = [make_item(1000 + k, rng, fcfg, k) for k in range(12)]
    for it in items:
        it.brand, it.category = 40 + it.item_id % 7, 0 + it.item_id % 3  # spread attributes
    seen, unseen = items[:4], items[4:]
    hr = HeuristicReranker()
    # no feedback: cloud order kept
    res = hr.rerank(items, 4, [], CTX)
    assert res.applied and res.order == list(range(12))
    # a click on an item whose brand also appears last in the unseen list pulls that item up
    target = unseen[-1]
    seen[0].brand = target.brand
    res = hr.rerank(items, 4, _events(seen, clicked={seen[0].item_id}), CTX)
    assert res.order[:4] == [0, 1, 2, 3] and res.order.index(11) < 11
    # a long skip of an item of the same brand as the first unseen pushes it down; a short one does not
    seen[1].brand, seen[1].category = unseen[0].brand, unseen[0].category
    down = hr.rerank(items, 4, _events(seen, long_skipped={seen[1].item_id}), CTX)
    same = hr.rerank(items, 4, _events(seen, short_skipped={seen[1].item_id}), CTX)
    assert down.order.index(4) > 4 and same.order == list(range(12))


def test_heuristic_falls_back_on_nothing_to_rerank(fcfg):
    rng = np.random.default_rng(1)
    items = [make_item(1 + k, rng, fcfg, k) for k in range(5)]
    res = HeuristicReranker().rerank(items, 4, [], CTX)
    assert not res.applied and res.order == list(range(5)) and res.fallback_reason == "nothing_to_rerank"
