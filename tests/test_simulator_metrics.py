"""simulator.session_metrics.bootstrap_mean: scipy's BCa bootstrap against the hand-written percentile bootstrap it
replaced — agreeing on a large sample, differing (as BCa should) on a small skewed one."""

import numpy as np
import pytest

from edge_rerank.simulator.session_metrics import bootstrap_mean


def percentile_bootstrap(v: np.ndarray, n_boot: int = 2000, seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """The percentile bootstrap bootstrap_mean computed by hand before issue 22."""
    rng = np.random.default_rng(seed)
    means = v[rng.integers(0, v.size, (n_boot, v.size))].mean(axis=1)
    a = (1 - level) / 2
    return float(np.quantile(means, a)), float(np.quantile(means, 1 - a))


def test_bca_agrees_with_the_percentile_ci_on_a_large_paired_sample():
    rng = np.random.default_rng(1)
    a = (rng.random(5000) < 0.30).astype(float)  # per-session QV_CTR of two arms on the same sessions
    b = np.where(rng.random(5000) < 0.9, a, (rng.random(5000) < 0.34).astype(float))
    d = b - a
    est = bootstrap_mean(d, seed=0)
    lo, hi = percentile_bootstrap(d)
    se = d.std(ddof=1) / np.sqrt(d.size)
    assert est.mean == pytest.approx(d.mean())
    assert est.lo == pytest.approx(lo, abs=0.15 * se) and est.hi == pytest.approx(hi, abs=0.15 * se)


def test_bca_leans_toward_the_long_tail_on_a_small_skewed_sample():
    v = np.array([0.0] * 27 + [1.0, 3.0, 12.0])  # orders per session: mostly zero, one heavy session
    est = bootstrap_mean(v, seed=0)
    lo, hi = percentile_bootstrap(v)
    assert est.lo > lo and est.hi > hi  # BCa shifts the interval right (skew), the percentile one is too low


def test_degenerate_samples():
    e = bootstrap_mean(np.zeros(50))
    assert (e.mean, e.lo, e.hi) == (0.0, 0.0, 0.0)
    e = bootstrap_mean(np.array([2.0]))
    assert (e.mean, e.lo, e.hi) == (2.0, 2.0, 2.0)
    assert np.isnan(bootstrap_mean(np.array([])).mean)
