"""RL score fusion (issue 17): the order-aware world, the two-head ranker, per-page fusion in the pipeline, the
page-level Gymnasium env, the V + A agent, and the served policy's kill switch and fallbacks (real onnxruntime,
real Flask app)."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

pytest.importorskip("gymnasium")
torch = pytest.importorskip("torch")

from edge_rerank.cloud.ranking.fusion import TwoHeadFusion, fuse_heads, page_sequential_order  # noqa: E402
from edge_rerank.cloud.ranking.rl_fusion import (  # noqa: E402
    BEHAVIOUR_FILE,
    KILL_ENV,
    KILL_FILE,
    BehaviourStore,
    FusionConfig,
    RLFusion,
    load_fusion_bundle,
    observe,
)
from edge_rerank.device_sdk.contracts import Context, SearchRequest  # noqa: E402
from edge_rerank.simulator.order_world import OrderAwareUserModel, OrderUserState  # noqa: E402
from edge_rerank.simulator.user_model import UserModel, UserState  # noqa: E402


# ------------------------------------------------------------------ the world
def test_default_user_orders_as_before(world):
    """The default world's outcomes are unchanged: its item-level order probability is p_order(utility)."""
    um = UserModel(world)
    for u in np.linspace(-2, 4, 13):
        assert um.p_order_item(float(u), int(world.item_id[3]), UserState()) == um.p_order(float(u))


def test_order_world_buyers_order_on_distance_and_price(world):
    um = OrderAwareUserModel(world)
    specs = [world.session(i, 4) for i in range(400)]
    buyers = np.array([um.is_buyer(s) for s in specs])
    assert 0.15 < buyers.mean() < 0.6  # both purposes occur
    assert [um.is_buyer(s) for s in specs] == list(buyers)  # keyed draws: deterministic
    spec = specs[int(np.flatnonzero(buyers)[0])]
    rows = np.arange(len(world.item_id))
    dist = np.hypot(world.loc[rows, 0] - spec.intent_area[0], world.loc[rows, 1] - spec.intent_area[1])
    near, far = int(rows[np.argmin(dist)]), int(rows[np.argmax(dist)])
    buyer = OrderUserState(buyer=True, spec=spec)
    browser = OrderUserState(buyer=False, spec=spec)
    iid = int(world.item_id[near])
    assert um.p_order_item(1.5, iid, buyer) > 3 * um.p_order_item(1.5, iid, browser)
    assert um.p_order_item(1.5, iid, buyer) > um.p_order_item(1.5, int(world.item_id[far]), buyer)


def test_default_user_leaves_as_before(world):
    """The phone now asks p_leave_state(screen, state); the default user's is p_leave(screen, frustrated, patience)."""
    um = UserModel(world)
    for screen, frustrated, patience in [(0, 0, 1.0), (3, 2, 0.7), (12, 9, 1.4), (40, 40, 0.5)]:
        st_ = UserState(frustrated=frustrated, patience=patience)
        assert um.p_leave_state(screen, st_) == um.p_leave(screen, frustrated, patience)


def test_searching_buyers_keep_scrolling_then_give_up(world):
    """The scroll lever: a buyer who has not ordered is not put off by click-free screens but gives up per screen
    scrolled; after an order, and for browsers, leaving is everyone's; off (the default) it is everyone's for all."""
    from edge_rerank.simulator.order_world import OrderWorldConfig

    spec = world.session(0, 4)
    on, off = OrderAwareUserModel(world, None, OrderWorldConfig.with_scroll_lever()), OrderAwareUserModel(world)
    base = UserModel(world)
    searching = OrderUserState(buyer=True, spec=spec, frustrated=4)
    browser = OrderUserState(buyer=False, spec=spec, frustrated=4)
    ordered = OrderUserState(buyer=True, spec=spec, frustrated=4, orders=1)
    assert on.searching(searching) and not on.searching(browser) and not on.searching(ordered)
    assert on.p_leave_state(3, searching) < base.p_leave(3, 4)  # four click-free screens do not put it off ...
    assert on.p_leave_state(30, searching) > base.p_leave(30, 0)  # ... a long path does
    assert on.p_leave_state(5, searching) < on.p_leave_state(6, searching)
    for st_ in (browser, ordered):
        assert on.p_leave_state(3, st_) == base.p_leave(3, 4)
    for st_ in (searching, browser, ordered):
        assert off.p_leave_state(3, st_) == base.p_leave(3, 4)


