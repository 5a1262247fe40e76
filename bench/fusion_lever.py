"""Does the order world offer the trade-off the article's penalties are about (issue 17)? Oracle policies that
know each session's hidden purpose set a fixed a for buyers and another for browsers; for each, the episode
reward with and without the penalties, screens per query and how often users leave without a conversion — in the
world with the scroll lever (searching buyers) and without it. Every policy plays the same sessions (the env's
keyed draws), so differences between policies are paired.

    python bench/fusion_lever.py --run runs/fusion [--sessions 1000]

Writes runs/bench/fusion_lever.json.
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from edge_rerank.cloud.ranking.rl_fusion import BEHAVIOUR_FILE, BehaviourStore, FusionConfig
from edge_rerank.fusion import TRAIN_SEED, _world
from edge_rerank.simulator.fusion_env import FusionEnv, RewardConfig


def sweep(run: Path, sessions: int, lever: bool, grid: list[float], world_kw: dict | None = None) -> list[dict]:
    summary = json.loads((run / "training.json").read_text())
    data_dir = Path(summary.get("cloud_data", run / "cloud_data"))
    alpha, clip = float(summary["ranker"]["alpha"]), float(summary["config"]["clip"])
    fcfg = FusionConfig(alpha=alpha, clip=clip, seq_len=int(summary["config"]["seq_len"]))
    store = BehaviourStore.load(run / "bundle" / BEHAVIOUR_FILE, fcfg)
    world, um = _world(int(summary["config"]["world_seed"]), lever)
    if world_kw:  # explore other order-world parameters (the run's ranker is kept)
        um = type(um)(world, None, replace(um.order_cfg, **world_kw))
    env = FusionEnv(world, data_dir, um, store, fusion_cfg=fcfg, session_seed=TRAIN_SEED + 100)
    pen, nopen = RewardConfig(), RewardConfig(no_conversion_penalty=0.0, leave_penalty=0.0)
    rows = []
    try:
        for a_buyer, a_browser in itertools.product(grid, grid):
            r_pen, r_nopen, screens, unconv, clicks, orders, buyer = [], [], [], [], [], [], []
            for i in range(sessions):
                env.reset(options={"session_index": i})
                is_buyer = um.is_buyer(world.session(i, env.session_seed))
                u = (a_buyer - 1) / clip if is_buyer else (a_browser - 1) / clip
                done, rp, rn = False, 0.0, 0.0
                while not done:
                    _, _, done, _, info = env.step(np.array([u], np.float32))
                    left = bool(info.get("left", False))
                    rp += pen.reward(info["clicks"], info["orders"], left)
                    rn += nopen.reward(info["clicks"], info["orders"], left)
                o = env._session.out
                r_pen.append(rp), r_nopen.append(rn), screens.append(o.screens), clicks.append(o.clicks)
                orders.append(o.orders), buyer.append(is_buyer)
                unconv.append(left and info["clicks"] + info["orders"] == 0)
            b = np.array(buyer)
            rows.append({"a_buyer": a_buyer, "a_browser": a_browser, "reward_penalties": r_pen,
                         "reward_no_penalties": r_nopen, "screens": screens, "left_unconverted": unconv,
                         "clicks": clicks, "orders": orders, "buyer": b.tolist()})
    finally:
        env.close()
    return rows


def table(rows: list[dict]) -> tuple[str, dict]:
    ref = next((r for r in rows if r["a_buyer"] == 1.0 and r["a_browser"] == 1.0), rows[0])
    lines = ["| a buyers | a browsers | reward (penalties) | reward (none) | screens / query | buyers' screens | "
             "left unconverted | clicks / query | orders / query |", "|---|---|---|---|---|---|---|---|---|"]
    best = {}
    for key in ("reward_penalties", "reward_no_penalties"):
        r = max(rows, key=lambda r: np.mean(r[key]))
        best[key] = {"a_buyer": r["a_buyer"], "a_browser": r["a_browser"]}
    for r in rows:
        b = np.array(r["buyer"])

        def d(m: str, r=r) -> str:
            x = np.asarray(r[m], float) - np.asarray(ref[m], float)
            se = x.std(ddof=1) / np.sqrt(len(x))
            return f"{np.mean(r[m]):.3f} ({x.mean():+.3f} ± {1.96 * se:.3f})"
        lines.append(f"| {r['a_buyer']} | {r['a_browser']} | {d('reward_penalties')} | {d('reward_no_penalties')} | "
                     f"{d('screens')} | {np.asarray(r['screens'])[b].mean():.2f} | {d('left_unconverted')} | "
                     f"{d('clicks')} | {d('orders')} |")
    return "\n".join(lines), best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", default="runs/fusion")
    ap.add_argument("--sessions", type=int, default=1000)
    ap.add_argument("--grid", default="0.25,1.0,1.75")
    ap.add_argument("--json", default="runs/bench/fusion_lever.json")
    ap.add_argument("--world", type=json.loads, default=None,
                    help='OrderWorldConfig overrides, e.g. {"searching_giveup": 0.02}')
    ap.add_argument("--lever-only", action="store_true", help="skip the world without the lever")
    a = ap.parse_args()
    grid = [float(x) for x in a.grid.split(",")]
    res = {}
    for lever in (True,) if a.lever_only else (True, False):
        t0 = time.perf_counter()
        rows = sweep(Path(a.run), a.sessions, lever, grid, a.world)
        txt, best = table(rows)
        name = "scroll lever" if lever else "without the lever"
        print(f"\n{name} ({a.sessions} sessions per policy, {time.perf_counter() - t0:.0f} s; "
              f"(± 95 % paired vs a = 1 everywhere))\n{txt}\nbest fixed policy: {best}", flush=True)
        res[name] = {"rows": [{k: (float(np.mean(v)) if isinstance(v, list) else v) for k, v in r.items()}
                              for r in rows], "best": best, "table": txt}
    Path(a.json).parent.mkdir(parents=True, exist_ok=True)
    Path(a.json).write_text(json.dumps(res, indent=1, default=float))


if __name__ == "__main__":
    main()
