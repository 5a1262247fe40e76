"""Compression–accuracy benchmark: one trained reranker, every method x format (``compression.methods``):
file size (and its gzip download), max abs diff and Kendall τ against the fp32 ONNX model (and against the fp32
file of the method's own format), NDCG@10 on held-out lists and its delta, and latency p50 in the method's
runtime — all offline. Writes ``compression.json``, ``compression.md`` and ``pareto.png`` (size vs NDCG@10).
The simulator's QV_CTR column is added one floor up, by ``edge_rerank.compression_ab``.
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

from edge_rerank.cloud.training.ranking_metrics import ndcg_at_k
from edge_rerank.compression.methods import METHODS, REFERENCE, Context, Method
from edge_rerank.compression.sizes import file_size, gzip_size
from edge_rerank.converters.export import median_latency_ms
from edge_rerank.converters.validate import fidelity

OK, UNAVAILABLE, FAILED = "ok", "unavailable", "failed"


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
    file: str | None = None  # the built model file
    reference: str | None = None  # the fp32 method of the same format (None: this is one)
    reference_kb: float | None = None  # its file size
    # (max abs diff, min Kendall τ, mean Kendall τ) against that same-format fp32 file: what the format's own
    # compression changed (the columns above compare with the ONNX fp32 reference)
    vs_reference: tuple[float, float, float] | None = None
    scores: np.ndarray | None = field(default=None, repr=False, compare=False)  # [S, N] on the measured lists

    def to_dict(self) -> dict:
        d = asdict(self)
        d.pop("scores")
        return d


@dataclass
class Evaluation:
    """Offline numbers of one set of scores against the reference scores on the same held-out lists."""

    max_abs_diff: float
    min_kendall_tau: float
    mean_kendall_tau: float
    ndcg10: float


def evaluate_scores(scores: np.ndarray, ref: np.ndarray, labels: np.ndarray, mask: np.ndarray) -> Evaluation:
    return Evaluation(*fidelity(scores, ref, mask), float(np.nanmean(ndcg_at_k(scores, labels, mask, 10))))


def score_lists(run, inputs: dict[str, np.ndarray]) -> np.ndarray:
    """One list per call (batch 1, as on the phone)."""
    n = len(inputs["cand_mask"])
    return np.concatenate([run({k: v[i: i + 1] for k, v in inputs.items()}) for i in range(n)])


def run_benchmark(model, train, test, out: str | Path, *, methods: list[str | Method] | None = None,
                  n_lists: int = 300, latency_runs: int = 200, progress: bool = True,
                  **ctx_kw) -> list[MethodResult]:
    """Build and measure each method offline (all known ones by default; names, or Method objects). `train`:
    lists for calibration, fine-tuning and distillation (``tune=`` the model's validation lists, where those pick
    their epochs); `test`: the model's recorded test lists, for every number reported. Writes the outputs
    (``write_outputs``); the simulator's columns are added one floor up (``edge_rerank.compression_ab``)."""
    out = Path(out)
    ctx = Context(model, train, test, out, progress=progress, **ctx_kw)
    chosen = _choose(methods)
    sub = test.subset(np.arange(min(n_lists, len(test))))
    x1 = {k: v[:1] for k, v in sub.inputs.items()}
    results = {m.name: MethodResult(m.name, m.format, m.family, description=m.description,
                                    evaluated_by=m.evaluated_by or m.runtime, reference=m.reference)
               for m in chosen}
    for m in tqdm(chosen, desc="compression methods", unit="method", disable=not progress):
        r = results[m.name]
        why = m.unavailable_reason(ctx)
        if why:
            r.status, r.reason = UNAVAILABLE, why
            continue
        try:
            with contextlib.redirect_stdout(io.StringIO()):  # converters print their passes
                path = m.build(ctx, out / "methods" / m.name)
            run = m.runner(path)
            s = score_lists(run, sub.inputs)
            ref = results[REFERENCE]
            if ref.scores is None and m.name != REFERENCE:
                raise RuntimeError(f"no reference scores: {REFERENCE} did not build ({ref.reason})")
            ev = evaluate_scores(s, s if ref.scores is None else ref.scores, sub.labels, sub.mask)
            ref_ndcg = ev.ndcg10 if ref.scores is None else ref.ndcg10
            r.file, r.scores = str(path), s
            r.file_kb, r.gzip_kb = (m.size or file_size)(path) / 1024, gzip_size(path) / 1024
            r.max_abs_diff, r.min_kendall_tau, r.mean_kendall_tau = ev.max_abs_diff, ev.min_kendall_tau, \
                ev.mean_kendall_tau
            r.ndcg10, r.ndcg10_delta = ev.ndcg10, ev.ndcg10 - ref_ndcg
            r.ndcg10_rel_delta_pct = 100 * r.ndcg10_delta / ref_ndcg if ref_ndcg else None
            r.latency_p50_ms = None if m.scorer is not None or not latency_runs else _latency(run, x1, latency_runs)
            if m.name in ctx.reports:  # what pruning / distillation measured while building
                r.extra["training"] = _jsonable(ctx.reports[m.name])
            r.params = ctx.params_of(m.name)
        except Exception as exc:  # noqa: BLE001 - one failing method is a result, not the end of the run
            r.status, r.reason = FAILED, f"{type(exc).__name__}: {str(exc)[:1000]}"
            r.extra["traceback"] = traceback.format_exc(limit=4)
    for r in results.values():  # each against the fp32 file of its own format, when that was measured too
        fmt_ref = results.get(r.reference or r.method)
        if r.scores is not None and fmt_ref is not None and fmt_ref.scores is not None:
            r.reference_kb, r.vs_reference = fmt_ref.file_kb, fidelity(r.scores, fmt_ref.scores, sub.mask)
    rows = list(results.values())
    write_outputs(rows, out)
    return rows


def _choose(methods: list[str | Method] | None) -> list[Method]:
    """The methods to run, in the given order, the reference first when it was not asked for."""
    if methods is None:
        return list(METHODS)
    by_name = {m.name: m for m in METHODS}
    unknown = sorted(m for m in methods if isinstance(m, str) and m not in by_name)
    if unknown:
        raise KeyError(f"unknown compression methods {unknown}; known: {list(by_name)}")
    chosen = [by_name[m] if isinstance(m, str) else m for m in methods]
    return chosen if chosen and chosen[0].name == REFERENCE else [by_name[REFERENCE], *(m for m in chosen
                                                                                        if m.name != REFERENCE)]


def _latency(run, x1, runs: int) -> float:
    return median_latency_ms(run, x1, runs)


def _jsonable(d: dict) -> dict:
    return json.loads(json.dumps(d, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o)))


def write_outputs(rows: list[MethodResult], out: Path, summary: dict | None = None) -> None:
    (out / "compression.json").write_text(json.dumps({"results": [r.to_dict() for r in rows], **(summary or {})},
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