def test_ablation_refuses_another_world(tmp_path):
    """--reuse-data trains in the world of the run it reuses: a different scroll-lever setting is refused."""
    from edge_rerank.fusion import FusionTrainConfig, train_fusion

    (tmp_path / "training.json").write_text(json.dumps({"config": {"scroll_lever": False}, "ranker": {"alpha": 0.5}}))
    with pytest.raises(ValueError, match="same world"):
        train_fusion(FusionTrainConfig(out=str(tmp_path / "out"), reuse_data=str(tmp_path), scroll_lever=True),
                     progress=False)


def test_left_unconverted_is_the_last_seen_page_without_a_click():
    from edge_rerank.fusion import _left_unconverted
    from edge_rerank.simulator.phone import SessionOutcome

    def out(exposed, clicks, exhausted=False):
        o = SessionOutcome(session_id="s", query="q", predecided=False)
        o.exposed_positions, o.click_positions, o.exhausted = list(exposed), list(clicks), exhausted
        return o

    assert _left_unconverted(out(range(30), [3]), 25)  # left on page 1 (positions 25..29), clicked on page 0 only
    assert not _left_unconverted(out(range(30), [27]), 25)
    assert not _left_unconverted(out(range(20), [3]), 25)
    assert not _left_unconverted(out(range(50), [], exhausted=True), 25)  # scrolled to the end: did not leave
    assert _left_unconverted(out(range(8), []), 25)
    # the A/B's per-session table: the buyers' columns are the buyer sessions' rows, in order
    from edge_rerank.fusion import _metrics

    outs = [out(range(30), [3]), out(range(30), [27]), out(range(50), [], exhausted=True)]
    for o, (scr, cl) in zip(outs, [(8, 1), (8, 1), (13, 0)], strict=True):
        o.screens, o.clicks = scr, cl
    t = _metrics(outs, np.array([True, False, True]))
    assert t["left_unconverted"].tolist() == [1.0, 0.0, 0.0]
    assert t["buyer_screens"].tolist() == [8.0, 13.0] and t["buyer_left_unconverted"].tolist() == [1.0, 0.0]


# ------------------------------------------------------------------ fusion math and per-page order
def test_fuse_heads_is_click_times_order_power():
    c, o = np.array([0.3, -1.0, 2.0]), np.array([-0.5, 1.0, 0.0])
    p_c, p_o = 1 / (1 + np.exp(-c)), 1 / (1 + np.exp(-o))
    np.testing.assert_allclose(fuse_heads(c, o, 0.5, 1.5), np.log(p_c * p_o ** 0.75), rtol=1e-5)
    heads = {"click": c.astype(np.float32), "order": o.astype(np.float32)}
    np.testing.assert_array_equal(TwoHeadFusion(0.5).fuse(None, heads), fuse_heads(c, o, 0.5, 1.0))
    with pytest.raises(KeyError, match="click"):
        TwoHeadFusion(0.5).fuse(None, {"score": c})


@given(st.integers(1, 60), st.integers(1, 4), st.integers(1, 10), st.integers(0, 2**31 - 1))
def test_page_sequential_order_pages_are_disjoint_top_picks(n, pages, size, seed):
    rng = np.random.default_rng(seed)
    scores = [rng.integers(0, 5, n).astype(np.float32) for _ in range(pages)]  # ties on purpose
    ids = rng.permutation(n).astype(np.int64) + 100
    order = page_sequential_order(scores, ids, size, max_results=10_000)
    assert sorted(order.tolist()) == list(range(n))  # every candidate once
    taken: set[int] = set()
    for j in range(pages - 1):
        page = order[j * size: (j + 1) * size]
        rest = [i for i in range(n) if i not in taken]
        best = sorted(rest, key=lambda i: (-scores[j][i], ids[i]))[:size]
        assert page.tolist() == best
        taken.update(page.tolist())
    if pages == 1:
        assert order.tolist() == sorted(range(n), key=lambda i: (-scores[0][i], ids[i]))


