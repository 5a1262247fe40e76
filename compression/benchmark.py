"""Compression–accuracy benchmark: one trained reranker, every method x format (``compression.methods``):
file size (and its gzip download), max abs diff and Kendall τ against the fp32 model, NDCG@10 on held-out
lists and its delta, the simulator's QV_CTR delta against the fp32 model as a device arm (paired sessions,
bootstrap CI), and latency p50 in the method's runtime. Writes ``compression.json``, ``compression.md`` and
``pareto.png`` (size vs NDCG@10).
"""

from __future__ import annotations

import contextlib
import io
import json
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from edge_rerank.compression.methods import Context, Method, all_methods
from edge_rerank.compression.sizes import file_size, gzip_size
from edge_rerank.converters.validate import fidelity

OK, UNAVAILABLE, FAILED = "ok", "unavailable", "failed"
REFERENCE = "onnx-fp32"


@dataclass
class MethodResult:
    method: str
    format: str
    family: str
    status: str = OK
    reason: str = ""
    description: str = ""
    evaluated_by: str = ""
    file_kb: float | None = None
    gzip_kb: float | None = None
    max_abs_diff: float | None = None
    min_kendall_tau: float | None = None
    mean_kendall_tau: float | None = None
    ndcg10: float | None = None
    ndcg10_delta: float | None = None
    ndcg10_rel_delta_pct: float | None = None
    qv_ctr_delta_pp: float | None = None  # vs the fp32 model's arm, same sessions
    qv_ctr_ci_pp: tuple[float, float] | None = None
    latency_p50_ms: float | None = None
    params: int | None = None  # of the model behind the file (students: the student's); sets modelled cost
    extra: dict = field(default_factory=dict)


@dataclass
class Evaluation:
    """Offline numbers of one set of scores against the reference scores on the same held-out lists."""

    max_abs_diff: float
    min_kendall_tau: float
    mean_kendall_tau: float
    ndcg10: float


def evaluate(scores: np.ndarray, ref: np.ndarray, labels: np.ndarray, mask: np.ndarray) -> Evaluation:
    from edge_rerank.cloud.training.metrics import ndcg_at_k

    return Evaluation(*fidelity(scores, ref, mask), float(np.nanmean(ndcg_at_k(scores, labels, mask, 10))))


def score_lists(run, inputs: dict[str, np.ndarray]) -> np.ndarray:
    """One list per call (batch 1, as on the phone)."""
    n = len(inputs["cand_mask"])
    return np.concatenate([run({k: v[i: i + 1] for k, v in inputs.items()}) for i in range(n)])


@dataclass
class SimulationSetup:
    """The world the logs came from: the simulator runs each method's file as a device arm there."""

    world: object  # simulator.world.WorldConfig
    sessions: int
    device: str = "recent_iphone"
    seed: int = 0


def _simulate(results: dict[str, MethodResult], files: dict[str, Path], methods: dict[str, Method], ctx: Context,
              setup: SimulationSetup, progress: bool) -> dict:
    from edge_rerank.converters.bundle import write_bundle
    from edge_rerank.simulator.ab import paired_delta, run_ab
    from edge_rerank.simulator.arms import ArmSpec, build_arm
    from edge_rerank.simulator.phone import PhoneConfig
    from edge_rerank.simulator.transport import InProcessCloud
    from edge_rerank.simulator.user_model import UserModel
    from edge_rerank.simulator.world import World

    world = World(setup.world)
    cloud = InProcessCloud(str(world.provision_cloud(ctx.out / "sim_cloud_data")), wire=False)
    um = UserModel(world)
    arms, names = [build_arm(ArmSpec("cloud", "cloud"), um)], ["cloud"]
    for name, path in files.items():
        m = methods[name]
        if not m.simulate or results[name].status != OK:
            continue
        try:
            bundle = write_bundle(ctx.out / "bundles" / name, model_file=path, fmt=m.format,
                                  name="device-reranker", version=f"compress-{name}", feature_config=ctx.model.fcfg,
                                  metrics={"params": float(results[name].params or 0)})
            arms.append(build_arm(ArmSpec(name, "device", bundle=str(bundle), backend=m.runtime), um))
            names.append(name)
        except Exception as exc:  # noqa: BLE001 - a method the simulator cannot load is reported, not fatal
            results[name].extra["simulation_error"] = f"{type(exc).__name__}: {exc}"
    out = run_ab(um, cloud, arms, setup.sessions, seed=2000 + setup.seed, progress=progress,
                 config=PhoneConfig(device=setup.device))
    by_name = dict(zip(names, out, strict=True))
    ref = by_name.get(REFERENCE)
    summary = {"sessions": setup.sessions, "world_seed": setup.world.seed, "device": setup.device,
               "qv_ctr": {n: float(np.mean([o.clicks > 0 for o in r.outcomes])) for n, r in by_name.items()}}
    if ref is not None:
        for name, res in by_name.items():
            if name in results:
                est = paired_delta(ref, res, "qv_ctr", seed=setup.seed)
                results[name].qv_ctr_delta_pp = 100 * est.mean
                results[name].qv_ctr_ci_pp = (100 * est.lo, 100 * est.hi)
        cloud_est = paired_delta(by_name["cloud"], ref, "qv_ctr", seed=setup.seed)
        summary["fp32_vs_cloud_pp"] = [100 * cloud_est.mean, 100 * cloud_est.lo, 100 * cloud_est.hi]
    return summary


