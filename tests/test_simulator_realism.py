"""The behaviour pieces of issue 3: brand saturation, click satiation, dwell (long skips are real negatives,
short ones noise), scroll speed, seeded network latency, device busy time, late/dropped reranks, energy."""

import dataclasses

import numpy as np
import pytest

from edge_rerank.device_sdk.budgets import PROFILES, DeviceProfile
from edge_rerank.device_sdk.heuristic import HeuristicReranker
from edge_rerank.simulator.ab import Arm, run_ab
from edge_rerank.simulator.phone import Phone, PhoneConfig
from edge_rerank.simulator.user_model import UserModel, UserModelConfig, UserState


def test_brand_saturation_and_satiation_lower_click_probability(world):
    um = UserModel(world)
    fresh, seen = UserState(), UserState()
    seen.brand_seen[3] = 3
    u = 2.0
    assert um.p_click(um.effective_utility(u, 3, seen), seen) < um.p_click(um.effective_utility(u, 3, fresh), fresh)
    assert um.effective_utility(u, 4, seen) == u  # other brands are not saturated
    clicked = UserState(clicks=3)
    assert um.p_click(u, clicked) < um.p_click(u, fresh)
    capped = UserState()
    capped.brand_seen[3] = 100
    cap = um.cfg.brand_saturation * um.cfg.brand_saturation_cap
    assert um.effective_utility(u, 3, capped) == pytest.approx(u - cap)


def test_brand_saturation_spreads_clicks_over_brands(world, inproc_cloud):
    def brands_per_click(cfg):
        phone = Phone(UserModel(world, cfg), inproc_cloud, arm="c")
        n_clicks, n_distinct = 0, 0
        for i in range(300):
            o = phone.run(world.session(i, 17))
            clicked = [c.item.brand for r in o.rows for c in r.candidates if c.clicked]
            n_clicks += len(clicked)
            n_distinct += len(set(clicked))
        return n_distinct / max(n_clicks, 1)

    base = UserModelConfig()
    strong = dataclasses.replace(base, brand_saturation=0.5)
    assert brands_per_click(strong) > brands_per_click(base)


def test_long_skips_are_real_negatives_short_ones_noise(world, inproc_cloud):
    """An unclicked item that stayed on screen long was almost always examined and rejected (a real
    negative); one flicked past briefly mostly was never looked at (noise), as SPEC §1 says."""
    phone = Phone(UserModel(world), inproc_cloud, arm="c")
    seen = {True: [0, 0], False: [0, 0]}  # long? -> [examined, total]
    for i in range(200):
        o = phone.run(world.session(i, 23))
        examined = set(o.examined_positions)
        for row in o.rows:
            for c in row.candidates:
                if c.exposed and not c.clicked:
                    k = seen[c.exposure_dwell_ms >= 1200.0]
                    k[0] += c.shown_position in examined
                    k[1] += 1
    p_long, p_short = seen[True][0] / seen[True][1], seen[False][0] / seen[False][1]
    assert seen[True][1] > 300 and seen[False][1] > 100
    assert p_long > 0.75 and p_short < 0.45, (p_long, p_short)


def test_scroll_speed_varies_per_session_and_shortens_dwell(world):
    um = UserModel(world)
    speeds = np.array([um.new_state(world.session(i, 1)).speed for i in range(400)])
    assert 0.9 < np.median(speeds) < 1.1 and speeds.std() > 0.15
    assert um.dwell_ms(3, False, 0.5, speed=2.0) == pytest.approx(um.dwell_ms(3, False, 0.5, speed=1.0) / 2)
    assert um.p_skim(0, speed=1.5) > um.p_skim(0, speed=1.0)


def test_network_latency_is_seeded_and_prefetch_hides_it(world, inproc_cloud):
    phone = Phone(UserModel(world), inproc_cloud, arm="c", keep_logs=False)
    outs = [phone.run(world.session(i, 4)) for i in range(200)]
    again = [phone.run(world.session(i, 4)) for i in range(200)]
    assert [o.page_ms for o in outs] == [o.page_ms for o in again]
    lat = np.array([x for o in outs for x in o.page_ms])
    assert 100 < np.median(lat) < 250 and lat.max() > 2 * np.median(lat)
    multi = [o for o in outs if o.pages > 1]
    first_wait = [o.page_ms[0] + phone.cfg.render_ms for o in multi]
    # after the first page the next ones were requested a screen ahead: most sessions never wait again
    assert np.mean([o.wait_ms <= w + 1e-6 for o, w in zip(multi, first_wait, strict=True)]) > 0.7


