"""A model-free baseline reranker: boost what looks like what was clicked, bury what looks like what was skipped.

Numpy only. It has the same ``rerank(items, n_fixed, events, context) -> RerankResult`` interface as
:class:`device_sdk.reranker.RerankService` and uses the same reinsertion (only unseen items move), so every
arm of an A/B differs only in the scores.

Score of an unseen candidate::

    prior(cloud position) + w_click * sum_c decay^age(c) * sim(cand, c) - w_skip * sum_s decay^age(s) * sim(cand, s)

over clicked items ``c`` and *long* skips ``s`` (exposures at least the feature config's ``dwell_threshold_ms`` on
screen without a click: short exposures are noise, see SPEC §1), where ``sim`` mixes same brand, same category,
price-level closeness, nearness in km and the cosine of the ID embeddings -- the matches, distances and cosines
being the feature operators' own (:func:`device_sdk.features.operators.pair_terms`), so "alike" means one thing.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from edge_rerank.device_sdk.contracts import Context, EventKind, FeedbackEvent, PageItem
from edge_rerank.device_sdk.features.config import FeatureConfig
from edge_rerank.device_sdk.features.operators import pair_terms
from edge_rerank.device_sdk.reranker import RerankResult, reinsert


@dataclass(frozen=True)
class HeuristicConfig:
    w_prior: float = 1.0  # weight of the cloud order (prior = -position / window)
    w_click: float = 0.8
    w_skip: float = 0.25
    decay: float = 0.8  # per newer feedback item of the same kind
    brand: float = 1.0  # similarity weights
    category: float = 0.3
    price: float = 0.15  # per price level of closeness (max 4 levels apart)
    near_km: float = 2.0  # items within this distance of each other get up to `near` similarity
    near: float = 0.3
    embedding: float = 0.5


class HeuristicReranker:
    """The model-free baseline (see the module docstring); a drop-in ``Reranker`` for :class:`RerankSession`."""

    name = "heuristic"

    def __init__(self, cfg: HeuristicConfig | None = None, *, features: FeatureConfig | None = None):
        self.cfg = cfg or HeuristicConfig()
        self.features = features or FeatureConfig()  # N_max (the window) and the dwell threshold
        self.calls = 0

    def _sim(self, window: Sequence[PageItem], ev: Sequence[FeedbackEvent]) -> np.ndarray:
        """[n_cand, n_events] similarity: a weighing of the feature operators' pairwise terms."""
        c = self.cfg
        t = pair_terms(window, ev, self.features)
        s = np.zeros(t.km.shape)
        for name, w in (("brand", c.brand), ("category", c.category)):
            if w and name in t.match:
                s += w * t.match[name]
        if c.price:
            a = np.array([it.price_level for it in window], dtype=np.float64)
            b = np.array([e.price_level for e in ev], dtype=np.float64)
            s += c.price * (4.0 - np.abs(a[:, None] - b[None, :])) / 4.0
        s += c.near * np.clip(1.0 - t.km / c.near_km, 0.0, 1.0)
        return s + c.embedding * t.cosine

    def scores(self, window: Sequence[PageItem], events: Sequence[FeedbackEvent]) -> np.ndarray:
        c = self.cfg
        n = len(window)
        prior = -np.arange(n, dtype=np.float64) / max(self.features.n_max, 1)
        clicked = {e.item_id for e in events if e.kind == EventKind.CLICK}
        pos = [e for e in events if e.kind == EventKind.CLICK]
        neg = [e for e in events if e.kind == EventKind.EXPOSURE and e.item_id not in clicked
               and e.dwell_ms >= self.features.dwell_threshold_ms]
        if not pos and not neg:
            return prior
        s = c.w_prior * prior
        for seq, w in ((pos, c.w_click), (neg, -c.w_skip)):
            if seq:
                recency = c.decay ** np.arange(len(seq) - 1, -1, -1, dtype=np.float64)  # newest weighs 1
                s = s + w * (self._sim(window, seq) @ recency)
        return s

    def rerank(self, items: Sequence[PageItem], n_fixed: int, events: Sequence[FeedbackEvent],
               context: Context) -> RerankResult:
        self.calls += 1
        t0 = time.perf_counter()
        n = len(items)
        window = list(items[n_fixed: n_fixed + self.features.n_max])
        if len(window) < 2:
            return RerankResult(order=list(range(n)), applied=False, fallback_reason="nothing_to_rerank")
        try:
            s = self.scores(window, events)
        except (ValueError, TypeError) as exc:  # a malformed event: keep the cloud order, never crash
            return RerankResult(order=list(range(n)), applied=False, fallback_reason=f"features: {exc}")
        if not np.all(np.isfinite(s)):
            return RerankResult(order=list(range(n)), applied=False, fallback_reason="non_finite_scores")
        order = reinsert(n, n_fixed, self.features.n_max, s)
        moved = sum(1 for p, i in enumerate(order) if p != i)
        ms = (time.perf_counter() - t0) * 1e3
        return RerankResult(order=order, applied=True, moved=moved, timings_ms={"total": ms}, scores=s.tolist())
