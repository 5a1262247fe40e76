"""Common-random-number paired rollouts for the RL fusion agent (issue 17; docs/results/rl_fusion.md "RL fusion:
paired rollouts"): how much noise does pairing take out of the advantage target, and what does the precise signal say?

``variance`` (default): on N sessions of a run's world, a behaviour policy (u uniform on [-1, 1] per page) plays
each session; at every page t the session is branched (``simulator.fusion_env.PairedRollouts``): (i) a random u at
t then a = 1, (ii) a = 1 from t. The target A = G_i − G_ii (discounted, gamma 0.9) under both rewards (penalties
1.0 / 1.5 and none) from the same rollouts. The control for first-page states: (ii) played with *other luck*
(another session seed: the same user, query, context and history, so the same observation), i.e. the noise an
unpaired target carries. Reports sd of each, and their ratio.

``grid``: on N first-page states, A(s, a) for a in a grid, every a paired with a = 1 on the same luck, under
both rewards; which a is best per state, for buyers and browsers (the hidden purpose), with paired 95 % CIs.

    python bench/fusion_crn.py --run runs/f17/ph3-prep --sessions 300 [--mode variance|grid] [--json PATH]
    python bench/fusion_crn.py --mode grid --sessions 1500 --agents runs/f17/crn-pen,runs/f17/crn-nopen
    python bench/fusion_crn.py --mode policies --sessions 1000 --agents runs/f17/crn-pen,runs/f17/pen

``policies``: whole episodes of each agent's actor and of fixed a's on the same sessions, the reward under both
rewards, paired vs each fixed a (is an agent better than a = 0.25 for everyone under its own reward?).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from edge_rerank.cloud.ranking.rl_fusion import FusionConfig, load_store
from edge_rerank.fusion import TRAIN_SEED, _world, phone_config_for, propensity_of, purpose_of, world_of
from edge_rerank.simulator.fusion_env import FusionEnv, PairedRollouts, RewardConfig, discounted, play

REWARDS = {"penalties 1.0/1.5": RewardConfig(no_conversion_penalty=1.0, leave_penalty=1.5),
           "no penalties": RewardConfig(no_conversion_penalty=0.0, leave_penalty=0.0)}
SESSION_SEED = TRAIN_SEED + 200  # sessions no agent trained or was selected on
LUCK_OFFSET = 7_777_777


def env_for_run(run: Path, session_seed: int = SESSION_SEED) -> tuple[FusionEnv, object, object]:
    summary = json.loads((run / "training.json").read_text())
    c = summary["config"]
    data_dir = Path(summary.get("cloud_data", run / "cloud_data"))
    purpose = purpose_of(c)
    fcfg = FusionConfig(alpha=float(summary["ranker"]["alpha"]), clip=float(c["clip"]), seq_len=int(c["seq_len"]),
                        purpose_history=purpose)
    lever, bait = world_of(c)
    world, um = _world(int(c["world_seed"]), lever, bait, purpose, propensity_of(c))
    env = FusionEnv(world, data_dir, um, load_store(run / "bundle", fcfg), fusion_cfg=fcfg,
                    reward=REWARDS["penalties 1.0/1.5"], session_seed=session_seed,
                    phone_config=phone_config_for(bait))
    return env, world, um


def _sd_row(x: np.ndarray) -> dict:
    return {"n": int(x.size), "mean": float(x.mean()), "sd": float(x.std(ddof=1)),
            "share_zero": float(np.mean(np.abs(x) < 1e-12))}


def variance(run: Path, sessions: int, gamma: float = 0.9) -> dict:
    env, world, um = env_for_run(run)
    pr = PairedRollouts(env, gamma=gamma)
    rng = np.random.default_rng(0)
    rows = []
    t0 = time.process_time()
    for i in range(sessions):
        u_main = rng.uniform(-1, 1, 16).tolist()
        steps = play(env, i, u_main)
        buyer = bool(um.is_buyer(world.session(i, env.session_seed)))
        for t in range(len(steps)):
            prefix, u = u_main[:t], float(rng.uniform(-1, 1))
            ci = pr.continuation(i, prefix, u)
            cii = pr.continuation(i, prefix, 0.0)
            row = {"session": i, "page": t, "u": u, "buyer": buyer}
            for name, rw in REWARDS.items():
                row[f"crn {name}"] = discounted(ci, rw, gamma) - discounted(cii, rw, gamma)
            if t == 0:  # the control: (ii) with other luck, the same first-page observation
                cind = pr.continuation(i, prefix, 0.0, luck_seed=LUCK_OFFSET + i)
                for name, rw in REWARDS.items():
                    row[f"independent {name}"] = discounted(ci, rw, gamma) - discounted(cind, rw, gamma)
            rows.append(row)
    cpu = time.process_time() - t0
    out: dict = {"sessions": sessions, "states": len(rows), "cpu_s": cpu, "sessions_played": pr.sessions_played,
                 "first_page": {}, "later_pages": {}}
    first = [r for r in rows if r["page"] == 0]
    later = [r for r in rows if r["page"] > 0]
    for name in REWARDS:
        crn0 = np.array([r[f"crn {name}"] for r in first])
        ind0 = np.array([r[f"independent {name}"] for r in first])
        out["first_page"][name] = {"crn": _sd_row(crn0), "independent": _sd_row(ind0),
                                   "sd_ratio": float(ind0.std(ddof=1) / crn0.std(ddof=1)),
                                   "variance_ratio": float(ind0.var(ddof=1) / crn0.var(ddof=1))}
        if later:
            out["later_pages"][name] = {"crn": _sd_row(np.array([r[f"crn {name}"] for r in later]))}
    pr.close()
    env.close()
    return out


def _ci(x: np.ndarray) -> list[float]:
    m, se = float(x.mean()), float(x.std(ddof=1) / np.sqrt(x.size))
    return [m - 1.96 * se, m + 1.96 * se]


def _groups(buyer: np.ndarray, share: np.ndarray) -> dict[str, np.ndarray]:
    return {"all": np.ones(buyer.size, bool), "buyers": buyer, "browsers": ~buyer,
            "order share > 0.3 (observed)": share > 0.3, "order share <= 0.3 (observed)": share <= 0.3}


def grid(run: Path, sessions: int, a_grid: list[float], gamma: float = 0.9, agents: list[Path] | None = None) -> dict:
    """First-page A(s, a) on a grid (one page at a, then a = 1; paired with a = 1 throughout) under both rewards,
    by the hidden purpose and by the observed order share; with ``agents`` (fusion runs: their exported actors) also
    each agent's first-page a and the paired truth of its A at that a."""
    import onnxruntime as ort

    from edge_rerank.cloud.ranking.purpose_history import PURPOSE_FEATURES
    from edge_rerank.cloud.ranking.rl_fusion import CTX_FEATURES

    env, world, um = env_for_run(run)
    clip = env.fusion_cfg.clip
    pr = PairedRollouts(env, gamma=gamma)
    buyer = np.array([um.is_buyer(world.session(i, env.session_seed)) for i in range(sessions)])
    obs = [env.reset(options={"session_index": i})[0] for i in range(sessions)]
    col = len(CTX_FEATURES) + PURPOSE_FEATURES.index("purpose_order_share")
    share = np.array([o["ctx"][col] for o in obs]) if env.fusion_cfg.purpose_history else np.zeros(
        sessions)
    groups = _groups(buyer, share)
    t0 = time.process_time()
    base = [pr.continuation(i, [], 0.0) for i in range(sessions)]
    A: dict[str, np.ndarray] = {name: np.zeros((sessions, len(a_grid))) for name in REWARDS}
    for j, a in enumerate(a_grid):
        u = float(np.clip((a - 1.0) / clip, -1.0, 1.0))
        for i in range(sessions):
            c = pr.continuation(i, [], u) if u != 0.0 else base[i]
            for name, rw in REWARDS.items():
                A[name][i, j] = discounted(c, rw, gamma) - discounted(base[i], rw, gamma)
    out: dict = {"sessions": sessions, "buyer_share": float(buyer.mean()), "a_grid": a_grid,
                 "group_sizes": {g: int(m.sum()) for g, m in groups.items()},
                 "buyers_among_share_gt_0.3": float(buyer[share > 0.3].mean()) if (share > 0.3).any() else None,
                 "rewards": {}}
    flat = np.all(A["no penalties"] == 0, axis=1) & np.all(A["penalties 1.0/1.5"] == 0, axis=1)
    out["states_where_a_changes_nothing"] = float(flat.mean())  # the first page's a moves no click, order or leave
    for name, m in A.items():
        r: dict = {}
        for group, mask in groups.items():
            r[group] = {"mean_A": m[mask].mean(0).tolist(), "ci": [_ci(m[mask][:, j]) for j in range(len(a_grid))],
                        "best_a": a_grid[int(np.argmax(m[mask].mean(0)))]}
        best = np.argmax(m[~flat], 1)
        r["best_a_share_where_a_matters"] = {str(a): float(np.mean(best == j)) for j, a in enumerate(a_grid)}
        out["rewards"][name] = r
    # the penalty term alone: A under penalties minus A without, per a (what the penalties add to the signal)
    d = A["penalties 1.0/1.5"] - A["no penalties"]
    out["penalty_term"] = {g: {"mean": d[mask].mean(0).tolist(), "ci": [_ci(d[mask][:, j]) for j in range(len(a_grid))]}
                           for g, mask in groups.items()}
    out["agents"] = {}
    for run_dir in agents or []:
        sess = ort.InferenceSession(str(run_dir / "bundle" / "actor.onnx"), providers=["CPUExecutionProvider"])
        a_agent = np.array([float(sess.run(["a"], {"seq": o["seq"][None], "ctx": o["ctx"][None]})[0][0])
                            for o in obs])
        u_agent = np.clip((a_agent - 1.0) / clip, -1.0, 1.0)
        truth = {name: np.zeros(sessions) for name in REWARDS}
        for i in range(sessions):
            c = pr.continuation(i, [], float(np.float32(u_agent[i])))
            for name, rw in REWARDS.items():
                truth[name][i] = discounted(c, rw, gamma) - discounted(base[i], rw, gamma)
        out["agents"][str(run_dir)] = {
            g: {"mean_a": float(a_agent[mask].mean()), "sd_a": float(a_agent[mask].std()),
                **{f"A {name}": {"mean": float(truth[name][mask].mean()), "ci": _ci(truth[name][mask])}
                   for name in REWARDS}} for g, mask in groups.items()}
    out["cpu_s"] = time.process_time() - t0
    pr.close()
    env.close()
    return out


