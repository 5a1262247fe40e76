"""Compression by training at the demo's scale (issue #8): magnitude pruning + fine-tuning, and distillation into
the ``small`` / ``tiny`` student presets against the same students trained on labels only. JSON out.

Data: the demo's world (``WorldConfig(seed=0)``), cloud-only sessions (session seed 1000) through the in-process
cloud, split by session into train / valid (best epoch, fine-tuning and distillation selection) / test (every
reported ``test_*`` number; nothing is selected on it). The teacher is trained like the demo (15 epochs,
LambdaLoss, seed 0, early stopping on valid).

    .venv/bin/python bench/compression_training_bench.py --out runs/bench/compression_training.json
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from edge_rerank.cloud.training.data import build_samples, split_by_session
from edge_rerank.cloud.training.train import TrainConfig, evaluate_lists, fit, predict
from edge_rerank.compression.distill import STUDENT_PRESETS, distill
from edge_rerank.compression.prune import magnitude_prune
from edge_rerank.compression.sizes import gzip_size
from edge_rerank.converters.onnx.convert import export_onnx
from edge_rerank.converters.validate import fidelity
from edge_rerank.pipeline import feature_config_for
from edge_rerank.runs import logged_world
from edge_rerank.simulator.world import World, WorldConfig

PRUNE = (("global", 0.5), ("global", 0.7), ("global", 0.9), ("layer", 0.7), ("layer", 0.9))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/bench/compression_training.json")
    p.add_argument("--sessions", type=int, default=6000)
    p.add_argument("--epochs", type=int, default=15, help="teacher, students and label-only baselines")
    p.add_argument("--finetune-epochs", type=int, default=3)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="student training seeds")
    a = p.parse_args()
    torch.set_num_threads(1)
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="compression-bench-"))
    wcfg = WorldConfig(seed=0)
    world = World(wcfg)
    fcfg = feature_config_for(wcfg)
    rows = logged_world(world, tmp / "cloud_data", a.sessions, 1000, progress=False).rows
    samples = build_samples(rows, fcfg, progress=False)
    trainval, test = split_by_session(samples, seed=0)
    train, valid = split_by_session(trainval, seed=1)
    res: dict = {"lists": {"train": len(train), "valid": len(valid), "test": len(test)}, "sessions": a.sessions}

    def ndcg(scores: np.ndarray) -> float:
        return evaluate_lists(scores, test)["ndcg@10"]

    def sizes(model, name: str) -> dict:
        f = export_onnx(model, {k: v[:1] for k, v in test.inputs.items()}, tmp / f"{name}.onnx")
        return {"onnx_kb": f.stat().st_size / 1024, "gzip_kb": gzip_size(f) / 1024}

    def save() -> None:
        out.write_text(json.dumps(res, indent=1, default=float))

    t = time.perf_counter()
    teacher, summary = fit(train, valid, fcfg, tcfg=TrainConfig(epochs=a.epochs, seed=0), progress=False)
    t_test = predict(teacher, test)
    res["teacher"] = {"params": summary["params"], "epochs_run": summary["epochs_run"],
                      "seconds": time.perf_counter() - t, "valid_ndcg10": summary["valid_model"]["ndcg@10"],
                      "test_ndcg10": ndcg(t_test), **sizes(teacher, "teacher")}
    print("teacher", res["teacher"], flush=True)

    res["prune"] = []
    for scope, sp in PRUNE:
        t = time.perf_counter()
        pm, rep = magnitude_prune(teacher, train, valid, sparsity=sp, finetune_epochs=a.finetune_epochs, scope=scope)
        seconds = time.perf_counter() - t
        pm0, _ = magnitude_prune(teacher, train, valid, sparsity=sp, finetune_epochs=0, scope=scope)
        p_test = predict(pm, test)
        r = {k: rep[k] for k in ("scope", "target_sparsity", "achieved_sparsity", "model_sparsity", "params_total",
                                 "params_nonzero", "ndcg10_original", "ndcg10_pruned", "ndcg10_finetuned", "kept",
                                 "bytes")}
        r.update({"seconds": seconds, "max_tensor_sparsity": max(v["sparsity"] for v in rep["per_tensor"].values()),
                  "test_ndcg10_pruned": ndcg(predict(pm0, test)), "test_ndcg10_finetuned": ndcg(p_test),
                  "test_tau_vs_teacher": fidelity(p_test, t_test, test.mask)[2],
                  **sizes(pm, f"pruned-{scope}-{round(sp * 100)}")})
        res["prune"].append(r)
        print("prune", r, flush=True)
        save()

    res["distill"] = []
    for preset in STUDENT_PRESETS:
        for seed in a.seeds:
            tcfg = TrainConfig(epochs=a.epochs, seed=seed)
            t = time.perf_counter()
            student, rep = distill(teacher, train, valid, student_cfg=STUDENT_PRESETS[preset], tcfg=tcfg,
                                   compare_label_only=False)
            seconds = time.perf_counter() - t
            base, base_summary = fit(train, valid, fcfg, STUDENT_PRESETS[preset], tcfg, progress=False)
            s_test, b_test = predict(student, test), predict(base, test)
            r = {"preset": preset, "seed": seed, "seconds": seconds, "student_params": rep["student_params"],
                 "teacher_params": rep["teacher_params"], "losses": rep["losses"],
                 "epochs_distill": rep["distill"]["epochs_run"], "epochs_label_only": base_summary["epochs_run"],
                 "valid_ndcg10_student": rep["ndcg10_student"],
                 "valid_ndcg10_label_only": base_summary["valid_model"]["ndcg@10"],
                 "test_ndcg10_teacher": ndcg(t_test), "test_ndcg10_student": ndcg(s_test),
                 "test_ndcg10_label_only": ndcg(b_test),
                 "test_tau_student": fidelity(s_test, t_test, test.mask)[2],
                 "test_tau_label_only": fidelity(b_test, t_test, test.mask)[2]}
            if seed == a.seeds[0]:
                r.update(sizes(student, f"student-{preset}"))
            res["distill"].append(r)
            print("distill", r, flush=True)
            save()
    save()


if __name__ == "__main__":
    main()
