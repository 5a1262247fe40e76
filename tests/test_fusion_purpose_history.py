"""A first-page purpose signal for RL fusion (issue 17): persistent per-user purposes in the click-bait world
(opt-in; every other world answers as before), the user's purpose history from the cloud's own order logs
(computed only from sessions that ended before the request: no leakage), and its place in the observation and the
bundle (off by default: old observations and bundles unchanged)."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("gymnasium")
torch = pytest.importorskip("torch")

from edge_rerank.cloud.ranking.purpose_history import PURPOSE_FEATURES, PURPOSE_FILE, OrderHistory  # noqa: E402
from edge_rerank.cloud.ranking.rl_fusion import (  # noqa: E402
    CTX_FEATURES,
    BehaviourStore,
    FusionConfig,
    load_fusion_bundle,
    load_store,
    observe,
)
from edge_rerank.device_sdk.contracts import Context, SearchRequest  # noqa: E402
from edge_rerank.simulator.order_world import MEAL_HOURS, OrderAwareUserModel, OrderWorldConfig  # noqa: E402


# ------------------------------------------------------------------ the world option
@pytest.mark.parametrize("make", [OrderWorldConfig, OrderWorldConfig.with_scroll_lever,
                                  OrderWorldConfig.with_click_bait])
def test_existing_worlds_draw_purposes_as_before(world, make):
    """The pre-option purpose formula (a copy of the old code), bit for bit, in every existing order world."""
    from edge_rerank.simulator.order_world import PURPOSE
    from edge_rerank.simulator.randomness import crn_uniform

    oc = make()
    assert oc.buyer_propensity is None
    um = OrderAwareUserModel(world, None, oc)
    for i in range(200):
        spec = world.session(i, 4)
        meal = oc.meal_bonus if spec.context.hour in MEAL_HOURS else -0.5 * oc.meal_bonus
        old = float(np.clip(oc.buyer_share + oc.trait_spread * (um.trait(spec.user) - 0.5) + meal, 0.02, 0.98))
        assert um.p_buyer(spec) == old
        assert um.is_buyer(spec) == (crn_uniform(spec.seed, PURPOSE) < old)


def test_persistent_propensity_is_per_user_and_predicts_purpose(world):
    oc = OrderWorldConfig.with_purpose_history()
    assert oc.bait_pop == OrderWorldConfig.with_click_bait().bait_pop and oc.buyer_propensity is not None
    um = OrderAwareUserModel(world, None, oc)
    prop = np.array([um.propensity(u) for u in range(world.cfg.n_users)])
    assert prop.min() >= 0.0 and prop.max() <= 1.0
    assert (prop < 0.15).mean() > 0.25 and (prop > 0.85).mean() > 0.1  # polarised: mostly buy or mostly browse
    assert OrderAwareUserModel(world, None, oc).propensity(3) == um.propensity(3)  # keyed: drawn once per user
    specs = [world.session(i, 8) for i in range(3000)]
    buyer = np.array([um.is_buyer(s) for s in specs])
    p = np.array([prop[s.user] for s in specs])
    assert buyer[p > 0.7].mean() > 0.75 and buyer[p < 0.3].mean() < 0.2  # history predicts, not perfectly
    assert 0.0 < buyer[p > 0.7].mean() < 1.0
    for s in specs[:50]:  # the hour still moves it
        meal = oc.meal_bonus if s.context.hour in MEAL_HOURS else -0.5 * oc.meal_bonus
        assert um.p_buyer(s) == pytest.approx(float(np.clip(prop[s.user] + meal, 0.02, 0.98)))


# ------------------------------------------------------------------ the order history
def test_order_history_features_and_roundtrip(tmp_path):
    h = OrderHistory()
    new = h.features("nobody")
    assert new.shape == (len(PURPOSE_FEATURES),)
    np.testing.assert_allclose(new, [0.0, 0.3, 0.0, 1.0, 0.0, 0.0], atol=1e-7)  # a new user: the prior, no orders
    h.add_sessions([("u", 0, 4), ("u", 2, 1), ("v", 0), ("u", 0, 6), ("u", 1, 2), ("u", 0, 2)])
    f = h.features("u")  # 5 sessions, 2 with an order, 3 orders, last order 1 session ago, last had none,
    # 4 / 6 / 2 pages in those without an order
    np.testing.assert_allclose(f, [0.5, (2 + 0.6) / 7, 0.6, 0.1, 0.0, 4 / 5], atol=1e-6)
    assert h.features("v")[1] < new[1] < f[1] and h.features("v")[5] == pytest.approx(1 / 5)
    again = OrderHistory.load(h.save(tmp_path / PURPOSE_FILE))
    assert again.sessions_of("u") == [0, 2, 0, 1, 0] and again.sessions_of("v") == [0]
    assert again.pages_of("u") == [4, 1, 6, 2, 2]
    np.testing.assert_array_equal(again.features("u"), f)
    for bad in ((-1, 1), (0, -1)):
        with pytest.raises(ValueError):
            h.add_session("u", *bad)
    np.savez(tmp_path / "bad.npz", users=np.array(["u"]), lens=np.array([3]), orders=np.array([1]),
             pages=np.array([1]))
    with pytest.raises(ValueError, match="sessions listed"):
        OrderHistory.load(tmp_path / "bad.npz")


def test_observation_unchanged_without_the_option(world):
    """FusionConfig's default observes exactly the old context (8 features); an attached history is not read."""
    cfg = FusionConfig(seq_len=4, emb_dim=world.cfg.emb_dim)
    assert cfg.ctx_dim == len(CTX_FEATURES) == 8 and not FusionConfig.from_dict({"alpha": 0.5}).purpose_history
    hist = OrderHistory()
    hist.add_sessions([("u1", 2)] * 5)
    req = SearchRequest("r", "s", "u1", "dinner", Context(hour=12), page_index=0)
    plain, with_hist = observe(req, BehaviourStore(cfg)), observe(req, BehaviourStore(cfg, purpose=hist))
    np.testing.assert_array_equal(plain["ctx"], with_hist["ctx"])
    on = FusionConfig(seq_len=4, emb_dim=world.cfg.emb_dim, purpose_history=True)
    o = observe(req, BehaviourStore(on, purpose=hist))
    assert o["ctx"].shape == (on.ctx_dim,) == (8 + len(PURPOSE_FEATURES),)
    np.testing.assert_array_equal(o["ctx"][:8], plain["ctx"])
    np.testing.assert_array_equal(o["ctx"][8:], hist.features("u1"))
    with pytest.raises(ValueError, match="no order history"):
        observe(req, BehaviourStore(on))


