"""When to rerank. The policy sees every feedback event, page arrival, scroll pause and viewport move and answers
with a reason (or None). Debounced: at least `min_events_between` events between two triggers. A budget gate
(``device_sdk.budgets.LatencyBudget``) skips triggers while reranks are too slow (``over_max`` of the last
``window`` blew ``ms``) or the session's rerank energy budget is spent; each rerank's cost is reported with
``record_cost`` (``device_sdk.session.RerankSession`` does it).

What counts as a long (real) skip is the model's: the dwell threshold comes from the bundle's feature config
(``FeatureConfig.dwell_threshold_ms``), the same value the features were trained with."""

from __future__ import annotations

from dataclasses import dataclass

from edge_rerank.device_sdk.budgets import LatencyBudget
from edge_rerank.device_sdk.contracts import EventKind, FeedbackEvent
from edge_rerank.device_sdk.features.config import FeatureConfig


@dataclass(frozen=True)
class TriggerConfig:
    click_return: bool = True  # the user came back from a detail page
    skip_run: int = 3  # this many long-dwell exposures in a row without a click; 0 disables
    page_arrival: bool = True  # a new page arrived and there is feedback to use
    page_arrival_always: bool = False  # fire on every page arrival, even without feedback (oracle / random arms)
    min_events_between: int = 1
    scroll_idle_ms: float = 0.0  # fire when the list rests this long with feedback to use; 0 disables
    page_boundary_items: int = 0  # fire when the viewport is this close to the next page boundary; 0 disables
    budget: LatencyBudget = LatencyBudget()  # the gate (and, in the session, whether a result may be applied)


class TriggerPolicy:
    """``dwell_threshold_ms``: what counts as a long skip; the session passes its model's feature config value."""

    def __init__(self, cfg: TriggerConfig | None = None, *, dwell_threshold_ms: float | None = None):
        self.cfg = cfg or TriggerConfig()
        self.dwell_threshold_ms = (FeatureConfig.dwell_threshold_ms if dwell_threshold_ms is None
                                   else float(dwell_threshold_ms))
        self.reset()

    def reset(self) -> None:
        self._events = 0
        self._last_trigger_at = -10**9
        self._skips = 0
        self._clicked: set[int] = set()
        self._recent_over: list[bool] = []
        self._energy_mj = 0.0
        self._boundary_fired_for = -1
        self.budget_skips = 0  # triggers the gate swallowed this session

    def record_cost(self, latency_ms: float, energy_mj: float = 0.0) -> None:
        """Report a finished rerank's latency and energy (feeds the budget gate)."""
        b = self.cfg.budget
        self._recent_over = (self._recent_over + [latency_ms > b.ms])[-b.window:]
        self._energy_mj += energy_mj

    def gate_open(self) -> bool:
        b = self.cfg.budget
        if b.over_max > 0 and sum(self._recent_over) >= b.over_max:
            return False
        return not (b.energy_mj > 0 and self._energy_mj >= b.energy_mj)

    def _fire(self, reason: str) -> str | None:
        if self._events - self._last_trigger_at < self.cfg.min_events_between:
            return None
        if not self.gate_open():
            self.budget_skips += 1
            return None
        self._last_trigger_at = self._events
        return reason

    def on_scroll_idle(self, idle_ms: float, has_feedback: bool) -> str | None:
        if self.cfg.scroll_idle_ms > 0 and has_feedback and idle_ms >= self.cfg.scroll_idle_ms:
            return self._fire("scroll_idle")
        return None

    def on_viewport(self, last_visible: int, page_size: int, has_feedback: bool) -> str | None:
        """Once per page: the viewport is within `page_boundary_items` of the boundary to the next page, so the
        items just past it can still be reordered before the user gets there."""
        c = self.cfg
        if c.page_boundary_items <= 0 or not has_feedback or page_size <= 0 or last_visible < 0:
            return None
        page = last_visible // page_size
        if page_size - 1 - last_visible % page_size <= c.page_boundary_items and self._boundary_fired_for != page:
            self._boundary_fired_for = page
            return self._fire("page_boundary")
        return None

    def observe(self, event: FeedbackEvent) -> str | None:
        self._events += 1
        if event.kind == EventKind.CLICK:
            self._clicked.add(event.item_id)
            self._skips = 0
            return None
        if event.kind == EventKind.DETAIL_RETURN and self.cfg.click_return:
            return self._fire("click_return")
        if (event.kind == EventKind.EXPOSURE and self.cfg.skip_run > 0
                and event.item_id not in self._clicked and event.dwell_ms >= self.dwell_threshold_ms):
            self._skips += 1
            if self._skips >= self.cfg.skip_run:
                self._skips = 0
                return self._fire("skip_run")
        return None

    def on_page_arrival(self, has_feedback: bool) -> str | None:
        if self.cfg.page_arrival and (has_feedback or self.cfg.page_arrival_always):
            return self._fire("page_arrival")
        return None
