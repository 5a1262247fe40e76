"""A/B report: markdown tables with confidence intervals, plots, and the JSON they come from."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from edge_rerank.simulator.ab import ArmResult, paired_delta, position_curves
from edge_rerank.simulator.session_metrics import Estimate, position_ctr, session_table

METRICS = (("qv_ctr", "QV_CTR (sessions with ≥1 click)", True), ("clicks", "clicks / query", False),
           ("orders", "orders / query", False), ("screens", "screens viewed / query", False),
           ("abandon", "abandonment (left without a click)", True),
           ("energy_mj", "energy / session, reranks + page requests (mJ, modelled)", False))


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


def gap_share_line(results: list[ArmResult], metric: str = "qv_ctr", seed: int = 0) -> tuple[str, dict] | None:
    """The report table's row "share of the cloud → informed gap" (when arms named cloud and informed ran)."""
    by = {r.name: r for r in results}
    if "cloud" not in by or "informed" not in by:
        return None
    shares = {r.name: gap_share(by["cloud"], r, by["informed"], metric, seed=seed) for r in results}
    cells = [shares[r.name].fmt(pct=True) for r in results]
    return (f"| share of the cloud → informed gap ({metric}) | " + " | ".join(cells) + " |"
            + " |" * (len(results) - 1)), {k: vars(v) for k, v in shares.items()}


def screen_ctr(ctr: np.ndarray, exp: np.ndarray, viewport: int = 4) -> np.ndarray:
    """CTR per screen (clicks / exposures over the screen's positions)."""
    n = len(ctr) // viewport
    clicks = np.nan_to_num(ctr[: n * viewport] * exp[: n * viewport]).reshape(n, viewport).sum(1)
    shown = exp[: n * viewport].reshape(n, viewport).sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(shown > 0, clicks / np.maximum(shown, 1), np.nan)


def _plot_position_ctr(results: list[ArmResult], path: Path, n_positions: int = 75) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(16, 3.8))
    for r in results:
        ctr, exp = position_ctr(r.outcomes, n_positions)
        sc = screen_ctr(ctr, np.where(exp >= 50, exp, 0))
        ctr = np.where(exp >= 50, ctr, np.nan)  # hide positions too rarely reached to estimate
        axes[0].plot(np.arange(n_positions), ctr, marker=".", lw=1, label=r.name)
        axes[1].plot(np.arange(len(sc)), sc, marker="o", lw=1.5, label=r.name)
        axes[2].plot(np.arange(n_positions), exp / max(len(r.outcomes), 1), lw=1.5, label=r.name)
    for x in (25, 50):
        for ax in (axes[0], axes[2]):
            ax.axvline(x, color="grey", ls=":", lw=0.8)
    axes[0].set(title="CTR by displayed position (clicks / exposures, ≥50 exposures)", xlabel="position", ylabel="CTR")
    axes[1].set(title="CTR by screen (4 items per screen)", xlabel="screen", ylabel="CTR")
    axes[2].set(title="Share of sessions reaching the position", xlabel="position", ylabel="exposure rate")
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _plot_latency(results: list[ArmResult], path: Path) -> bool:
    ms = {r.name: np.array([x for o in r.outcomes for x in o.rerank_ms]) for r in results}
    ms = {k: v for k, v in ms.items() if v.size}
    if not ms:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    for name, v in ms.items():
        ax.hist(v, bins=60, alpha=0.7, label=f"{name} (n={v.size})")
    ax.set(title="Rerank call latency on this machine (features + inference + reinsertion)", xlabel="ms",
           ylabel="calls")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def write_report(out_dir: str | Path, results: list[ArmResult], *, title: str, extra_md: str = "",
                 extra_json: dict | None = None, seed: int = 0) -> dict:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    base = results[0]
    lines = [f"# {title}", "", f"{len(base.outcomes)} sessions per arm; the same users, queries, intents and "
             "random draws in every arm (common random numbers). 95 % intervals: bootstrap over sessions; "
             "Δ is paired (B − A on the same sessions).", "",
             "| metric | " + " | ".join(r.name for r in results) + " | " +
             " | ".join(f"Δ {r.name} − {base.name}" for r in results[1:]) + " |",
             "|---" * (1 + len(results) + len(results) - 1) + "|"]
    data: dict = {"arms": {}, "deltas": {}}
    for key, label, pct in METRICS:
        cells = [r.metrics[key].fmt(pct=pct) for r in results]
        deltas = [paired_delta(base, r, key, seed=seed) for r in results[1:]]
        lines.append(f"| {label} | " + " | ".join(cells) + " | " + " | ".join(d.fmt(pct=pct) for d in deltas) + " |")
        for r in results:
            data["arms"].setdefault(r.name, {})[key] = vars(r.metrics[key])
        for r, d in zip(results[1:], deltas, strict=True):
            data["deltas"].setdefault(r.name, {})[key] = vars(d)
    share = gap_share_line(results, seed=seed)
    if share is not None:
        lines.append(share[0])
        data["gap_share_qv_ctr"] = share[1]
    lines += ["", "| arm | rerank calls | applied (late) | dropped late | host p50 / p99 (ms) | "
              "device p50 / p99 (ms, modelled) | triggers | fallbacks |", "|---|---|---|---|---|---|---|---|"]
    for r in results:
        lat, b = r.latency, r.budget
        lines.append(f"| {r.name} | {lat['device_n']} | {r.reranks_applied} ({b.get('late', 0)}) | "
                     f"{b.get('dropped', 0)} | {lat['p50_ms']:.3f} / {lat['p99_ms']:.3f} | "
                     f"{lat['device_p50_ms']:.3f} / {lat['device_p99_ms']:.3f} | "
                     f"{dict(r.triggers)} | {dict(r.fallbacks) or '-'} |")
        data["arms"][r.name]["latency"] = lat
        data["arms"][r.name]["budget"] = b
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
