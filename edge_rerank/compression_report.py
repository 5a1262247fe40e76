"""The compression benchmark's table (``compression.md``) and Pareto plot (``pareto.png``), drawn from the rows
``compression.benchmark.run_benchmark`` measured (and the simulator's columns ``edge_rerank.compression_ab``
added): reading and drawing live on this floor, so ``compression`` stays a library that builds, measures and
gates."""

from __future__ import annotations

from pathlib import Path

from edge_rerank import report_format as rf
from edge_rerank.compression.benchmark import OK, MethodResult, pareto_front, write_json
from edge_rerank.compression.methods import REFERENCE
from edge_rerank.plotting import DPI, Placement, place_labels, pyplot


def write_outputs(rows: list[MethodResult], out: Path, summary: dict | None = None) -> None:
    """``compression.json``, ``compression.md`` and ``pareto.png`` in `out`."""
    write_json(rows, out, summary)
    (out / "compression.md").write_text(to_markdown(rows))
    pareto_plot(rows, out / "pareto.png")


def to_markdown(rows: list[MethodResult]) -> str:
    """The benchmark's table: sizes in KB (1 KB = 1,024 bytes) with the gzip download, fidelity against the fp32
    ONNX model, NDCG@10 with its change (absolute and relative, in %), the simulator's QV_CTR change in pp against
    the fp32 arm, latency p50 in ms; ``—`` where a number does not apply; a caveat line for a small run."""
    n_lists = max((r.n_lists or 0 for r in rows), default=0)
    sessions = max((r.qv_ctr_sessions or 0 for r in rows), default=0)
    halfwidth = max(((r.qv_ctr_ci_pp[1] - r.qv_ctr_ci_pp[0]) / 2 for r in rows if r.qv_ctr_ci_pp), default=None)
    lines = rf.caveats(rf.lists_caveat(n_lists, what="held-out lists") if n_lists else None,
                       rf.sessions_caveat(sessions, delta_halfwidth_pp=halfwidth) if sessions else None)
    lines.append((f"{n_lists:,} held-out lists" if n_lists else "Held-out lists")
                 + "; every column against the fp32 ONNX model (`onnx-fp32`). NDCG@10 change: absolute, then "
                 "relative in %. QV_CTR Δ: simulator A/B against the fp32 model's arm on the same sessions, in pp "
                 "(percentage points) with its paired 95 % CI"
                 + (f", {sessions:,} sessions per arm" if sessions else "")
                 + ". — = does not apply (not simulated, or no latency measured in that runtime).")
    lines.append("")
    table = []
    for r in rows:
        if r.status != OK:
            table.append([r.method, r.format, f"{r.status}: {r.reason}", rf.NA, rf.NA, rf.NA, rf.NA, rf.NA, rf.NA])
            continue
        ci = (rf.pp((r.qv_ctr_delta_pp, *r.qv_ctr_ci_pp)) if r.qv_ctr_ci_pp is not None
              else rf.pp((r.qv_ctr_delta_pp, None, None)))
        p50 = rf.num(r.latency_p50_ms, 3) if r.latency_p50_ms is not None else f"{rf.NA} ({r.evaluated_by})"
        tau = f"{rf.num(r.min_kendall_tau, 3)} / {rf.num(r.mean_kendall_tau, 4)}"
        ndcg = (f"{rf.num(r.ndcg10, 4)} ({rf.num(r.ndcg10_delta, 4, signed=True)}, "
                f"{rf.num(r.ndcg10_rel_delta_pct, 2, signed=True)} %)")
        table.append([r.method, r.format, f"{rf.num(r.file_kb, 1)} ({rf.num(r.gzip_kb, 1)})",
                      f"{r.max_abs_diff:.1e}" if r.max_abs_diff is not None else rf.NA, tau, ndcg, ci, p50])
    lines += rf.table(["method", "format", "size KB (gzip KB)", "max abs diff", "Kendall τ min / mean",
                       "NDCG@10 (Δ, rel. Δ)", "QV_CTR Δ vs fp32 [95 % CI]", "p50 ms"], table)
    return "\n".join(lines) + "\n"


