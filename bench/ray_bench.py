"""Issue 21: sample building and training on Ray vs one process, on this machine (2 cores, shared and busy).

Measures, on simulated logs written as Parquet parts:
- sample building rows/s: single process (read_logs + build_samples), Ray Data on a 1-CPU and on a 2-CPU local
  cluster (cold: the first run on a fresh cluster, worker start-up included; warm: the same pipeline again);
- training lists/s: single-process fit, Ray Train with 1 and 2 workers (the loop's own lists/s, and the wall
  time of trainer.fit() with its start-up), and validation NDCG@10 of single-process vs 2-worker models over seeds;
- a paper estimate of the cores for 10^8 impression rows/day from the measured single-core rates.

    nice .venv/bin/python bench/ray_bench.py --sessions 3000 --seeds 3 --out runs/bench/ray.json
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq


def _fresh_ray(cpus: int):
    import ray

    if ray.is_initialized():
        ray.shutdown()
    ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False)
    return ray


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sessions", type=int, default=1200)
    ap.add_argument("--parts", type=int, default=8)
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--repeat", type=int, default=10, help="training lists repeated for the throughput runs")
    ap.add_argument("--out", default="runs/bench/ray.json")
    a = ap.parse_args()

    from edge_rerank.api import feature_config_for
    from edge_rerank.cloud.logs import read_logs, rows_to_table
    from edge_rerank.cloud.training.data import build_samples, split_sessions
    from edge_rerank.cloud.training.ray_data import build_samples_ray
    from edge_rerank.cloud.training.ray_train import RayOptions, fit_ray
    from edge_rerank.cloud.training.train import TrainConfig, fit
    from edge_rerank.runs import logged_world
    from edge_rerank.simulator.world import World, WorldConfig

    wcfg = WorldConfig(seed=7, n_items=600, n_users=80)
    tmp = Path(tempfile.mkdtemp(prefix="ray-bench-"))
    lw = logged_world(World(wcfg), tmp / "cloud", a.sessions, 11, progress=False)
    rows = lw.rows
    logs = tmp / "logs"
    logs.mkdir()
    for k in range(a.parts):  # interleaved: every session spans parts
        pq.write_table(rows_to_table(rows[k:: a.parts]), logs / f"part-{k:03d}.parquet")
    fcfg = feature_config_for(wcfg)
    load = os.getloadavg()
    print(f"{len(rows)} rows in {a.parts} parts, {a.sessions} sessions; load average {load[0]:.1f} on "
          f"{os.cpu_count()} cores (shared machine)")

    res: dict = {"rows": len(rows), "parts": a.parts, "sessions": a.sessions, "load_avg_start": load,
                 "cpus": os.cpu_count(), "python": platform.python_version(), "build": {}, "train": {}}
    t = time.perf_counter()
    samples = build_samples(read_logs(logs), fcfg, progress=False)
    single_s = time.perf_counter() - t
    res["build"]["single_process"] = {"seconds": single_s, "rows_per_s": len(rows) / single_s}
    res["lists"] = len(samples)
    print(f"build, single process: {len(rows) / single_s:8.0f} rows/s ({single_s:.1f} s, {len(samples)} lists)")
    for cpus in (1, 2):
        _fresh_ray(cpus)
        for run in ("cold", "warm"):
            t = time.perf_counter()
            got, _ = build_samples_ray(logs, fcfg)
            s = time.perf_counter() - t
            assert np.array_equal(got.labels, samples.labels) and got.session_ids == samples.session_ids
            res["build"][f"ray_{cpus}cpu_{run}"] = {"seconds": s, "rows_per_s": len(rows) / s}
            print(f"build, Ray Data {cpus} CPU ({run}): {len(rows) / s:8.0f} rows/s ({s:.1f} s)")

    _, tr, va, te = split_sessions(samples)
    # throughput: the training lists repeated `--repeat` times, so an epoch is long enough to time (the small logs'
    # epoch is well under a second); quality: the real split, over seeds
    big = tr.subset(np.tile(np.arange(len(tr)), a.repeat))
    tcfg = TrainConfig(epochs=2, seed=0, patience=2)
    _, s1 = fit(big, va, fcfg, tcfg=tcfg, progress=False)
    res["train"]["throughput_lists"] = len(big)
    res["train"]["single_process"] = {"lists_per_s": s1["lists_per_s"], "loop_seconds": s1["train_seconds"]}
    print(f"train ({len(big)} lists x 2 epochs), single process: {s1['lists_per_s']:7.0f} lists/s "
          f"(loop {s1['train_seconds']:.1f} s)")
    _fresh_ray(2)
    for w in (1, 2):
        _, s = fit_ray(big, va, fcfg, tcfg=tcfg, options=RayOptions(workers=w))
        res["train"][f"ray_{w}worker"] = {"lists_per_s": s["lists_per_s"], "loop_seconds": s["train_seconds"],
                                          "wall_seconds": s["ray"]["wall_seconds"]}
        extra = f"; history identical to single process: {s['history'] == s1['history']}" if w == 1 else ""
        print(f"train, Ray {w} worker(s): {s['lists_per_s']:7.0f} lists/s (loop {s['train_seconds']:.1f} s, "
              f"trainer.fit {s['ray']['wall_seconds']:.1f} s{extra})")
        if w == 1:
            res["train"]["ray_1worker"]["history_identical"] = s["history"] == s1["history"]
    seeds = list(range(a.seeds))
    ndcg = {"single": [], "ray2": []}
    for seed in seeds:
        tcfg = TrainConfig(epochs=a.epochs, seed=seed)
        _, s1 = fit(tr, va, fcfg, tcfg=tcfg, progress=False)
        ndcg["single"].append(s1["valid_model"]["ndcg@10"])
        _, s2 = fit_ray(tr, va, fcfg, tcfg=tcfg, options=RayOptions(workers=2))
        ndcg["ray2"].append(s2["valid_model"]["ndcg@10"])
        print(f"seed {seed}: valid NDCG@10 single {ndcg['single'][-1]:.4f}, 2 workers {ndcg['ray2'][-1]:.4f}")
    res["valid_ndcg10"] = ndcg | {"seeds": seeds, "mean_gap": float(np.mean(np.subtract(ndcg["ray2"], ndcg["single"]))),
                                  "single_seed_std": float(np.std(ndcg["single"]))}
    import ray

    ray.shutdown()

    # paper estimate: 1e8 rows/day, from the single-process (one core) rates measured above
    per_core_rows = res["build"]["single_process"]["rows_per_s"]
    per_core_lists = res["train"]["single_process"]["lists_per_s"]
    lists_per_row = len(samples) / len(rows)
    day = 86_400
    need_rows = 1e8 / day
    epochs = a.epochs  # the quality runs' maximum epochs
    build_cores = need_rows / per_core_rows
    train_core_s = 1e8 * lists_per_row * epochs / per_core_lists
    window_h = 4.0
    est = {"rows_per_day": 1e8, "rows_per_s_needed": need_rows, "build_cores_steady": build_cores,
           "lists_per_row": lists_per_row, "train_epochs": epochs, "train_core_hours_per_day": train_core_s / 3600,
           "train_cores_in_4h_window": train_core_s / (window_h * 3600)}
    res["estimate"] = est
    print(f"estimate for 1e8 rows/day ({need_rows:.0f} rows/s): sample building {build_cores:.1f} cores at "
          f"{per_core_rows:.0f} rows/s/core; training one day of logs ({lists_per_row:.2f} lists/row, {epochs} epochs) "
          f"{train_core_s / 3600:.0f} core-hours = {math.ceil(train_core_s / (window_h * 3600))} cores for a "
          f"{window_h:.0f} h window (before the data-parallel efficiency measured above)")
    res["load_avg_end"] = os.getloadavg()
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(res, indent=2))
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