# ------------------------------------------------------------------ a small run: logs, env, bundle
@pytest.fixture(scope="module")
def purpose_run(world, tmp_path_factory):
    """The small world in the persistent-purpose world: 400 logged sessions (5 per user) with the cloud's order log,
    a two-head ranker, a purpose-history store."""
    from edge_rerank.cloud.training.cloud_ranker import CloudFeaturizer
    from edge_rerank.cloud.training.fusion_ranker import export_two_head_onnx, fusion_samples, train_two_head
    from edge_rerank.fusion import CLICK_BAIT_MAX_PAGES, collect_logs, phone_config_for
    from edge_rerank.simulator.user_model import UserModelConfig

    root = tmp_path_factory.mktemp("purpose")
    data = world.provision_cloud(root / "cloud_data")
    um = OrderAwareUserModel(world, UserModelConfig(max_pages=CLICK_BAIT_MAX_PAGES),
                             OrderWorldConfig.with_purpose_history())
    hist = OrderHistory()
    rows = collect_logs(world, um, data, 400, progress=False, phone_config=phone_config_for(True), order_log=hist)
    ranker, summary = train_two_head(fusion_samples(rows, CloudFeaturizer(data)), epochs=2, seed=0)
    export_two_head_onnx(ranker, data / "ranker.onnx")
    cfg = FusionConfig(alpha=summary["alpha"], clip=0.75, seq_len=8, emb_dim=world.cfg.emb_dim, purpose_history=True)
    store = BehaviourStore(cfg, purpose=hist)
    store.add_rows(rows)
    return {"root": root, "data": data, "um": um, "rows": rows, "hist": hist, "cfg": cfg, "store": store}


