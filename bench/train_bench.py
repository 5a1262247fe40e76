"""Training throughput of the device reranker on this machine: lists/s (forward + backward + AdamW step) for each
model variant, batch 128, on real rerank lists from simulated logs. Writes JSON.

    .venv/bin/python bench/train_bench.py --out runs/bench/train.json
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from edge_rerank.ablation import BASE_OPS
from edge_rerank.cloud.training.data import build_samples
from edge_rerank.cloud.training.losses import LOSSES
from edge_rerank.cloud.training.model import DeviceReranker, ModelConfig, to_tensors
from edge_rerank.pipeline import feature_config_for
from edge_rerank.runs import logged_world
from edge_rerank.simulator.world import World, WorldConfig


def lists_per_s(model: DeviceReranker, samples, batch: int, steps: int, loss: str) -> float:
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    fn = LOSSES[loss]()
    names = model.input_names
    rng = np.random.default_rng(0)
    model.train()

    def step():
        idx = rng.integers(0, len(samples), batch)
        b = {k: v[idx] for k, v in samples.inputs.items()}
        out = model(*to_tensors(b, names))
        lo = fn(out, torch.from_numpy(samples.labels[idx]), torch.from_numpy(b["cand_mask"]))
        opt.zero_grad()
        lo.backward()
        opt.step()

    for _ in range(3):
        step()
    t = time.perf_counter()
    for _ in range(steps):
        step()
    return steps * batch / (time.perf_counter() - t)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/bench/train.json")
    p.add_argument("--sessions", type=int, default=600)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--batch", type=int, default=128)
    a = p.parse_args()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True) if out.suffix == "" else out.parent.mkdir(parents=True, exist_ok=True)
    wcfg = WorldConfig(seed=0)
    world = World(wcfg)
    rows = logged_world(world, Path("runs/bench/train_cloud_data"), a.sessions, 1000, progress=False).rows
    full = feature_config_for(wcfg)
    t = time.perf_counter()
    s_full = build_samples(rows, full, progress=False)
    feat_rate = len(s_full) / (time.perf_counter() - t)
    print(f"feature building (device operators, one process): {feat_rate:.0f} lists/s")
    s_base = build_samples(rows, replace(full, candidate_ops=BASE_OPS), progress=False)
    results = []
    for name, fc, s, mc in [("PRM, no feedback", replace(full, candidate_ops=BASE_OPS), s_base,
                             ModelConfig(residual=False)),
                            ("+ Match&Aggregate", full, s_full, ModelConfig(residual=False)),
                            ("+ MVFAN", full, s_full, ModelConfig(use_feedback=True, residual=False)),
                            ("default (M&A + residual)", full, s_full, ModelConfig())]:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            torch.manual_seed(0)
            model = DeviceReranker(fc, mc)
            r = {"variant": name, "threads": threads, "batch": a.batch,
                 "params": int(sum(q.numel() for q in model.parameters())),
                 "lists_per_s": lists_per_s(model, s, a.batch, a.steps, "lambda")}
            results.append(r)
            print(f"{name:<24} threads={threads}  {r['lists_per_s']:>8.0f} lists/s  ({r['params']:,} params)")
    payload = {"machine": {"cpu_count": torch.get_num_threads(), "platform": platform.platform(),
                           "torch": torch.__version__},
               "n_lists": len(s_full), "loss": "lambda", "feature_lists_per_s": feat_rate, "results": results}
    out.write_text(json.dumps(payload, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
