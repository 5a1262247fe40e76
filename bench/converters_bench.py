"""Converters benchmark: one trained device reranker exported to every format, each file validated in its
runtime (vs torch and vs onnxruntime on real lists) and timed there: format x size x max diff x tau x latency.
Latency: batch 1, one thread, a full list (N_max candidates), backends timed in interleaved rounds (the
machine is shared and noisy: compare rows of one run, not across runs). Writes JSON.

    .venv/bin/python bench/converters_bench.py --out runs/bench/converters.json
    .venv/bin/python bench/converters_bench.py --checkpoint runs/demo/model/checkpoint.pt --logs runs/demo/logs
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from edge_rerank.cloud.training.train import TrainConfig, fit
from edge_rerank.converters.export import export_formats
from edge_rerank.converters.specs import FORMATS
from edge_rerank.device_sdk.model_manager import load_model


def _data(a):
    if a.checkpoint:
        from edge_rerank.api import load_held_out

        held = load_held_out(a.checkpoint, a.logs, progress=True)  # its recorded test split
        return held.model, held.summary, held.test
    from edge_rerank.pipeline import feature_config_for
    from edge_rerank.runs import logged_world, split_samples
    from edge_rerank.simulator.world import World, WorldConfig

    wcfg = WorldConfig(seed=0)
    world = World(wcfg)
    rows = logged_world(world, Path(a.work) / "cloud_data", a.sessions, 1000).rows
    fcfg = feature_config_for(wcfg)
    _, train, valid, test = split_samples(rows, fcfg)
    model, summary = fit(train, valid, fcfg, tcfg=TrainConfig(epochs=a.epochs, threads=1), test=test, progress=True)
    return model, summary, test


def interleaved_latency_ms(runners: dict, x: dict, rounds: int, per_round: int) -> dict[str, dict[str, float]]:
    samples: dict[str, list[float]] = {k: [] for k in runners}
    for run in runners.values():
        for _ in range(20):
            run(x)
    for _ in tqdm(range(rounds), desc="latency rounds", unit="round"):
        for name, run in runners.items():
            for _ in range(per_round):
                t = time.perf_counter()
                run(x)
                samples[name].append(1e3 * (time.perf_counter() - t))
    return {k: {"p50": statistics.median(v), "p90": float(np.percentile(v, 90)), "n": len(v)}
            for k, v in samples.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/bench/converters.json")
    p.add_argument("--work", default="runs/bench/converters", help="export directory (bundles per format)")
    p.add_argument("--checkpoint", help="a trained device reranker (default: train one on simulated logs)")
    p.add_argument("--logs", help="impression logs for validation inputs (with --checkpoint)")
    p.add_argument("--sessions", type=int, default=1000, help="simulated sessions when training here")
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--validate-lists", type=int, default=300)
    p.add_argument("--rounds", type=int, default=50)
    p.add_argument("--per-round", type=int, default=100)
    a = p.parse_args()
    if a.checkpoint and not a.logs:
        p.error("--checkpoint needs --logs (validation inputs)")
    torch.set_num_threads(1)
    model, summary, valid = _data(a)
    report = export_formats(model, valid.inputs, a.work, formats=list(FORMATS), version="bench",
                            metrics=summary.get("test_model", {}), n_validate=a.validate_lists)
    x = {k: v[:1] for k, v in valid.inputs.items()}
    full = np.flatnonzero(valid.inputs["cand_mask"].sum(axis=1) == model.fcfg.n_max)
    if len(full):
        x = {k: v[full[0]: full[0] + 1] for k, v in valid.inputs.items()}
    model.eval()

    def torch_eager(x):
        with torch.no_grad():
            return model(*[torch.from_numpy(x[n]) for n in model.input_names]).numpy()

    runners = {"torch (eager)": torch_eager}
    for r in report.results:
        if r.status == "passed":
            runners[f"{r.format}/{r.runtime}"] = load_model(r.bundle).backend.run
    latency = interleaved_latency_ms(runners, x, a.rounds, a.per_round)
    rows = []
    for r in report.results:
        lat = latency.get(f"{r.format}/{r.runtime}")
        rows.append({"format": r.format, "runtime": r.runtime, "status": r.status, "size_bytes": r.size_bytes,
                     "convert_s": r.convert_s, "latency_ms": lat,
                     "vs_torch": r.vs_torch.to_dict() if r.vs_torch else None,
                     "vs_onnxruntime": r.vs_onnxruntime.to_dict() if r.vs_onnxruntime else None,
                     "other_runtimes": [vars(c) for c in r.other_runtimes], "errors": r.errors})
    payload = {"machine": {"platform": platform.platform(), "torch": torch.__version__, "threads": 1},
               "model": {"params": int(sum(q.numel() for q in model.parameters())),
                         "config": model.mcfg.to_dict()},
               "n_validation_lists": report.n_lists, "latency_torch_eager_ms": latency["torch (eager)"],
               "formats": rows}
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(payload, indent=2, default=str))
    print(f"\n{payload['model']['params']:,} params, {report.n_lists} validation lists, latency: batch 1, 1 thread, "
          f"{int(x['cand_mask'].sum())} candidates; torch eager p50 {latency['torch (eager)']['p50']:.3f} ms\n")
    print("| format | runtime | size (KB) | max abs diff vs torch | min Kendall τ | mean top-5 overlap | "
          "latency p50 (ms) | status |\n|---|---|---|---|---|---|---|---|")
    for r in rows:
        t = r["vs_torch"]
        lat = f"{r['latency_ms']['p50']:.3f}" if r["latency_ms"] else "— (needs macOS)"
        print(f"| {r['format']} | {r['runtime']} | {(r['size_bytes'] or 0) / 1024:.1f} | "
              f"{t['max_abs_diff'] if t else float('nan'):.2e} | {t['min_kendall_tau'] if t else float('nan'):.4f} | "
              f"{t['mean_top5_overlap'] if t else float('nan'):.3f} | "
              f"{lat} | {r['status']} |")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
