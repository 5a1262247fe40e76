"""Offline ranking metrics over padded lists. NDCG follows trec_eval's ndcg_cut (linear gain,
log2 discount; the ideal list from the same judged candidates); a test checks it against ranx."""

from __future__ import annotations

import numpy as np


def ndcg_at_k(scores: np.ndarray, labels: np.ndarray, mask: np.ndarray, k: int) -> np.ndarray:
    """Per-list NDCG@k for scores/labels/mask of shape [S, N]. Lists without a positive label get NaN."""
    s = np.where(mask > 0, scores, -np.inf)
    order = np.argsort(-s, axis=1, kind="stable")
    gains = np.take_along_axis(np.where(mask > 0, labels, 0.0), order, axis=1)[:, :k]
    disc = 1.0 / np.log2(np.arange(2, gains.shape[1] + 2))
    dcg = (gains * disc).sum(axis=1)
    ideal = -np.sort(-np.where(mask > 0, labels, 0.0), axis=1)[:, :k]
    idcg = (ideal * disc[: ideal.shape[1]]).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(idcg > 0, dcg / np.where(idcg > 0, idcg, 1.0), np.nan)


def mrr(scores: np.ndarray, labels: np.ndarray, mask: np.ndarray) -> np.ndarray:
    s = np.where(mask > 0, scores, -np.inf)
    order = np.argsort(-s, axis=1, kind="stable")
    rel = np.take_along_axis(np.where(mask > 0, labels, 0.0), order, axis=1) > 0
    first = np.where(rel.any(axis=1), rel.argmax(axis=1), -1)
    return np.where(first >= 0, 1.0 / (first + 1.0), np.nan)


def auc(scores: np.ndarray, labels: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Per-list ROC AUC of clicked (label > 0) vs not clicked items, ties counted half.
    Lists with only positives or only negatives get NaN."""
    real = mask > 0
    pos = real & (labels > 0)
    neg = real & ~(labels > 0)
    d = scores[:, :, None] - scores[:, None, :]
    pairs = pos[:, :, None] & neg[:, None, :]
    wins = ((d > 0) + 0.5 * (d == 0)) * pairs
    n = pairs.sum(axis=(1, 2))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n > 0, wins.sum(axis=(1, 2)) / np.where(n > 0, n, 1), np.nan)


def gain_with_ci(model: np.ndarray, baseline: np.ndarray, groups: list[str], *, n_boot: int = 2000, seed: int = 0,
                 level: float = 0.95) -> dict[str, float]:
    """Mean per-list gain ``model - baseline`` (lists where either is NaN dropped) with a percentile bootstrap CI
    that resamples whole *sessions* (`groups`): lists of one session are not independent, so resampling lists
    would make the interval too narrow. Returns ``{"gain", "lo", "hi", "lists", "sessions"}``."""
    d = np.asarray(model, np.float64) - np.asarray(baseline, np.float64)
    ok = ~np.isnan(d)
    g = np.asarray(groups, dtype=object)[ok]
    d = d[ok]
    if not len(d):
        return {"gain": float("nan"), "lo": float("nan"), "hi": float("nan"), "lists": 0, "sessions": 0}
    _, inv = np.unique(g.astype(str), return_inverse=True)
    sums, counts = np.bincount(inv, weights=d), np.bincount(inv).astype(np.float64)
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, len(sums), size=(n_boot, len(sums)))
    boot = sums[draws].sum(axis=1) / counts[draws].sum(axis=1)
    a = (1.0 - level) / 2
    return {"gain": float(d.mean()), "lo": float(np.quantile(boot, a)), "hi": float(np.quantile(boot, 1 - a)),
            "lists": int(len(d)), "sessions": int(len(sums))}