def test_order_log_records_each_finished_session_in_order(world, purpose_run):
    """The cloud's order log: one record per logged session, in session order, with that session's orders and
    page requests."""
    from edge_rerank.fusion import LOG_SEED

    hist = purpose_run["hist"]
    by_session: dict[str, int] = {}
    pages: dict[str, set] = {}
    for r in purpose_run["rows"]:
        by_session[r.session_id] = by_session.get(r.session_id, 0) + sum(c.ordered for c in r.candidates)
        pages.setdefault(r.session_id, set()).add(r.page_index)
    expect: dict[str, list[int]] = {}
    expect_pages: dict[str, list[int]] = {}
    for i in range(400):
        spec = world.session(i, LOG_SEED)
        expect.setdefault(world.user_ids[spec.user], []).append(by_session.get(spec.session_id, 0))
        expect_pages.setdefault(world.user_ids[spec.user], []).append(len(pages.get(spec.session_id, ())))
    assert {u: hist.sessions_of(u) for u in expect} == expect
    assert {u: hist.pages_of(u) for u in expect} == expect_pages
    assert sum(len(v) for v in expect.values()) == 400 and sum(map(sum, expect.values())) > 0


def test_history_predicts_the_next_sessions_purpose(world, purpose_run):
    """Users who ordered in many earlier sessions are buyers more often in their later ones (the signal works)."""
    um, hist = purpose_run["um"], purpose_run["hist"]
    specs = [world.session(i, 21) for i in range(1500)]
    share = np.array([hist.features(world.user_ids[s.user])[1] for s in specs])
    buyer = np.array([um.is_buyer(s) for s in specs])
    hi, lo = share > np.quantile(share, 0.7), share < np.quantile(share, 0.3)
    assert buyer[hi].mean() > buyer[lo].mean() + 0.1  # 5 earlier sessions per user here (the runs: 20)


def test_env_never_sees_the_current_session(world, purpose_run):
    """No leakage: the purpose part of every observation of a session is the history before it — identical whatever
    the session then does (a = 0.25 vs 1.75 change its orders), and the session is not added to it."""
    from edge_rerank.fusion import phone_config_for
    from edge_rerank.simulator.fusion_env import FusionEnv

    store, hist = purpose_run["store"], purpose_run["hist"]
    before = {u: hist.sessions_of(u) for u in world.user_ids}
    env = FusionEnv(world, purpose_run["data"], purpose_run["um"], store, fusion_cfg=purpose_run["cfg"],
                    session_seed=31, phone_config=phone_config_for(True))
    orders_differ = 0
    try:
        for i in range(40):
            user = world.user_ids[world.session(i, 31).user]
            seen, orders = {}, {}
            for u in (-1.0, 1.0):
                obs, _ = env.reset(options={"session_index": i})
                ctxs, done, n = [obs["ctx"]], False, 0
                while not done:
                    obs, _, done, _, info = env.step(np.array([u], np.float32))
                    n += info["orders"]
                    if not done:
                        ctxs.append(obs["ctx"])
                seen[u], orders[u] = np.stack(ctxs)[:, 8:], n
                np.testing.assert_array_equal(seen[u], np.broadcast_to(hist.features(user), seen[u].shape))
            orders_differ += orders[-1.0] != orders[1.0]
    finally:
        env.close()
    assert orders_differ > 0  # the sessions' outcomes did depend on the action; their observations did not
    assert {u: hist.sessions_of(u) for u in world.user_ids} == before


