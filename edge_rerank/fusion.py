"""RL score fusion end to end (issue 17): order-aware world -> baseline logs -> two-head ranker -> behaviour store
-> V pre-training + DDPG in ``FusionEnv`` -> ONNX actor in a registry bundle -> A/B in the simulator.

``train_fusion`` and ``fusion_ab`` are what ``edge-rerank fusion train|ab`` and ``bench/fusion_ab.py`` call.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from edge_rerank.cloud.ranking.fusion import TwoHeadFusion
from edge_rerank.cloud.ranking.purpose_history import PURPOSE_FILE, OrderHistory
from edge_rerank.cloud.ranking.rl_fusion import (
    ACTOR_FILE,
    BEHAVIOUR_FILE,
    FUSION_CONFIG,
    BehaviourStore,
    FusionConfig,
    RLFusion,
    load_fusion_bundle,
    load_store,
)
from edge_rerank.simulator.order_world import OrderAwareUserModel, OrderWorldConfig
from edge_rerank.simulator.world import World, WorldConfig

LOG_SEED, TRAIN_SEED, AB_SEED = 1, 2, 3  # run seeds: logs, RL training sessions, A/B sessions (all disjoint)


@dataclass
class FusionTrainConfig:
    out: str = "runs/fusion"
    world_seed: int = 0
    scroll_lever: bool = False  # the order world's searching buyers (simulator.order_world)
    click_bait: bool = False  # ... plus click bait (OrderWorldConfig.with_click_bait; implies the scroll lever)
    # ... plus persistent per-user purposes, and the agent observes the user's purpose history from the cloud's order
    # logs (OrderWorldConfig.with_purpose_history, FusionConfig.purpose_history; implies click bait)
    purpose_history: bool = False
    buyer_propensity: tuple[float, float] | None = None  # its Beta(a, b) (None: the preset's)
    log_sessions: int = 3000
    ranker_epochs: int = 8
    clip: float = 0.75
    seq_len: int = 16
    order_weight: float = 1.0
    no_conversion_penalty: float = 0.3
    leave_penalty: float = 0.5
    n_policies: int = 2
    twin_critic: bool = False  # clipped double-Q + target smoothing (AgentConfig.twin_critic)
    # the learner's options (AgentConfig; docs/results/rl_fusion.md "RL fusion: what the learner needs");
    # defaults: the article's agent
    critic_target: str = "td"
    explore_uniform: float = 0.0
    actor_preact_limit: float = 0.0
    v_anchor: str = "mc"
    # the advantage target from common-random-number paired rollouts (AgentConfig.paired_rollouts; simulator-only)
    paired_rollouts: bool = False
    paired_horizon: int = 0
    pretrain_episodes: int = 1500
    episodes: int = 3000
    eval_episodes: int = 800
    seed: int = 0
    version: str = "1"
    name: str = "fusion-policy"
    registry_dir: str | None = None  # publish the bundle there too
    reuse_data: str | None = None  # an earlier run's cloud_data + logs (skip logs and ranker: ablations)
    # an earlier run's two-head ranker (its cloud_data, copied): log this world's baseline traffic with it (a = 1)
    # for the behaviour store / order history, but do not train a new ranker
    ranker_from: str | None = None


def order_world_config(scroll_lever: bool = False, click_bait: bool = False, purpose_history: bool = False,
                       buyer_propensity: tuple[float, float] | None = None) -> OrderWorldConfig:
    """The order world a run trains and is A/B-tested in: default, with the scroll lever, with click bait, or with
    click bait and persistent purposes (``buyer_propensity``: their Beta, None: the preset's)."""
    if purpose_history:
        kw = {"buyer_propensity": tuple(float(x) for x in buyer_propensity)} if buyer_propensity else {}
        return OrderWorldConfig.with_purpose_history(**kw)
    if click_bait:
        return OrderWorldConfig.with_click_bait()
    return OrderWorldConfig.with_scroll_lever() if scroll_lever else OrderWorldConfig()


def world_of(config: dict) -> tuple[bool, bool]:
    """(scroll_lever, click_bait) of a run's recorded config (runs before click bait existed: False)."""
    return bool(config.get("scroll_lever", False)), bool(config.get("click_bait", False))


def purpose_of(config: dict) -> bool:
    """Whether a run's recorded config used persistent purposes + the purpose history (older runs: False)."""
    return bool(config.get("purpose_history", False))


def propensity_of(config: dict) -> tuple[float, float] | None:
    """A persistent-purpose run's recorded Beta of the buyer propensity (None: the preset's)."""
    bp = config.get("buyer_propensity")
    return (float(bp[0]), float(bp[1])) if bp else None


# The click-bait world's app loads small pages (a page request every two screens, as the seed's feed does; at most
# 80 items a session, the default's 3 x 25 = 75): with 25-item pages a session makes 1-3 page requests and a
# page-level penalty cannot see how deep users scroll.
CLICK_BAIT_PAGE_SIZE, CLICK_BAIT_MAX_PAGES = 8, 10


def phone_config_for(click_bait: bool = False):
    """The phone of a run's world (None: the default ``PhoneConfig``)."""
    from edge_rerank.simulator.phone import PhoneConfig

    return PhoneConfig(page_size=CLICK_BAIT_PAGE_SIZE) if click_bait else None


def _world(seed: int, scroll_lever: bool = False, click_bait: bool = False, purpose_history: bool = False,
           buyer_propensity: tuple[float, float] | None = None) -> tuple[World, OrderAwareUserModel]:
    from edge_rerank.simulator.user_model import UserModelConfig

    w = World(WorldConfig(seed=seed))
    ucfg = UserModelConfig(max_pages=CLICK_BAIT_MAX_PAGES) if click_bait or purpose_history else None
    return w, OrderAwareUserModel(w, ucfg, order_world_config(scroll_lever, click_bait, purpose_history,
                                                              buyer_propensity))


def collect_logs(world: World, um: OrderAwareUserModel, data_dir: Path, n: int, *, progress: bool = True,
                 phone_config=None, order_log=None) -> list:
    """Baseline traffic: the order-aware users on the cloud's default ranker, impression logs kept (opt-in).
    ``order_log`` (an ``OrderHistory``): also record each session, after it ended, as the cloud's order service
    and search logs see it (user, orders taken) — for every user, opted in or not."""
    from tqdm.auto import tqdm

    from edge_rerank.simulator.phone import Phone
    from edge_rerank.simulator.transport import InProcessCloud

    phone = Phone(um, InProcessCloud(str(data_dir), wire=False), arm="cloud", keep_logs=True, config=phone_config)
    rows = []
    for i in tqdm(range(n), desc="baseline logs", unit="session", disable=not progress, leave=False):
        spec = world.session(i, LOG_SEED)
        out = phone.run(spec)
        rows.extend(out.rows)
        if order_log is not None:
            order_log.add_session(world.user_ids[spec.user], out.orders, out.pages)
    return rows


def write_fusion_bundle(out: Path, *, actor: Path, cfg: FusionConfig, store: BehaviourStore, name: str,
                        version: str, metrics: dict) -> Path:
    """A registry bundle: actor.onnx (the model file), fusion.json, behaviour.npz, the device feature config every
    bundle carries (unused by the fusion policy), manifest with sha256 of each file; read back through the
    verifier."""
    from edge_rerank.device_sdk.bundle import MANIFEST, Manifest, TensorSpec, read_bundle, sha256_file
    from edge_rerank.device_sdk.features import FeatureConfig

    out.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(actor, out / ACTOR_FILE)
    (out / FUSION_CONFIG).write_text(json.dumps(cfg.to_dict(), indent=1))
    store.save(out / BEHAVIOUR_FILE)
    fc = FeatureConfig()
    fc.save(out / "feature_config.json")
    files = [ACTOR_FILE, FUSION_CONFIG, BEHAVIOUR_FILE, "feature_config.json"]
    if cfg.purpose_history:  # the cloud's order-log snapshot the policy observes
        if store.purpose is None:
            raise ValueError("a purpose-history policy needs the store's order history")
        store.purpose.save(out / PURPOSE_FILE)
        files.append(PURPOSE_FILE)
    m = Manifest(name=name, version=version, format="onnx", model_file=ACTOR_FILE,
                 feature_config_file="feature_config.json", feature_config_fingerprint=fc.fingerprint(),
                 inputs=[TensorSpec("seq", [1, cfg.seq_len, cfg.event_dim], "float32"),
                         TensorSpec("ctx", [1, cfg.ctx_dim], "float32")],
                 outputs=[TensorSpec("a", [1], "float32")],
                 files={f: sha256_file(out / f) for f in files}, sizes={f: (out / f).stat().st_size for f in files},
                 metrics={k: float(v) for k, v in metrics.items()})
    (out / MANIFEST).write_text(m.to_json())
    read_bundle(out)
    return out


def train_fusion(cfg: FusionTrainConfig, *, progress: bool = True) -> dict:
    """The whole training story; writes <out>/cloud_data (with the two-head ranker.onnx), <out>/bundle,
    <out>/training.json and <out>/training_curves.png. Returns the summary."""
    import torch

    from edge_rerank.cloud.training.cloud_ranker import CloudFeaturizer
    from edge_rerank.cloud.training.fusion_ranker import export_two_head_onnx, fusion_samples, train_two_head
    from edge_rerank.cloud.training.fusion_rl import AgentConfig, export_actor_onnx, plot_curves, train_fusion_agent
    from edge_rerank.simulator.fusion_env import FusionEnv, RewardConfig

    torch.set_num_threads(1)
    if cfg.purpose_history:
        cfg = replace(cfg, click_bait=True, scroll_lever=True)  # persistent purposes live in the click-bait world
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    say = print if progress else (lambda *_a, **_k: None)
    t0 = time.perf_counter()
    world, um = _world(cfg.world_seed, cfg.scroll_lever, cfg.click_bait, cfg.purpose_history, cfg.buyer_propensity)
    summary: dict = {"config": asdict(cfg)}
    fcfg = FusionConfig(clip=cfg.clip, seq_len=cfg.seq_len, purpose_history=cfg.purpose_history)
    if cfg.reuse_data:
        src = Path(cfg.reuse_data)
        data_dir = src / "cloud_data"
        prev = json.loads((src / "training.json").read_text())
        bp = tuple(cfg.buyer_propensity) if cfg.buyer_propensity else None
        if ((*world_of(prev["config"]), purpose_of(prev["config"]), propensity_of(prev["config"]))
                != (cfg.scroll_lever, cfg.click_bait, cfg.purpose_history, bp)):
            lever, bait = world_of(prev["config"])
            raise ValueError(f"--reuse-data {src}: trained with scroll_lever={lever}, click_bait={bait}, "
                             f"purpose_history={purpose_of(prev['config'])}, buyer_propensity="
                             f"{propensity_of(prev['config'])}; an ablation must run in the same world")
        alpha = float(prev["ranker"]["alpha"])
        summary["ranker"] = prev["ranker"]
        rows = None
        store = load_store(src / "bundle", replace(fcfg, alpha=alpha))
    else:
        data_dir = out / "cloud_data"
        if data_dir.exists():
            shutil.rmtree(data_dir)
        if cfg.ranker_from:  # the earlier run's cloud (catalog, embeddings, two-head ranker) serves the logs
            src = Path(cfg.ranker_from)
            prev = json.loads((src / "training.json").read_text())
            if int(prev["config"]["world_seed"]) != cfg.world_seed:
                raise ValueError(f"--ranker-from {src}: world seed {prev['config']['world_seed']}, not "
                                 f"{cfg.world_seed}")
            shutil.copytree(Path(prev.get("cloud_data", src / "cloud_data")), data_dir)
        else:
            world.provision_cloud(data_dir)
        order_log = OrderHistory() if cfg.purpose_history else None
        rows = collect_logs(world, um, data_dir, cfg.log_sessions, progress=progress,
                            phone_config=phone_config_for(cfg.click_bait), order_log=order_log)
        say(f"baseline logs: {cfg.log_sessions} sessions, {len(rows)} shown pages ({time.perf_counter() - t0:.0f} s)")
        if cfg.ranker_from:
            rsum = {**prev["ranker"], "from": str(cfg.ranker_from)}
        else:
            samples = fusion_samples(rows, CloudFeaturizer(data_dir))
            ranker, rsum = train_two_head(samples, epochs=cfg.ranker_epochs, seed=cfg.seed)
            export_two_head_onnx(ranker, data_dir / "ranker.onnx")
        alpha = float(rsum["alpha"])
        summary["ranker"] = rsum
        origin = f" (from {cfg.ranker_from})" if cfg.ranker_from else ""
        say(f"two-head ranker{origin}: click AUC {rsum['click_auc']:.3f}, order AUC (given click) "
            f"{rsum['order_auc_given_click']:.3f}, alpha {alpha}")
        store = BehaviourStore(replace(fcfg, alpha=alpha), purpose=order_log)
        store.add_rows(rows)
    summary["cloud_data"] = str(data_dir)  # a run with --reuse-data serves from the earlier run's data
    fcfg = replace(fcfg, alpha=alpha)
    reward = RewardConfig(cfg.order_weight, cfg.no_conversion_penalty, cfg.leave_penalty)
    env = FusionEnv(world, data_dir, um, store, fusion_cfg=fcfg, reward=reward, session_seed=TRAIN_SEED,
                    phone_config=phone_config_for(cfg.click_bait))
    acfg = AgentConfig(n_policies=cfg.n_policies, pretrain_episodes=cfg.pretrain_episodes, episodes=cfg.episodes,
                       eval_episodes=cfg.eval_episodes, seed=cfg.seed, twin_critic=cfg.twin_critic,
                       critic_target=cfg.critic_target, explore_uniform=cfg.explore_uniform,
                       actor_preact_limit=cfg.actor_preact_limit, v_anchor=cfg.v_anchor,
                       paired_rollouts=cfg.paired_rollouts, paired_horizon=cfg.paired_horizon)
    agent, asum = train_fusion_agent(env, acfg, progress=say if progress else None)
    env.close()
    summary["agent"] = asum
    best = asum["chosen_policy"]
    actor = export_actor_onnx(agent, best, cfg.clip, out / "actor.onnx", cfg.seq_len, fcfg.event_dim, fcfg.ctx_dim)
    ev = asum["eval"][best]
    bundle = write_fusion_bundle(out / "bundle", actor=actor, cfg=fcfg, store=store, name=cfg.name,
                                 version=cfg.version,
                                 metrics={"eval_delta_reward": ev["delta_vs_baseline"], "alpha": alpha,
                                          "params": sum(p.numel() for p in agent.state.parameters())
                                          + sum(p.numel() for p in agent.actors[best].parameters())})
    summary["bundle"] = str(bundle)
    if cfg.registry_dir:
        from edge_rerank.cloud.registry import Registry

        m = Registry(cfg.registry_dir).publish(bundle)
        summary["published"] = f"{m.name}@{m.version}"
    plot_curves(asum, out / "training_curves.png")
    summary["total_s"] = time.perf_counter() - t0
    (out / "training.json").write_text(json.dumps(summary, indent=1, default=float))
    return summary


# ---------------------------------------------------------------- A/B
@dataclass
class FusionABConfig:
    run: str = "runs/fusion"  # a train_fusion output
    sessions: int = 4000
    world_seed: int = 0
    ablation_run: str | None = None  # a train_fusion output trained without the penalties
    device: bool = True  # + the device-side heuristic rerank arms (alone and with the agent)
    out_json: str | None = None
    fixed_mean_arm: float | None = None  # also an arm with this fixed a (e.g. the agent's mean action)


@dataclass(frozen=True)
class _FixedA:
    """Two-head fusion with one fixed a for every request (a global shift of alpha)."""

    alpha: float
    a: float

    def fuse(self, req, heads):
        return TwoHeadFusion(self.alpha).fuse_with(heads, self.a)


def _left_unconverted(o, page_size: int) -> bool:
    """The session ended by leaving on a page (the last one the user saw) without a click or an order there:
    what the article's leave penalty charges (the env charges the span since the last page request)."""
    if o.exhausted or not o.exposed_positions:
        return False
    last = max(o.exposed_positions) // page_size
    return not any(p // page_size == last for p in o.click_positions)


def _no_click_pages(o, page_size: int) -> int:
    """Pages the user saw (some of) without clicking anything on them: what the no-conversion penalty charges."""
    seen = {p // page_size for p in o.exposed_positions}
    return len(seen - {p // page_size for p in o.click_positions})


def _metrics(outcomes, buyer: np.ndarray | None = None, page_size: int | None = None) -> dict[str, np.ndarray]:
    from edge_rerank.simulator.phone import PhoneConfig
    from edge_rerank.simulator.session_metrics import session_table

    size = page_size or PhoneConfig().page_size
    t = session_table(outcomes)
    t["no_click_pages"] = np.array([_no_click_pages(o, size) for o in outcomes], dtype=np.float64)
    t["pages"] = np.array([o.pages for o in outcomes], dtype=np.float64)
    t["left"] = np.array([not o.exhausted for o in outcomes], dtype=np.float64)
    t["left_unconverted"] = np.array([_left_unconverted(o, size) for o in outcomes], dtype=np.float64)
    t["clicks_plus_orders"] = t["clicks"] + t["orders"]
    t["dwell_s"] = np.array([o.duration_ms / 1e3 for o in outcomes], dtype=np.float64)  # time on the result list
    if buyer is not None:  # the sessions with a strong intent to order (hidden purpose; the same in every arm)
        for m in ("screens", "clicks", "orders", "left_unconverted", "no_click_pages"):
            t[f"buyer_{m}"] = t[m][buyer]
    return t


def fusion_ab(cfg: FusionABConfig, *, progress: bool = True) -> dict:
    """Arms over the same sessions (users, intents, luck): fixed a = 1 vs the agent (and the no-penalty ablation,
    and the device heuristic alone / with the agent). Paired bootstrap CIs vs the fixed-a arm."""
    from edge_rerank.cloud.ranking.rl_fusion import KILL_ENV  # noqa: F401  (documented kill switch)
    from edge_rerank.device_sdk.budgets import CostModel
    from edge_rerank.device_sdk.heuristic import HeuristicReranker
    from edge_rerank.simulator.ab import Arm, run_sessions
    from edge_rerank.simulator.fusion_env import FusionCloud
    from edge_rerank.simulator.phone import PhoneConfig
    from edge_rerank.simulator.session_metrics import bootstrap_mean

    run = Path(cfg.run)
    data_dir = run / "cloud_data"  # where the two-head ranker lives (a --reuse-data run: the earlier run's)
    if not data_dir.is_dir() and (run / "training.json").is_file():
        data_dir = Path(json.loads((run / "training.json").read_text()).get("cloud_data", data_dir))
    trained = json.loads((run / "training.json").read_text()) if (run / "training.json").is_file() else {}
    lever, bait = world_of(trained.get("config", {}))  # the world the agent was trained in
    world, um = _world(cfg.world_seed, lever, bait, purpose_of(trained.get("config", {})),
                       propensity_of(trained.get("config", {})))
    policy = load_fusion_bundle(run / "bundle")
    alpha = policy.cfg.alpha
    arms: list[tuple[str, object, object]] = [("fixed a=1", TwoHeadFusion(alpha), None), ("RL fusion", policy, None)]
    if cfg.ablation_run:
        arms.append(("RL fusion, no penalties", load_fusion_bundle(Path(cfg.ablation_run) / "bundle"), None))
    if cfg.fixed_mean_arm:  # separates the agent's per-request choice from a global shift of a
        arms.append((f"fixed a={cfg.fixed_mean_arm:.2f} (agent's mean)", _FixedA(alpha, cfg.fixed_mean_arm), None))
    if cfg.device:
        arms.append(("device rerank (heuristic), a=1", TwoHeadFusion(alpha), "heuristic"))
        arms.append(("RL fusion + device rerank", policy, "heuristic"))
    specs = [world.session(i, AB_SEED) for i in range(cfg.sessions)]
    buyer = np.array([um.is_buyer(sp) for sp in specs])
    tables, timing, actions = {}, {}, {}
    for name, fusion, device in arms:
        cloud = FusionCloud(data_dir, fusion, cache_size=4096)
        arm = (Arm(name, HeuristicReranker(), cost_model=CostModel.for_heuristic()) if device else Arm(name))
        t0 = time.perf_counter()
        if isinstance(fusion, RLFusion):
            fusion.latencies_ms.clear()
            fusion.stats.requests = 0
            fusion.stats.actions_sum = 0.0
        outs = run_sessions(arm.phone(um, cloud, config=phone_config_for(bait)), specs, desc=name, progress=progress)
        timing[name] = time.perf_counter() - t0
        tables[name] = _metrics(outs, buyer, (phone_config_for(bait) or PhoneConfig()).page_size)
        if isinstance(fusion, RLFusion):
            lat = np.array(fusion.latencies_ms)
            actions[name] = {"actor_calls": int(fusion.stats.requests), "mean_a": fusion.stats.actions_sum
                             / max(len(lat), 1), "fallbacks": dict(fusion.stats.fallbacks),
                             "actor_p50_ms": float(np.percentile(lat, 50)) if lat.size else float("nan"),
                             "actor_p99_ms": float(np.percentile(lat, 99)) if lat.size else float("nan")}
    base = tables["fixed a=1"]
    res: dict = {"sessions_per_arm": cfg.sessions, "alpha": alpha, "arms": {}, "timing_s": timing, "actor": actions}
    metrics = ("qv_ctr", "clicks", "orders", "clicks_plus_orders", "screens", "pages", "no_click_pages", "dwell_s",
               "left", "left_unconverted", "abandon", "buyer_screens", "buyer_clicks", "buyer_orders",
               "buyer_left_unconverted", "buyer_no_click_pages")
    res["buyer_share"] = float(buyer.mean())
    for name, t in tables.items():
        row = {}
        for m in metrics:
            e = bootstrap_mean(t[m])
            row[m] = {"mean": e.mean, "ci": [e.lo, e.hi]}
            if name != "fixed a=1":
                d = bootstrap_mean(t[m] - base[m])
                row[m]["delta"] = {"mean": d.mean, "ci": [d.lo, d.hi],
                                   "rel_pct": 100 * d.mean / base[m].mean() if base[m].mean() else float("nan")}
        res["arms"][name] = row
    if cfg.ablation_run:  # what the penalties change: the no-penalty agent vs the agent, paired
        a, b = tables["RL fusion, no penalties"], tables["RL fusion"]
        res["no_penalties_vs_penalties"] = {}
        for m in metrics:
            d = bootstrap_mean(a[m] - b[m])
            res["no_penalties_vs_penalties"][m] = {"mean": d.mean, "ci": [d.lo, d.hi]}
    # agent + device vs each alone (paired)
    if cfg.device:
        both, dev, rl = (tables["RL fusion + device rerank"], tables["device rerank (heuristic), a=1"],
                         tables["RL fusion"])
        res["together_vs_alone"] = {}
        for m in ("qv_ctr", "clicks", "orders"):
            d1, d2 = bootstrap_mean(both[m] - dev[m]), bootstrap_mean(both[m] - rl[m])
            res["together_vs_alone"][m] = {"vs_device_alone": {"mean": d1.mean, "ci": [d1.lo, d1.hi]},
                                           "vs_agent_alone": {"mean": d2.mean, "ci": [d2.lo, d2.hi]}}
    if cfg.out_json:
        Path(cfg.out_json).parent.mkdir(parents=True, exist_ok=True)
        Path(cfg.out_json).write_text(json.dumps(res, indent=1, default=float))
    return res


def format_ab(res: dict) -> str:
    lines = ["| arm | clicks / query | orders / query | QV_CTR | screens / query | left unconverted | "
             "Δ clicks | Δ orders | Δ QV_CTR (pp) | Δ screens |", "|---|---|---|---|---|---|---|---|---|---|"]
    for name, row in res["arms"].items():
        def d(m: str, scale: float = 1.0, digits: int = 3, row: dict = row) -> str:
            x = row[m].get("delta")
            if x is None:
                return "—"
            return (f"{scale * x['mean']:+.{digits}f} [{scale * x['ci'][0]:+.{digits}f}, "
                    f"{scale * x['ci'][1]:+.{digits}f}]")
        lines.append(f"| {name} | {row['clicks']['mean']:.3f} | {row['orders']['mean']:.3f} | "
                     f"{100 * row['qv_ctr']['mean']:.2f} % | {row['screens']['mean']:.2f} | "
                     f"{100 * row['left_unconverted']['mean']:.1f} % | {d('clicks')} | {d('orders')} | "
                     f"{d('qv_ctr', 100, 2)} | {d('screens', 1, 2)} |")
    return "\n".join(lines)