# ------------------------------------------------------------------ trained pieces (small, shared)
@pytest.fixture(scope="module")
def fusion_run(world, tmp_path_factory):
    """A small world's cloud data with a two-head ranker.onnx, its logs' behaviour store, an (untrained) agent's
    actor exported as a fusion bundle."""
    from edge_rerank.cloud.training.cloud_ranker import CloudFeaturizer
    from edge_rerank.cloud.training.fusion_ranker import export_two_head_onnx, fusion_samples, train_two_head
    from edge_rerank.cloud.training.fusion_rl import AgentConfig, FusionAgent, export_actor_onnx
    from edge_rerank.fusion import collect_logs, write_fusion_bundle

    root = tmp_path_factory.mktemp("fusion")
    data = world.provision_cloud(root / "cloud_data")
    um = OrderAwareUserModel(world)
    rows = collect_logs(world, um, data, 200, progress=False)
    ranker, summary = train_two_head(fusion_samples(rows, CloudFeaturizer(data)), epochs=2)
    export_two_head_onnx(ranker, data / "ranker.onnx")
    cfg = FusionConfig(alpha=summary["alpha"], clip=0.5, seq_len=8, emb_dim=world.cfg.emb_dim)
    store = BehaviourStore(cfg)
    store.add_rows(rows)
    torch.manual_seed(0)
    agent = FusionAgent(cfg.event_dim, cfg.ctx_dim, AgentConfig(n_policies=1))
    torch.nn.init.normal_(agent.actors[0][-1].weight, std=2.0)  # a policy that moves a (state dependent)
    actor = export_actor_onnx(agent, 0, cfg.clip, root / "actor.onnx", cfg.seq_len, cfg.event_dim, cfg.ctx_dim)
    bundle = write_fusion_bundle(root / "bundle", actor=actor, cfg=cfg, store=store, name="fusion-policy",
                                 version="t1", metrics={})
    return {"root": root, "data": data, "um": um, "rows": rows, "cfg": cfg, "store": store, "bundle": bundle,
            "agent": agent, "summary": summary}


def test_two_head_ranker_exports_heads_and_alpha(fusion_run):
    from edge_rerank.cloud.ranking.fine import load_ranker

    r = load_ranker(fusion_run["data"])
    assert set(r.head_names) == {"click", "order"}
    x = np.random.default_rng(0).standard_normal((7, 6)).astype(np.float32)
    heads, hidden = r.forward_heads(x)
    assert hidden.shape == (7, r.dense_dim)
    np.testing.assert_allclose(heads["score"], fuse_heads(heads["click"], heads["order"],
                                                          fusion_run["summary"]["alpha"]), atol=1e-5)


def test_behaviour_store_roundtrip_and_observation(fusion_run, tmp_path):
    cfg, store = fusion_run["cfg"], fusion_run["store"]
    path = store.save(tmp_path / BEHAVIOUR_FILE)
    again = BehaviourStore.load(path, cfg)
    users = sorted(store._counts)
    assert users and len(again) == len(store)
    for u in users[:20]:
        np.testing.assert_array_equal(store.history(u)[0], again.history(u)[0])
    req = SearchRequest("r", "s", users[0], "dinner", Context(hour=12), page_index=1)
    obs = observe(req, again)
    assert obs["seq"].shape == (cfg.seq_len, cfg.event_dim) and obs["ctx"].shape == (cfg.ctx_dim,)
    unknown = observe(SearchRequest("r", "s", "never-opted-in", "dinner"), again)
    assert not unknown["seq"].any()  # no logs, no sequence
    with pytest.raises(ValueError, match="sequences"):
        BehaviourStore.load(path, FusionConfig(seq_len=cfg.seq_len + 1, emb_dim=cfg.emb_dim))


