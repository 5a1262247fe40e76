"""RL score fusion (issue 17): train the agent (and the no-penalty ablation), A/B it in the simulator against fixed
a = 1, and measure the actor's inference time per request inside the server (Flask app, /v1/search).

    python bench/fusion_ab.py                      # train both agents + A/B (4,000 sessions per arm)
    python bench/fusion_ab.py --run runs/fusion    # reuse trained runs (runs/fusion, runs/fusion-nopen)
    python bench/fusion_ab.py --quick              # small everything (~1-2 min; what a smoke check needs)
    python bench/fusion_ab.py --click-bait --out runs/cb   # the penalty-ablation world

Writes runs/bench/fusion_ab.json and the training curves (runs/fusion/training_curves.png).
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import numpy as np

from edge_rerank.fusion import FusionABConfig, FusionTrainConfig, format_ab, fusion_ab, train_fusion


def server_actor_latency(run: Path, n_requests: int = 600) -> dict:
    """/v1/search through the Flask app with the fusion bundle in the data directory: the actor's time per call
    (RLFusion.latencies_ms) and the whole request's, for page requests of many users."""
    from edge_rerank.cloud.app import CloudConfig, create_app
    from edge_rerank.device_sdk import wire
    from edge_rerank.device_sdk.contracts import Context, SearchRequest

    data = run / "cloud_data"
    shutil.copytree(run / "bundle", data / "fusion", dirs_exist_ok=True)
    try:
        app = create_app(CloudConfig(data_dir=str(data), ranking_cache_size=0))
        fusion = app.extensions["edge_rerank.fusion"]
        assert fusion is not None, "the server did not load the fusion policy"
        client = app.test_client()
        users = sorted(fusion.store._counts)[:200] or ["u00000"]
        rng = np.random.default_rng(0)
        total = []
        for k in range(n_requests):
            req = SearchRequest(f"r{k}", f"s{k}", users[k % len(users)], "dinner",
                                Context(lat=float(rng.uniform(0, 10)), lon=float(rng.uniform(0, 10)),
                                        hour=int(rng.integers(7, 23))), page_index=k % 3)
            t0 = time.perf_counter()
            r = client.post("/v1/search", data=wire.request_to_proto(req).SerializeToString(),
                            headers={"Content-Type": "application/x-protobuf", "Accept": "application/x-protobuf"})
            total.append((time.perf_counter() - t0) * 1e3)
            assert r.status_code == 200, r.data[:200]
        lat = np.array(fusion.latencies_ms)
        return {"requests": n_requests, "actor_calls": int(lat.size), "actor_p50_ms": float(np.percentile(lat, 50)),
                "actor_p99_ms": float(np.percentile(lat, 99)), "search_p50_ms": float(np.percentile(total, 50)),
                "search_p99_ms": float(np.percentile(total, 99)), "fallbacks": dict(fusion.stats.fallbacks)}
    finally:
        shutil.rmtree(data / "fusion", ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", help="reuse this trained run (and <run>-nopen for the ablation if it exists)")
    ap.add_argument("--out", default="runs/fusion")
    ap.add_argument("--sessions", type=int, default=4000)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--click-bait", action="store_true", help="train in the click-bait order world (README "
                    "'RL fusion: penalty ablation world'); the A/B reads the world from the run")
    ap.add_argument("--json", default="runs/bench/fusion_ab.json")
    a = ap.parse_args()
    t0 = time.perf_counter()
    res: dict = {}
    if a.run:
        run = Path(a.run)
        nopen = Path(f"{a.run}-nopen") if Path(f"{a.run}-nopen", "bundle").exists() else None
    else:
        kw = (dict(log_sessions=1500, pretrain_episodes=600, episodes=1200, eval_episodes=300) if a.quick else {})
        run, nopen = Path(a.out), Path(f"{a.out}-nopen")
        s = train_fusion(FusionTrainConfig(out=str(run), click_bait=a.click_bait, **kw), progress=True)
        s2 = train_fusion(FusionTrainConfig(out=str(nopen), no_conversion_penalty=0.0, leave_penalty=0.0,
                                            reuse_data=str(run), click_bait=a.click_bait, **kw), progress=True)
        res["training"] = {"penalties": {k: s[k] for k in ("ranker", "total_s")} | {"eval": s["agent"]["eval"]},
                           "no_penalties": {"total_s": s2["total_s"], "eval": s2["agent"]["eval"]}}
    summary = json.loads((run / "training.json").read_text())
    agent = summary["agent"]
    mean_a = float(agent["curves"]["actor_a"][agent["chosen_policy"]][-1][0])
    sessions = 1000 if a.quick else a.sessions
    ab = fusion_ab(FusionABConfig(run=str(run), sessions=sessions, ablation_run=str(nopen) if nopen else None,
                                  fixed_mean_arm=mean_a), progress=True)
    res["ab"] = ab
    res["server"] = server_actor_latency(run, 200 if a.quick else 600)
    res["total_s"] = time.perf_counter() - t0
    Path(a.json).parent.mkdir(parents=True, exist_ok=True)
    Path(a.json).write_text(json.dumps(res, indent=1, default=float))
    print(format_ab(ab))
    print("agent + device vs each alone:", json.dumps(ab.get("together_vs_alone"), default=float))
    print("actor in the A/B:", json.dumps(ab["actor"], default=float))
    print("server:", json.dumps(res["server"], default=float))
    print(f"total {res['total_s']:.0f} s -> {a.json}")


if __name__ == "__main__":
    main()
