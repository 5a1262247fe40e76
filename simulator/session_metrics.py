"""Session metrics with bootstrap confidence intervals."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.stats import bootstrap

from edge_rerank.simulator.phone import SessionOutcome


@dataclass(frozen=True)
class Estimate:
    mean: float
    lo: float
    hi: float

    def fmt(self, pct: bool = False, digits: int = 3) -> str:
        if pct:
            return f"{100 * self.mean:.2f}% [{100 * self.lo:.2f}, {100 * self.hi:.2f}]"
        return f"{self.mean:.{digits}f} [{self.lo:.{digits}f}, {self.hi:.{digits}f}]"


def bootstrap_mean(values: np.ndarray, *, n_boot: int = 2000, seed: int = 0, level: float = 0.95) -> Estimate:
    """BCa bootstrap CI of the mean, resampling sessions (``scipy.stats.bootstrap``). A paired A/B delta is this
    over the per-session differences (``simulator.ab.paired_delta``): resampling sessions keeps the pairs.

    On a large sample BCa and the plain percentile bootstrap this used to compute agree to a few hundredths of a
    standard error (tests/test_simulator_metrics.py); they differ on small or skewed samples — rare events such as
    orders or a QV_CTR near 0 or 1 — where BCa shifts and stretches the interval toward the long tail (bias and
    acceleration corrections) and covers closer to `level`. A constant sample (a reference against itself, or
    fewer than two sessions) has the degenerate interval [mean, mean]."""
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        return Estimate(float("nan"), float("nan"), float("nan"))
    mean = float(v.mean())
    if v.size < 2 or np.all(v == v[0]):
        return Estimate(mean, mean, mean)
    res = bootstrap((v,), np.mean, n_resamples=n_boot, confidence_level=level, method="BCa",
                    rng=np.random.default_rng(seed), batch=256)
    lo, hi = float(res.confidence_interval.low), float(res.confidence_interval.high)
    if not (np.isfinite(lo) and np.isfinite(hi)):  # BCa undefined (e.g. one value differs): percentile then
        res = bootstrap((v,), np.mean, n_resamples=n_boot, confidence_level=level, method="percentile",
                        rng=np.random.default_rng(seed), batch=256)
        lo, hi = float(res.confidence_interval.low), float(res.confidence_interval.high)
    return Estimate(mean, lo, hi)


def session_table(outcomes: Sequence[SessionOutcome]) -> dict[str, np.ndarray]:
    return {
        "qv_ctr": np.array([o.clicks > 0 for o in outcomes], dtype=np.float64),
        "clicks": np.array([o.clicks for o in outcomes], dtype=np.float64),
        "orders": np.array([o.orders for o in outcomes], dtype=np.float64),
        "screens": np.array([o.screens for o in outcomes], dtype=np.float64),
        "abandon": np.array([o.abandoned for o in outcomes], dtype=np.float64),
        "energy_mj": np.array([o.energy_mj for o in outcomes], dtype=np.float64),
    }


def position_ctr(outcomes: Sequence[SessionOutcome], n_positions: int = 75) -> tuple[np.ndarray, np.ndarray]:
    """(CTR per displayed position = clicks / exposures, exposures per position)."""
    exp = np.zeros(n_positions)
    clk = np.zeros(n_positions)
    for o in outcomes:
        for p in o.exposed_positions:
            if 0 <= p < n_positions:
                exp[p] += 1
        for p in o.click_positions:
            if 0 <= p < n_positions:
                clk[p] += 1
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(exp > 0, clk / np.maximum(exp, 1), np.nan), exp


def latency_percentiles(outcomes: Sequence[SessionOutcome]) -> dict[str, float]:
    """Host-measured rerank call latency (``p50_ms``/``p99_ms``, machine dependent) and the modelled on-device
    latency from request to result (``device_p50_ms``/``device_p99_ms``, deterministic for a seed)."""
    ms = np.array([x for o in outcomes for x in o.rerank_ms])
    dev = np.array([x for o in outcomes for x in o.device_ms])
    nan = float("nan")
    res = {"n": int(ms.size), "p50_ms": nan, "p99_ms": nan, "device_n": int(dev.size), "device_p50_ms": nan,
           "device_p99_ms": nan}
    if ms.size:
        res.update(p50_ms=float(np.percentile(ms, 50)), p99_ms=float(np.percentile(ms, 99)))
    if dev.size:
        res.update(device_p50_ms=float(np.percentile(dev, 50)), device_p99_ms=float(np.percentile(dev, 99)))
    return res
