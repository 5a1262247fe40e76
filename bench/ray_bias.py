"""Issue 21: is the 2-worker device model's lower validation NDCG@10 a bias or noise?

Replays Ray Train's worker loop (``ray_train._train_loop`` with the device task: the same batches, the same
per-worker shares ``batch[rank::N]`` and loss weights, each rank's own dropout stream) in one process, summing the
workers' weighted gradients as DDP's all-reduce does, so many seeds cost seconds instead of a Ray Train start-up
each. Per seed, on the bench's logs:

- ``single``: ``fit`` (the single-process run);
- ``replay2``: the 2-worker loop replayed (what ``fit_ray(workers=2)`` computes, up to summation order);
- ``single_redrawn``: ``fit`` with only its dropout draws changed (another stream after the same initialisation):
  the paired noise a 2-worker run carries by construction (its rank 1 draws other dropout masks);
- ``nodrop_single`` / ``nodrop_replay2``: both with dropout 0, where the split of a batch is the only difference
  (equal up to floating-point summation order if the per-worker weighting is exact);
- with ``--ray-seeds K``: ``fit_ray(workers=2)`` itself for the first K seeds (the replay's fidelity, and the
  issue's 3-seed re-run).

    nice .venv/bin/python bench/ray_bias.py --seeds 10 --ray-seeds 3 --out runs/bench/ray_bias.json
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np


def replay(tr, va, fcfg, tcfg, mcfg=None, *, world: int = 2, dropout_seed: int | None = None) -> float:
    """Ray Train's device loop for `world` workers in this process; the best epoch's validation NDCG@10.
    `dropout_seed` (world 1 only): re-seed the dropout stream after initialisation."""
    import torch

    from edge_rerank.cloud.training.data import length_bucketed_batches
    from edge_rerank.cloud.training.ray_train import _DeviceTask
    from edge_rerank.cloud.training.train import EarlyStopping, evaluate_lists, predict

    config = {"train": tr, "valid": va, "fcfg": fcfg.to_dict(), "mcfg": mcfg.to_dict() if mcfg else None,
              "tcfg": asdict(tcfg), "find_unused": False}
    task = _DeviceTask(config, 0, 1)
    torch.manual_seed(tcfg.seed)
    torch.set_num_threads(tcfg.threads)
    model = task.build()
    states = [torch.get_rng_state()]
    for r in range(1, world):  # as each rank re-seeds after building the model
        torch.manual_seed(tcfg.seed * 1_000_003 + r)
        states.append(torch.get_rng_state())
    if dropout_seed is not None:
        torch.manual_seed(dropout_seed)
        states[0] = torch.get_rng_state()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=tcfg.lr,
                            weight_decay=tcfg.weight_decay)
    rng = np.random.default_rng(tcfg.seed)
    stopper = EarlyStopping(tcfg.patience)
    for _ in range(tcfg.epochs):
        model.train()
        if task.lengths is not None:
            batches = length_bucketed_batches(task.lengths, tcfg.batch_size, rng)
        else:
            perm = rng.permutation(task.n_train)
            batches = [perm[i: i + tcfg.batch_size] for i in range(0, len(perm), tcfg.batch_size)]
        for idx in batches:
            opt.zero_grad()
            total = task.units(idx) if world > 1 else 0.0
            for r in range(world):
                mine = idx[r::world]
                share = 1.0 if world == 1 else task.units(mine) / total if total > 0 else len(mine) / len(idx)
                if len(mine) == 0:
                    mine = idx[:1]
                torch.set_rng_state(states[r])
                loss = task.loss(model, mine)
                states[r] = torch.get_rng_state()
                (loss * share).backward()  # DDP: the mean over ranks of world x share x grad = the sum here
            torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
            opt.step()
        model.eval()
        if stopper.update(evaluate_lists(predict(model, va), va)["ndcg@10"], model):
            break
    if stopper.best_state is not None:
        model.load_state_dict(stopper.best_state)
    return evaluate_lists(predict(model, va), va)["ndcg@10"]


def _paired(a: list[float], b: list[float]) -> dict:
    d = np.subtract(b, a)
    se = float(np.std(d, ddof=1) / np.sqrt(len(d))) if len(d) > 1 else float("nan")
    return {"mean": float(np.mean(d)), "se": se, "t": float(np.mean(d) / se) if se > 0 else float("nan"),
            "lower_in": int(np.sum(d < 0)), "of": len(d)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sessions", type=int, default=3000)
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--ray-seeds", type=int, default=0, help="also fit_ray(workers=2) for the first K seeds")
    ap.add_argument("--out", default="runs/bench/ray_bias.json")
    a = ap.parse_args()

    from edge_rerank.api import feature_config_for
    from edge_rerank.cloud.training.configs import ModelConfig, TrainConfig
    from edge_rerank.cloud.training.data import build_samples, split_sessions
    from edge_rerank.cloud.training.train import fit
    from edge_rerank.runs import logged_world
    from edge_rerank.simulator.world import World, WorldConfig

    wcfg = WorldConfig(seed=7, n_items=600, n_users=80)  # the bench's logs (bench/ray_bench.py)
    lw = logged_world(World(wcfg), Path(tempfile.mkdtemp(prefix="ray-bias-")) / "cloud", a.sessions, 11,
                      progress=False)
    fcfg = feature_config_for(wcfg)
    _, tr, va, _ = split_sessions(build_samples(lw.rows, fcfg, progress=False))
    print(f"{len(tr)} training / {len(va)} validation lists; load average {os.getloadavg()[0]:.1f} on "
          f"{os.cpu_count()} cores (shared machine)")
    nodrop = replace(ModelConfig(), dropout=0.0)
    res: dict = {"lists": {"train": len(tr), "valid": len(va)}, "epochs": a.epochs, "load_avg_start": os.getloadavg(),
                 "runs": {k: [] for k in ("single", "replay2", "single_redrawn", "nodrop_single", "nodrop_replay2",
                                          "ray2", "ray2_replay")}}
    runs = res["runs"]
    t0 = time.perf_counter()
    for seed in range(a.seeds):
        tcfg = TrainConfig(epochs=a.epochs, seed=seed)
        runs["single"].append(fit(tr, va, fcfg, tcfg=tcfg, progress=False)[1]["valid_model"]["ndcg@10"])
        one = replay(tr, va, fcfg, tcfg, world=1)
        assert one == runs["single"][-1], (one, runs["single"][-1])  # the replay of 1 worker is fit
        runs["replay2"].append(replay(tr, va, fcfg, tcfg, world=2))
        runs["single_redrawn"].append(replay(tr, va, fcfg, tcfg, world=1, dropout_seed=seed * 1_000_003 + 1))
        runs["nodrop_single"].append(replay(tr, va, fcfg, tcfg, nodrop, world=1))
        runs["nodrop_replay2"].append(replay(tr, va, fcfg, tcfg, nodrop, world=2))
        print(f"seed {seed}: " + ", ".join(f"{k} {v[-1]:.4f}" for k, v in runs.items() if v))
    res["replay_seconds"] = time.perf_counter() - t0
    if a.ray_seeds:
        import ray

        from edge_rerank.cloud.training.ray_train import RayOptions, fit_ray

        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
        for seed in range(a.ray_seeds):
            tcfg = TrainConfig(epochs=a.epochs, seed=seed)
            _, s = fit_ray(tr, va, fcfg, tcfg=tcfg, options=RayOptions(workers=2))
            runs["ray2"].append(s["valid_model"]["ndcg@10"])
            runs["ray2_replay"].append(runs["replay2"][seed])
            print(f"seed {seed}: fit_ray 2 workers {runs['ray2'][-1]:.4f} (replayed {runs['replay2'][seed]:.4f}, "
                  f"single {runs['single'][seed]:.4f})")
        ray.shutdown()
    n = a.ray_seeds
    res["gaps"] = {"replay2_vs_single": _paired(runs["single"], runs["replay2"]),
                   "redrawn_vs_single": _paired(runs["single"], runs["single_redrawn"]),
                   "nodrop_replay2_vs_single": _paired(runs["nodrop_single"], runs["nodrop_replay2"]),
                   "max_abs_nodrop_gap": float(np.max(np.abs(np.subtract(runs["nodrop_replay2"],
                                                                       runs["nodrop_single"])))),
                   "single_seed_std": float(np.std(runs["single"], ddof=1))}
    if n:
        res["gaps"]["ray2_vs_single"] = _paired(runs["single"][:n], runs["ray2"])
        res["gaps"]["ray2_vs_replay2"] = _paired(runs["ray2_replay"], runs["ray2"])
    for k, v in res["gaps"].items():
        print(f"{k}: {v}")
    res["load_avg_end"] = os.getloadavg()
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(res, indent=2))
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
