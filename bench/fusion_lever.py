"""Does the order world offer the trade-off the article's penalties are about (issue 17)? Oracle policies that
know each session's hidden purpose set a fixed a for buyers and another for browsers (the diagonal, one a for
everyone, is what a purpose-blind policy can do); for each, the episode reward with and without the penalties,
screens and pages per query, and how often users leave on a page without a conversion. Every policy plays the
same sessions (the env's keyed draws), so differences between policies are paired. The summary compares the
policy each reward prefers (over all pairs, and over the blind diagonal): paired differences with 95 % CIs.

    python bench/fusion_lever.py --run runs/fusion [--sessions 1000] [--worlds run,default]
    python bench/fusion_lever.py --run runs/fusion --observable-rules    # what the agent could condition on

``--worlds``: ``run`` (the world the run was trained in), ``default``, ``scroll-lever``, ``click-bait``; the run's
two-head ranker serves all of them. Writes runs/bench/fusion_lever.json.
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from edge_rerank.cloud.ranking.rl_fusion import FusionConfig, load_store
from edge_rerank.fusion import TRAIN_SEED, _world, phone_config_for, propensity_of, purpose_of, world_of
from edge_rerank.simulator.fusion_env import FusionEnv, RewardConfig

WORLDS = {"default": (False, False), "scroll-lever": (True, False), "click-bait": (True, True)}
METRICS = ("reward_penalties", "reward_no_penalties", "clicks", "orders", "screens", "pages", "no_conversion_pages",
           "left_unconverted")


def sweep(run: Path, sessions: int, world_name: str, grid: list[float], world_kw: dict | None = None,
          pairs: list[tuple[float, float]] | None = None, page_size: int | None = None,
          penalties: tuple[float, float] | None = None) -> list[dict]:
    summary = json.loads((run / "training.json").read_text())
    data_dir = Path(summary.get("cloud_data", run / "cloud_data"))
    alpha, clip = float(summary["ranker"]["alpha"]), float(summary["config"]["clip"])
    purpose = purpose_of(summary["config"])
    fcfg = FusionConfig(alpha=alpha, clip=clip, seq_len=int(summary["config"]["seq_len"]), purpose_history=purpose)
    store = load_store(run / "bundle", fcfg)
    lever, bait = WORLDS[world_name] if world_name != "run" else world_of(summary["config"])
    world, um = _world(int(summary["config"]["world_seed"]), lever, bait, purpose and world_name == "run",
                       propensity_of(summary["config"]))
    if world_kw:  # explore other order-world parameters (the run's ranker is kept)
        um = type(um)(world, um.cfg, replace(um.order_cfg, **world_kw))
    phone_cfg = phone_config_for(bait)
    if page_size:  # explore the page granularity (the same items per session at most: 3 pages of 25)
        from edge_rerank.simulator.phone import PhoneConfig
        from edge_rerank.simulator.user_model import UserModelConfig

        phone_cfg = PhoneConfig(page_size=page_size)
        um = type(um)(world, UserModelConfig(max_pages=-(-75 // page_size)), um.order_cfg)
    env = FusionEnv(world, data_dir, um, store, fusion_cfg=fcfg, session_seed=TRAIN_SEED + 100, phone_config=phone_cfg)
    pen = RewardConfig(no_conversion_penalty=penalties[0], leave_penalty=penalties[1]) if penalties else RewardConfig()
    nopen = RewardConfig(no_conversion_penalty=0.0, leave_penalty=0.0)
    buyer = np.array([um.is_buyer(world.session(i, env.session_seed)) for i in range(sessions)])
    rows = []
    try:
        for a_buyer, a_browser in pairs or list(itertools.product(grid, grid)):
            m: dict[str, list] = {k: [] for k in METRICS}
            for i in range(sessions):
                env.reset(options={"session_index": i})
                u = np.clip(((a_buyer if buyer[i] else a_browser) - 1) / clip, -1.0, 1.0)
                done, rp, rn, dry = False, 0.0, 0.0, 0
                while not done:
                    _, _, done, _, info = env.step(np.array([u], np.float32))
                    left = bool(info.get("left", False))
                    rp += pen.reward(info["clicks"], info["orders"], left)
                    rn += nopen.reward(info["clicks"], info["orders"], left)
                    dry += info["clicks"] + info["orders"] == 0
                o = env._session.out
                for k, v in (("reward_penalties", rp), ("reward_no_penalties", rn), ("clicks", o.clicks),
                             ("orders", o.orders), ("screens", o.screens), ("pages", o.pages),
                             ("no_conversion_pages", dry),
                             ("left_unconverted", left and info["clicks"] + info["orders"] == 0)):
                    m[k].append(float(v))
            rows.append({"a_buyer": a_buyer, "a_browser": a_browser, **{k: np.array(v) for k, v in m.items()},
                         "buyer": buyer})
    finally:
        env.close()
    return rows


# What a policy can condition on: the observation's context (cloud.ranking.rl_fusion.CTX_FEATURES: 2 meal,
# 3 page index, 6 the user's earlier orders). Each rule sets a = 1.75 where it fires and 0.25 elsewhere.
RULES = {"a = 0.25 for all": lambda c: False, "a = 1.75 at meal hours": lambda c: c[2] > 0.5,
         "a = 1.75 if the user ordered before": lambda c: c[6] > 0,
         "a = 1.75 from the 3rd page": lambda c: c[3] >= 1.0,
         "a = 1.75 at meals if ordered before": lambda c: c[2] > 0.5 and c[6] > 0}
# With the purpose history (a run trained with --purpose-history; cloud.ranking.purpose_history.PURPOSE_FEATURES
# from ctx[8]: 9 the share of earlier sessions with an order, 12 the last session had an order, 13 pages of the
# sessions without an order / 5)
PURPOSE_RULES = {"a = 1.75 if ordered in > 25 % of earlier sessions": lambda c: c[9] > 0.25,
                 "a = 1.75 if ordered in > 30 % of earlier sessions": lambda c: c[9] > 0.3,
                 "a = 1.75 if ordered in > 35 % of earlier sessions": lambda c: c[9] > 0.35,
                 "a = 1.75 if the last session had an order": lambda c: c[12] > 0.5,
                 "a = 1.75 at meals if ordered in > 25 %": lambda c: c[2] > 0.5 and c[9] > 0.25,
                 "a = 1.75 if ordered in > 25 % and > 1 page unconverted": lambda c: c[9] > 0.25 and c[13] > 0.2}


def observable_rules(run: Path, sessions: int, rewards: dict[str, RewardConfig]) -> dict:
    """Rules on what the agent observes, played on the same sessions: the share of their high-a requests that come
    from buyers, and each reward per episode vs a = 0.25 for everyone (paired 95 % half-widths)."""
    summary = json.loads((run / "training.json").read_text())
    purpose = purpose_of(summary["config"])
    fcfg = FusionConfig(alpha=float(summary["ranker"]["alpha"]), clip=float(summary["config"]["clip"]),
                        seq_len=int(summary["config"]["seq_len"]), purpose_history=purpose)
    store = load_store(run / "bundle", fcfg)
    lever, bait = world_of(summary["config"])
    world, um = _world(int(summary["config"]["world_seed"]), lever, bait, purpose, propensity_of(summary["config"]))
    env = FusionEnv(world, Path(summary.get("cloud_data", run / "cloud_data")), um, store, fusion_cfg=fcfg,
                    session_seed=TRAIN_SEED + 100, phone_config=phone_config_for(bait))
    specs = [world.session(i, env.session_seed) for i in range(sessions)]
    buyer = np.array([um.is_buyer(sp) for sp in specs])
    # references no policy can see: the hidden purpose, and (persistent purposes) the user's true propensity
    oracles = {"oracle: a = 1.75 for buyers (hidden purpose)": buyer}
    if purpose:
        oracles["oracle: a = 1.75 if the user's propensity > 0.5"] = np.array(
            [um.propensity(sp.user) > 0.5 for sp in specs])
    per: dict[str, dict[str, np.ndarray]] = {}
    out: dict = {}
    try:
        for name, rule in {**RULES, **(PURPOSE_RULES if purpose else {}), **oracles}.items():
            tot = {k: np.zeros(sessions) for k in rewards}
            fired = fired_buyer = buyer_requests = 0
            for i in range(sessions):
                obs, _ = env.reset(options={"session_index": i})
                done = False
                while not done:
                    hi = bool(rule[i]) if isinstance(rule, np.ndarray) else bool(rule(obs["ctx"]))
                    fired += hi
                    fired_buyer += hi and bool(buyer[i])
                    buyer_requests += bool(buyer[i])
                    obs, _, done, _, info = env.step(np.array([1.0 if hi else -1.0], np.float32))
                    for k, rc in rewards.items():
                        tot[k][i] += rc.reward(info["clicks"], info["orders"], bool(info.get("left", False)))
            per[name] = tot
            out[name] = {"buyer_share_of_high_a": fired_buyer / max(fired, 1),
                         "buyer_requests_caught": fired_buyer / max(buyer_requests, 1)}
    finally:
        env.close()
    ref = per["a = 0.25 for all"]
    for name, tot in per.items():
        out[name].update({k: _paired(tot[k], ref[k]) for k in rewards})
    return out


def _paired(x: np.ndarray, y: np.ndarray) -> dict:
    d = np.asarray(x, float) - np.asarray(y, float)
    half = 1.96 * d.std(ddof=1) / np.sqrt(len(d))
    return {"mean": float(d.mean()), "ci": [float(d.mean() - half), float(d.mean() + half)]}


def compare_optima(rows: list[dict]) -> dict:
    """The policy each reward prefers (all purpose pairs, and the blind diagonal), and the paired differences
    between the unpenalised and the penalised optimum on every metric (overall and for buyers)."""
    out = {}
    for scope, cand in (("oracle", rows), ("blind", [r for r in rows if r["a_buyer"] == r["a_browser"]])):
        if not cand:
            continue
        bp = max(cand, key=lambda r: r["reward_penalties"].mean())
        bn = max(cand, key=lambda r: r["reward_no_penalties"].mean())
        b = bp["buyer"]
        out[scope] = {"best_penalties": [bp["a_buyer"], bp["a_browser"]],
                      "best_no_penalties": [bn["a_buyer"], bn["a_browser"]],
                      "no_penalties_minus_penalties": {k: _paired(bn[k], bp[k]) for k in METRICS},
                      "buyers": {k: _paired(bn[k][b], bp[k][b]) for k in METRICS}}
    return out


def table(rows: list[dict]) -> str:
    ref = next((r for r in rows if r["a_buyer"] == 1.0 and r["a_browser"] == 1.0), rows[0])
    lines = ["| a buyers | a browsers | reward (penalties) | reward (none) | clicks / query | orders / query | "
             "screens / query | pages / query | buyers' screens | left unconverted |", "|---" * 10 + "|"]
    for r in rows:
        b = r["buyer"]

        def d(m: str, r=r) -> str:
            p = _paired(r[m], ref[m])
            return f"{r[m].mean():.3f} ({p['mean']:+.3f} ± {p['ci'][1] - p['mean']:.3f})"
        lines.append(f"| {r['a_buyer']} | {r['a_browser']} | {d('reward_penalties')} | {d('reward_no_penalties')} | "
                     f"{d('clicks')} | {d('orders')} | {d('screens')} | {d('pages')} | {r['screens'][b].mean():.2f} | "
                     f"{d('left_unconverted')} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", default="runs/fusion")
    ap.add_argument("--sessions", type=int, default=1000)
    ap.add_argument("--grid", default="0.25,1.0,1.75")
    ap.add_argument("--pairs", help='explicit (a buyers, a browsers) pairs instead of the grid: "0.25:0.25,1.75:1"')
    ap.add_argument("--worlds", default="run", help=f"comma-separated: run, {', '.join(WORLDS)}")
    ap.add_argument("--json", default="runs/bench/fusion_lever.json")
    ap.add_argument("--page-size", type=int, help="items per page request (explore; default: the phone's 25)")
    ap.add_argument("--penalties", help='the penalised reward\'s "no-conversion,leave" penalties (default 0.3,0.5)')
    ap.add_argument("--observable-rules", action="store_true",
                    help="instead of the grid: rules on the agent's observation vs a = 0.25 for all (the run's world)")
    ap.add_argument("--world", type=json.loads, default=None,
                    help='OrderWorldConfig overrides, e.g. {"searching_giveup": 0.02}')
    a = ap.parse_args()
    grid = [float(x) for x in a.grid.split(",")]
    pairs = ([tuple(float(v) for v in p.split(":")) for p in a.pairs.split(",")] if a.pairs else None)
    res = {}
    if a.observable_rules:
        rewards = {"none": RewardConfig(no_conversion_penalty=0.0, leave_penalty=0.0), "0.3/0.5": RewardConfig(),
                   "1.0/1.5": RewardConfig(no_conversion_penalty=1.0, leave_penalty=1.5)}
        res = observable_rules(Path(a.run), a.sessions, rewards)
        print("| rule (else a = 0.25) | buyers among the high-a requests | buyers' requests caught | " + " | ".join(
            f"Δ reward, {k}" for k in rewards) + " |")
        for name, r in res.items():
            print(f"| {name} | {100 * r['buyer_share_of_high_a']:.0f} % | {100 * r['buyer_requests_caught']:.0f} % | "
                  + " | ".join(
                f"{r[k]['mean']:+.3f} ± {r[k]['ci'][1] - r[k]['mean']:.3f}" for k in rewards) + " |")
        Path(a.json).parent.mkdir(parents=True, exist_ok=True)
        Path(a.json).write_text(json.dumps(res, indent=1, default=float))
        return
    for name in a.worlds.split(","):
        t0 = time.perf_counter()
        rows = sweep(Path(a.run), a.sessions, name, grid, a.world, pairs, a.page_size,
                     tuple(float(x) for x in a.penalties.split(",")) if a.penalties else None)
        txt, opt = table(rows), compare_optima(rows)
        print(f"\n{name} ({a.sessions} sessions per policy, {time.perf_counter() - t0:.0f} s; ± 95 % paired vs "
              f"a = 1 everywhere)\n{txt}", flush=True)
        for scope, o in opt.items():
            dd = o["no_penalties_minus_penalties"]
            print(f"{scope}: best with penalties {o['best_penalties']}, without {o['best_no_penalties']}; "
                  "no-penalty optimum − penalised optimum: " + ", ".join(
                      f"{k} {v['mean']:+.3f} [{v['ci'][0]:+.3f}, {v['ci'][1]:+.3f}]" for k, v in dd.items()),
                  flush=True)
        res[name] = {"rows": [{k: (float(np.mean(v)) if isinstance(v, np.ndarray) else v) for k, v in r.items()
                               if k != "buyer"} for r in rows], "optima": opt, "table": txt,
                     "buyer_share": float(rows[0]["buyer"].mean()), "world_overrides": a.world,
                     "penalties": a.penalties or "0.3,0.5"}
    Path(a.json).parent.mkdir(parents=True, exist_ok=True)
    Path(a.json).write_text(json.dumps(res, indent=1, default=float))


if __name__ == "__main__":
    main()