# ------------------------------------------------------------------ serving: clip, kill switch, fallbacks
@pytest.fixture()
def policy(fusion_run):
    return load_fusion_bundle(fusion_run["bundle"])


def _reqs(store, n=40):
    users = sorted(store._counts)
    return [SearchRequest(f"r{k}", f"s{k}", users[k % len(users)], "dinner", Context(hour=7 + k % 16),
                          page_index=k % 3) for k in range(n)]


def test_actions_are_clipped_and_state_dependent(policy, fusion_run):
    from edge_rerank.cloud.training.fusion_rl import ActorExport

    reqs = _reqs(fusion_run["store"])
    a = np.array([policy.action(r) for r in reqs])
    ref = ActorExport(fusion_run["agent"], 0, policy.cfg.clip).eval()
    with torch.no_grad():  # onnxruntime matches torch
        for r, got in zip(reqs[:10], a[:10], strict=True):
            o = observe(r, policy.store)
            want = float(ref(torch.from_numpy(o["seq"][None]), torch.from_numpy(o["ctx"][None]))[0])
            assert abs(got - want) < 1e-5
    assert np.all(a >= 1 - policy.cfg.clip - 1e-6) and np.all(a <= 1 + policy.cfg.clip + 1e-6)
    assert a.std() > 1e-3  # not a constant
    assert not policy.stats.fallbacks and len(policy.latencies_ms) == len(a)


def test_kill_switch_file_and_env(policy, fusion_run, monkeypatch):
    req = _reqs(fusion_run["store"], 1)[0]
    kill = fusion_run["bundle"] / KILL_FILE
    kill.touch()
    try:
        assert policy.action(req) == 1.0 and policy.stats.killed == 1
    finally:
        kill.unlink()
    monkeypatch.setenv(KILL_ENV, "1")
    assert policy.action(req) == 1.0 and policy.stats.killed == 2
    monkeypatch.delenv(KILL_ENV)
    policy.action(req)
    assert policy.stats.killed == 2


def test_faults_fall_back_to_baseline(fusion_run, tmp_path):
    cfg, store = fusion_run["cfg"], fusion_run["store"]
    req = _reqs(store, 1)[0]
    # a state the actor cannot take (wrong sequence length): onnxruntime refuses -> a = 1, counted
    wrong = BehaviourStore(FusionConfig(alpha=cfg.alpha, clip=cfg.clip, seq_len=cfg.seq_len + 3, emb_dim=cfg.emb_dim))
    wrong.add_rows(fusion_run["rows"][:50])
    p = RLFusion(fusion_run["bundle"] / "actor.onnx", cfg, wrong)
    assert p.action(SearchRequest("r", "s", fusion_run["rows"][0].user_id, "dinner")) == 1.0
    assert sum(p.stats.fallbacks.values()) == 1
    # an actor that outputs NaN (its weights are NaN) -> a = 1, counted as non_finite
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(fusion_run["bundle"] / "actor.onnx"))
    for init in model.graph.initializer:
        w = numpy_helper.to_array(init)
        if w.dtype == np.float32:
            init.CopyFrom(numpy_helper.from_array(np.full_like(w, np.nan), init.name))
    onnx.save(model, str(tmp_path / "nan.onnx"))
    p = RLFusion(tmp_path / "nan.onnx", cfg, store)
    assert p.action(req) == 1.0 and p.stats.fallbacks["non_finite"] == 1


def test_tampered_bundle_is_refused(fusion_run, tmp_path):
    from edge_rerank.device_sdk.bundle import BundleError

    copy = shutil.copytree(fusion_run["bundle"], tmp_path / "b")
    with open(copy / BEHAVIOUR_FILE, "ab") as f:
        f.write(b"x")
    with pytest.raises(BundleError, match="sha256"):
        load_fusion_bundle(copy)


