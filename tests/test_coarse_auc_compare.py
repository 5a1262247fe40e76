"""The paired click-AUC comparison of coarse variants (issue 16, multi-head vs single vector): the rank AUC equals
sklearn's, and the view-level paired bootstrap finds a real difference and none between identical scorers."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import roc_auc_score

from edge_rerank.cloud.training.coarse_train import paired_auc_bootstrap, rank_auc


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.integers(-3, 3)), min_size=2, max_size=60))
def test_rank_auc_is_sklearns_auc_with_ties(pairs):
    y = np.array([p[0] for p in pairs], float)
    s = np.array([p[1] for p in pairs], float)  # small integer range: many ties
    if 0 < y.sum() < len(y):
        assert abs(rank_auc(y, s) - roc_auc_score(y, s)) < 1e-12
    else:
        assert np.isnan(rank_auc(y, s))


def _views(seed: int, q: int = 300, n: int = 20):
    rng = np.random.default_rng(seed)
    signal = rng.standard_normal((q, n))
    labels = (rng.random((q, n)) < 1 / (1 + np.exp(-2 * signal))).astype(float)
    exposed = rng.random((q, n)) < 0.8
    return labels, exposed, signal, rng


def test_paired_bootstrap_separates_a_better_scorer_and_not_an_identical_one():
    labels, exposed, signal, rng = _views(0)
    weak = signal + 2.0 * rng.standard_normal(signal.shape)
    strong = signal + 0.3 * rng.standard_normal(signal.shape)
    reps = paired_auc_bootstrap(labels, exposed, weak, strong, seed=1, n_resamples=300)
    assert np.percentile(reps, 2.5) > 0.02  # strong − weak: the CI is above 0
    point = rank_auc(labels[exposed], strong[exposed]) - rank_auc(labels[exposed], weak[exposed])
    assert abs(np.median(reps) - point) < 0.01
    same = paired_auc_bootstrap(labels, exposed, weak, weak.copy(), seed=1, n_resamples=50)
    assert np.all(same == 0.0)
    # seeded: the same seed gives the same replicates
    np.testing.assert_array_equal(reps[:20], paired_auc_bootstrap(labels, exposed, weak, strong, seed=1,
                                                                  n_resamples=300)[:20])
