"""Offline quality of the device reranker against its baselines, per simulated world and seed (issue 14).

For each world (shop, feed) and seed: cloud-only sessions are simulated in-process and logged, the samples split
by session (train / validation / test, seeded), and on the **test** sessions every variant is compared with the
cloud order, the on-device heuristic and a LightGBM lambdarank on the same per-candidate features. Gains are
NDCG@10 differences per list with 95 % CIs that resample whole sessions. The ablation varies one part at a time:

  default                M&A features + PRM + residual on the cloud score, trained on the labels plus a list-KL
                         term to a LightGBM lambdarank teacher (what ships)
  labels only            the default trained on the labels alone (no LightGBM teacher)
  M&A only               the same without the residual
  MVFAN                  + the feedback attention network, no residual
  MVFAN + residual       both
  PRM, no feedback       only the cloud features (cloud score, position, distance)
  no identity operators  the default model without the item-identity operators (feed only: the shop never
                         re-shows an item)

    .venv/bin/python bench/quality_bench.py [--worlds shop,feed] [--seeds 0,1,2] [--sessions 4000]
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from edge_rerank.ablation import BASE_OPS, _heuristic_samples
from edge_rerank.api import feature_config_for
from edge_rerank.cloud.training.data import SplitConfig
from edge_rerank.cloud.training.gbdt import fit_gbdt, predict_gbdt
from edge_rerank.cloud.training.model import ModelConfig
from edge_rerank.cloud.training.ranking_metrics import gain_with_ci, ndcg_at_k
from edge_rerank.cloud.training.train import TrainConfig, cloud_order_scores, fit, gbdt_teacher_scores, predict
from edge_rerank.device_sdk.features.config import IDENTITY_OPS
from edge_rerank.runs import logged_world, split_samples
from edge_rerank.simulator.world import World, WorldConfig

VARIANTS = {  # name: (model config, training-config overrides)
    "default": (ModelConfig(), {}),
    "labels only (no LightGBM teacher)": (ModelConfig(), {"gbdt_teacher": 0.0}),
    "M&A only": (ModelConfig(residual=False), {}),
    "MVFAN": (ModelConfig(use_feedback=True, residual=False), {}),
    "MVFAN + residual": (ModelConfig(use_feedback=True), {}),
}


def _ndcg(scores, samples) -> np.ndarray:
    return ndcg_at_k(scores, samples.labels, samples.mask, 10)


def run_world(domain: str, seed: int, n_sessions: int, epochs: int, out: Path,
              per_list_out: dict | None = None) -> dict:
    """One world and seed; `per_list_out` (if given) receives the per-list NDCG@10 arrays and session ids, for
    the gains pooled over seeds."""
    wcfg = WorldConfig(seed=0, domain=domain)
    world = World(wcfg)
    t = time.perf_counter()  # provisioning included
    rows = logged_world(world, out / f"cloud_data_{domain}", n_sessions, 1000 + seed, wire=False,
                        progress=False).rows
    fcfg = feature_config_for(wcfg)
    split, tr, va, te = split_samples(rows, fcfg, SplitConfig(seed=seed), progress=False)
    res: dict = {"world": domain, "seed": seed, "lists": {"train": len(tr), "valid": len(va), "test": len(te)},
                 "simulate_and_features_s": time.perf_counter() - t, "ndcg10": {}, "gains": {}}
    per_list = {"cloud order": _ndcg(cloud_order_scores(te), te)}
    heur = split.apply(_heuristic_samples(rows, fcfg), source="the heuristic's samples")[2]
    per_list["heuristic"] = _ndcg(heur.inputs["heuristic"], heur)
    gbdt, _ = fit_gbdt(tr, va)
    per_list["LightGBM lambdarank"] = _ndcg(predict_gbdt(gbdt, te), te)
    tcfg = TrainConfig(epochs=epochs, seed=seed)
    teacher = gbdt_teacher_scores(tr, va, tcfg)  # the same LightGBM teacher for every variant that uses one
    for name, (mcfg, over) in VARIANTS.items():
        torch.manual_seed(seed)
        model, _ = fit(tr, va, fcfg, mcfg, replace(tcfg, **over), progress=False,
                       teacher=None if over.get("gbdt_teacher") == 0 else teacher)
        per_list[name] = _ndcg(predict(model, te), te)
    variants = [("PRM, no feedback", replace(fcfg, candidate_ops=BASE_OPS), ModelConfig(residual=False))]
    if domain == "feed":
        variants.append(("no identity operators",
                         replace(fcfg, candidate_ops=tuple(op for op in fcfg.candidate_ops if op not in IDENTITY_OPS)),
                         ModelConfig()))
    for name, fc, mcfg in variants:
        _, tr2, va2, te2 = split_samples(rows, fc, SplitConfig(seed=seed), progress=False)
        model, _ = fit(tr2, va2, fc, mcfg, tcfg, progress=False)
        per_list[name] = _ndcg(predict(model, te2), te2)
    sids = te.session_ids
    if per_list_out is not None:
        per_list_out.update(per_list=per_list, sessions=np.array([f"{seed}:{s}" for s in sids]))
    for name, v in per_list.items():
        res["ndcg10"][name] = float(np.nanmean(v))
    for base in ("cloud order", "heuristic", "LightGBM lambdarank"):
        res["gains"][f"default vs {base}"] = gain_with_ci(per_list["default"], per_list[base], sids)
    for name in per_list:
        if name not in ("default", "cloud order", "heuristic", "LightGBM lambdarank"):
            res["gains"][f"default vs {name}"] = gain_with_ci(per_list["default"], per_list[name], sids)
    return res


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--worlds", default="shop,feed", help="comma-separated world domains (default: %(default)s)")
    p.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (default: %(default)s)")
    p.add_argument("--sessions", type=int, default=4000, help="logged sessions per world and seed (default: "
                                                                "%(default)s)")
    p.add_argument("--epochs", type=int, default=15, help="maximum epochs (default: %(default)s)")
    p.add_argument("--out", default="runs/bench/quality", help="output directory (default: %(default)s)")
    a = p.parse_args(argv)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)
    results, pooled = [], {}
    for domain in a.worlds.split(","):
        parts = []
        for seed in (int(s) for s in a.seeds.split(",")):
            part: dict = {}
            r = run_world(domain, seed, a.sessions, a.epochs, out, part)
            results.append(r)
            parts.append(part)
            g = r["gains"]
            print(f"{domain} seed {seed}: " + ", ".join(f"{k} {v:.4f}" for k, v in r["ndcg10"].items()), flush=True)
            for k in ("default vs cloud order", "default vs heuristic", "default vs LightGBM lambdarank"):
                print(f"   {k}: {g[k]['gain']:+.4f} [{g[k]['lo']:+.4f}, {g[k]['hi']:+.4f}]", flush=True)
            (out / "quality.json").write_text(json.dumps({"runs": results, "pooled": pooled}, indent=2))
        # the three seeds are independent worlds' logs: pool their test lists, resample sessions within all
        sids = np.concatenate([p["sessions"] for p in parts])
        cat = {k: np.concatenate([p["per_list"][k] for p in parts]) for k in parts[0]["per_list"]}
        pooled[domain] = {f"default vs {k}": gain_with_ci(cat["default"], v, sids) for k, v in cat.items()
                          if k != "default"}
        for k, g in pooled[domain].items():
            print(f"{domain} pooled over seeds: {k}: {g['gain']:+.4f} [{g['lo']:+.4f}, {g['hi']:+.4f}]", flush=True)
        (out / "quality.json").write_text(json.dumps({"runs": results, "pooled": pooled}, indent=2))
    lines = ["| world | variant | NDCG@10 per seed | mean | default's gain, pooled [95 % CI] |",
             "|---|---|---|---|---|"]
    for domain in a.worlds.split(","):
        rs = [r for r in results if r["world"] == domain]
        for name in rs[0]["ndcg10"]:
            vals = [r["ndcg10"][name] for r in rs]
            g = pooled[domain].get(f"default vs {name}")
            ci = f"{g['gain']:+.4f} [{g['lo']:+.4f}, {g['hi']:+.4f}]" if g else "–"
            lines.append(f"| {domain} | {name} | {', '.join(f'{v:.4f}' for v in vals)} | {np.mean(vals):.4f} | {ci} |")
    (out / "quality.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"wrote {out / 'quality.json'}, {out / 'quality.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