def test_registry_publish_and_server_uses_policy(fusion_run, tmp_path):
    """Published through the registry and promoted: /v1/search ranks page by page with the agent's actions, pages
    of one search never repeat an item; a ranker without heads keeps SingleHead."""
    from edge_rerank.cloud.app import CloudConfig, create_app
    from edge_rerank.cloud.ranking.fusion import SingleHead
    from edge_rerank.cloud.registry import Registry
    from edge_rerank.device_sdk import wire

    reg_dir = tmp_path / "registry"
    reg = Registry(reg_dir)
    m = reg.publish(fusion_run["bundle"])
    reg.promote(m.name, m.version)
    app = create_app(CloudConfig(data_dir=str(fusion_run["data"]), registry_dir=str(reg_dir)))
    fusion = app.extensions["edge_rerank.fusion"]
    assert isinstance(fusion, RLFusion) and fusion.version == "fusion-policy@t1"
    client = app.test_client()
    user = sorted(fusion_run["store"]._counts)[0]
    seen: list[int] = []
    for k in range(3):
        req = SearchRequest(f"r{k}", "s1", user, "dinner", Context(lat=3.0, lon=4.0, hour=19), page_index=k)
        r = client.post("/v1/search", data=wire.request_to_proto(req).SerializeToString(),
                        headers={"Content-Type": "application/x-protobuf", "Accept": "application/x-protobuf"})
        assert r.status_code == 200
        page = wire.page_from_proto(wire.parse(wire.pb.SearchPage, r.data))
        seen.extend(it.item_id for it in page.items)
    assert len(seen) == len(set(seen)) and len(seen) > 25
    assert fusion.stats.requests >= 3 and not fusion.stats.fallbacks
    # without click / order heads the policy is not used
    plain = tmp_path / "plain"
    shutil.copytree(fusion_run["data"], plain)
    (plain / "ranker.onnx").unlink()
    shutil.copytree(fusion_run["bundle"], plain / "fusion")
    app2 = create_app(CloudConfig(data_dir=str(plain)))
    assert app2.extensions["edge_rerank.fusion"] is None
    assert isinstance(app2.extensions["edge_rerank.pipeline"].fusion, SingleHead)


# ------------------------------------------------------------------ env and agent
@pytest.fixture(scope="module")
def env(world, fusion_run):
    from edge_rerank.simulator.fusion_env import FusionEnv

    e = FusionEnv(world, fusion_run["data"], fusion_run["um"], fusion_run["store"], fusion_cfg=fusion_run["cfg"],
                  session_seed=5)
    yield e
    e.close()


def test_fusion_env_passes_checker(env):
    from gymnasium.utils.env_checker import check_env

    check_env(env, skip_render_check=True)


def test_env_rewards_and_penalties(env):
    from edge_rerank.simulator.fusion_env import RewardConfig

    rc = RewardConfig(order_weight=2.0, no_conversion_penalty=0.3, leave_penalty=0.5)
    assert rc.reward(2, 1, False) == 4.0
    assert rc.reward(0, 0, False) == pytest.approx(-0.3)
    assert rc.reward(0, 0, True) == pytest.approx(-0.8)
    assert rc.reward(1, 0, True) == 1.0
    # an episode: one step per page request, a recorded per page, clicks add up to the session's
    obs, _ = env.reset(seed=3)
    steps, clicks, done = 0, 0, False
    while not done:
        obs, r, done, _, info = env.step(np.array([0.5], np.float32))
        steps += 1
        clicks += info["clicks"]
    assert steps == info["pages"] and clicks == env._session.out.clicks
    assert env.last_actions == [1.0 + 0.5 * env.fusion_cfg.clip] * steps
    with pytest.raises(RuntimeError):
        env.step(np.zeros(1, np.float32))


