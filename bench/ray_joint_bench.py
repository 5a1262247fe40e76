"""Issue 21: joint training (``train(..., joint_cloud_data=...)``) in one process vs its three stages on 2 Ray
Train workers, on simulated logs (one seed; this machine is shared and busy, compare within the run).

    nice .venv/bin/python bench/ray_joint_bench.py --sessions 1500 --out runs/bench/ray_joint.json
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sessions", type=int, default=1500)
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--out", default="runs/bench/ray_joint.json")
    a = ap.parse_args()

    import pyarrow.parquet as pq
    import ray

    from edge_rerank.api import train
    from edge_rerank.cloud.logs import rows_to_table
    from edge_rerank.cloud.training.ray_train import RayOptions
    from edge_rerank.runs import logged_world
    from edge_rerank.simulator.world import World, WorldConfig

    tmp = Path(tempfile.mkdtemp(prefix="ray-joint-bench-"))
    lw = logged_world(World(WorldConfig(seed=7, n_items=600, n_users=80)), tmp / "cloud", a.sessions, 11,
                      progress=False)
    logs = tmp / "logs"
    logs.mkdir()
    for k in range(4):
        pq.write_table(rows_to_table(lw.rows[k::4]), logs / f"part-{k}.parquet")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    out = {}
    for name, opt in (("single", None), ("ray2", RayOptions(workers=2))):
        t = time.time()
        s = train(logs, tmp / name, epochs=a.epochs, joint_cloud_data=lw.data_dir, progress=False, ray=opt).summary
        out[name] = {"valid": s["valid_model"]["ndcg@10"], "test": s["test_model"]["ndcg@10"],
                     "stage2_valid": s["stage2_valid_model"]["ndcg@10"],
                     "cloud_valid": s["cloud_ranker"]["valid_ndcg@10"],
                     "new_cloud_test": s["test_new_cloud_ranker"]["ndcg@10"], "wall_s": time.time() - t}
        print(name, out[name], flush=True)
    ray.shutdown()
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(out, indent=2))
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
