"""One fidelity function (converters.validate): Kendall tau-b from scipy, the same as the hand-written tau-a it
replaced wherever there are no ties; where they differ (ties) and the edge cases."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from edge_rerank.converters.validate import fidelity, kendall_tau, list_taus


def tau_a(a: np.ndarray, b: np.ndarray) -> float:
    """The hand-written tau-a the project used before (converters.validate, up to issue 22)."""
    n = a.shape[0]
    if n < 2:
        return 1.0
    da = np.sign(a[:, None] - a[None, :])
    db = np.sign(b[:, None] - b[None, :])
    iu = np.triu_indices(n, 1)
    return float((da[iu] * db[iu]).sum() / len(iu[0]))


@given(st.integers(2, 40), st.integers(0, 10_000))
def test_tau_b_equals_tau_a_without_ties(n, seed):
    rng = np.random.default_rng(seed)
    a = rng.permutation(n).astype(np.float64) + rng.uniform(0, 0.1, n)
    b = a + rng.normal(0, 0.3 * n, n)
    if len(np.unique(b)) < n:
        return
    assert kendall_tau(a, b) == pytest.approx(tau_a(a, b), abs=1e-12)


def test_tau_b_differs_from_tau_a_with_ties():
    ref = np.array([0.90, 0.80, 0.70, 0.60, 0.50])
    rounded = np.array([0.9, 0.8, 0.8, 0.6, 0.5])  # int8 rounding puts two neighbours on one value
    assert tau_a(ref, rounded) == pytest.approx(0.9)  # the tied pair counts as zero over all 10 pairs
    assert kendall_tau(ref, rounded) == pytest.approx(9 / np.sqrt(10 * 9))  # 0.9487: only untied pairs count
    both_tied = np.array([1.0, 1.0, 0.0])
    assert kendall_tau(both_tied, both_tied) == pytest.approx(1.0) and tau_a(both_tied, both_tied) < 1.0


def test_edge_cases():
    assert kendall_tau(np.array([1.0]), np.array([2.0])) == 1.0
    assert kendall_tau(np.zeros(4), np.zeros(4)) == 1.0
    assert kendall_tau(np.arange(4.0), np.zeros(4)) == 0.0


def test_fidelity_over_real_candidates_only():
    ref = np.array([[3.0, 2.0, 1.0, 0.0], [1.0, 2.0, 0.0, 0.0]])
    scores = np.array([[3.0, 2.5, 1.0, 9.0], [2.0, 1.0, 5.0, 5.0]])
    mask = np.array([[1, 1, 1, 0], [1, 1, 0, 0]])
    assert list_taus(scores, ref, mask) == [1.0, -1.0]
    assert fidelity(scores, ref, mask) == (1.0, -1.0, 0.0)