def test_agent_v_plus_a_and_training(env):
    from edge_rerank.cloud.training.fusion_rl import AgentConfig, FusionAgent, train_fusion_agent

    cfg = AgentConfig(n_policies=2, pretrain_episodes=40, pretrain_epochs=15, episodes=30, eval_episodes=8,
                      batch_size=32)
    fresh = FusionAgent(env.fusion_cfg.event_dim, env.fusion_cfg.ctx_dim, cfg)
    s = torch.randn(5, cfg.state_dim)
    # A(s, a = 1) = 0 by construction, so Q(s, 1) = V(s): V is the baseline's value
    assert torch.equal(fresh.q(1, s, torch.zeros(5)), fresh.value(s))
    assert torch.all(fresh.act(0, s) == 0)  # every policy starts at a = 1
    agent, summary = train_fusion_agent(env, cfg)
    assert summary["v_pretrain_mse"][-1] < summary["v_pretrain_mse"][0]
    assert summary["chosen_policy"] in (0, 1) and len(summary["eval"]) == 2
    assert all(len(r) == len(summary["curves"]["episode"]) for r in summary["curves"]["reward"])
    json.dumps(summary, default=float)


def test_twin_critic_targets_the_smaller_advantage(env):
    from edge_rerank.cloud.training.fusion_rl import AgentConfig, FusionAgent, train_fusion_agent

    cfg = AgentConfig(n_policies=1, pretrain_episodes=30, pretrain_epochs=5, episodes=20, eval_episodes=4,
                      batch_size=32, twin_critic=True)
    fresh = FusionAgent(env.fusion_cfg.event_dim, env.fusion_cfg.ctx_dim, cfg)
    s, u = torch.randn(64, cfg.state_dim), torch.rand(64) * 2 - 1
    a1, a2 = fresh.advantage(0, s, u), fresh.advantage(0, s, u, twin=True)
    assert not torch.equal(a1, a2)  # two heads, initialised apart
    assert torch.equal(fresh.advantage_min(0, s, u), torch.minimum(a1, a2))
    assert torch.equal(fresh.advantage(0, s, torch.zeros(64), twin=True), torch.zeros(64))  # A(s, a = 1) = 0 too
    single = FusionAgent(env.fusion_cfg.event_dim, env.fusion_cfg.ctx_dim, AgentConfig(n_policies=1))
    assert len(single.adv2) == 0 and torch.equal(single.advantage_min(0, s, u), single.advantage(0, s, u))
    agent, summary = train_fusion_agent(env, cfg)
    assert np.isfinite(summary["predicted_episode_gain"]) and np.isfinite(summary["mean_advantage"])
    assert len(summary["curves"]["q_loss"]) == len(summary["curves"]["episode"])


def test_learner_options_train_on_the_env(env):
    """The Monte Carlo target is what run_episode stores (r_t + gamma ret_{t+1}, r at the last page), and the three
    learner options train end to end on the real env (docs/results/rl_fusion.md "RL fusion: what the learner needs")."""
    from edge_rerank.cloud.training.fusion_rl import AgentConfig, Transitions, run_episode, train_fusion_agent

    buf = Transitions()
    for seed in range(4):
        run_episode(env, lambda _o: -0.5, seed=seed, buf=buf, gamma=0.9)
    r, ret, done = (np.asarray(getattr(buf, f)) for f in ("r", "ret", "done"))
    assert done.sum() == 4 and np.allclose(ret[done == 1], r[done == 1])
    inner = np.flatnonzero(done == 0)
    assert np.allclose(ret[inner], r[inner] + 0.9 * ret[inner + 1])
    cfg = AgentConfig(n_policies=1, pretrain_episodes=30, pretrain_epochs=5, episodes=20, eval_episodes=4,
                      batch_size=32, explore_uniform=0.5, actor_preact_limit=2.5, v_anchor="td")
    for c in (cfg, replace(cfg, critic_target="mc", v_anchor="mc")):
        _agent, summary = train_fusion_agent(env, c)
        assert summary["config"] == c.to_dict()
        assert np.isfinite(summary["predicted_episode_gain"]) and np.isfinite(summary["curves"]["q_loss"][-1])