def policies(run: Path, sessions: int, agents: list[Path], fixed: list[float], gamma: float = 1.0) -> dict:
    """Whole episodes on `sessions` sessions no agent trained or was selected on: each agent's greedy actor and
    each fixed a, every one on the same sessions (common random numbers), the episode reward under both rewards
    (undiscounted), paired differences between every two arms."""
    import onnxruntime as ort

    env, _world_, _um = env_for_run(run)
    clip = env.fusion_cfg.clip
    arms: dict[str, object] = {f"fixed a = {a:g}": float(np.clip((a - 1.0) / clip, -1, 1)) for a in [1.0, *fixed]}
    for run_dir in agents:
        sess = ort.InferenceSession(str(run_dir / "bundle" / "actor.onnx"), providers=["CPUExecutionProvider"])
        arms[str(run_dir)] = sess
    t0 = time.process_time()
    tot: dict[str, dict[str, np.ndarray]] = {}
    by_page: dict[str, dict[int, list[float]]] = {}
    for name, pol in arms.items():
        r = {k: np.zeros(sessions) for k in REWARDS}
        pages = by_page.setdefault(name, {})
        for i in range(sessions):
            obs, _ = env.reset(options={"session_index": i})
            done, t = False, 0
            while not done:
                if isinstance(pol, float):
                    u = pol
                else:
                    a = float(pol.run(["a"], {"seq": obs["seq"][None], "ctx": obs["ctx"][None]})[0][0])
                    u = float(np.clip((a - 1.0) / clip, -1.0, 1.0))
                    pages.setdefault(min(t, 4), []).append(a)
                t += 1
                obs, _, done, _, info = env.step(np.array([u], np.float32))
                for k, rw in REWARDS.items():
                    r[k][i] += rw.reward(info["clicks"], info["orders"], bool(info.get("left", False)))
        tot[name] = r
    out: dict = {"sessions": sessions, "cpu_s": time.process_time() - t0, "arms": {}}
    refs = list(arms)  # every arm vs every other, paired
    for name in arms:
        out["arms"][name] = {k: {"mean": float(tot[name][k].mean()),
                                 **{f"vs {ref}": {"mean": float((tot[name][k] - tot[ref][k]).mean()),
                                                  "ci": _ci(tot[name][k] - tot[ref][k])}
                                    for ref in refs if ref != name}} for k in REWARDS}
        if by_page[name]:  # the agent's mean a at pages 1, 2, 3, 4, 5+
            out["arms"][name]["mean_a_by_page"] = [float(np.mean(by_page[name][t])) for t in sorted(by_page[name])]
    env.close()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", type=Path, default=Path("runs/f17/ph3-prep"))
    ap.add_argument("--sessions", type=int, default=300)
    ap.add_argument("--mode", choices=("variance", "grid", "policies"), default="variance")
    ap.add_argument("--fixed", default="0.25,1.75", help="policies: fixed a arms besides a = 1")
    ap.add_argument("--grid", default="0.25,0.625,1.0,1.375,1.75")
    ap.add_argument("--agents", default="", help="grid: comma-separated fusion runs whose actors to score")
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()
    if a.mode == "variance":
        res = variance(a.run, a.sessions)
    elif a.mode == "policies":
        res = policies(a.run, a.sessions, [Path(x) for x in a.agents.split(",") if x],
                       [float(x) for x in a.fixed.split(",") if x])
    else:
        res = grid(a.run, a.sessions, [float(x) for x in a.grid.split(",")],
                   agents=[Path(x) for x in a.agents.split(",") if x])
    path = a.json or Path(f"runs/bench/fusion_crn_{a.mode}.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(res, indent=1))
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
