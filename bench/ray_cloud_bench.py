"""Issue 21, the cloud side and streaming: one process vs Ray on this machine (2 cores, shared and busy).

- log compaction of a tree of day partitions: ``compact_tree`` in one process vs one Ray task per partition
  on a local 2-CPU cluster (cold: the tasks' worker processes start; warm: a second tree);
- the cloud ranker (``fit_cloud_ranker``) vs Ray Train with 1 and 2 workers: the loop's pages/s, trainer.fit's
  wall time, validation NDCG@10 (1 worker: the same model);
- the device reranker fed through the driver (``fit_ray``) vs streamed (``fit_ray_streaming``: every worker reads
  its own parts), 2 workers: wall time and validation NDCG@10.

    nice .venv/bin/python bench/ray_cloud_bench.py --sessions 1500 --out runs/bench/ray_cloud.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sessions", type=int, default=1500)
    ap.add_argument("--days", type=int, default=4, help="partitions of the compaction tree")
    ap.add_argument("--parts-per-day", type=int, default=24)
    ap.add_argument("--out", default="runs/bench/ray_cloud.json")
    a = ap.parse_args()

    import ray
    import torch

    from edge_rerank.api import feature_config_for
    from edge_rerank.cloud.log_partitions import compact_tree
    from edge_rerank.cloud.logs import rows_to_table
    from edge_rerank.cloud.training.cloud_ranker import (
        CLOUD_TRAIN_CONFIG,
        CloudFeaturizer,
        fit_cloud_ranker,
        page_lists,
    )
    from edge_rerank.cloud.training.data import SplitConfig, build_samples, split_by_session, split_sessions
    from edge_rerank.cloud.training.ray_stream import fit_ray_streaming
    from edge_rerank.cloud.training.ray_train import RayOptions, fit_cloud_ranker_ray, fit_ray
    from edge_rerank.cloud.training.train import TrainConfig
    from edge_rerank.runs import logged_world
    from edge_rerank.simulator.world import World, WorldConfig

    wcfg = WorldConfig(seed=7, n_items=600, n_users=80)
    tmp = Path(tempfile.mkdtemp(prefix="ray-cloud-bench-"))
    lw = logged_world(World(wcfg), tmp / "cloud", a.sessions, 11, progress=False)
    rows = lw.rows
    res: dict = {"rows": len(rows), "sessions": a.sessions, "load_avg_start": os.getloadavg(), "cpus": os.cpu_count()}
    print(f"{len(rows)} rows, {a.sessions} sessions; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores "
          "(shared machine)")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)

    # compaction: days x parts, the rows spread over them (each part a few rows, as /v1/logs writes)
    tree = tmp / "tree"
    n_parts = a.days * a.parts_per_day
    for k in range(n_parts):
        d = tree / f"dt=2026-12-{1 + k % a.days:02d}"
        d.mkdir(parents=True, exist_ok=True)
        pq.write_table(rows_to_table(rows[k::n_parts]), d / f"part-{k:04d}.parquet")
    cold, warm = tmp / "tree-ray-cold", tmp / "tree-ray-warm"
    shutil.copytree(tree, cold)
    shutil.copytree(tree, warm)
    t = time.perf_counter()
    one = compact_tree(tree)
    single_s = time.perf_counter() - t
    times = {}
    for name, d in (("cold", cold), ("warm", warm)):  # cold: the first tasks start their worker processes
        t = time.perf_counter()
        got = compact_tree(d, ray=True)
        times[name] = time.perf_counter() - t
        assert got["rows"] == one["rows"] == len(rows)
    res["compaction"] = {"partitions": a.days, "parts": n_parts, "rows": len(rows), "single_s": single_s,
                         "ray_2cpu_cold_s": times["cold"], "ray_2cpu_warm_s": times["warm"]}
    print(f"compaction, {a.days} partitions x {a.parts_per_day} parts ({len(rows)} rows): one process "
          f"{single_s:.2f} s ({len(rows) / single_s:.0f} rows/s); Ray tasks on 2 CPUs cold {times['cold']:.2f} s, "
          f"warm {times['warm']:.2f} s ({len(rows) / times['warm']:.0f} rows/s)")

    # the cloud ranker
    pages = page_lists(rows, CloudFeaturizer(lw.data_dir))
    tr, va = split_by_session(pages, 0.25, 0)
    tcfg = dataclasses.replace(CLOUD_TRAIN_CONFIG, epochs=8, batch_size=16)
    torch.set_num_threads(tcfg.threads)  # as each Ray worker does (fit_cloud_ranker leaves the process's default)
    t = time.perf_counter()
    _, s1 = fit_cloud_ranker(tr, va, tcfg=tcfg, progress=False)
    wall = time.perf_counter() - t
    lists = len(tr) * s1["epochs_run"]
    res["cloud_ranker"] = {"train_pages": len(tr), "valid_pages": len(va),
                           "single": {"pages_per_s": lists / wall, "wall_s": wall, "valid_ndcg10": s1["valid_ndcg@10"]}}
    print(f"cloud ranker ({len(tr)} pages, {s1['epochs_run']} epochs), one process: {lists / wall:.0f} pages/s "
          f"({wall:.1f} s with validation), valid NDCG@10 {s1['valid_ndcg@10']:.4f} "
          f"(logged order {s1['valid_ndcg@10_logged_order']:.4f})")
    for w in (1, 2):
        _, s = fit_cloud_ranker_ray(tr, va, tcfg=tcfg, options=RayOptions(workers=w))
        r = s["ray"]
        res["cloud_ranker"][f"ray_{w}worker"] = {"pages_per_s": r["lists_per_s"], "loop_s": r["train_seconds"],
                                                 "wall_s": r["wall_seconds"], "valid_ndcg10": s["valid_ndcg@10"],
                                                 "history_identical": s["history"] == s1["history"]}
        print(f"cloud ranker, Ray Train {w} worker(s): {r['lists_per_s']:.0f} pages/s in the loop "
              f"({r['train_seconds']:.1f} s), trainer.fit {r['wall_seconds']:.1f} s, valid NDCG@10 "
              f"{s['valid_ndcg@10']:.4f}" + (f"; history identical: {s['history'] == s1['history']}" if w == 1 else ""))

    # the device reranker: samples through the driver vs streamed by the workers
    logs = tmp / "logs"
    logs.mkdir()
    for k in range(8):
        pq.write_table(rows_to_table(rows[k::8]), logs / f"part-{k}.parquet")
    fcfg = feature_config_for(wcfg)
    dcfg = TrainConfig(epochs=4, seed=0, gbdt_teacher=0)  # the streamed path has no teacher
    t = time.perf_counter()
    _, dtr, dva, _ = split_sessions(build_samples(rows, fcfg, progress=False), SplitConfig(seed=0))
    build_s = time.perf_counter() - t
    _, sd = fit_ray(dtr, dva, fcfg, tcfg=dcfg, options=RayOptions(workers=2))
    fed = build_s + sd["ray"]["wall_seconds"]
    t = time.perf_counter()
    _, ss, _, _ = fit_ray_streaming(logs, fcfg, tcfg=dcfg, split=SplitConfig(seed=0), options=RayOptions(workers=2))
    streamed = time.perf_counter() - t
    res["device_2workers"] = {"driver_fed": {"wall_s": fed, "build_s": build_s,
                                             "valid_ndcg10": sd["valid_model"]["ndcg@10"]},
                              "streamed": {"wall_s": streamed, "valid_ndcg10": ss["valid_model"]["ndcg@10"],
                                           "loop_lists_per_s": ss["lists_per_s"]}}
    print(f"device reranker, 2 workers ({len(dtr)} training lists, 4 epochs): driver-fed {fed:.1f} s (samples built "
          f"in one process {build_s:.1f} s + trainer.fit), valid NDCG@10 {sd['valid_model']['ndcg@10']:.4f}; streamed "
          f"{streamed:.1f} s, valid NDCG@10 {ss['valid_model']['ndcg@10']:.4f}")
    ray.shutdown()
    res["load_avg_end"] = os.getloadavg()
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(res, indent=2, default=float))
    print(f"load average at the end {os.getloadavg()[0]:.1f}; wrote {a.out}")


if __name__ == "__main__":
    main()
