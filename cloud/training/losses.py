"""Ranking losses over padded lists: ``loss(scores, labels, mask)`` with [B, N] tensors, mask in {0, 1}.

One class each; ``tests/test_losses.py`` checks every one against a plain numpy reference, padding and extreme
scores included.
"""

from __future__ import annotations

import torch
from torch import nn

PAD = -1e9


def _relevant_rows(y: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """[B, P] indices of each list's P most relevant real items, P = the most items above its list's least
    relevant label that any list has.

    Every pair a pairwise loss counts has a more relevant item i, above its list's minimum, so pairs are formed as
    [B, P, N] (those items x every item) instead of [B, N, N]: the same sum, and with a few clicks in a list of
    300 candidates about 100x less work and memory."""
    if not y.numel():
        return torch.zeros((y.shape[0], 0), dtype=torch.long)
    big = torch.finfo(y.dtype).max
    lowest = torch.where(mask > 0, y, torch.full_like(y, big)).min(dim=1, keepdim=True).values
    p = max(int(((y > lowest) & (mask > 0)).sum(dim=1).max()), 1)
    return torch.topk(torch.where(mask > 0, y, torch.full_like(y, -big)), min(p, y.shape[1]), dim=1).indices


def _pairs(y: torch.Tensor, mask: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """[B, P, N] float: 1 where item rows[p] is strictly more relevant than item j and both are real items
    (`y` already masked)."""
    yi, mi = y.gather(1, rows), mask.gather(1, rows)
    return (yi.unsqueeze(2) > y.unsqueeze(1)).float() * mi.unsqueeze(2) * mask.unsqueeze(1)


def _pair_logistic(scores: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """[B, P, N] log(1 + exp(-(s_rows[p] - s_j))), stable for any score magnitude."""
    return nn.functional.softplus(-(scores.gather(1, rows).unsqueeze(2) - scores.unsqueeze(1)))


class ListNetLoss(nn.Module):
    """Cross entropy between the label distribution (labels / sum) and softmax(scores), padding excluded."""

    def forward(self, scores: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        # padding is replaced (not offset): even a huge score on a padded slot gets no probability mass
        s = torch.where(mask > 0, scores, torch.full_like(scores, PAD))
        target = labels * mask
        target = target / target.sum(dim=1, keepdim=True).clamp_min(1e-9)
        return -(target * torch.log_softmax(s, dim=1)).sum(dim=1).mean()


class PairwiseLogisticLoss(nn.Module):
    """RankNet: mean logistic loss over all pairs (i more relevant than j) within a list."""

    def forward(self, scores: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        y = labels * mask
        rows = _relevant_rows(y, mask)
        valid = _pairs(y, mask, rows)
        return (valid * _pair_logistic(scores, rows)).sum() / valid.sum().clamp_min(1.0)


class LambdaLoss(nn.Module):
    """Pairwise logistic loss on every pair with different labels, weighted by |ΔNDCG| of swapping the
    pair at the current ranking (LambdaRank's weighting), so the top of the list matters most. Gains are
    linear in the label (as in ``ranking_metrics.ndcg_at_k``); padding always ranks last."""

    def forward(self, scores: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        y = labels * mask
        with torch.no_grad():  # current 0-based ranks; padding always ranks last, whatever its score
            s = torch.where(mask > 0, scores, torch.full_like(scores, float("-inf")))
            ranks = torch.argsort(torch.argsort(-s, dim=1, stable=True), dim=1).to(scores.dtype)
            disc = 1.0 / torch.log2(ranks + 2.0)
            ideal = torch.sort(y, dim=1, descending=True).values
            pos = torch.arange(y.shape[1], device=y.device, dtype=scores.dtype)
            idcg = (ideal / torch.log2(pos + 2.0)).sum(1, keepdim=True).clamp_min(1e-9)
            rows = _relevant_rows(y, mask)
            gain_diff = (y.gather(1, rows).unsqueeze(2) - y.unsqueeze(1)).abs()
            delta = gain_diff * (disc.gather(1, rows).unsqueeze(2) - disc.unsqueeze(1)).abs() / idcg.unsqueeze(2)
            valid = _pairs(y, mask, rows)
        return (delta * valid * _pair_logistic(scores, rows)).sum() / valid.sum().clamp_min(1.0)


LOSSES: dict[str, type[nn.Module]] = {"listnet": ListNetLoss, "lambda": LambdaLoss, "pairwise": PairwiseLogisticLoss}


def list_distill_loss(student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor,
                      temperature: float = 1.0) -> torch.Tensor:
    """temperature² · mean over lists of KL(softmax(teacher / T) || softmax(student / T)), each softmax over the
    list's real candidates only (padding is replaced, not offset, as in ``ListNetLoss``). Zero iff the two
    distributions agree on every list — i.e. also when the student equals the teacher plus a per-list constant,
    which ranks identically. Lists with no real candidate are skipped."""
    real = mask > 0
    s = torch.where(real, student / temperature, torch.full_like(student, PAD))
    t = torch.where(real, teacher / temperature, torch.full_like(teacher, PAD))
    log_p_t, log_p_s = torch.log_softmax(t, dim=1), torch.log_softmax(s, dim=1)
    kl = torch.where(real, log_p_t.exp() * (log_p_t - log_p_s), torch.zeros_like(s)).sum(dim=1)
    has = real.any(dim=1).to(kl.dtype)
    return temperature ** 2 * (kl * has).sum() / has.sum().clamp_min(1.0)
