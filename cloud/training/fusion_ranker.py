"""The two-head fine ranker for score fusion (SPEC §2, seed 003): a click model P(click | exposed) and an order
model P(order | click) on the cloud's features, trained from impression logs, fused with one global
hyper-parameter ``alpha`` chosen on validation sessions (the one that maximises click AUC + order AUC of the fused
score, as the article chose its weight from the two tasks' AUCs).

Exported to ONNX under the server's fine-ranker contract (``cloud.ranking.fine``): input ``features`` [N, F],
outputs ``score`` (the fused score at a = 1, so a server without a fusion policy ranks by the baseline fusion),
``hidden`` [N, D] (sent to the device), and the extra heads ``click`` and ``order`` (logits) that the fusion
policies read.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from edge_rerank.cloud.training.cloud_ranker import CloudFeaturizer
from edge_rerank.cloud.training.data import _bucket
from edge_rerank.device_sdk.contracts import ImpressionRow

ALPHA_GRID = (0.5, 0.75, 1.0, 1.5, 2.0, 3.0)


@dataclass
class FusionSamples:
    """Exposed candidates: features [n, F], clicked [n], ordered [n], session ids [n]."""

    features: np.ndarray
    clicked: np.ndarray
    ordered: np.ndarray
    sessions: np.ndarray

    def subset(self, m: np.ndarray) -> FusionSamples:
        return FusionSamples(self.features[m], self.clicked[m], self.ordered[m], self.sessions[m])


def fusion_samples(rows: Sequence[ImpressionRow], featurizer: CloudFeaturizer) -> FusionSamples:
    feats, clicked, ordered, sess = [], [], [], []
    for r in rows:
        cands = [c for c in r.candidates if c.exposed]
        if not cands:
            continue
        feats.append(featurizer(r.user_id, r.context, [c.item.item_id for c in cands]))
        clicked.extend(c.clicked for c in cands)
        ordered.extend(c.ordered for c in cands)
        sess.extend([r.session_id] * len(cands))
    if not feats:
        raise ValueError("the logs hold no exposed candidate: nothing to train the click / order models on")
    return FusionSamples(np.concatenate(feats).astype(np.float32), np.array(clicked, np.float32),
                         np.array(ordered, np.float32), np.array(sess))


class TwoHeadRanker(nn.Module):
    """features [N, F] -> (score, hidden [N, D], click logit, order logit); score = fused at a = 1."""

    def __init__(self, n_features: int, hidden: int = 32, dense_dim: int = 16, alpha: float = 1.0):
        super().__init__()
        self.n_features = n_features
        self.trunk = nn.Sequential(nn.Linear(n_features, hidden), nn.ReLU(), nn.Linear(hidden, dense_dim), nn.Tanh())
        self.click = nn.Sequential(nn.Linear(dense_dim + n_features, 16), nn.ReLU(), nn.Linear(16, 1))
        self.order = nn.Sequential(nn.Linear(dense_dim + n_features, 16), nn.ReLU(), nn.Linear(16, 1))
        self.register_buffer("alpha", torch.tensor(float(alpha)))

    def forward(self, features: torch.Tensor):
        h = self.trunk(features)
        z = torch.cat([h, features], dim=-1)
        c, o = self.click(z).squeeze(-1), self.order(z).squeeze(-1)
        score = nn.functional.logsigmoid(c) + self.alpha * nn.functional.logsigmoid(o)
        return score, h, c, o


def pooled_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """ROC AUC over all items (ties count half)."""
    pos, neg = labels > 0.5, labels <= 0.5
    n_pos, n_neg = int(pos.sum()), int(neg.sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores))
    s = scores[order]
    i = 0
    while i < len(s):  # average ranks of ties
        j = i
        while j + 1 < len(s) and s[j + 1] == s[i]:
            j += 1
        ranks[order[i: j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def train_two_head(samples: FusionSamples, *, epochs: int = 8, seed: int = 0, valid_share: float = 0.2,
                   batch_size: int = 1024, lr: float = 5e-3) -> tuple[TwoHeadRanker, dict]:
    """BCE on clicks (all exposed) and orders (clicked only); sessions split train / validation by a seeded hash;
    alpha picked on validation from ALPHA_GRID. One torch thread (small batches)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _train_two_head(samples, epochs, seed, valid_share, batch_size, lr)
    finally:
        torch.set_num_threads(threads)


def _train_two_head(samples: FusionSamples, epochs: int, seed: int, valid_share: float, batch_size: int,
                    lr: float) -> tuple[TwoHeadRanker, dict]:
    torch.manual_seed(seed)
    valid = np.array([_bucket(str(s), seed) < int(valid_share * 10_000) for s in samples.sessions])
    tr, va = samples.subset(~valid), samples.subset(valid)
    model = TwoHeadRanker(samples.features.shape[1])
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-5)
    bce = nn.functional.binary_cross_entropy_with_logits
    x, yc, yo = (torch.from_numpy(a) for a in (tr.features, tr.clicked, tr.ordered))
    rng = np.random.default_rng(seed)
    history = []
    for _ in range(epochs):
        perm = rng.permutation(len(yc))
        total = 0.0
        for k in range(0, len(perm), batch_size):
            idx = torch.from_numpy(perm[k: k + batch_size])
            _, _, c, o = model(x[idx])
            m = yc[idx] > 0.5
            loss = bce(c, yc[idx]) + (bce(o[m], yo[idx][m]) if bool(m.any()) else 0.0 * o.sum())
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(idx)
        history.append(total / len(perm))
    model.eval()
    with torch.no_grad():
        _, _, c, o = model(torch.from_numpy(va.features))
    c, o = c.numpy(), o.numpy()
    clicked = va.clicked > 0.5
    table = {}
    for alpha in ALPHA_GRID:
        s = -np.logaddexp(0, -c) + alpha * -np.logaddexp(0, -o)
        table[alpha] = (pooled_auc(s, va.clicked), pooled_auc(s, va.ordered))
    best = max(ALPHA_GRID, key=lambda a: sum(table[a]))
    model.alpha.fill_(best)
    summary = {"alpha": best, "click_auc": pooled_auc(c, va.clicked),
               "order_auc_given_click": pooled_auc(o[clicked], va.ordered[clicked]),
               "alpha_grid": {str(a): list(v) for a, v in table.items()}, "train_items": int(len(yc)),
               "valid_items": int(len(va.clicked)), "loss_history": history}
    return model, summary


def export_two_head_onnx(model: TwoHeadRanker, path: str | Path) -> Path:
    """``features`` [N, F] -> ``score`` [N], ``hidden`` [N, D], ``click`` [N], ``order`` [N]; N dynamic."""
    import onnx

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model.eval()
    names = ["score", "hidden", "click", "order"]
    with warnings.catch_warnings():  # the TorchScript exporter: ~6x faster than dynamo for this small MLP
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(model, (torch.zeros(8, model.n_features),), str(path), input_names=["features"],
                          output_names=names, dynamic_axes={"features": {0: "n"}, **{k: {0: "n"} for k in names}},
                          dynamo=False, opset_version=18)
    onnx.checker.check_model(str(path))
    return path