def pareto_plot(rows: list[MethodResult], path: Path) -> Placement | None:
    """Left: size vs NDCG@10 with the Pareto front; right: size vs mean Kendall τ against fp32 (how faithful
    a method is to the model it compresses; students and pruned models are different models by design). Every
    point is labelled with its method, labels placed so none overlaps a point, a label or the frame
    (``plotting.place_labels``); the legend sits below the panels. Returns where the labels went (None: no
    method built, no plot)."""
    from matplotlib.lines import Line2D
    from matplotlib.ticker import FixedLocator, NullFormatter, NullLocator

    ok = [r for r in rows if r.status == OK]
    if not ok:
        return None
    plt = pyplot()
    markers = {"onnx": "o", "tflite": "s", "coreml": "^", "mnn": "D"}
    colors = {"reference": "black", "quantization": "tab:blue", "pruning": "tab:orange", "distillation": "tab:green"}
    fig, axes = plt.subplots(1, 2, figsize=(16, 8), dpi=DPI, layout="constrained")
    lo_kb, hi_kb = min(r.file_kb for r in ok), max(r.file_kb for r in ok)
    for ax, key, label in ((axes[0], "ndcg10", "NDCG@10 on held-out lists"),
                           (axes[1], "mean_kendall_tau", "mean Kendall τ vs the fp32 model")):
        for r in ok:
            ax.scatter(r.file_kb, getattr(r, key), marker=markers.get(r.format, "x"),
                       color=colors.get(r.family, "gray"), s=40, zorder=3)
        ax.set_xscale("log")
        ax.set_xlim(lo_kb / 1.35, hi_kb * 1.35)
        ticks = [t for t in (10, 15, 20, 25, 35, 50, 75, 100, 150, 200, 300, 500, 750, 1000, 1500, 2000)
                 if lo_kb / 1.35 <= t <= hi_kb * 1.35]
        ax.xaxis.set_major_locator(FixedLocator(ticks))
        ax.xaxis.set_minor_locator(NullLocator())
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xticklabels([str(t) for t in ticks])
        ax.set_xlabel("model file size (KB, log scale; Core ML: zipped package)")
        ax.set_ylabel(label)
        ax.grid(True, alpha=0.3)
        vals = [getattr(r, key) for r in ok]
        span = max(max(vals) - min(vals), 1e-3)
        ax.set_ylim(min(vals) - 0.12 * span, max(vals) + 0.12 * span)  # room for labels above and below
    front = pareto_front(ok)
    axes[0].plot([r.file_kb for r in front], [r.ndcg10 for r in front], "--", color="gray", lw=1, zorder=2)
    ref = next((r for r in ok if r.method == REFERENCE), None)
    if ref is not None:
        axes[0].axhline(ref.ndcg10 * 0.999, color="tab:red", lw=0.8, ls=":")
    axes[1].axhline(0.99, color="tab:red", lw=0.8, ls=":")
    axes[0].set_title("size vs ranking quality (up and left is better)")
    axes[1].set_title("size vs faithfulness to fp32 (up and left is better)")
    handles = [Line2D([], [], ls="--", color="gray", label="Pareto front (left)"),
               Line2D([], [], ls=":", color="tab:red", label="budgets: fp32 NDCG@10 − 0.1 % (left), τ = 0.99 (right)")]
    handles += [Line2D([], [], ls="", marker=mk, color="gray", label=f"format: {fmt}") for fmt, mk in markers.items()
                if any(r.format == fmt for r in ok)]
    handles += [Line2D([], [], ls="", marker="o", color=c, label=f"family: {fam}") for fam, c in colors.items()
                if any(r.family == fam for r in ok)]
    fig.legend(handles=handles, loc="outside lower center", ncol=5, fontsize=8, frameon=False)
    fig.suptitle("Compression of one trained reranker: every method × format")
    names = [r.method for r in ok]
    kb = [r.file_kb for r in ok]
    left = place_labels(axes[0], kb, [r.ndcg10 for r in ok], names)
    right = place_labels(axes[1], kb, [r.mean_kendall_tau for r in ok], names)
    fig.savefig(path)
    plt.close(fig)
    return Placement(left.boxes + right.boxes, left.unplaced + right.unplaced)