def test_cli_refuses_bad_clip(capsys):
    from edge_rerank.cli import main

    assert main(["fusion", "train", "--clip", "1.5", "--out", "/nonexistent/never"]) == 2
    assert "--clip" in capsys.readouterr().err
    assert main(["train-fusion", "--clip", "0", "--out", "/nonexistent/never"]) == 2
    from edge_rerank.cli import build_parser

    assert build_parser().parse_args(["fusion", "train", "--no-progress"]).no_progress is True
    assert build_parser().parse_args(["fusion", "ab", "--run", "."]).no_progress is False
    tr = build_parser().parse_args(["fusion", "train", "--scroll-lever", "--twin-critic"])
    assert tr.scroll_lever is True and tr.twin_critic is True
    tr = build_parser().parse_args(["train-fusion"])
    assert tr.scroll_lever is False and tr.twin_critic is False  # the world and critic measured in the main table
    assert not Path("/nonexistent/never").exists()


# ------------------------------------------------------------------ paired rollouts (common random numbers)
def test_paired_branches_replay_the_session_exactly(env):
    """A branch replays the session with the same random numbers: the same actions give the same pages, clicks and
    orders in another env, and both branches with a = 1 at a page give the same return (target 0)."""
    from edge_rerank.simulator.fusion_env import discounted, play

    pr = env.paired_rollouts(gamma=0.9)
    rng = np.random.default_rng(0)
    try:
        for i in range(6):
            us = rng.uniform(-1, 1, 8).tolist()
            main = play(env, i, us)
            assert play(pr.env, i, us) == main
            for t in range(len(main)):
                gi, gii = pr.advantage(i, us[:t], 0.0)
                assert gi == gii  # the same a in both branches: exactly the same continuation
            last = len(main) - 1  # at the last page, branch (i) is the episode itself
            assert pr.continuation(i, us[:last], us[last]) == main[last:]
            assert pr.advantage(i, us[:last], us[last])[0] == discounted(main[last:], env.reward_cfg, 0.9)
        with pytest.raises(ValueError, match="first-page"):
            pr.advantage(0, [0.3], 0.5, luck_seed_ii=1)
        short = env.paired_rollouts(horizon=1)
        assert len(short.continuation(0, [], 0.5)) == 1
        short.close()
    finally:
        pr.close()


def test_paired_rollouts_share_their_noise(env):
    """What the pairing is for: at first-page states, G_i − G_ii with common random numbers is mostly exactly 0 and
    has a far smaller spread than the same difference with (ii) on other luck (the same observation). Fails if the
    branches do not share their random numbers."""
    pr = env.paired_rollouts(gamma=0.9)
    rng = np.random.default_rng(1)
    crn, ind = [], []
    try:
        for i in range(30):
            u = float(rng.choice([-1.0, 1.0]))
            gi, gii = pr.advantage(i, [], u)
            crn.append(gi - gii)
            gi2, gind = pr.advantage(i, [], u, luck_seed_ii=10_000 + i)
            assert gi2 == gi
            ind.append(gi - gind)
    finally:
        pr.close()
    crn, ind = np.array(crn), np.array(ind)
    assert np.mean(crn == 0) > 0.3 and np.mean(crn == 0) > 2 * np.mean(ind == 0)
    assert crn.std() < 0.5 * ind.std()


