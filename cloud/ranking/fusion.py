"""The score-fusion seam (fine ranker heads -> one ranking score), and the fusion policies behind it.

- :class:`SingleHead` (the default): rank by one head (``score``) as it is.
- :class:`TwoHeadFusion`: a click model and an order model fused with one global hyper-parameter ``alpha``
  (SPEC §2, seed 003): ``s = log σ(click) + alpha · a · log σ(order)`` with ``a = 1`` — the baseline.
- :class:`RLFusion` (``cloud.ranking.rl_fusion``): ``a`` per page request from a trained actor (onnxruntime),
  with a kill switch and a fallback to ``a = 1`` on any fault.

A *per-page* policy (``per_page = True``) gives an action per page request; the pipeline then builds a search's
ranking page by page (:func:`page_sequential_order`): page j's items are the best of what earlier pages did not
show, scored with ``a_j``. Actions must be a function of what the request and the cloud's own state say (not of
wall time), so every worker rebuilds earlier pages identically.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np

from edge_rerank.device_sdk.contracts import SearchRequest

CLICK_HEAD, ORDER_HEAD = "click", "order"


@runtime_checkable
class FusionPolicy(Protocol):
    def fuse(self, req: SearchRequest, heads: dict[str, np.ndarray]) -> np.ndarray:
        """One float32 score per candidate from the ranker's heads (``{"score": [N], ...}``)."""
        ...


@dataclass(frozen=True)
class SingleHead:
    """Rank by one head as it is (``score`` by default)."""

    head: str = "score"

    def fuse(self, req: SearchRequest, heads: dict[str, np.ndarray]) -> np.ndarray:
        return heads[self.head]


def _log_sigmoid(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return -np.logaddexp(0.0, -x)


def fuse_heads(click_logit: np.ndarray, order_logit: np.ndarray, alpha: float, a: float = 1.0) -> np.ndarray:
    """``log σ(click) + alpha · a · log σ(order)``: log of P(click) · P(order | click)^(alpha·a); float32."""
    return (_log_sigmoid(click_logit) + alpha * a * _log_sigmoid(order_logit)).astype(np.float32)


def require_heads(heads: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    missing = [h for h in (CLICK_HEAD, ORDER_HEAD) if h not in heads]
    if missing:
        raise KeyError(f"two-head fusion needs the ranker's {missing} heads (a ranker.onnx with click and order "
                       f"outputs: edge-rerank fusion train); this ranker has {sorted(heads)}")
    return heads[CLICK_HEAD], heads[ORDER_HEAD]


@dataclass(frozen=True)
class TwoHeadFusion:
    """The baseline: click and order heads fused with the global ``alpha`` (``a = 1`` for every request)."""

    alpha: float

    def fuse(self, req: SearchRequest, heads: dict[str, np.ndarray]) -> np.ndarray:
        return self.fuse_with(heads, 1.0)

    def fuse_with(self, heads: dict[str, np.ndarray], a: float) -> np.ndarray:
        click, order = require_heads(heads)
        return fuse_heads(click, order, self.alpha, a)


def page_sequential_order(scores_per_page: list[np.ndarray], ids: np.ndarray, page_size: int,
                          max_results: int) -> np.ndarray:
    """Indices into the candidates for a ranking built page by page: page j takes the `page_size` best (by
    ``scores_per_page[j]``, ties by id) of the candidates earlier pages did not take; the rest follow in the order
    of the last page's scores. Cut to `max_results`."""
    n = len(ids)
    taken = np.zeros(n, dtype=bool)
    out: list[np.ndarray] = []
    for j, s in enumerate(scores_per_page):
        rest = np.flatnonzero(~taken)
        order = rest[np.lexsort((ids[rest], -s[rest]))]
        if j == len(scores_per_page) - 1:
            out.append(order)
        else:
            out.append(order[:page_size])
            taken[order[:page_size]] = True
    return np.concatenate(out)[:max_results] if out else np.zeros(0, dtype=np.int64)
