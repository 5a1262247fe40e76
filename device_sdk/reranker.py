"""The rerank service: feedback + page -> features -> backend -> reinsertion of unseen items only.

It never raises into the app: any failure (no model, bad arguments, bad feature, backend error, NaN, wrong shape)
keeps the cloud order and records why (``device_sdk.faults``: each reason kind is logged once at WARNING;
``strict=True`` raises :class:`~edge_rerank.device_sdk.faults.DeviceFault` instead). The latency budget is the
session's (``device_sdk.session``), which knows whether time is measured here or modelled.

The service reads its model from a :class:`~edge_rerank.device_sdk.model_manager.ModelManager` at every call
(one reference, taken once per call), so a model swap reaches the next rerank and never a half-finished one.
"""

from __future__ import annotations

import logging
import math
import operator
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from itertools import repeat
from typing import Protocol

import numpy as np

from edge_rerank.device_sdk.contracts import Context, FeedbackEvent, PageItem
from edge_rerank.device_sdk.faults import FaultLog
from edge_rerank.device_sdk.features.config import FeatureConfig
from edge_rerank.device_sdk.features.operators import FeatureBuilder
from edge_rerank.device_sdk.feedback_columns import EventColumns
from edge_rerank.device_sdk.model_manager import LoadedModel, ModelManager

log = logging.getLogger(__name__)
ITEM_CACHE = 4096  # items whose feature columns the service keeps (a few sessions' pages; features.item_table)


@dataclass
class RerankResult:
    order: list[int]  # new display order as indexes into the input list
    applied: bool
    moved: int = 0  # how many positions changed
    fallback_reason: str | None = None
    timings_ms: dict[str, float] = field(default_factory=dict)  # features / inference / reinsertion / total
    model_version: str | None = None  # the model that scored (None: none did)
    scores: list[float] | None = None  # per window item (items[n_fixed:n_fixed + len(scores)], input order), if scored


class Reranker(Protocol):
    """What the session drives: the model service, the heuristic, or an experiment's own scorer. It may also have
    ``prepare(items) -> float`` (milliseconds), which the session calls with each arrived page's new items (per-item
    work done before a user action asks for a rerank: ``RerankService.prepare``)."""

    @property
    def features(self) -> FeatureConfig | None:
        """The feature config whose N_max / dwell threshold the session follows (None: the defaults)."""
        ...

    def rerank(self, items: Sequence[PageItem], n_fixed: int, events: Sequence[FeedbackEvent],
               context: Context) -> RerankResult: ...


def reinsert(n_items: int, n_fixed: int, window: int, scores: np.ndarray) -> list[int]:
    """New order: positions < n_fixed (already seen) stay; the next `window` unseen items are sorted by
    score (stable, so ties keep the cloud order); anything after the window keeps its place."""
    return _reinsert(n_items, n_fixed, window, scores)[0]


def _reinsert(n_items: int, n_fixed: int, window: int, scores: np.ndarray) -> tuple[list[int], int]:
    """``reinsert``'s order and how many positions changed (only the window's can)."""
    n_fixed = int(max(0, min(n_fixed, n_items)))
    end = min(n_items, n_fixed + window)
    ranked = np.argsort(-np.asarray(scores[: end - n_fixed], dtype=np.float64), kind="stable").tolist()
    moved = sum(map(operator.ne, ranked, range(len(ranked))))  # (a window is small: Python's loop beats numpy's calls)
    order = list(range(n_fixed))
    order += map(n_fixed.__add__, ranked)
    order += range(end, n_items)
    return order, moved


def check_rerank_args(items: object, n_fixed: object, events: object, context: object) -> str | None:
    """Why these arguments cannot be reranked (a reason for the fallback), or None."""
    if not isinstance(items, Sequence) or isinstance(items, str | bytes):
        return f"bad_arguments: items must be a sequence of PageItem, got {type(items).__name__}"
    if isinstance(n_fixed, bool) or not isinstance(n_fixed, int | np.integer):
        return f"bad_arguments: n_fixed must be an int, got {type(n_fixed).__name__}"
    if not 0 <= int(n_fixed) <= len(items):
        return f"bad_arguments: n_fixed={int(n_fixed)} is outside [0, {len(items)}]"
    if not all(map(isinstance, items, repeat(PageItem))):
        return "bad_arguments: items must all be PageItem"
    if not isinstance(events, EventColumns) and (  # a store's snapshot holds FeedbackEvents only
            not isinstance(events, Sequence) or not all(map(isinstance, events, repeat(FeedbackEvent)))):
        return "bad_arguments: events must be a sequence of FeedbackEvent"
    if not isinstance(context, Context):
        return f"bad_arguments: context must be a Context, got {type(context).__name__}"
    return None


