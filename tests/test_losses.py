"""Every loss and metric against a plain numpy / scikit-learn reference, padding and extreme scores included."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_rerank.cloud.training.losses import LOSSES, LambdaLoss, ListNetLoss, PairwiseLogisticLoss
from edge_rerank.cloud.training.ranking_metrics import auc


def _softplus(x):
    return np.logaddexp(0.0, x)


def _listnet_numpy(s, y, m):
    out = []
    for si, yi, mi in zip(s, y, m, strict=True):
        k = mi > 0
        t = yi[k] / yi[k].sum()
        z = si[k] - si[k].max()
        out.append(-(t * (z - np.log(np.exp(z).sum()))).sum())
    return float(np.mean(out))


def _pairwise_numpy(s, y, m, weight=None):
    total, count = 0.0, 0
    for b in range(s.shape[0]):
        idx = [i for i in range(s.shape[1]) if m[b, i] > 0]
        for i in idx:
            for j in idx:
                if y[b, i] > y[b, j]:
                    w = 1.0 if weight is None else weight(b, i, j)
                    total += w * _softplus(-(s[b, i] - s[b, j]))
                    count += 1
    return total / max(count, 1)


def _lambda_numpy(s, y, m):
    def weight(b, i, j):
        idx = [k for k in range(s.shape[1]) if m[b, k] > 0]
        order = sorted(idx, key=lambda k: (-s[b, k], k))  # stable: ties keep list order
        rank = {k: r for r, k in enumerate(order)}
        ideal = sorted((y[b, k] for k in idx), reverse=True)
        idcg = sum(g / np.log2(r + 2) for r, g in enumerate(ideal))
        d = abs(1 / np.log2(rank[i] + 2) - 1 / np.log2(rank[j] + 2))
        return abs(y[b, i] - y[b, j]) * d / idcg

    return _pairwise_numpy(s, y, m, weight)


@pytest.fixture
def lists():
    rng = np.random.default_rng(1)
    s = rng.normal(size=(8, 10)) * 30
    s[0, 0], s[1, 1], s[2, 0] = 500.0, -800.0, 1e4  # extreme scores
    s[3, 8] = 1e6  # an extreme score on padding must not matter
    y = rng.integers(0, 3, size=(8, 10)).astype(float)
    y[:, 1] = 1.0
    m = (np.arange(10)[None] < np.array([[10], [2], [5], [7], [10], [3], [9], [4]])).astype(float)
    return s, y, m


@pytest.mark.parametrize(("cls", "ref"), [(ListNetLoss, _listnet_numpy), (PairwiseLogisticLoss, _pairwise_numpy),
                                          (LambdaLoss, _lambda_numpy)])
def test_loss_matches_numpy_reference(lists, cls, ref):
    s, y, m = lists
    got = cls()(torch.tensor(s, dtype=torch.float64), torch.tensor(y), torch.tensor(m)).item()
    assert np.isfinite(got)
    assert got == pytest.approx(ref(s, y, m), rel=1e-9)


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**16), n=st.integers(1, 12), b=st.integers(1, 4),
       labels=st.sampled_from(["clicks", "graded", "negative", "none"]))
def test_property_pair_losses_over_relevant_rows_equal_all_pairs(seed, n, b, labels):
    """The pairwise losses form pairs from each list's relevant items only ([B, P, N], not [B, N, N]): the same
    value as the all-pairs reference for any labels (sparse clicks, graded, none; negative labels for the pairwise
    loss: NDCG weights need gains >= 0, which FeatureConfig.label_gain enforces) and padding."""
    rng = np.random.default_rng(seed)
    s = rng.normal(size=(b, n)) * 5
    y = {"clicks": rng.random((b, n)) < 0.1, "graded": rng.integers(0, 4, (b, n)),
         "negative": rng.integers(-2, 2, (b, n)), "none": np.zeros((b, n))}[labels].astype(float)
    m = (np.arange(n)[None] < rng.integers(0, n + 1, (b, 1))).astype(float)
    for cls, ref in ((PairwiseLogisticLoss, _pairwise_numpy), (LambdaLoss, _lambda_numpy)):
        if cls is LambdaLoss and labels == "negative":
            continue
        got = cls()(torch.tensor(s, dtype=torch.float64), torch.tensor(y), torch.tensor(m)).item()
        assert got == pytest.approx(ref(s, y * m, m), rel=1e-9, abs=1e-12), cls.__name__


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_loss_gradients_are_finite_and_zero_on_padding(lists, name):
    s, y, m = lists
    st = torch.tensor(s, dtype=torch.float64, requires_grad=True)
    LOSSES[name]()(st, torch.tensor(y), torch.tensor(m)).backward()
    g = st.grad.numpy()
    assert np.all(np.isfinite(g))
    assert np.all(g[m == 0] == 0.0)
    assert np.abs(g[m > 0]).sum() > 0


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_loss_prefers_the_right_order(name):
    y = torch.tensor([[2.0, 1.0, 0.0, 0.0]])
    m = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    loss = LOSSES[name]()
    assert loss(torch.tensor([[3.0, 2.0, 1.0, 0.0]]), y, m) < loss(torch.tensor([[1.0, 2.0, 3.0, 0.0]]), y, m)


def test_auc_agrees_with_sklearn():
    metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(3)
    S, N = 40, 12
    scores = np.round(rng.normal(size=(S, N)), 1)  # rounded: ties happen
    labels = rng.integers(0, 3, size=(S, N)).astype(float)
    mask = (np.arange(N)[None, :] < rng.integers(2, N + 1, size=S)[:, None]).astype(float)
    got = auc(scores, labels, mask)
    for s in range(S):
        k = mask[s] > 0
        yb = labels[s, k] > 0
        if yb.all() or not yb.any():
            assert np.isnan(got[s])
        else:
            assert got[s] == pytest.approx(metrics.roc_auc_score(yb, scores[s, k]), abs=1e-12)
