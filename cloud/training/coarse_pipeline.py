"""The coarse stage end to end, as the CLI runs it: logs + data directory -> trained two towers (held-out metrics
against baselines) -> serving bundle -> registry / data directory."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge_rerank.cloud.ranking.coarse import COARSE_DIR, CoarseServing
from edge_rerank.cloud.training.coarse_data import CoarseWorld, query_views, read_shown_lists
from edge_rerank.cloud.training.coarse_export import load_coarse_checkpoint, save_coarse, write_coarse_bundle
from edge_rerank.cloud.training.coarse_model import CoarseModelConfig
from edge_rerank.cloud.training.coarse_train import (
    CoarseTrainConfig,
    baseline_scores,
    evaluate_coarse,
    fit_coarse,
)

CHECKPOINT = "coarse.pt"
SUMMARY = "coarse_summary.json"


def _public(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if not isinstance(v, np.ndarray)}


@dataclass
class CoarseTrained:
    checkpoint: Path
    summary: dict


def train_coarse(data_dir: str | Path, logs: str | Path, out: str | Path, *,
                 model: CoarseModelConfig | None = None, train: CoarseTrainConfig | None = None,
                 baselines: bool = True) -> CoarseTrained:
    """Train on the logs' train sessions, report on their test sessions (same seeded split as the device model).
    Training views sample ``train.fine_top_samples`` of their fine-ranker items from its top; test views are
    uniform over the recall set (the consistency metric)."""
    tcfg = train or CoarseTrainConfig()
    world = CoarseWorld.load(data_dir)
    lists = read_shown_lists(logs)
    te = query_views(lists, world, seed=tcfg.seed).split("test")
    tr = query_views(lists, world, seed=tcfg.seed, n_fine_top=tcfg.fine_top_samples).split("train")
    if len(tr) == 0 or len(te) == 0:
        raise ValueError(f"need train and test sessions, got {len(tr)} train and {len(te)} test query views")
    m, summary = fit_coarse(world, tr, model, tcfg)
    summary["test"] = _public(evaluate_coarse(m, world, te))
    summary["test_views"] = len(te)
    if baselines:
        summary["baselines"] = {k: _public(baseline_scores(world, te, k)) for k in ("random", "popularity", "fine")}
    out = Path(out)
    ck = save_coarse(m, out / CHECKPOINT, summary)
    (out / SUMMARY).write_text(json.dumps(summary, indent=1, default=float))
    return CoarseTrained(ck, summary)


def export_coarse(checkpoint: str | Path, data_dir: str | Path, out: str | Path, *, version: str,
                  logs: str | Path | None = None, serving: CoarseServing | None = None,
                  install: bool = False) -> Path:
    """Pack a checkpoint as a serving bundle for the catalog in `data_dir` (item vectors for every item); with
    `logs`, ONNX parity is checked on their test query views; with `install`, copied to ``<data_dir>/coarse``."""
    model, summary = load_coarse_checkpoint(checkpoint)
    world = CoarseWorld.load(data_dir, model.spec)
    views = query_views(read_shown_lists(logs), world).split("test") if logs else None
    test = summary.get("test", {})
    metrics = {k: test[k] for k in ("auc", "query_tower_flops", "match_flops_per_item", "params") if k in test}
    if isinstance(test.get("consistency"), dict):
        metrics["consistency"] = test["consistency"]["mean"]
    bundle = write_coarse_bundle(model, world, out, version=version, views=views, metrics=metrics, serving=serving)
    if install:
        target = Path(data_dir) / COARSE_DIR
        if target.exists():
            shutil.rmtree(target)
        shutil.copytree(bundle, target)
    return bundle


@dataclass
class CoarsePublished:
    trained: CoarseTrained
    bundle: Path
    name: str
    version: str
    seconds: dict[str, float]


def train_and_publish(data_dir: str | Path, logs: str | Path, out: str | Path, registry_dir: str | Path, *,
                      version: str, model: CoarseModelConfig | None = None, train: CoarseTrainConfig | None = None,
                      serving: CoarseServing | None = None) -> CoarsePublished:
    """`coarse train` + `coarse export` (ONNX parity on the test views) + `coarse publish` (promoted to stable) in
    one call, as the demo runs it: the registry's stable ``coarse-ranker`` is what a server started with
    ``registry_dir`` serves."""
    import time

    from edge_rerank.cloud.training.coarse_export import publish_coarse

    out = Path(out)
    t0 = time.perf_counter()
    trained = train_coarse(data_dir, logs, out, model=model, train=train, baselines=False)
    t1 = time.perf_counter()
    if (out / "bundle").exists():  # a previous run's bundle: nothing of it may linger in this one
        shutil.rmtree(out / "bundle")
    bundle = export_coarse(trained.checkpoint, data_dir, out / "bundle", version=version, logs=logs, serving=serving)
    t2 = time.perf_counter()
    m = publish_coarse(bundle, registry_dir, promote=True)
    return CoarsePublished(trained, bundle, m.name, m.version,
                           {"train_s": t1 - t0, "export_s": t2 - t1, "publish_s": time.perf_counter() - t2})
