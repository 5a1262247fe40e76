"""A/B report: markdown tables with confidence intervals, plots, and the JSON they come from."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from edge_rerank import report_format as rf
from edge_rerank.plotting import DPI, mark_percentiles, pyplot
from edge_rerank.report_format import num
from edge_rerank.simulator.ab import ArmResult, paired_delta, position_curves
from edge_rerank.simulator.session_metrics import Estimate, position_ctr, session_table

METRICS = (("qv_ctr", "QV_CTR (sessions with ≥ 1 click)", True), ("clicks", "clicks / query", False),
           ("orders", "orders / query", False), ("screens", "screens viewed / query", False),
           ("abandon", "abandonment (left without a click)", True),
           ("energy_mj", "energy / session, reranks + page requests (mJ, modelled)", False))
DIGITS = {"screens": 2, "energy_mj": 1}  # decimals per metric (default 3); rates: 2 decimals of a percent
TRIGGER_ORDER = ("click_return", "skip_run", "page_arrival")


def gap_share(cloud: ArmResult, arm: ArmResult, informed: ArmResult, metric: str = "qv_ctr", *, n_boot: int = 2000,
              seed: int = 0, level: float = 0.95) -> Estimate:
    """The arm's share of the cloud → informed-oracle gap, (arm − cloud) / (informed − cloud), with a paired
    percentile bootstrap CI (the same resampled sessions in all three arms; resamples with a gap ≤ 0 are
    dropped, nan if the gap itself is not positive)."""
    c, a, i = (session_table(r.outcomes)[metric] for r in (cloud, arm, informed))
    if not len(c) == len(a) == len(i) or len(c) == 0:
        raise ValueError("gap_share needs the same sessions in all three arms")
    gap = i.mean() - c.mean()
    if gap <= 0:
        return Estimate(float("nan"), float("nan"), float("nan"))
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(c), (n_boot, len(c)))
    g = i[idx].mean(1) - c[idx].mean(1)
    ok = g > 0
    shares = (a[idx].mean(1) - c[idx].mean(1))[ok] / g[ok]
    q = (1 - level) / 2
    lo, hi = np.quantile(shares, [q, 1 - q])
    return Estimate(float((a.mean() - c.mean()) / gap), float(lo), float(hi))


def gap_share_lines(results: list[ArmResult], metric: str = "qv_ctr",
                    seed: int = 0) -> list[tuple[str, list, dict]]:
    """The report table's rows "share of the cloud → informed gap" (when arms named cloud and informed ran) and
    "share of the cloud → informed_any gap" (when an arm named informed_any ran): (reference arm, the row's cells
    — a share, so in %; the delta columns do not apply —, the estimates) per row."""
    by = {r.name: r for r in results}
    if "cloud" not in by:
        return []
    rows = []
    for ref in ("informed", "informed_any"):
        if ref not in by:
            continue
        shares = {r.name: gap_share(by["cloud"], r, by[ref], metric, seed=seed) for r in results}
        cells = [f"share of the cloud → {ref} gap ({metric})", *(rf.rate(shares[r.name]) for r in results),
                 *([rf.NA] * (len(results) - 1))]
        rows.append((ref, cells, {k: vars(v) for k, v in shares.items()}))
    return rows


def screen_ctr(ctr: np.ndarray, exp: np.ndarray, viewport: int = 4) -> np.ndarray:
    """CTR per screen (clicks / exposures over the screen's positions)."""
    n = len(ctr) // viewport
    clicks = np.nan_to_num(ctr[: n * viewport] * exp[: n * viewport]).reshape(n, viewport).sum(1)
    shown = exp[: n * viewport].reshape(n, viewport).sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(shown > 0, clicks / np.maximum(shown, 1), np.nan)


def _plot_position_ctr(results: list[ArmResult], path: Path, n_positions: int = 75, min_exposures: int = 50) -> None:
    from matplotlib.ticker import FuncFormatter, MaxNLocator

    plt = pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.4), dpi=DPI, layout="constrained")
    for r in results:
        ctr, exp = position_ctr(r.outcomes, n_positions)
        sc = screen_ctr(ctr, np.where(exp >= min_exposures, exp, 0))
        ctr = np.where(exp >= min_exposures, ctr, np.nan)  # hide positions too rarely reached to estimate
        axes[0].plot(np.arange(n_positions), ctr, marker=".", lw=1, label=r.name)
        axes[1].plot(np.arange(len(sc)), sc, marker="o", lw=1.5)
        axes[2].plot(np.arange(n_positions), exp / max(len(r.outcomes), 1), lw=1.5)
    for ax in (axes[0], axes[2]):
        ax.set_xlim(-1, n_positions)
        for x, page in ((25, 2), (50, 3)):
            ax.axvline(x, color="grey", ls=":", lw=0.8)
            ax.annotate(f"page {page}", (x, 1), xycoords=("data", "axes fraction"), xytext=(2, -2),
                        textcoords="offset points", ha="left", va="top", fontsize=8, color="grey")
    axes[0].set(title=f"CTR by displayed position (positions with ≥ {min_exposures} exposures)",
                xlabel="position in the list (0 = top)", ylabel="CTR (clicks / exposures)")
    axes[1].set(title="CTR by screen (4 items per screen)", xlabel="screen (0 = first)", ylabel="CTR")
    axes[2].set(title="Sessions that reached the position", xlabel="position in the list (0 = top)",
                ylabel="share of sessions")
    for ax in axes:
        ax.yaxis.set_major_locator(MaxNLocator(nbins=8, steps=[1, 2, 2.5, 5, 10]))
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{100 * v:.4g}%"))  # 2.5%, 5%: no false rounding
        ax.set_ylim(bottom=0)
        ax.grid(True, alpha=0.3)
    fig.legend(loc="outside upper center", ncol=len(results), frameon=False)
    fig.savefig(path)
    plt.close(fig)