def run_benchmark(model, train, test, out: str | Path, *, methods: list[str] | None = None, n_lists: int = 300,
                  latency_runs: int = 200, simulation: SimulationSetup | None = None,
                  progress: bool = True, **ctx_kw) -> list[MethodResult]:
    """Build and measure each method (all known ones by default). `train`: lists for calibration, fine-tuning
    and distillation (``tune=`` the model's validation lists, where those pick their epochs); `test`: the
    model's recorded test lists, for every number reported."""
    out = Path(out)
    ctx = Context(model, train, test, out, progress=progress, **ctx_kw)
    chosen = all_methods() if methods is None else [m for m in all_methods() if m.name in set(methods)]
    unknown = set(methods or ()) - {m.name for m in chosen}
    if unknown:
        raise KeyError(f"unknown compression methods {sorted(unknown)}; known: {[m.name for m in all_methods()]}")
    if REFERENCE not in {m.name for m in chosen}:
        chosen.insert(0, next(m for m in all_methods() if m.name == REFERENCE))
    sub = test.subset(np.arange(min(n_lists, len(test))))
    x1 = {k: v[:1] for k, v in sub.inputs.items()}
    results: dict[str, MethodResult] = {}
    files: dict[str, Path] = {}
    ref_scores: np.ndarray | None = None
    ref_ndcg = 0.0
    for m in tqdm(chosen, desc="compression methods", unit="method", disable=not progress):
        r = MethodResult(m.name, m.format, m.family, description=m.description,
                         evaluated_by=m.evaluated_by or m.runtime)
        results[m.name] = r
        why = m.available()
        if why:
            r.status, r.reason = UNAVAILABLE, why
            continue
        try:
            with contextlib.redirect_stdout(io.StringIO()):  # converters print their passes
                path = m.build(ctx, out / "methods" / m.name)
            run = m.runner(path)
            s = score_lists(run, sub.inputs)
            if ref_scores is None and m.name != REFERENCE:
                raise RuntimeError(f"no reference scores: {REFERENCE} did not build ({results[REFERENCE].reason})")
            if ref_scores is None:
                ref_scores = s
                ref_ndcg = float(evaluate(s, s, sub.labels, sub.mask).ndcg10)
            ev = evaluate(s, ref_scores, sub.labels, sub.mask)
            r.file_kb, r.gzip_kb = (m.size or file_size)(path) / 1024, gzip_size(path) / 1024
            r.max_abs_diff, r.min_kendall_tau, r.mean_kendall_tau = ev.max_abs_diff, ev.min_kendall_tau, \
                ev.mean_kendall_tau
            r.ndcg10, r.ndcg10_delta = ev.ndcg10, ev.ndcg10 - ref_ndcg
            r.ndcg10_rel_delta_pct = 100 * r.ndcg10_delta / ref_ndcg if ref_ndcg else None
            r.latency_p50_ms = None if m.scorer is not None else _latency(run, x1, latency_runs)
            files[m.name] = path
            if m.name in ctx.reports:  # what pruning / distillation measured while building
                r.extra["training"] = _jsonable(ctx.reports[m.name])
            r.params = ctx.params_of(m.name)
        except Exception as exc:  # noqa: BLE001 - one failing method is a result, not the end of the run
            r.status, r.reason = FAILED, f"{type(exc).__name__}: {exc}"
            r.extra["traceback"] = traceback.format_exc(limit=4)
    summary: dict = {}
    if simulation is not None and simulation.sessions > 0:
        summary["simulation"] = _simulate(results, files, {m.name: m for m in chosen}, ctx, simulation, progress)
    rows = list(results.values())
    write_outputs(rows, out, summary)
    return rows


def _latency(run, x1, runs: int) -> float:
    from edge_rerank.converters.export import median_latency_ms

    return median_latency_ms(run, x1, runs)


def _jsonable(d: dict) -> dict:
    return json.loads(json.dumps(d, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o)))


def write_outputs(rows: list[MethodResult], out: Path, summary: dict | None = None) -> None:
    (out / "compression.json").write_text(json.dumps({"results": [asdict(r) for r in rows], **(summary or {})},
                                                     indent=2, default=str))
    (out / "compression.md").write_text(to_markdown(rows))
    pareto_plot(rows, out / "pareto.png")


