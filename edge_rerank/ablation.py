"""The model ablation (issue #4): which part of the device reranker earns its keep, offline and online.

One run, one seeded world, one set of logs: every variant is trained on the same samples, evaluated on the same
held-out sessions (NDCG@5/10, MRR, AUC), exported through the real bundle path and A/B-tested in the simulator
on the same sessions with common random numbers (QV_CTR and clicks per query, paired 95 % CIs against the
cloud order). Rows:

  cloud order                the logged cloud ranking, no reranking
  heuristic                  boost what was clicked, bury what was skipped (no model)
  LightGBM lambdarank        gradient-boosted trees on the same per-candidate features
  PRM, no feedback           transformer over the candidates, cloud features only
  + Match&Aggregate          ... plus the hit/frequency/step/distance features of the feedback
  + MVFAN                    ... plus the feedback attention network (opt-in since issue 14)
  M&A + residual (default)   Match&Aggregate, scores added to the cloud score (the shipped default)
  + joint training           ... with a trained cloud ranker whose hidden layer is tuned jointly (the cloud
                             then serves that ranker, so its own cloud-only arm is reported beside it)
plus two MVFAN part rows (offline only): without the negatives<->positives cross attention, id view only.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from edge_rerank import report_format as rf
from edge_rerank.device_sdk.features import FeatureConfig
from edge_rerank.pipeline import export_bundle, feature_config_for
from edge_rerank.plotting import DPI, pyplot
from edge_rerank.simulator.world import World, WorldConfig

BASE_OPS = ("cloud_score", "cloud_position", "dist:context")


@dataclass(frozen=True)
class AblationConfig:
    out: str = "runs/ablation"
    seed: int = 0
    log_sessions: int = 6000
    ab_sessions: int = 2000
    epochs: int = 15
    loss: str = "lambda"
    online: bool = True
    model_overrides: dict = field(default_factory=dict)  # ModelConfig fields applied to every neural variant


QUICK_ABLATION = {"log_sessions": 700, "ab_sessions": 150, "epochs": 3}


@dataclass
class Row:
    name: str
    offline: dict[str, float]
    online: dict[str, dict] | None = None  # metric -> {"mean", "lo", "hi"} plus "delta_*" vs cloud order
    note: str = ""
    params: int | None = None
    bundle: str | None = None


def _heuristic_samples(rows, fcfg: FeatureConfig):
    """The on-device heuristic's scores for every rerank list, in the same order and with the same filtering as
    ``build_samples`` (so the same session split applies): stored as the input ``heuristic`` of a Samples."""
    from edge_rerank.cloud.training.data import Samples, samples_from_row
    from edge_rerank.device_sdk.features import FeatureBuilder
    from edge_rerank.device_sdk.heuristic import HeuristicReranker

    h = HeuristicReranker()
    b = FeatureBuilder(fcfg)
    scores, masks, labels, sids = [], [], [], []
    for row in sorted(rows, key=lambda r: (r.session_id, r.page_index, r.request_id)):
        by_id = {c.item.item_id: c.item for c in row.candidates}
        for rs in samples_from_row(row, b):
            window = [by_id[int(i)] for i in rs.item_ids if i >= 0]
            sc = np.full(fcfg.n_max, -1e9)
            sc[: len(window)] = h.scores(window, row.events[: rs.point])
            scores.append(sc)
            masks.append(rs.features["cand_mask"])
            labels.append(rs.labels)
            sids.append(row.session_id)
    return Samples({"heuristic": np.stack(scores), "cand_mask": np.stack(masks)}, np.stack(labels), sids,
                   np.zeros((len(sids), 0), np.int64), [""] * len(sids), [None] * len(sids))


def run_ablation(cfg: AblationConfig, *, progress: bool = True) -> dict:
    from edge_rerank.cloud.training.cloud_ranker import CloudFeaturizer
    from edge_rerank.cloud.training.data import SplitConfig, build_samples
    from edge_rerank.cloud.training.gbdt import fit_gbdt, predict_gbdt, save_gbdt
    from edge_rerank.cloud.training.joint import JointConfig, predict_cloud, served_samples, train_joint
    from edge_rerank.cloud.training.model import ModelConfig
    from edge_rerank.cloud.training.train import TrainConfig, cloud_order_scores, evaluate_lists, fit, predict
    from edge_rerank.converters.bundle import write_bundle
    from edge_rerank.runs import logged_world, split_samples

    t0 = time.perf_counter()
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    wcfg = WorldConfig(seed=cfg.seed)
    world = World(wcfg)
    logged = logged_world(world, out / "cloud_data", cfg.log_sessions, 1000 + cfg.seed, progress=progress)
    data_dir, rows = logged.data_dir, logged.rows

    full = feature_config_for(wcfg)
    base = replace(full, candidate_ops=BASE_OPS)
    tcfg = TrainConfig(epochs=cfg.epochs, loss=cfg.loss, seed=cfg.seed)
    # train / valid (early stopping) / test (reported): the training pipeline's split by session (the same config
    # `edge-rerank train` uses), one record applied to every variant's samples — the same sessions everywhere
    split, tr_full, va_full, te_full = split_samples(rows, full, SplitConfig(seed=cfg.seed), progress=progress)
    s_base = build_samples(rows, base, progress=progress)
    tr_base, va_base, te_base = split.apply(s_base, source="the base variant's samples")

    results: list[Row] = [Row("cloud order", evaluate_lists(cloud_order_scores(te_full), te_full))]
    bundles: dict[str, Path] = {}
    timings: dict[str, float] = {}

    te_h = split.apply(_heuristic_samples(rows, full), source="the heuristic's samples")[2]
    results.append(Row("heuristic", evaluate_lists(te_h.inputs["heuristic"], te_h), note="no model"))

    t = time.perf_counter()
    gbdt, gsum = fit_gbdt(tr_full, va_full)
    timings["lightgbm_s"] = time.perf_counter() - t
    gpath = save_gbdt(gbdt, out / "lightgbm" / "model.txt")
    bundles["LightGBM lambdarank"] = write_bundle(out / "lightgbm" / "bundle", model_file=gpath, fmt="lightgbm",
                                                  name="lightgbm-ranker", version=f"ablation-{cfg.seed}",
                                                  feature_config=full, metrics={})
    results.append(Row("LightGBM lambdarank", evaluate_lists(predict_gbdt(gbdt, te_full), te_full),
                       note=f"{gsum['best_iteration']} trees"))

    variants = [
        ("PRM, no feedback", base, (tr_base, va_base, te_base), ModelConfig(residual=False), True),
        ("+ Match&Aggregate", full, (tr_full, va_full, te_full), ModelConfig(residual=False), True),
        ("+ MVFAN", full, (tr_full, va_full, te_full), ModelConfig(use_feedback=True, residual=False), True),
        ("M&A + residual on the cloud score (default)", full, (tr_full, va_full, te_full), ModelConfig(), True),
        ("MVFAN without cross attention", full, (tr_full, va_full, te_full),
         ModelConfig(use_feedback=True, residual=False, cross=False), False),
        ("MVFAN, id view only", full, (tr_full, va_full, te_full),
         ModelConfig(use_feedback=True, residual=False, views=("id",)), False),
    ]
    for name, fc, (tr, va, te), mc, online in tqdm(variants, desc="variants", disable=not progress, leave=False):
        t = time.perf_counter()
        model, summary = fit(tr, va, fc, replace(mc, **cfg.model_overrides), tcfg, progress=progress)
        timings[f"{name}_s"] = time.perf_counter() - t
        row = Row(name, evaluate_lists(predict(model, te), te), params=summary["params"],
                  note=f"{summary['epochs_run']} epochs, {summary['lists_per_s']:.0f} lists/s")
        if online:
            slug = name.strip("+ ").lower().replace(" ", "-").replace("&", "").replace(",", "")
            bundle, _ = export_bundle(model, te, out / slug, version=f"ablation-{cfg.seed}", n_validate=50,
                                      metrics=row.offline)
            bundles[name] = bundle
            row.bundle = str(bundle)
        results.append(row)

    t = time.perf_counter()
    jcloud, jdevice, jsum = train_joint(rows, data_dir, tr_full, va_full, full,
                                        replace(ModelConfig(), **cfg.model_overrides), tcfg, JointConfig(),
                                        test=te_full, progress=progress)
    timings["joint_s"] = time.perf_counter() - t
    featurizer = CloudFeaturizer(data_dir)
    te_served = served_samples(te_full, jcloud, featurizer, full)
    jrow = Row("+ joint training", evaluate_lists(predict(jdevice, te_served), te_served), params=jsum["params"])
    new_cloud = evaluate_lists(predict_cloud(jcloud, te_full, featurizer), te_full)
    jrow.note = f"new cloud ranker alone: NDCG@10 {new_cloud['ndcg@10']:.4f}"
    jbundle, _ = export_bundle(jdevice, te_served, out / "joint", version=f"ablation-{cfg.seed}", n_validate=50,
                               metrics=jrow.offline)
    jrow.bundle = str(jbundle)
    results.append(jrow)
    bundles["+ joint training"] = jbundle

    online_meta = {}
    if cfg.online:
        online_meta = _online(cfg, world, data_dir, results, bundles, jcloud, full, progress)
    data = {"config": asdict(cfg), "rows": [asdict(r) for r in results], "timings_s": timings,
            "joint": {k: v for k, v in jsum.items() if k not in ("history",)}, "online": online_meta,
            "samples": {"train_lists": len(tr_full), "valid_lists": len(va_full), "test_lists": len(te_full),
                        "log_rows": len(rows)},
            "split": split.describe(),
            "total_s": time.perf_counter() - t0}
    (out / "ablation.json").write_text(json.dumps(data, indent=2, default=float))
    (out / "ablation.md").write_text(to_markdown(data))
    plot(data, out / "ablation.png")
    return data


def _online(cfg: AblationConfig, world: World, data_dir: Path, results: list[Row], bundles: dict[str, Path],
            jcloud, fcfg: FeatureConfig, progress: bool) -> dict:
    from edge_rerank.cloud.training.cloud_ranker import export_cloud_ranker_onnx
    from edge_rerank.device_sdk.bundle import read_bundle
    from edge_rerank.simulator.ab import Arm, paired_delta, run_ab
    from edge_rerank.simulator.arms import ArmSpec, build_arm
    from edge_rerank.simulator.transport import InProcessCloud
    from edge_rerank.simulator.user_model import UserModel

    def read_manifest_format(bundle: Path) -> str:
        return read_bundle(bundle).manifest.format

    um = UserModel(world)
    seed = 2000 + cfg.seed

    def device(name: str, bundle: Path) -> Arm:
        backend = "lightgbm" if read_manifest_format(bundle) == "lightgbm" else "onnxruntime"
        return build_arm(ArmSpec(name=name, kind="device", bundle=str(bundle), backend=backend), um)

    arms = [build_arm(ArmSpec("cloud order", "cloud"), um), build_arm(ArmSpec("heuristic", "heuristic"), um)]
    arms += [device(name, b) for name, b in bundles.items() if name != "+ joint training"]
    res = {r.name: r for r in run_ab(um, InProcessCloud(str(data_dir), wire=False), arms, cfg.ab_sessions,
                                     seed=seed, progress=progress)}

    # the joint pair: the cloud serves the jointly trained ranker (ranker.onnx), the device runs its partner
    joint_dir = data_dir.parent / "cloud_data_joint"
    if joint_dir.exists():
        shutil.rmtree(joint_dir)
    shutil.copytree(data_dir, joint_dir)
    export_cloud_ranker_onnx(jcloud, joint_dir / "ranker.onnx")
    jres = run_ab(um, InProcessCloud(str(joint_dir), wire=False),
                  [build_arm(ArmSpec("cloud order (joint cloud ranker)", "cloud"), um),
                   device("+ joint training", bundles["+ joint training"])],
                  cfg.ab_sessions, seed=seed, progress=progress)
    res.update({r.name: r for r in jres})
    base = res["cloud order"]
    for row in results:
        r = res.get(row.name)
        if r is None:
            continue
        row.online = {m: asdict(r.metrics[m]) for m in ("qv_ctr", "clicks", "orders", "screens")}
        if row.name != "cloud order":
            for m in ("qv_ctr", "clicks"):
                row.online[f"delta_{m}"] = asdict(paired_delta(base, r, m, seed=cfg.seed))
        row.online["rerank_p50_ms"] = r.latency.get("p50_ms")
    jc = res["cloud order (joint cloud ranker)"]
    return {"joint_cloud_only": {m: asdict(jc.metrics[m]) for m in ("qv_ctr", "clicks")},
            "joint_cloud_only_delta_qv_ctr": asdict(paired_delta(base, jc, "qv_ctr", seed=cfg.seed)),
            "sessions_per_arm": cfg.ab_sessions}


def to_markdown(data: dict) -> str:
    s = data["samples"]
    c = data["config"]
    online = any(r["online"] for r in data["rows"])
    lines = [*rf.caveats(rf.lists_caveat(s["test_lists"], what="held-out test lists"),
                         rf.sessions_caveat(c["ab_sessions"], delta_halfwidth_pp=_max_halfwidth_pp(data))
                         if online else None),
             f"Offline: {s['test_lists']:,} held-out test lists ({s['train_lists']:,} for training, "
             f"{s['valid_lists']:,} for early stopping; {c['log_sessions']:,} logged sessions, split by session). "
             + (f"Online: {c['ab_sessions']:,} simulated sessions per arm, the same users, intents and random draws "
                "in every arm; Δ = arm − cloud order, paired bootstrap 95 % CI; QV_CTR in %, its Δ in pp "
                "(percentage points). " if online else "Online: not run (offline only). ")
             + "— = not measured for this row (offline-only variants; the reference has no Δ).", ""]
    rows = []
    for r in data["rows"]:
        o, on = r["offline"], r["online"] or {}
        rows.append([r["name"], rf.num(o.get("ndcg@5"), 4), rf.num(o.get("ndcg@10"), 4), rf.num(o.get("mrr"), 4),
                     rf.rate(on.get("qv_ctr")), rf.rate_delta(on.get("delta_qv_ctr")),
                     rf.delta(on.get("delta_clicks"), 3), f"{r['params']:,}" if r["params"] else rf.NA,
                     r["note"] or rf.NA])
    lines += rf.table(["variant", "NDCG@5", "NDCG@10", "MRR", "QV_CTR [95 % CI]", "ΔQV_CTR [95 % CI]",
                       "Δ clicks / query [95 % CI]", "params", "note"], rows)
    j = data.get("online", {}).get("joint_cloud_only_delta_qv_ctr")
    if j:
        lines += ["", "The jointly trained cloud ranker on its own (cloud-only arm): ΔQV_CTR vs the original cloud "
                      f"order {rf.rate_delta(j)}."]
    return "\n".join(lines) + "\n"


def _max_halfwidth_pp(data: dict) -> float | None:
    w = [100 * (d["hi"] - d["lo"]) / 2 for r in data["rows"] if r["online"]
         for d in [r["online"].get("delta_qv_ctr")] if d]
    return max(w) if w else None


def plot(data: dict, path: Path) -> None:
    """Left: offline NDCG@10 per variant, bars from zero (they compare sizes), the value at each bar and the cloud
    order's level as a line; right: online ΔQV_CTR vs the cloud order with its 95 % CI (differences: dots and
    intervals, zero marked and always in view), "offline only" / "reference" where a row has no online difference;
    an offline-only run has the left panel only."""
    plt = pyplot()
    rows = data["rows"]
    names = [r["name"] for r in rows]
    ndcg = np.array([r["offline"].get("ndcg@10", np.nan) for r in rows], dtype=float)
    online = any(r["online"] for r in rows)
    fig, axes = plt.subplots(1, 2 if online else 1, figsize=(13 if online else 7.5, 0.42 * len(rows) + 2.0), dpi=DPI,
                             layout="constrained", sharey=True, squeeze=False)
    axes = axes[0]
    y = np.arange(len(rows))
    axes[0].barh(y, np.nan_to_num(ndcg), color="#4c72b0", height=0.65)
    for yi, v in zip(y, ndcg, strict=True):
        axes[0].annotate(rf.num(v, 3), (0 if not np.isfinite(v) else v, yi), xytext=(3, 0),
                         textcoords="offset points", va="center", fontsize=8)
    axes[0].set_yticks(y, names)
    axes[0].invert_yaxis()
    top = float(np.nanmax(ndcg)) if np.isfinite(ndcg).any() else 1.0
    axes[0].set_xlim(0, min(1.0, top * 1.15))
    cloud = next((r["offline"].get("ndcg@10") for r in rows if r["name"] == "cloud order"), None)
    if cloud is not None:
        axes[0].axvline(cloud, color="0.4", ls=":", lw=1)
    axes[0].set_xlabel("NDCG@10 on held-out sessions\n(axis from 0; dotted line: cloud order)")
    for label in axes[0].get_yticklabels():
        if "(default)" in label.get_text():
            label.set_fontweight("bold")
    axes[0].set_title("Offline ranking quality", fontsize=11)

    if online:
        d = [r["online"].get("delta_qv_ctr") if r["online"] else None for r in rows]
        k = [i for i, v in enumerate(d) if v]
        if k:
            mean = np.array([100 * d[i]["mean"] for i in k])
            err = np.array([[100 * (d[i]["mean"] - d[i]["lo"]) for i in k], [100 * (d[i]["hi"] - d[i]["mean"])
                                                                              for i in k]])
            axes[1].errorbar(mean, y[k], xerr=err, fmt="o", color="#55a868", ecolor="#55a868", capsize=3, ms=5)
            lo, hi = min(float(np.min(mean - err[0])), 0.0), max(float(np.max(mean + err[1])), 0.0)
            pad = max(0.08 * (hi - lo), 0.25)
            axes[1].set_xlim(lo - pad, hi + pad)  # zero always in view, the intervals at full resolution
            for i, m in zip(k, mean, strict=True):
                axes[1].annotate(rf.num(m, 2, signed=True), (m, y[i]), xytext=(0, 5), textcoords="offset points",
                                 ha="center", va="bottom", fontsize=7.5, zorder=3,
                                 bbox=dict(boxstyle="square,pad=0.1", fc="white", ec="none"))
        else:
            axes[1].set_xlim(-1, 1)
        for i, r in enumerate(rows):
            if not d[i]:
                text = "reference" if r["online"] else "offline only"
                axes[1].annotate(text, (0, y[i]), ha="center", va="center",
                                 fontsize=8, color="0.45", style="italic", zorder=3,
                                 bbox=dict(boxstyle="square,pad=0.2", fc="white", ec="none"))
        axes[1].axvline(0, color="k", lw=0.8)
        axes[1].tick_params(axis="y", length=0)
        axes[1].grid(True, axis="x", alpha=0.3)
        n = data.get("config", {}).get("ab_sessions")
        axes[1].set_xlabel("ΔQV_CTR vs cloud order, pp\n(dot: mean, bar: paired 95 % CI)")
        axes[1].set_title("Online, simulator A/B" + (f" ({n:,} sessions per arm)" if n else ""), fontsize=11)
    fig.suptitle("edge-rerank ablation: each variant against the cloud order")
    fig.savefig(path)
    plt.close(fig)