def _plot_latency(results: list[ArmResult], path: Path) -> bool:
    """Histograms of the rerank call latency per arm, measured on this machine and modelled on the device, on a
    log axis (the tail is what matters), p50 (dashed) and p99 (dotted) marked and given in the legend."""
    kinds = (("rerank_ms", "measured on this machine\n(features + inference + reinsertion, host wall clock)"),
             ("device_ms", "modelled on the device profile\n(request to result, incl. a busy main thread)"))
    series = {k: {r.name: np.array([x for o in r.outcomes for x in getattr(o, k)], dtype=float) for r in results}
              for k, _ in kinds}
    series = {k: {n: v for n, v in by.items() if v.size} for k, by in series.items()}
    kinds = tuple((k, t) for k, t in kinds if series[k])
    if not kinds:
        return False
    plt = pyplot()
    from matplotlib.ticker import FuncFormatter

    fig, axes = plt.subplots(1, len(kinds), figsize=(6.2 * len(kinds), 5.0), dpi=DPI, layout="constrained",
                             squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    color_of = {r.name: colors[i % len(colors)] for i, r in enumerate(results)}  # as in position_ctr.png
    for ax, (kind, title) in zip(axes[0], kinds, strict=True):
        arms = series[kind]
        positive = np.concatenate([v[v > 0] for v in arms.values()])
        lo = float(positive.min()) if positive.size else 1e-3
        hi = max(float(positive.max()) if positive.size else lo, lo * 1.01)
        bins = np.geomspace(lo, hi, 60)
        for name, v in arms.items():
            c = color_of[name]
            p = mark_percentiles(ax, v, c)  # p50 dashed, p99 dotted
            ax.hist(np.clip(v, lo, None), bins=bins, histtype="stepfilled", alpha=0.3, color=c)
            ax.hist(np.clip(v, lo, None), bins=bins, histtype="step", lw=1.2, color=c,
                    label=f"{name} (n={v.size:,}): p50 {num(p[50])} ms, p99 {num(p[99])} ms")
        ax.set_xscale("log")
        ax.set_yscale("log")  # the tail, which p99 is about, stays visible next to the mode
        ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x:g}"))
        ax.set(title=title, xlabel="ms per rerank call (log scale)", ylabel="calls (log scale)")
        ax.title.set_fontsize(10)
        ax.plot([], [], color="0.3", ls="--", label="p50 (dashed)")
        ax.plot([], [], color="0.3", ls=":", label="p99 (dotted)")
        ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.16), frameon=False)
        ax.grid(True, alpha=0.3, which="major")
    fig.suptitle("Rerank call latency")
    fig.savefig(path)
    plt.close(fig)
    return True


def _metric_cells(est, key: str, pct: bool, *, is_delta: bool) -> str:
    digits = DIGITS.get(key, 3)
    if pct:
        return rf.rate_delta(est) if is_delta else rf.rate(est)
    return rf.delta(est, digits) if is_delta else rf.ci(est, digits=digits)


def _rerank_rows(results: list[ArmResult]) -> list[list[object]]:
    rows = []
    for r in results:
        lat, b = r.latency, r.budget
        if not lat.get("device_n") and not lat.get("n"):  # no reranker in this arm: nothing applies
            rows.append([r.name, 0, rf.NA, rf.NA, rf.NA, rf.NA])
            continue
        rows.append([r.name, f"{lat['device_n']:,}", f"{r.reranks_applied:,} ({b.get('late', 0):,})",
                     f"{b.get('dropped', 0):,}", rf.pair(lat["p50_ms"], lat["p99_ms"], 2),
                     rf.pair(lat["device_p50_ms"], lat["device_p99_ms"], 2)])
    return rows


