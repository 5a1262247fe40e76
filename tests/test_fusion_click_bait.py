"""The click-bait order world (issue 17's penalty ablation): the default and scroll-lever worlds answer exactly as
before the new knobs existed, each knob moves the users' responses the documented way, and in a seeded run of the
world a click-ranked fusion (low a) keeps buyers scrolling and ordering less than an order-ranked one."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("gymnasium")
pytest.importorskip("torch")

from edge_rerank.simulator.order_world import (  # noqa: E402
    OrderAwareUserModel,
    OrderUserState,
    OrderWorldConfig,
)
from edge_rerank.simulator.user_model import UserModel, UserModelConfig, UserState  # noqa: E402


class _BeforeClickBait(OrderAwareUserModel):
    """The order world's responses as they were written before the click-bait knobs (a copy of the old code)."""

    def utility(self, spec, rows):
        oc, w = self.order_cfg, self.world
        u = UserModel.utility(self, spec, rows)
        if self.is_buyer(spec):
            dist, gap = self._dist_price(spec, rows)
            return (u - oc.buyer_w_dist * dist - oc.buyer_w_price * gap + oc.buyer_inspect_quality
                    * (w.quality[rows] - 0.5) + oc.buyer_inspect_pop * (self._log_pop[rows] - 3.0))
        return u + oc.browser_w_quality * (w.quality[rows] - 0.5) + oc.browser_w_pop * (self._log_pop[rows] - 3.0)

    def p_click(self, utility, state=None):
        if state is not None and self.searching(state):
            utility += self.order_cfg.searching_click_bonus
        return UserModel.p_click(self, utility, state)

    def p_leave_state(self, screen, state):
        if not self.searching(state):
            return UserModel.p_leave_state(self, screen, state)
        c, oc = self.cfg, self.order_cfg
        p = (c.leave_base + (c.leave_per_screen + oc.searching_giveup) * screen
             + oc.searching_frustration * c.leave_per_frustrated_screen * state.frustrated)
        return min(p / state.patience, 0.9)

    def p_leave_after_order(self, state):
        return self.cfg.leave_after_order

    def p_order_item(self, utility, item_id, state):
        oc = self.order_cfg
        if not isinstance(state, OrderUserState) or state.spec is None:
            return self.p_order(utility)
        row = np.array([self.world.row_of(item_id)])
        dist, gap = self._dist_price(state.spec, row)
        u = utility - oc.order_w_dist * float(dist[0]) - oc.order_w_price * float(gap[0])
        top = oc.order_max_buyer if state.buyer else oc.order_max_browser
        return float(top / (1.0 + np.exp(-3.0 * (u - oc.order_threshold))))


@pytest.mark.parametrize("lever", [False, True])
def test_default_and_lever_worlds_answer_as_before(world, lever):
    """Every response of the default order world (and the scroll-lever world) equals the pre-click-bait code's."""
    oc = OrderWorldConfig.with_scroll_lever() if lever else OrderWorldConfig()
    now, before = OrderAwareUserModel(world, None, oc), _BeforeClickBait(world, None, oc)
    rows = np.arange(len(world.item_id))
    for i in range(40):
        spec = world.session(i, 9)
        assert np.array_equal(now.utility(spec, rows), before.utility(spec, rows))
        for buyer in (True, False):
            for clicks, orders, frustrated in [(0, 0, 0), (3, 0, 2), (2, 1, 5)]:
                st = OrderUserState(buyer=buyer, spec=spec, clicks=clicks, orders=orders, frustrated=frustrated)
                for u in (-1.0, 0.7, 2.5):
                    assert now.p_click(u, st) == before.p_click(u, st)
                    iid = int(world.item_id[(7 * i + clicks) % len(rows)])
                    assert now.p_order_item(u, iid, st) == before.p_order_item(u, iid, st)
                for screen in (0, 4, 15):
                    assert now.p_leave_state(screen, st) == before.p_leave_state(screen, st)
                assert now.p_leave_after_order(st) == before.p_leave_after_order(st) == now.cfg.leave_after_order
    assert UserModel(world).p_leave_after_order(UserState()) == UserModelConfig().leave_after_order


