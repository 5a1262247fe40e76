"""List-wise losses over padded lists (scores/labels/mask [B, N])."""

from __future__ import annotations

import torch
from torch import nn

NEG = -1e4


class ListNetLoss(nn.Module):
    """Cross entropy between the label distribution (labels / sum) and softmax(scores), padding excluded."""

    def forward(self, scores: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        s = scores + (1.0 - mask) * NEG
        target = labels * mask
        target = target / target.sum(dim=1, keepdim=True).clamp_min(1e-9)
        return -(target * torch.log_softmax(s, dim=1)).sum(dim=1).mean()


class LambdaLoss(nn.Module):
    """Pairwise logistic loss on every pair with different labels, weighted by |ΔNDCG| of swapping the
    pair at the current ranking (LambdaRank's weighting), so the top of the list matters most."""

    def forward(self, scores: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        y = labels * mask
        with torch.no_grad():  # current 0-based ranks; padding always ranks last, whatever its score
            s = torch.where(mask > 0, scores, torch.full_like(scores, float("-inf")))
            ranks = torch.argsort(torch.argsort(-s, dim=1, stable=True), dim=1).float()
        disc = 1.0 / torch.log2(ranks + 2.0)
        ideal = torch.sort(y, dim=1, descending=True).values
        idcg = (ideal / torch.log2(torch.arange(y.shape[1], device=y.device).float() + 2.0)).sum(1, keepdim=True)
        gain_diff = y.unsqueeze(2) - y.unsqueeze(1)  # [B,N,N]
        delta = (gain_diff.abs() * (disc.unsqueeze(2) - disc.unsqueeze(1)).abs()) / idcg.clamp_min(1e-9).unsqueeze(2)
        valid = (gain_diff > 0).float() * mask.unsqueeze(2) * mask.unsqueeze(1)
        pair = nn.functional.softplus(-(scores.unsqueeze(2) - scores.unsqueeze(1)))
        return (delta.detach() * valid * pair).sum() / valid.sum().clamp_min(1.0)


LOSSES = {"listnet": ListNetLoss, "lambda": LambdaLoss}
