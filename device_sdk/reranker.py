"""The rerank service: feedback + page -> features -> backend -> reinsertion of unseen items only.

It never raises into the app: any failure (no model, bad feature, backend error, NaN, wrong shape,
blown latency budget) keeps the cloud order and records why.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from edge_rerank.device_sdk.contracts import Context, FeedbackEvent, PageItem
from edge_rerank.device_sdk.features.operators import FeatureBuilder
from edge_rerank.device_sdk.model_manager import LoadedModel

log = logging.getLogger(__name__)


@dataclass
class RerankResult:
    order: list[int]  # new display order as indexes into the input list
    applied: bool
    moved: int = 0  # how many positions changed
    fallback_reason: str | None = None
    timings_ms: dict[str, float] = field(default_factory=dict)  # features / inference / reinsertion / total


def reinsert(n_items: int, n_fixed: int, window: int, scores: np.ndarray) -> list[int]:
    """New order: positions < n_fixed (already seen) stay; the next `window` unseen items are sorted by
    score (stable, so ties keep the cloud order); anything after the window keeps its place."""
    n_fixed = max(0, min(n_fixed, n_items))
    end = min(n_items, n_fixed + window)
    ranked = np.argsort(-np.asarray(scores[: end - n_fixed], dtype=np.float64), kind="stable")
    return list(range(n_fixed)) + [n_fixed + int(i) for i in ranked] + list(range(end, n_items))


class RerankService:
    def __init__(self, model: LoadedModel | None, *, latency_budget_ms: float = 50.0,
                 clock: Callable[[], float] = time.perf_counter):
        self.model = model
        self.latency_budget_ms = latency_budget_ms
        self._clock = clock
        self._builder = FeatureBuilder(model.bundle.feature_config) if model else None
        self.fallbacks: Counter[str] = Counter()
        self.calls = 0

    def _fallback(self, n: int, reason: str, timings: dict[str, float]) -> RerankResult:
        self.fallbacks[reason.split(":")[0]] += 1
        log.debug("rerank fell back to cloud order: %s", reason)
        return RerankResult(order=list(range(n)), applied=False, fallback_reason=reason, timings_ms=timings)

    def rerank(self, items: Sequence[PageItem], n_fixed: int, events: Sequence[FeedbackEvent],
               context: Context) -> RerankResult:
        """Rerank the unseen items `items[n_fixed:]` (up to n_max of them) given the session's feedback."""
        self.calls += 1
        n = len(items)
        t0 = self._clock()
        timings: dict[str, float] = {}
        if self.model is None or self._builder is None:
            return self._fallback(n, "no_model", timings)
        cfg = self._builder.cfg
        window = items[n_fixed: n_fixed + cfg.n_max]
        if len(window) < 2:
            return self._fallback(n, "nothing_to_rerank", timings)
        try:
            feats = self._builder.build(window, events, context)
        except Exception as exc:  # noqa: BLE001 - the app must never crash on a bad feature
            return self._fallback(n, f"features: {exc}", timings)
        t1 = self._clock()
        timings["features"] = (t1 - t0) * 1e3
        try:
            out = np.asarray(self.model.backend.run({k: v[None] for k, v in feats.items()}))
        except Exception as exc:  # noqa: BLE001
            return self._fallback(n, f"inference: {exc}", timings)
        t2 = self._clock()
        timings["inference"] = (t2 - t1) * 1e3
        if out.shape != (1, cfg.n_max):
            return self._fallback(n, f"bad_output_shape: {out.shape}", timings)
        scores = out[0, : len(window)]
        if not np.all(np.isfinite(scores)):
            return self._fallback(n, "non_finite_scores", timings)
        order = reinsert(n, n_fixed, cfg.n_max, scores)
        t3 = self._clock()
        timings["reinsertion"] = (t3 - t2) * 1e3
        timings["total"] = (t3 - t0) * 1e3
        if timings["total"] > self.latency_budget_ms:
            return self._fallback(n, f"latency_budget: {timings['total']:.2f} ms > {self.latency_budget_ms} ms",
                                  timings)
        moved = sum(1 for pos, idx in enumerate(order) if pos != idx)
        return RerankResult(order=order, applied=True, moved=moved, timings_ms=timings)