def test_paired_targets_and_training(env):
    """run_episode stores G_i − G_ii per page (0 without playing for u = 0); the paired agent trains end to end and
    refuses the critic options it replaces."""
    from edge_rerank.cloud.training.fusion_rl import (
        AgentConfig,
        Transitions,
        paired_targets,
        run_episode,
        train_fusion_agent,
    )

    pr = env.paired_rollouts(gamma=0.9)
    try:
        actions = [0.7, 0.0, -0.4, -1.0, 0.2, 0.5, -0.6, 0.1] * 3

        def scripted():
            it = iter(actions)
            return lambda _o: next(it)

        seed = next(sd for sd in range(11, 200)  # a session of 3+ pages under these actions (a zero u inside)
                    if run_episode(env, scripted(), seed=sd)["steps"] >= 3)
        buf = Transitions()
        played0 = pr.sessions_played
        run_episode(env, scripted(), seed=seed, buf=buf, gamma=0.9, paired=pr)
        index = env.reset(seed=seed)[1]["session_index"]
        u_ep = list(buf.u)
        assert len(u_ep) >= 3 and 0.0 in u_ep[:-1]
        # each play is branch (i) at one page and branch (ii) at the next: one replay per nonzero u (and a first (ii))
        assert pr.sessions_played - played0 <= sum(u != 0.0 for u in u_ep[:-1]) + 1
        for t, target in enumerate(buf.adv):  # against both branches replayed afresh, page by page
            gi, gii = (0.0, 0.0) if u_ep[t] == 0.0 else pr.advantage(index, u_ep[:t], u_ep[t])
            assert target == pytest.approx(gi - gii, abs=1e-12)
        short = env.paired_rollouts(gamma=0.9, horizon=1)  # with a horizon every branch is played
        try:
            last_r = buf.r[len(u_ep) - 1]
            assert short.episode_targets(index, u_ep, last_r) == [
                0.0 if u == 0.0 else float(np.subtract(*short.advantage(
                    index, u_ep[:t], u, last_reward=last_r if t == len(u_ep) - 1 else None)))
                for t, u in enumerate(u_ep)]
        finally:
            short.close()
        played = pr.sessions_played
        steps = [(None, 0.0, 1.0, None, False), (None, 0.0, 0.0, None, True)]
        assert paired_targets(pr, index, steps) == [0.0, 0.0] and pr.sessions_played == played
        plain = Transitions()
        run_episode(env, lambda _o: 0.5, seed=11, buf=plain, gamma=0.9)
        assert np.isnan(plain.adv).all() and plain.u == [0.5] * len(plain)
    finally:
        pr.close()
    cfg = AgentConfig(n_policies=1, pretrain_episodes=20, pretrain_epochs=3, episodes=12, eval_episodes=4,
                      batch_size=16, paired_rollouts=True, explore_uniform=0.5, actor_preact_limit=2.5)
    _agent, summary = train_fusion_agent(env, cfg)
    p = summary["paired"]
    assert p["targets"] > 0 and p["sessions_replayed"] > 0 and np.isfinite(p["target_sd"])
    assert np.isfinite(summary["curves"]["q_loss"][-1]) and summary["config"]["paired_rollouts"] is True
    for kw in ({"twin_critic": True}, {"critic_target": "mc"}, {"v_anchor": "td"}):
        with pytest.raises(ValueError, match="paired_rollouts"):
            AgentConfig(paired_rollouts=True, **kw)
    with pytest.raises(ValueError, match="paired_horizon"):
        AgentConfig(paired_horizon=-1)
    with pytest.raises(TypeError, match="simulator-only"):
        train_fusion_agent(object(), cfg)


def test_cli_paired_rollout_flags(capsys):
    from edge_rerank.cli import build_parser, main

    a = build_parser().parse_args(["fusion", "train", "--paired-rollouts", "--paired-horizon", "2"])
    assert a.paired_rollouts is True and a.paired_horizon == 2
    d = build_parser().parse_args(["fusion", "train"])
    assert d.paired_rollouts is False and d.paired_horizon == 0
    assert main(["fusion", "train", "--paired-horizon", "2", "--out", "/nonexistent/never"]) == 2
    assert "--paired-horizon" in capsys.readouterr().err
    assert main(["fusion", "train", "--paired-rollouts", "--twin-critic", "--out", "/nonexistent/never"]) == 2
    assert "--paired-rollouts" in capsys.readouterr().err
