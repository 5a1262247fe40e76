"""Training throughput on long lists (issue 14, point 7): lists/s per core (forward + backward + AdamW step, one
thread, batch 128, CPU time of the thread so other jobs on the machine do not count) for lists of up to 300
candidates: padded to N_max as before, padding trimmed per batch with length-bucketed batches, and then with the
fused attention kernel in training. Two list-length mixes: every list 300 long, and a long-tailed mix like real
impression logs (lognormal, median 40, capped at 300). Inputs are synthetic with the model's real shapes. Writes
JSON.

    .venv/bin/python bench/train_long_lists_bench.py [--steps 30] [--out runs/bench/train_long_lists.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch

from edge_rerank.cloud.training.data import length_bucketed_batches, list_lengths, trim_padding
from edge_rerank.cloud.training.losses import LOSSES
from edge_rerank.cloud.training.model import DeviceReranker, ModelConfig, SelfAttentionBlock, to_tensors
from edge_rerank.device_sdk.features import FeatureConfig, input_specs


def synthetic(fcfg: FeatureConfig, lengths: np.ndarray, rng: np.random.Generator) -> tuple[dict, np.ndarray]:
    s = len(lengths)
    x = {}
    for name, shape, dtype in input_specs(fcfg):
        if dtype == "int32":
            x[name] = rng.integers(0, 3, size=(s, *shape)).astype(np.int32)  # valid ids for every table
        else:
            x[name] = rng.normal(size=(s, *shape)).astype(np.float32)
    n_idx = np.arange(fcfg.n_max)
    x["cand_mask"] = (n_idx[None, :] < lengths[:, None]).astype(np.float32)
    n_ev = rng.integers(1, fcfg.l_max + 1, size=s)
    ev = (np.arange(fcfg.l_max)[None, :] < n_ev[:, None])
    x["seq_pos_mask"] = (ev & (rng.random(ev.shape) < 0.2)).astype(np.float32)
    x["seq_neg_mask"] = (ev & (x["seq_pos_mask"] == 0)).astype(np.float32)
    labels = ((rng.random((s, fcfg.n_max)) < 0.05) & (x["cand_mask"] > 0)).astype(np.float32)
    return x, labels


def lists_per_s(model, x, labels, *, trim: bool, bucket: bool, steps: int, batch: int = 128) -> float:
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    loss_fn = LOSSES["lambda"]()
    rng = np.random.default_rng(0)
    if bucket:
        batches = length_bucketed_batches(list_lengths(x), batch, rng)
    else:
        perm = rng.permutation(len(labels))
        batches = [perm[i: i + batch] for i in range(0, len(perm), batch)]
    batches = [b for b in batches if len(b) == batch][: steps + 3]
    n, t0 = 0, 0.0
    model.train()
    for k, idx in enumerate(batches):
        if k == 3:  # warm-up done
            t0, n = time.thread_time(), 0
        b = {key: v[idx] for key, v in x.items()}
        lab = labels[idx]
        if trim:
            b, lab = trim_padding(b, lab)
        scores = model(*to_tensors(b, model.input_names))
        loss = loss_fn(scores, torch.from_numpy(lab), torch.from_numpy(b["cand_mask"]))
        opt.zero_grad()
        loss.backward()
        opt.step()
        n += len(idx)
    return n / (time.thread_time() - t0)  # CPU time of this (the only torch) thread: lists/s per core


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=30, help="timed steps per measurement (default: %(default)s)")
    p.add_argument("--lists", type=int, default=6000, help="synthetic lists per mix (default: %(default)s)")
    p.add_argument("--out", default="runs/bench/train_long_lists.json", help="JSON output (default: %(default)s)")
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    fcfg = FeatureConfig(n_max=300, l_max=64)
    rng = np.random.default_rng(0)
    mixes = {"all_300": np.full(a.lists, 300),
             "long_tail_median_40": np.clip(rng.lognormal(np.log(40), 0.9, a.lists), 2, 300).astype(int)}
    models = {"default": ModelConfig(), "mvfan": ModelConfig(use_feedback=True, residual=False)}
    res: dict = {"machine": platform.processor() or platform.machine(), "threads": 1, "batch": 128,
                 "n_max": fcfg.n_max, "l_max": fcfg.l_max, "results": []}
    for mix, lengths in mixes.items():
        x, labels = synthetic(fcfg, lengths, rng)
        for mname, mcfg in models.items():
            torch.manual_seed(0)
            model = DeviceReranker(fcfg, mcfg)
            SelfAttentionBlock.fused_in_training = False  # the attention written out, as before
            row = {"mix": mix, "model": mname, "mean_length": float(lengths.mean()),
                   "padded": lists_per_s(model, x, labels, trim=False, bucket=False, steps=a.steps),
                   "trimmed_bucketed": lists_per_s(model, x, labels, trim=True, bucket=True, steps=a.steps)}
            SelfAttentionBlock.fused_in_training = True
            row["trimmed_bucketed_fused"] = lists_per_s(model, x, labels, trim=True, bucket=True, steps=a.steps)
            row["speedup"] = row["trimmed_bucketed_fused"] / row["padded"]
            res["results"].append(row)
            print(f"{mix:>20} {mname:>8}: padded {row['padded']:8.1f} lists/s | trimmed + bucketed "
                  f"{row['trimmed_bucketed']:8.1f} | + fused attention {row['trimmed_bucketed_fused']:8.1f} lists/s "
                  f"({row['speedup']:.1f}x)", flush=True)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(res, indent=2))
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
