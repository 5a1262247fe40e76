"""The app-facing session: tell it what the cloud sent, what was shown and what the user did; it decides when to
rerank, reranks only what the user has not seen yet, and keeps the current order.

One :class:`RerankSession` per search (query view). It composes the feedback store, the trigger policy, the
rerank service (which follows the model manager's swaps) and, optionally, the impression logger::

    session = RerankSession("s-1", Context(lat=..., lon=...), reranker=RerankService(manager))
    session.add_page(page)                 # a page of results arrived (cloud order)
    session.reveal(4)                      # positions 0..3 are on screen: they never move again
    session.record(FeedbackEvent.for_item(item, EventKind.CLICK, ts, page.request_id, 2))
    update = session.record(...DETAIL_RETURN...)   # the user came back: a trigger fires, unseen items reorder
    session.items                          # the order to draw from position session.n_revealed on

Every call returns the :class:`Rerank` a trigger started (or None); with ``timing="host"`` (the app) it is
finished at once: its latency is measured here, checked against the budget, and its order applied to what is
still unseen. With ``timing="external"`` (the simulator, which models the phone's latency) the caller reports
the modelled cost and when the result is ready with :meth:`RerankSession.finish`, and :meth:`poll` applies it
then — a result that arrives after the user has revealed some of the positions it would move is applied to the
still-unseen rest only (``late_policy="remaining"``) or dropped (``"drop"``).

The session never raises into the app (``strict=True`` does, for developers): bad events and arguments are
refused with a reason; a failing model keeps the cloud order. N_max and the dwell threshold come from the
model's feature config (``FeatureConfig``), the latency budget from ``TriggerConfig.budget``.
"""

from __future__ import annotations

import logging
import math
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from edge_rerank.device_sdk.contracts import (
    Context,
    EventKind,
    FeedbackEvent,
    PageItem,
    SearchPage,
)
from edge_rerank.device_sdk.faults import FaultLog, reason_kind
from edge_rerank.device_sdk.features.config import FeatureConfig
from edge_rerank.device_sdk.feedback_store import FeedbackStore
from edge_rerank.device_sdk.impression_log import SessionLogger
from edge_rerank.device_sdk.privacy import PrivacyConfig, outgoing_log_rows
from edge_rerank.device_sdk.reranker import Reranker, RerankResult, reinsert
from edge_rerank.device_sdk.triggers import TriggerConfig, TriggerPolicy

log = logging.getLogger(__name__)

LATE_POLICIES = ("remaining", "drop")
TIMINGS = ("host", "external")
_DEFAULT_FEATURES = FeatureConfig()


@dataclass
class Rerank:
    """One rerank a trigger started, from request to outcome.

    ``status``: ``computed`` (waiting for :meth:`RerankSession.finish`), ``pending`` (finished, waiting for its
    ready time), ``applied``, ``late`` (applied to the still-unseen rest only), ``dropped`` (nothing it would move
    was still unseen, or the late policy dropped it), ``superseded`` (a newer rerank replaced it), ``unfinished``
    (the session ended first), ``fallback`` (the cloud order stays; ``fallback_reason`` says why).
    """

    reason: str  # the trigger
    n_fixed: int  # positions already revealed when it was requested
    item_ids: list[int]  # the new order of the items from n_fixed on (the cloud order on a fallback)
    result: RerankResult
    n_events: int = 0  # feedback events it saw
    n_window: int = 0  # unseen items it could move (≤ N_max)
    status: str = "computed"
    fallback_reason: str | None = None
    moved: int = 0  # positions that changed when it was applied
    latency_ms: float | None = None
    ready_at_ms: float = 0.0


@dataclass
class SessionStats:
    triggers: Counter[str] = field(default_factory=Counter)
    applied: int = 0
    late: int = 0
    dropped: int = 0
    unfinished: int = 0
    moved: int = 0
    fallbacks: Counter[str] = field(default_factory=Counter)  # incl. superseded, latency_budget, budget_gate
    refused_events: int = 0
    prepare_ms: float = 0.0  # time the reranker spent preparing arrived pages' items (``RerankService.prepare``)