class RerankService:
    """``model``: a loaded model (fixed), a :class:`ModelManager` (followed: the model serving at each call), or
    None (every call keeps the cloud order, reason ``no_model``)."""

    def __init__(self, model: LoadedModel | ModelManager | None, *, strict: bool = False,
                 clock: Callable[[], float] = time.perf_counter, item_cache: int = ITEM_CACHE):
        self._source = model
        self._clock = clock
        self.item_cache = int(item_cache)  # items whose feature rows the builder keeps (``features.item_table``)
        self._builder: FeatureBuilder | None = None
        self._builder_for: LoadedModel | None = None
        self.faults = FaultLog(log, strict=strict)
        self.calls = 0

    @property
    def model(self) -> LoadedModel | None:
        """The model the next call will use."""
        src = self._source
        return src.current if isinstance(src, ModelManager) else src

    @property
    def features(self) -> FeatureConfig | None:
        m = self.model
        return m.bundle.feature_config if m is not None else None

    @property
    def fallbacks(self) -> Counter[str]:
        return self.faults.counts

    def _fallback(self, n: int, reason: str, timings: dict[str, float]) -> RerankResult:
        self.faults.record(reason)
        return RerankResult(order=list(range(n)), applied=False, fallback_reason=reason, timings_ms=timings)

    def _builder_of(self, model: LoadedModel) -> FeatureBuilder:
        if self._builder_for is not model:  # a swapped-in model brings its own feature config
            self._builder = FeatureBuilder(model.bundle.feature_config, item_cache=self.item_cache)
            self._builder_for = model
        assert self._builder is not None
        return self._builder

    def prepare(self, items: Sequence[PageItem]) -> float:
        """A page arrived: compute the per-item feature rows of its `items` now, off the interaction path, so that
        the rerank a user action triggers next pays only for the new feedback (``RerankSession.add_page`` calls
        this; a rerank computes the rows of items it has not seen itself, with the same values). Never raises: an
        item the rows cannot hold is left to the rerank's own checks and fallback. Returns the milliseconds it took
        (0.0 when there is nothing to prepare: no model, or not a list of PageItem)."""
        model = self.model
        if model is None or not isinstance(items, Sequence) or isinstance(items, str | bytes) or not all(
                map(isinstance, items, repeat(PageItem))):
            return 0.0
        t0 = self._clock()
        try:
            self._builder_of(model).prepare_items(items)
        except Exception:  # noqa: BLE001 - the rerank meets the same item and falls back with its reason
            pass
        return (self._clock() - t0) * 1e3

    def rerank(self, items: Sequence[PageItem], n_fixed: int, events: Sequence[FeedbackEvent],
               context: Context) -> RerankResult:
        """Rerank the unseen items `items[n_fixed:]` (up to n_max of them) given the session's feedback."""
        self.calls += 1
        n = len(items) if isinstance(items, Sequence) and not isinstance(items, str | bytes) else 0
        t0 = self._clock()
        timings: dict[str, float] = {}
        model = self.model  # one reference for the whole call: a concurrent swap cannot mix two models
        got = self._window(items, n, n_fixed, events, context, model, timings)
        if isinstance(got, RerankResult):
            return got
        builder, window = got
        try:
            feats = builder.build(window, events, context)
        except Exception as exc:  # noqa: BLE001 - the app must never crash on a bad feature
            return self._fallback(n, f"features: {exc}", timings)
        t1 = self._clock()
        timings["features"] = (t1 - t0) * 1e3
        try:
            out = np.asarray(model.backend.run({k: v[None] for k, v in feats.items()}))  # type: ignore[union-attr]
        except Exception as exc:  # noqa: BLE001
            return self._fallback(n, f"inference: {exc}", timings)
        t2 = self._clock()
        timings["inference"] = (t2 - t1) * 1e3
        return self._apply(out, n, n_fixed, len(window), builder.cfg.n_max, model, timings, t0, t2)  # type: ignore[arg-type]

    def _window(self, items, n: int, n_fixed, events, context, model: LoadedModel | None,
                timings: dict[str, float]) -> RerankResult | tuple[FeatureBuilder, Sequence[PageItem]]:
        """A call's checks and its items' rows: the fallback, or the builder and the window to score."""
        bad = check_rerank_args(items, n_fixed, events, context)
        if bad is not None:
            return self._fallback(n, bad, timings)
        if model is None:
            return self._fallback(n, "no_model", timings)
        try:
            builder = self._builder_of(model)
        except Exception as exc:  # noqa: BLE001 - a model whose config cannot build features falls back
            return self._fallback(n, f"features: {exc}", timings)
        window = items[n_fixed: n_fixed + builder.cfg.n_max]
        if len(window) < 2:
            return self._fallback(n, "nothing_to_rerank", timings)
        try:
            builder.prepare_items(items[n_fixed:])  # the rest of the list too: later windows find their rows
        except Exception as exc:  # noqa: BLE001 - the app must never crash on a bad feature
            return self._fallback(n, f"features: {exc}", timings)
        return builder, window

    def _apply(self, out: np.ndarray, n: int, n_fixed: int, n_window: int, n_max: int, model: LoadedModel,
               timings: dict[str, float], t0: float | None, t2: float) -> RerankResult:
        """Scores [1, n_max] -> checks, reinsertion and the result (`t0`: when the call began; None in a batch)."""
        if out.shape != (1, n_max):
            return self._fallback(n, f"bad_output_shape: {out.shape}", timings)
        scores = out[0, :n_window]
        if not (math.isfinite(float(np.add.reduce(scores, dtype=np.float64))) if scores.dtype.itemsize <= 4
                else bool(np.isfinite(scores).all())):  # a float64 sum of float32 values is finite iff every one is
            return self._fallback(n, "non_finite_scores", timings)
        order, moved = _reinsert(n, n_fixed, n_max, scores)
        t3 = self._clock()
        timings["reinsertion"] = (t3 - t2) * 1e3
        if t0 is not None:
            timings["total"] = (t3 - t0) * 1e3
        else:  # (a batch: this request's shares of the batch's features and inference, and its own reinsertion)
            timings["total"] = timings["features"] + timings["inference"] + timings["reinsertion"]
        return RerankResult(order=order, applied=True, moved=moved, timings_ms=timings, model_version=model.version,
                            scores=scores.tolist())

    def rerank_many(self, requests: Sequence[tuple[Sequence[PageItem], int, Sequence[FeedbackEvent], Context]]
                    ) -> list[RerankResult]:
        """Many reranks at once: ``requests`` are ``(items, n_fixed, events, context)``, the arguments of
        :meth:`rerank` (e.g. one per session of a simulator running sessions in lock-step). Returns, per request,
        what :meth:`rerank` returns for it (same order, moved count and fallback reason; the scores are the
        backend's for that list in a batch), with the features of all of them built by one
        ``FeatureBuilder.build_many`` and the lists scored by one backend call (a backend with a fixed batch of 1
        runs them row by row; if the batched call fails, each list is scored alone, so a bad list fails only its own
        request). The model is read once for the whole batch. Timings: the batch's feature and inference time split
        evenly over the requests that reached them; each request's ``total`` is its shares plus its own
        reinsertion. ``strict=True``: the first fault raises, as in :meth:`rerank`."""
        B = len(requests)
        results: list[RerankResult | None] = [None] * B
        model = self.model  # one reference for the whole batch
        t0 = self._clock()
        jobs: list[tuple[int, int, int, Sequence[PageItem], dict[str, float]]] = []
        build_reqs = []
        builder = None
        for k, (items, n_fixed, events, context) in enumerate(requests):
            self.calls += 1
            n = len(items) if isinstance(items, Sequence) and not isinstance(items, str | bytes) else 0
            timings: dict[str, float] = {}
            got = self._window(items, n, n_fixed, events, context, model, timings)
            if isinstance(got, RerankResult):
                results[k] = got
                continue
            builder, window = got
            jobs.append((k, n, int(n_fixed), window, timings))
            build_reqs.append((window, events, context))
        if jobs:
            assert builder is not None and model is not None
            try:
                feats, errors = builder.build_many(build_reqs)
            except Exception as exc:  # noqa: BLE001 - the batch itself failed: every request falls back, none crashes
                feats, errors = {}, [exc] * len(jobs)
            t1 = self._clock()
            per = (t1 - t0) * 1e3 / len(jobs)
            ok = []
            for j, err in enumerate(errors):
                jobs[j][4]["features"] = per
                if err is None:
                    ok.append(j)
                else:
                    results[jobs[j][0]] = self._fallback(jobs[j][1], f"features: {err}", jobs[j][4])
            if ok:
                x = feats if len(ok) == len(jobs) else {name: v[ok] for name, v in feats.items()}
                outs = self._score_many(model, x, len(ok))
                t2 = self._clock()
                per = (t2 - t1) * 1e3 / len(ok)
                n_max = builder.cfg.n_max
                for j, (out, err) in zip(ok, outs, strict=True):
                    k, n, n_fixed, window, timings = jobs[j]
                    if err is not None:
                        results[k] = self._fallback(n, f"inference: {err}", timings)
                        continue
                    timings["inference"] = per
                    results[k] = self._apply(out, n, n_fixed, len(window), n_max, model, timings, None,
                                             self._clock())
        assert all(r is not None for r in results)
        return results  # type: ignore[return-value]

    @staticmethod
    def _score_many(model: LoadedModel, x: dict[str, np.ndarray], m: int
                    ) -> list[tuple[np.ndarray, Exception | None]]:
        """Each of `m` stacked lists' scores as [1, n_max] (or the error scoring it alone raised): one backend call,
        or, if that fails or returns another batch size, one call per list."""
        if m > 1:
            try:
                y = np.asarray(model.backend.run(x))
                if y.ndim >= 1 and y.shape[0] == m:
                    return [(y[b: b + 1], None) for b in range(m)]
            except Exception:  # noqa: BLE001 - fall through: score each list alone
                pass
        out: list[tuple[np.ndarray, Exception | None]] = []
        for b in range(m):
            try:
                out.append((np.asarray(model.backend.run({k: v[b: b + 1] for k, v in x.items()})), None))
            except Exception as exc:  # noqa: BLE001 - that request's fallback
                out.append((np.zeros(0), exc))
        return out