def _f(v, fmt: str, none: str = "–") -> str:
    return none if v is None else format(v, fmt)


def to_markdown(rows: list[MethodResult]) -> str:
    lines = ["| method | format | size KB (gzip) | max abs diff | Kendall τ min / mean | NDCG@10 (Δ, rel.) | "
             "QV_CTR Δ pp [95 % CI] | p50 ms |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if r.status != OK:
            lines.append(f"| {r.method} | {r.format} | {r.status}: {r.reason} | | | | | |")
            continue
        ci = "–" if r.qv_ctr_ci_pp is None else (f"{r.qv_ctr_delta_pp:+.2f} [{r.qv_ctr_ci_pp[0]:+.2f}, "
                                                  f"{r.qv_ctr_ci_pp[1]:+.2f}]")
        p50 = _f(r.latency_p50_ms, ".3f") if r.latency_p50_ms is not None else f"– ({r.evaluated_by})"
        lines.append(f"| {r.method} | {r.format} | {r.file_kb:.1f} ({r.gzip_kb:.1f}) | {r.max_abs_diff:.1e} | "
                     f"{r.min_kendall_tau:.3f} / {r.mean_kendall_tau:.4f} | {r.ndcg10:.4f} ({r.ndcg10_delta:+.4f}, "
                     f"{_f(r.ndcg10_rel_delta_pct, '+.2f')} %) | {ci} | {p50} |")
    return "\n".join(lines) + "\n"


def pareto_front(rows: list[MethodResult]) -> list[MethodResult]:
    """Methods no other method beats on both size (smaller) and NDCG@10 (higher)."""
    ok = [r for r in rows if r.status == OK]
    front = [r for r in ok if not any((o.file_kb <= r.file_kb and o.ndcg10 >= r.ndcg10)
                                      and (o.file_kb < r.file_kb or o.ndcg10 > r.ndcg10) for o in ok)]
    return sorted(front, key=lambda r: r.file_kb)


def pareto_plot(rows: list[MethodResult], path: Path) -> None:
    """Left: size vs NDCG@10 with the Pareto front; right: size vs mean Kendall τ against fp32 (how faithful
    a method is to the model it compresses; students and pruned models are different models by design)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FixedLocator, NullFormatter, NullLocator

    ok = [r for r in rows if r.status == OK]
    if not ok:
        return
    markers = {"onnx": "o", "tflite": "s", "coreml": "^", "mnn": "D"}
    colors = {"reference": "black", "quantization": "tab:blue", "pruning": "tab:orange", "distillation": "tab:green"}
    fig, axes = plt.subplots(1, 2, figsize=(14, 6))
    for ax, key, label in ((axes[0], "ndcg10", "NDCG@10 on held-out lists"),
                           (axes[1], "mean_kendall_tau", "mean Kendall τ vs the fp32 model")):
        for r in ok:
            y = getattr(r, key)
            ax.scatter(r.file_kb, y, marker=markers.get(r.format, "x"), color=colors.get(r.family, "gray"), s=45,
                       zorder=3)
            ax.annotate(r.method, (r.file_kb, y), fontsize=6.5, xytext=(4, 3), textcoords="offset points")
        ax.set_xscale("log")
        ticks = [t for t in (25, 35, 50, 75, 100, 150, 200, 300, 500, 1000)
                 if min(r.file_kb for r in ok) / 1.3 <= t <= max(r.file_kb for r in ok) * 1.3]
        ax.xaxis.set_major_locator(FixedLocator(ticks))
        ax.xaxis.set_minor_locator(NullLocator())
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xticklabels([str(t) for t in ticks])
        ax.set_xlabel("model file size (KB, log scale; Core ML: zipped package)")
        ax.set_ylabel(label)
        ax.grid(True, alpha=0.3)
    front = pareto_front(ok)
    axes[0].plot([r.file_kb for r in front], [r.ndcg10 for r in front], "--", color="gray", lw=1, zorder=2,
                 label="Pareto front")
    ref = next((r for r in ok if r.method == REFERENCE), None)
    if ref is not None:
        axes[0].axhline(ref.ndcg10 * 0.999, color="tab:red", lw=0.8, ls=":", label="fp32 NDCG@10 − 0.1 %")
    axes[1].axhline(0.99, color="tab:red", lw=0.8, ls=":", label="τ = 0.99")
    axes[0].set_title("size vs ranking quality")
    axes[1].set_title("size vs faithfulness to fp32")
    for fmt, mk in markers.items():
        axes[1].scatter([], [], marker=mk, color="gray", label=fmt)
    for fam, c in colors.items():
        axes[1].scatter([], [], marker="o", color=c, label=fam)
    axes[0].legend(fontsize=7, loc="upper right")
    axes[1].legend(fontsize=7, loc="center right", ncol=2)
    fig.suptitle("Compression of one trained reranker: every method x format")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