def _host_ms() -> float:
    return time.perf_counter() * 1e3


class RerankSession:
    """One search session on the device (see the module docstring).

    ``reranker``: a :class:`~edge_rerank.device_sdk.reranker.RerankService` (built on a ``ModelManager`` to
    follow model swaps), a :class:`~edge_rerank.device_sdk.heuristic.HeuristicReranker`, anything with the
    same ``rerank``/``features``; None only marks trigger points (cloud order). ``store``: where feedback is
    kept (default: in memory; ``SQLiteFeedbackStore`` to survive the app being killed). ``logger``: an
    impression logger whose rows :meth:`close` returns if ``privacy`` allows (opt-in).
    """

    def __init__(self, session_id: str, context: Context, reranker: Reranker | None = None, *,
                 triggers: TriggerConfig | None = None, store: FeedbackStore | None = None,
                 logger: SessionLogger | None = None, privacy: PrivacyConfig | None = None,
                 timing: str = "host", late_policy: str = "remaining", clock: Callable[[], float] | None = None,
                 strict: bool = False, keep_events: bool | None = None, reshow: bool = False):
        if timing not in TIMINGS:
            raise ValueError(f"timing must be one of {TIMINGS}, got {timing!r}")
        if late_policy not in LATE_POLICIES:
            raise ValueError(f"late_policy must be one of {LATE_POLICIES}, got {late_policy!r}")
        if not isinstance(session_id, str) or not session_id:
            raise ValueError("session_id must be a non-empty string")
        self.session_id, self.context = session_id, context
        self.reshow = reshow
        self.reranker = reranker
        self.triggers = triggers or TriggerConfig()
        self.logger = logger
        self.privacy = privacy or PrivacyConfig()
        self.timing, self.late_policy = timing, late_policy
        self._clock = clock or _host_ms
        self.faults = FaultLog(log, strict=strict)
        # by default events are kept only when something reads them (a reranker or the logger): the cloud-only
        # path stays lean
        self._keep_events = (reranker is not None or logger is not None) if keep_events is None else keep_events
        self.store = store if store is not None else FeedbackStore(strict=strict)
        self._features = self._current_features()
        self.policy = TriggerPolicy(self.triggers, dwell_threshold_ms=self._features.dwell_threshold_ms)
        self.stats = SessionStats()
        self._items: list[PageItem] = []
        self._ids: set[int] = set()
        self._n_revealed = 0
        self._page_size = 0
        self._has_feedback = bool(self._keep_events and self.store.events(session_id))
        self.pending: Rerank | None = None
        self.closed = False

    # ---- what the app reads ----
    @property
    def items(self) -> list[PageItem]:
        """All loaded results in the order to show them (positions < n_revealed are as they were shown)."""
        return self._items

    @property
    def n_revealed(self) -> int:
        return self._n_revealed

    @property
    def features(self) -> FeatureConfig:
        """The feature config in force (the serving model's, or the defaults without one)."""
        return self._features

    @property
    def window(self) -> int:
        """How many unseen items one rerank may move: the model's N_max."""
        return self._features.n_max

    @property
    def keeps_events(self) -> bool:
        return self._keep_events

    def events(self) -> list[FeedbackEvent]:
        return self.store.events(self.session_id) if self._keep_events else []

    def _current_features(self) -> FeatureConfig:
        fc = getattr(self.reranker, "features", None) if self.reranker is not None else None
        return fc if isinstance(fc, FeatureConfig) else _DEFAULT_FEATURES

    def _refresh_features(self) -> None:
        fc = self._current_features()
        if fc is not self._features:  # a model swap brought another feature config
            self._features = fc
            self.policy.dwell_threshold_ms = fc.dwell_threshold_ms

    # ---- what the app tells it ----
    def add_page(self, page: SearchPage) -> Rerank | None:
        """A page of results arrived; its items are appended in the cloud's order (items already loaded are
        skipped; with ``reshow=True``, a feed's, only those still unseen: an item already shown is shown again).
        May trigger a page-arrival rerank."""
        if self.closed:
            return self._refuse("closed: the session has ended")
        if not isinstance(page, SearchPage) or not all(isinstance(it, PageItem) for it in page.items):
            return self._refuse("bad_page: not a SearchPage of PageItems")
        if self.reshow:  # an item already revealed may come again; one still unseen is not doubled
            loaded = {it.item_id for it in self._items[self._n_revealed:]}
            new = []
            for it in page.items:
                if it.item_id not in loaded:
                    loaded.add(it.item_id)
                    new.append(it)
        else:
            new = [it for it in page.items if it.item_id not in self._ids]
        self._items.extend(new)
        self._ids.update(it.item_id for it in new)
        prepare = getattr(self.reranker, "prepare", None)  # optional: per-item feature work at page arrival
        if prepare is not None and new:
            try:
                ms = prepare(new)
                if isinstance(ms, int | float) and math.isfinite(ms):
                    self.stats.prepare_ms += ms
            except Exception:  # noqa: BLE001 - a third-party reranker's prepare must not crash the app
                if self.faults.strict:
                    raise
        self._page_size = self._page_size or len(page.items)
        if self.logger is not None:
            self.logger.start_list(page)
        return self._maybe(self.policy.on_page_arrival(has_feedback=self._has_feedback))

    def reveal(self, n_revealed: int) -> Rerank | None:
        """Positions ``< n_revealed`` have been on screen: they never move again (draw them from :attr:`items`
        after :meth:`poll`). May fire the page-boundary trigger."""
        if self.closed:
            return self._refuse("closed: the session has ended")
        if isinstance(n_revealed, bool) or not isinstance(n_revealed, int | np.integer):
            return self._refuse(f"bad_arguments: n_revealed must be an int, got {type(n_revealed).__name__}")
        self._n_revealed = max(self._n_revealed, min(int(n_revealed), len(self._items)))
        return self._maybe(self.policy.on_viewport(self._n_revealed - 1, self._page_size, self._has_feedback))

    def record(self, event: FeedbackEvent) -> Rerank | None:
        """The user did something (exposure with dwell, click, detail return, order, leave). Stored, logged, and
        shown to the trigger policy; returns the rerank it triggered, if any."""
        if self.closed:
            return self._refuse("closed: the session has ended")
        if self._keep_events:
            if not self.store.add(self.session_id, event):  # the store validates (once) and says why it refused
                self.stats.refused_events += 1
                return None
            if self.logger is not None:
                self.logger.record(event)
        self._has_feedback = True
        return self._maybe(self.policy.observe(event))

    def scroll_idle(self, idle_ms: float) -> Rerank | None:
        """The list rested for `idle_ms` (may fire the scroll-idle trigger)."""
        if self.closed:
            return None
        return self._maybe(self.policy.on_scroll_idle(idle_ms, self._has_feedback))

    def close(self) -> list:
        """End the session (records LEAVE if the app has not); returns the impression-log rows the privacy
        settings let out (none without opt-in)."""
        if self.closed:
            return []
        if self.pending is not None:
            self._end(self.pending, "unfinished")
            self.stats.unfinished += 1
            self.pending = None
        if self.policy.budget_skips:
            self.stats.fallbacks["budget_gate"] += self.policy.budget_skips
        self.closed = True
        if self.logger is None:
            return []
        return outgoing_log_rows(self.logger.finish(self._items), self.privacy)

    # ---- reranks ----
    def _refuse(self, reason: str) -> None:
        self.faults.record(reason)
        return None

    def _maybe(self, reason: str | None) -> Rerank | None:
        return self.rerank_now(reason) if reason else None

    def rerank_now(self, reason: str = "manual") -> Rerank | None:
        """Rerank the unseen items now (what a trigger does; an app may also call it). None without a
        reranker (the trigger point is still counted and logged)."""
        self.stats.triggers[reason] += 1
        if self.logger is not None:
            self.logger.mark_rerank_point()
        if self.reranker is None:
            return None
        self.poll()
        self._refresh_features()
        snapshot = getattr(self.store, "snapshot", None)  # columns the feature builder reads without conversion
        events = snapshot(self.session_id) if snapshot is not None else self.store.events(self.session_id)
        n_fixed = self._n_revealed
        try:
            res = self.reranker.rerank(self._items, n_fixed, events, self.context)
        except Exception as exc:  # noqa: BLE001 - a third-party reranker must not crash the app either
            if self.faults.strict:
                raise
            res = RerankResult(order=list(range(len(self._items))), applied=False,
                               fallback_reason=f"reranker: {type(exc).__name__}: {exc}")
        order = res.order if res.applied else list(range(len(self._items)))
        r = Rerank(reason=reason, n_fixed=n_fixed, item_ids=[self._items[i].item_id for i in order[n_fixed:]],
                   result=res, n_events=len(events), n_window=max(min(len(self._items) - n_fixed, self.window), 0))
        if self.timing == "host":
            self.finish(r, res.timings_ms.get("total", 0.0))
        return r

    def finish(self, r: Rerank, latency_ms: float, energy_mj: float = 0.0, *, ready_at_ms: float | None = None
               ) -> Rerank:
        """The rerank's cost is known (measured or modelled): the budget gate sees it; a result within the
        latency budget waits for `ready_at_ms` (default: now) and is applied by :meth:`poll`."""
        r.latency_ms = latency_ms
        self.policy.record_cost(latency_ms, energy_mj)
        if not r.result.applied:
            return self._end(r, "fallback", r.result.fallback_reason or "unknown")
        if latency_ms > self.triggers.budget.ms:
            return self._end(r, "fallback", f"latency_budget: {latency_ms:.2f} ms > {self.triggers.budget.ms} ms")
        if self.pending is not None:  # the previous rerank has not been applied: this one (more feedback) wins
            self._end(self.pending, "superseded", "superseded")
        r.status, r.ready_at_ms = "pending", self._clock() if ready_at_ms is None else ready_at_ms
        self.pending = r
        self.poll()
        return r

    def _end(self, r: Rerank, status: str, reason: str | None = None) -> Rerank:
        r.status = status
        if reason is not None:
            r.fallback_reason = reason
            self.stats.fallbacks[reason_kind(reason)] += 1
        return r

    def poll(self) -> Rerank | None:
        """Apply the pending rerank if its result is ready by now; returns it then."""
        p = self.pending
        if p is None or p.ready_at_ms > self._clock():
            return None
        self.pending = None
        fixed = max(p.n_fixed, self._n_revealed)
        late = self._n_revealed > p.n_fixed
        if late and self.late_policy == "drop":
            self.stats.dropped += 1
            return self._end(p, "dropped")
        rank = {iid: k for k, iid in enumerate(p.item_ids)}
        tail = self._items[fixed:]
        slots = [k for k, it in enumerate(tail) if it.item_id in rank]
        if len(slots) < 2:
            self.stats.dropped += 1
            return self._end(p, "dropped")
        chosen = sorted((tail[k] for k in slots), key=lambda it: rank[it.item_id])
        moved = 0
        for k, it in zip(slots, chosen, strict=True):
            moved += tail[k].item_id != it.item_id
            tail[k] = it
        self._items[fixed:] = tail
        p.moved = moved
        self.stats.applied += 1
        self.stats.late += int(late)
        self.stats.moved += moved
        return self._end(p, "late" if late else "applied")

    def reorder_unseen(self, scores: Sequence[float] | np.ndarray) -> int:
        """Reorder the next ``len(scores)`` unseen items by `scores` now (an agent's action); returns moved."""
        s = np.asarray(scores, dtype=np.float64)
        if s.ndim != 1 or not np.all(np.isfinite(s)):
            self._refuse("bad_arguments: scores must be a finite 1-d array")
            return 0
        order = reinsert(len(self._items), self._n_revealed, len(s), s)
        moved = sum(1 for p, i in enumerate(order) if p != i)
        self._items = [self._items[i] for i in order]
        return moved


def leave_event(ts_ms: int, request_id: str = "") -> FeedbackEvent:
    """The LEAVE event (no item) an app records when the user leaves the results."""
    return FeedbackEvent(ts_ms=int(ts_ms), request_id=request_id, item_id=-1, kind=EventKind.LEAVE)
