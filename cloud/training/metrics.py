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
