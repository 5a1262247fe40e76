"""Coarse model -> serving bundle: the query tower and the matching layer as ONNX (checked against torch on
real query views), the whole catalog's item vectors as a file embedding store, a faiss index when the catalog
is large, ``coarse.json``, and a verified manifest (``device_sdk.bundle`` format, so the registry publishes it
like a device bundle). Also saving / loading the torch checkpoint."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import torch

from edge_rerank.cloud.embedding_store import FileEmbeddingStore
from edge_rerank.cloud.ranking.coarse import (
    CONFIG_FILE,
    INDEX_FILE,
    QUERY_ONNX,
    REGISTRY_NAME,
    SCORER_ONNX,
    CoarseServing,
)
from edge_rerank.cloud.ranking.coarse_features import CoarseFeatureSpec
from edge_rerank.cloud.ranking.coarse_index import build_ivf, save_index
from edge_rerank.cloud.training.coarse_data import CoarseWorld, QueryViews
from edge_rerank.cloud.training.coarse_model import (
    CoarseModelConfig,
    QueryTowerExport,
    ScorerExport,
    TwoTower,
)
from edge_rerank.cloud.training.coarse_train import item_heads


def save_coarse(model: TwoTower, path: str | Path, summary: dict | None = None) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": model.state_dict(), "model": model.cfg.to_dict(), "spec": model.spec.to_dict(),
                "summary": json.loads(json.dumps(summary or {}, default=float))}, path)
    return path


def load_coarse_checkpoint(path: str | Path) -> tuple[TwoTower, dict]:
    ck = torch.load(path, map_location="cpu", weights_only=True)
    model = TwoTower(CoarseFeatureSpec.from_dict(ck["spec"]), CoarseModelConfig(**ck["model"]))
    model.load_state_dict(ck["state_dict"])
    model.eval()
    return model, ck.get("summary", {})


def export_onnx(model: TwoTower, out_dir: str | Path) -> tuple[Path, Path]:
    """``query_tower.onnx`` (query_id int64 [B], query_dense float32 [B, Fq] -> q_heads [B, nq, d]) and
    ``scorer.onnx`` (q_heads [nq, d], item_heads [N, nd, d] -> score [N])."""
    import onnx

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.eval()
    spec, cfg = model.spec, model.cfg
    qp, sp = out / QUERY_ONNX, out / SCORER_ONNX
    # the TorchScript exporter: the graphs are small and static, and it exports in a quarter of dynamo's time
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(QueryTowerExport(model),
                          (torch.zeros(2, dtype=torch.long), torch.zeros(2, spec.query_dense_dim)), str(qp),
                          input_names=["query_id", "query_dense"], output_names=["q_heads"],
                          dynamic_axes={"query_id": {0: "b"}, "query_dense": {0: "b"}, "q_heads": {0: "b"}},
                          dynamo=False, opset_version=18)
        torch.onnx.export(ScorerExport(model), (torch.zeros(cfg.nq, cfg.dim), torch.zeros(4, cfg.nd, cfg.dim)),
                          str(sp), input_names=["q_heads", "item_heads"], output_names=["score"],
                          dynamic_axes={"item_heads": {0: "n"}, "score": {0: "n"}}, dynamo=False, opset_version=18)
    for p in (qp, sp):
        onnx.checker.check_model(str(p))
    return qp, sp


def onnx_parity(model: TwoTower, world: CoarseWorld, views: QueryViews, out_dir: str | Path,
                n_views: int = 64) -> dict[str, float]:
    """Max |Δ| of the ONNX query tower and scorer vs torch on real query views and their list items."""
    import onnxruntime as ort

    out = Path(out_dir)
    qs = ort.InferenceSession(str(out / QUERY_ONNX), providers=["CPUExecutionProvider"])
    ss = ort.InferenceSession(str(out / SCORER_ONNX), providers=["CPUExecutionProvider"])
    idx = np.arange(min(n_views, len(views)))
    heads = item_heads(model, world)
    with torch.no_grad():
        tq = model.query(torch.from_numpy(views.query_id[idx]), torch.from_numpy(views.query_dense[idx])).numpy()
    (oq,) = qs.run(None, {"query_id": views.query_id[idx], "query_dense": views.query_dense[idx]})
    dq, ds = float(np.abs(oq - tq).max()), 0.0
    for i in idx:
        d = heads[views.rows[i]]
        with torch.no_grad():
            ts = model.score_heads(torch.from_numpy(tq[i])[None], torch.from_numpy(d)).numpy()
        (os_,) = ss.run(None, {"q_heads": tq[i], "item_heads": d})
        ds = max(ds, float(np.abs(os_ - ts).max()))
    return {"query_tower_max_abs_diff": dq, "scorer_max_abs_diff": ds, "parity_views": float(len(idx))}


def write_coarse_bundle(model: TwoTower, world: CoarseWorld, out_dir: str | Path, *, version: str,
                        name: str = REGISTRY_NAME, views: QueryViews | None = None, metrics: dict | None = None,
                        serving: CoarseServing | None = None, tolerance: float = 1e-4) -> Path:
    """Export and pack a coarse bundle (see ``cloud.ranking.coarse``); with `views`, ONNX parity vs torch is
    measured on them and must be within `tolerance`. The faiss index is built when the catalog exceeds the
    serving exact threshold."""
    from edge_rerank.converters.bundle import FEATURE_CONFIG_FILE
    from edge_rerank.device_sdk.bundle import MANIFEST, Manifest, TensorSpec, read_bundle, sha256_file
    from edge_rerank.device_sdk.features import FeatureConfig

    serving = serving or CoarseServing()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    export_onnx(model, out)
    validation: dict[str, float] = {}
    if views is not None and len(views):
        validation = onnx_parity(model, world, views, out)
        worst = max(validation["query_tower_max_abs_diff"], validation["scorer_max_abs_diff"])
        if worst > tolerance:
            raise RuntimeError(f"coarse ONNX export differs from torch by {worst:.2e} > {tolerance:.0e}")
    heads = item_heads(model, world)  # [n, nd, d]
    cfg = model.cfg
    flat = heads.reshape(len(heads), cfg.nd * cfg.dim)
    FileEmbeddingStore.write(out, world.catalog.items["item_id"], flat)  # ids.npy + rows.npy, sorted by id
    files = [QUERY_ONNX, SCORER_ONNX, CONFIG_FILE, "ids.npy", "rows.npy", FEATURE_CONFIG_FILE]
    if len(heads) > serving.exact_threshold:
        _, rows = FileEmbeddingStore(out).table()
        save_index(build_ivf(np.asarray(rows).reshape(-1, cfg.dim), serving.ann), out / INDEX_FILE)
        files.append(INDEX_FILE)
    conf = {"spec": model.spec.to_dict(), "model": {**cfg.to_dict(), "nq": cfg.nq, "nd": cfg.nd},
            "serving": serving.to_dict()}
    (out / CONFIG_FILE).write_text(json.dumps(conf, indent=1))
    FeatureConfig().save(out / FEATURE_CONFIG_FILE)  # the bundle format's required feature config (unused here)
    manifest = Manifest(
        name=name, version=version, format="onnx", model_file=QUERY_ONNX, feature_config_file=FEATURE_CONFIG_FILE,
        feature_config_fingerprint=FeatureConfig().fingerprint(),
        inputs=[TensorSpec("query_id", [-1], "int64"), TensorSpec("query_dense", [-1, model.spec.query_dense_dim],
                                                                   "float32")],
        outputs=[TensorSpec("q_heads", [-1, cfg.nq, cfg.dim], "float32")],
        files={f: sha256_file(out / f) for f in files}, sizes={f: (out / f).stat().st_size for f in files},
        tolerance={"max_abs_diff": tolerance} if validation else {}, validation=validation,
        metrics={k: float(v) for k, v in (metrics or {}).items() if isinstance(v, int | float)})
    (out / MANIFEST).write_text(manifest.to_json())
    read_bundle(out)
    return out


def publish_coarse(bundle_dir: str | Path, registry_dir: str | Path, *, promote: bool = True):
    """Publish a coarse bundle into a model registry (and make it stable): versions, rollback as for devices."""
    from edge_rerank.cloud.registry import Registry

    reg = Registry(registry_dir)
    m = reg.publish(bundle_dir)
    if promote:
        reg.promote(m.name, m.version, 100)
    return m