def _slow_profile(**kw) -> DeviceProfile:
    return dataclasses.replace(PROFILES["low_end_android"], **{"name": "test_slow", **kw})


def test_late_reranks_are_applied_to_unseen_items_or_dropped(world, inproc_cloud, monkeypatch):
    # a device so slow that a rerank takes ~0.2-1.5 s: many finish after the user scrolled on
    monkeypatch.setitem(PROFILES, "test_slow", _slow_profile(flops_per_s=2e4, busy_prob=0.0))
    um = UserModel(world)
    fast = run_ab(um, inproc_cloud, [Arm("h", HeuristicReranker())], 150, seed=9, progress=False)[0]
    from edge_rerank.device_sdk.budgets import CostModel, LatencyBudget
    from edge_rerank.device_sdk.triggers import TriggerConfig

    no_budget = TriggerConfig(budget=LatencyBudget(ms=1e9))  # slow results are applied (late), not refused
    arm = Arm("h", HeuristicReranker(), cost_model=CostModel.for_heuristic(), triggers=no_budget)
    slow = run_ab(um, inproc_cloud, [arm], 150, seed=9, progress=False,
                  config=PhoneConfig(device="test_slow"))[0]
    drop = run_ab(um, inproc_cloud, [arm], 150, seed=9, progress=False,
                  config=PhoneConfig(device="test_slow", late_policy="drop"))[0]
    assert fast.budget["late"] == 0
    assert slow.budget["late"] > 0 and slow.latency["device_p50_ms"] > 100
    assert drop.budget["late"] == 0 and drop.budget["dropped"] >= slow.budget["late"]
    assert drop.reranks_applied < slow.reranks_applied
    for o in slow.outcomes:  # late or not, the shown positions are a prefix, never reordered after the fact
        assert o.exposed_positions == list(range(len(o.exposed_positions)))


def test_budget_gate_and_busy_time(world, inproc_cloud, monkeypatch):
    from edge_rerank.device_sdk.budgets import CostModel

    monkeypatch.setitem(PROFILES, "test_slow", _slow_profile(flops_per_s=2e4, busy_prob=0.0))  # budget: 50 ms
    monkeypatch.setitem(PROFILES, "test_busy", _slow_profile(name="test_busy", busy_prob=1.0, busy_ms=500.0))
    um = UserModel(world)
    arm = Arm("h", HeuristicReranker(), cost_model=CostModel.for_heuristic())
    gated = run_ab(um, inproc_cloud, [arm], 80, seed=9, progress=False, config=PhoneConfig(device="test_slow"))[0]
    assert gated.reranks_applied == 0 and gated.fallbacks["latency_budget"] > 0
    busy = run_ab(um, inproc_cloud, [arm], 80, seed=9, progress=False, config=PhoneConfig(device="test_busy"))[0]
    assert busy.latency["device_p50_ms"] > 50  # waiting for the busy main thread counts


def test_energy_per_session_follows_the_device_profile(world, inproc_cloud):
    from edge_rerank.device_sdk.budgets import CostModel

    um = UserModel(world)
    arm = Arm("dense", HeuristicReranker(), cost_model=CostModel.for_dense_model(30_000))
    res = {d: run_ab(um, inproc_cloud, [arm], 60, seed=2, progress=False, config=PhoneConfig(device=d))[0]
           for d in ("low_end_android", "recent_iphone")}
    lo, hi = res["low_end_android"], res["recent_iphone"]
    assert lo.budget["rerank_mj_per_session"] > hi.budget["rerank_mj_per_session"] > 0
    assert lo.latency["device_p50_ms"] > hi.latency["device_p50_ms"]
    cloud = run_ab(um, inproc_cloud, [Arm("cloud")], 60, seed=2, progress=False)[0]
    assert cloud.budget["rerank_mj_per_session"] == 0 and cloud.budget["radio_mj_per_session"] > 0


def test_patient_users_scroll_further(world, inproc_cloud):
    um = UserModel(world)
    assert um.p_leave(3, 1, patience=2.0) < um.p_leave(3, 1, patience=1.0) < um.p_leave(3, 1, patience=0.5)
    phone = Phone(um, inproc_cloud, arm="c", keep_logs=False)
    specs = [world.session(i, 31) for i in range(400)]
    pat = np.array([world.user_patience[s.user] for s in specs])
    screens = np.array([phone.run(s).screens for s in specs], dtype=float)
    hi, lo = pat > np.quantile(pat, 0.75), pat < np.quantile(pat, 0.25)
    assert screens[hi].mean() > screens[lo].mean()