def _count_table(results: list[ArmResult], attr: str, *, applies) -> tuple[list[str], list[list[object]]]:
    """One column per kind (triggers or fallback reasons), one row per arm; ``—`` where the arm has no reranker."""
    kinds = sorted({k for r in results for k in getattr(r, attr)}, key=lambda k: (k not in TRIGGER_ORDER,
                                                                                 TRIGGER_ORDER.index(k)
                                                                                 if k in TRIGGER_ORDER else 0, k))
    rows = [[r.name, *((f"{getattr(r, attr).get(k, 0):,}" if applies(r) else rf.NA) for k in kinds)]
            for r in results]
    return kinds, rows


def write_report(out_dir: str | Path, results: list[ArmResult], *, title: str, extra_md: str = "",
                 extra_json: dict | None = None, seed: int = 0) -> dict:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    base = results[0]
    n = len(base.outcomes)
    data: dict = {"arms": {}, "deltas": {}}
    metric_rows = []
    deltas_by_key = {}
    for key, label, pct in METRICS:
        deltas = [paired_delta(base, r, key, seed=seed) for r in results[1:]]
        deltas_by_key[key] = deltas
        metric_rows.append([label, *(_metric_cells(r.metrics[key], key, pct, is_delta=False) for r in results),
                            *(_metric_cells(d, key, pct, is_delta=True) for d in deltas)])
        for r in results:
            data["arms"].setdefault(r.name, {})[key] = vars(r.metrics[key])
        for r, d in zip(results[1:], deltas, strict=True):
            data["deltas"].setdefault(r.name, {})[key] = vars(d)
    for ref, cells, shares in gap_share_lines(results, seed=seed):
        metric_rows.append(cells)
        data["gap_share_qv_ctr" if ref == "informed" else f"gap_share_{ref}_qv_ctr"] = shares
    qv = deltas_by_key["qv_ctr"]
    halfwidth = max((100 * (d.hi - d.lo) / 2 for d in qv if np.isfinite(d.hi - d.lo)), default=None)
    caveat = rf.sessions_caveat(n, delta_halfwidth_pp=halfwidth)
    data["small_sample"] = caveat is not None
    lines = [f"# {title}", "", *rf.caveats(caveat),
             f"{n:,} sessions per arm; the same users, queries, intents and random draws in every arm (common "
             "random numbers). Brackets: 95 % bootstrap CIs over sessions (BCa); Δ is paired (arm − "
             f"{base.name} on the same sessions). Rates are in %, differences of rates in pp (percentage points); "
             "— = does not apply.", "",
             *rf.table(["metric", *(r.name for r in results), *(f"Δ {r.name} − {base.name}" for r in results[1:])],
                       metric_rows),
             "", "### Reranks and latency", "",
             *rf.table(["arm", "rerank calls", "applied (late)", "dropped (too late)", "host p50 / p99 (ms)",
                        "device p50 / p99 (ms, modelled)"], _rerank_rows(results))]
    has_reranker = {r.name: bool(r.latency.get("device_n") or r.latency.get("n") or r.reranks_applied)
                    for r in results}
    kinds, rows = _count_table(results, "triggers", applies=lambda r: True)
    if kinds:
        lines += ["", "Triggers (where the trigger policy fired; an arm without a reranker only marks them):", "",
                  *rf.table(["arm", *kinds], rows)]
    kinds, rows = _count_table(results, "fallbacks", applies=lambda r: has_reranker[r.name])
    if kinds:
        lines += ["", "Reranks that kept the previous order (fallbacks), by reason:", "",
                  *rf.table(["arm", *kinds], rows)]
    for r in results:
        data["arms"][r.name]["latency"] = r.latency
        data["arms"][r.name]["budget"] = r.budget
        data["arms"][r.name]["triggers"] = dict(r.triggers)
        data["arms"][r.name]["fallbacks"] = dict(r.fallbacks)
    _plot_position_ctr(results, out / "position_ctr.png")
    lines += ["", "![position CTR](position_ctr.png)"]
    if _plot_latency(results, out / "latency.png"):
        lines += ["", "![latency](latency.png)"]
    curves = position_curves(results)
    data["position_ctr"] = {k: [None if np.isnan(x) else float(x) for x in v] for k, v in curves.items()}
    if extra_md:
        lines += ["", extra_md]
    if extra_json:
        data.update(extra_json)
    (out / "report.md").write_text("\n".join(lines) + "\n")
    (out / "report.json").write_text(json.dumps(data, indent=2, default=float))
    return data