def test_default_order_world_sessions_unchanged(world, tmp_path):
    """Whole phone sessions (default ranker, keyed draws) in the default order world: the same outcomes as the
    pre-click-bait responses give; and the default runs' world and phone are the defaults."""
    from edge_rerank.fusion import _world, phone_config_for
    from edge_rerank.simulator.phone import Phone
    from edge_rerank.simulator.transport import InProcessCloud

    data = world.provision_cloud(tmp_path / "cloud")
    cloud = InProcessCloud(str(data), wire=False)
    for oc in (OrderWorldConfig(), OrderWorldConfig.with_scroll_lever()):
        now = Phone(OrderAwareUserModel(world, None, oc), cloud, arm="a", keep_logs=False)
        before = Phone(_BeforeClickBait(world, None, oc), cloud, arm="a", keep_logs=False)
        for i in range(25):
            a, b = now.run(world.session(i, 3)), before.run(world.session(i, 3))
            assert (a.clicks, a.orders, a.screens, a.pages, a.click_positions, a.exposed_positions) == (
                b.clicks, b.orders, b.screens, b.pages, b.click_positions, b.exposed_positions)
    for lever in (False, True):
        _, um = _world(0, lever)
        assert um.cfg == UserModelConfig() and phone_config_for(False) is None
        assert um.order_cfg == (OrderWorldConfig.with_scroll_lever() if lever else OrderWorldConfig())


def test_click_bait_knobs_move_responses_the_documented_way(world):
    oc = OrderWorldConfig.with_click_bait()
    bait, plain = OrderAwareUserModel(world, None, oc), OrderAwareUserModel(world, None, OrderWorldConfig(
        **{**oc.__dict__, "bait_pop": 0.0}))
    rows = np.arange(len(world.item_id))
    log_pop = np.log(world.popularity)
    spec = next(s for s in (world.session(i, 9) for i in range(50)) if bait.is_buyer(s))
    # clicks: popular items gain bait_pop per unit of log-popularity (every purpose) ...
    gain = bait.utility(spec, rows) - plain.utility(spec, rows)
    np.testing.assert_allclose(gain, oc.bait_pop * (log_pop - 3.0), atol=1e-12)
    # ... orders do not: the order decision takes the bait back out
    buyer = OrderUserState(buyer=True, spec=spec)
    near = np.hypot(world.loc[:, 0] - spec.context.lat, world.loc[:, 1] - spec.context.lon)
    inside, outside = int(np.argmin(near)), int(np.argmax(near))
    assert near[inside] < oc.order_radius_km < near[outside]
    for u in (0.0, 1.0, 2.0):
        iid = int(world.item_id[inside])
        assert bait.p_order_item(u + float(gain[inside]), iid, buyer) == pytest.approx(plain.p_order_item(u, iid,
                                                                                                            buyer))
        assert bait.p_order_item(u, iid, buyer) > 0.0
        assert bait.p_order_item(u + 5.0, int(world.item_id[outside]), buyer) == 0.0  # outside the delivery area
    # a searching buyer: disillusioned by each click without an order, persistent, done after an order
    browser = OrderUserState(buyer=False, spec=spec)
    assert bait.p_click(1.8, OrderUserState(buyer=True, spec=spec, clicks=3)) < bait.p_click(
        1.8, OrderUserState(buyer=True, spec=spec, clicks=0)) * 0.5
    assert bait.p_click(1.8, OrderUserState(buyer=True, spec=spec, clicks=3, orders=1)) == bait.p_click(
        1.8, OrderUserState(buyer=False, spec=spec, clicks=3))
    lever = OrderAwareUserModel(world, None, OrderWorldConfig.with_scroll_lever())
    assert bait.p_leave_state(8, buyer) == pytest.approx(lever.p_leave_state(8, buyer) / oc.searching_persistence)
    assert bait.p_leave_state(8, browser) == lever.p_leave_state(8, browser)
    assert bait.p_leave_after_order(buyer) == oc.buyer_leave_after_order
    assert bait.p_leave_after_order(browser) == bait.cfg.leave_after_order


@pytest.fixture(scope="module")
def bait_world():
    """The full-size world (its geometry sets how much of a query's recall lies inside the delivery radius)."""
    from edge_rerank.simulator.world import World, WorldConfig

    return World(WorldConfig(seed=0))