def test_purpose_bundle_roundtrip_and_refusals(world, purpose_run, tmp_path):
    from edge_rerank.cloud.training.fusion_rl import AgentConfig, FusionAgent, export_actor_onnx
    from edge_rerank.device_sdk.bundle import MANIFEST
    from edge_rerank.fusion import write_fusion_bundle

    cfg, store = purpose_run["cfg"], purpose_run["store"]
    torch.manual_seed(0)
    agent = FusionAgent(cfg.event_dim, cfg.ctx_dim, AgentConfig(n_policies=1))
    actor = export_actor_onnx(agent, 0, cfg.clip, tmp_path / "actor.onnx", cfg.seq_len, cfg.event_dim, cfg.ctx_dim)
    bundle = write_fusion_bundle(tmp_path / "bundle", actor=actor, cfg=cfg, store=store, name="fusion-policy",
                                 version="p1", metrics={})
    pol = load_fusion_bundle(bundle)
    assert pol.cfg.purpose_history and pol.store.purpose is not None
    u = world.user_ids[0]
    assert pol.store.purpose.sessions_of(u) == purpose_run["hist"].sessions_of(u)
    a = pol.action(SearchRequest("r", "s", u, "dinner", Context(hour=12)))
    assert sum(pol.stats.fallbacks.values()) == 0 and 0.25 <= a <= 1.75
    assert load_store(bundle, cfg).purpose.sessions_of(u) == purpose_run["hist"].sessions_of(u)
    # a bundle whose policy observes the history must carry it
    (bundle / PURPOSE_FILE).unlink()
    m = json.loads((bundle / MANIFEST).read_text())
    m["files"].pop(PURPOSE_FILE)
    m["sizes"].pop(PURPOSE_FILE)
    (bundle / MANIFEST).write_text(json.dumps(m))
    with pytest.raises(ValueError, match="purpose"):
        load_fusion_bundle(bundle)
    with pytest.raises(ValueError, match="purpose"):
        load_store(bundle, cfg)
    with pytest.raises(ValueError, match="order history"):
        write_fusion_bundle(tmp_path / "b2", actor=actor, cfg=cfg, store=BehaviourStore(cfg), name="f",
                            version="p2", metrics={})


def test_cli_and_runs_refuse_another_world(tmp_path):
    from edge_rerank.cli import build_parser
    from edge_rerank.fusion import (
        FusionTrainConfig,
        _world,
        order_world_config,
        propensity_of,
        purpose_of,
        train_fusion,
    )

    assert build_parser().parse_args(["fusion", "train", "--purpose-history"]).purpose_history is True
    assert build_parser().parse_args(["train-fusion"]).purpose_history is False
    assert build_parser().parse_args(["train-fusion", "--buyer-propensity", "0.15,0.22"]).buyer_propensity == (0.15,
                                                                                                            0.22)
    for bad in ("0.3", "0,1", "a,b"):
        with pytest.raises(SystemExit):
            build_parser().parse_args(["train-fusion", "--buyer-propensity", bad])
    assert purpose_of({"click_bait": True}) is False  # runs recorded before the option
    assert order_world_config(True, True) == OrderWorldConfig.with_click_bait()
    assert order_world_config(True, True, True) == OrderWorldConfig.with_purpose_history()
    assert order_world_config(True, True, True, (0.15, 0.22)).buyer_propensity == (0.15, 0.22)
    assert propensity_of({"buyer_propensity": [0.15, 0.22]}) == (0.15, 0.22) and propensity_of({}) is None
    _, um = _world(0, False, False, True)
    assert um.order_cfg.buyer_propensity is not None and um.cfg.max_pages == 10
    (tmp_path / "training.json").write_text(json.dumps({"config": {"scroll_lever": True, "click_bait": True},
                                                        "ranker": {"alpha": 0.5}}))
    with pytest.raises(ValueError, match="purpose_history=False"):
        train_fusion(FusionTrainConfig(out=str(tmp_path / "out"), reuse_data=str(tmp_path), purpose_history=True),
                     progress=False)
    (tmp_path / "training.json").write_text(json.dumps({"config": {"world_seed": 5}, "ranker": {"alpha": 0.5}}))
    with pytest.raises(ValueError, match="world seed 5"):  # an earlier run's ranker must be of the same world
        train_fusion(FusionTrainConfig(out=str(tmp_path / "out"), ranker_from=str(tmp_path), purpose_history=True),
                     progress=False)