@pytest.fixture(scope="module")
def bait_run(bait_world, tmp_path_factory):
    """The click-bait world's logs (8-item pages) and a two-head ranker trained on them."""
    world = bait_world
    from edge_rerank.cloud.training.cloud_ranker import CloudFeaturizer
    from edge_rerank.cloud.training.fusion_ranker import export_two_head_onnx, fusion_samples, train_two_head
    from edge_rerank.fusion import CLICK_BAIT_MAX_PAGES, collect_logs, phone_config_for

    root = tmp_path_factory.mktemp("bait")
    data = world.provision_cloud(root / "cloud_data")
    um = OrderAwareUserModel(world, UserModelConfig(max_pages=CLICK_BAIT_MAX_PAGES), OrderWorldConfig.with_click_bait())
    rows = collect_logs(world, um, data, 800, progress=False, phone_config=phone_config_for(True))
    ranker, summary = train_two_head(fusion_samples(rows, CloudFeaturizer(data)), epochs=6, seed=0)
    export_two_head_onnx(ranker, data / "ranker.onnx")
    return {"data": data, "um": um, "rows": rows, "alpha": summary["alpha"]}


def test_click_bait_env_passes_checker_with_small_pages(bait_world, bait_run):
    from gymnasium.utils.env_checker import check_env

    from edge_rerank.cloud.ranking.rl_fusion import BehaviourStore, FusionConfig
    from edge_rerank.fusion import CLICK_BAIT_PAGE_SIZE, phone_config_for
    from edge_rerank.simulator.fusion_env import FusionEnv

    assert all(len(r.candidates) <= CLICK_BAIT_PAGE_SIZE for r in bait_run["rows"])  # logged pages are 8 items
    world = bait_world
    cfg = FusionConfig(alpha=bait_run["alpha"], clip=0.75, seq_len=8, emb_dim=world.cfg.emb_dim)
    store = BehaviourStore(cfg)
    store.add_rows(bait_run["rows"])
    env = FusionEnv(world, bait_run["data"], bait_run["um"], store, fusion_cfg=cfg, session_seed=5,
                    phone_config=phone_config_for(True))
    try:
        check_env(env, skip_render_check=True)
        env.reset(options={"session_index": 0})
        steps, done = 0, False
        while not done:
            _, _, done, _, info = env.step(np.zeros(1, np.float32))
            steps += 1
        assert steps == info["pages"] and info["pages"] <= 10
    finally:
        env.close()


def test_click_ranked_fusion_keeps_buyers_scrolling(bait_world, bait_run):
    """The documented direction, seeded: for buyers, a low fusion weight on the order model (a = 0.25: ranked by
    clicks, bait first) gives more screens and clicks and fewer orders than a = 1.75 (what fits first)."""
    from edge_rerank.fusion import _FixedA, phone_config_for
    from edge_rerank.simulator.fusion_env import FusionCloud
    from edge_rerank.simulator.phone import Phone

    um, world = bait_run["um"], bait_world
    specs = [s for s in (world.session(i, 11) for i in range(700)) if um.is_buyer(s)]
    out = {}
    for a in (0.25, 1.75):
        cloud = FusionCloud(bait_run["data"], _FixedA(bait_run["alpha"], a))
        phone = Phone(um, cloud, arm=f"a={a}", keep_logs=False, config=phone_config_for(True))
        outs = [phone.run(s) for s in specs]
        out[a] = {k: np.mean([getattr(o, k) for o in outs]) for k in ("screens", "clicks", "orders")}
    assert len(specs) > 150
    assert out[0.25]["screens"] > out[1.75]["screens"]
    assert out[0.25]["clicks"] > out[1.75]["clicks"]
    assert out[0.25]["orders"] < out[1.75]["orders"]


def test_click_bait_runs_refuse_another_world(tmp_path):
    from edge_rerank.cli import build_parser
    from edge_rerank.fusion import FusionTrainConfig, train_fusion, world_of

    assert build_parser().parse_args(["fusion", "train", "--click-bait"]).click_bait is True
    assert build_parser().parse_args(["train-fusion"]).click_bait is False
    assert world_of({"scroll_lever": True}) == (True, False)  # runs recorded before the option: no click bait
    (tmp_path / "training.json").write_text(json.dumps({"config": {"scroll_lever": True}, "ranker": {"alpha": 0.5}}))
    with pytest.raises(ValueError, match="same world"):
        train_fusion(FusionTrainConfig(out=str(tmp_path / "out"), reuse_data=str(tmp_path), scroll_lever=True,
                                       click_bait=True), progress=False)
