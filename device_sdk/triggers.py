"""When to rerank. The policy sees every feedback event and page arrival and answers with a reason
(or None). Debounced: at least `min_events_between` events between two triggers."""

from __future__ import annotations

from dataclasses import dataclass

from device_sdk.contracts import EventKind, FeedbackEvent


@dataclass(frozen=True)
class TriggerConfig:
    click_return: bool = True  # the user came back from a detail page
    skip_run: int = 3  # this many long-dwell exposures in a row without a click; 0 disables
    page_arrival: bool = True  # a new page arrived and there is feedback to use
    dwell_threshold_ms: float = 1200.0  # what counts as a long (real) skip
    min_events_between: int = 1


class TriggerPolicy:
    def __init__(self, cfg: TriggerConfig | None = None):
        self.cfg = cfg or TriggerConfig()
        self.reset()

    def reset(self) -> None:
        self._events = 0
        self._last_trigger_at = -10**9
        self._skips = 0
        self._clicked: set[int] = set()

    def _fire(self, reason: str) -> str | None:
        if self._events - self._last_trigger_at < self.cfg.min_events_between:
            return None
        self._last_trigger_at = self._events
        return reason

    def observe(self, event: FeedbackEvent) -> str | None:
        self._events += 1
        if event.kind == EventKind.CLICK:
            self._clicked.add(event.item_id)
            self._skips = 0
            return None
        if event.kind == EventKind.DETAIL_RETURN and self.cfg.click_return:
            return self._fire("click_return")
        if (event.kind == EventKind.EXPOSURE and self.cfg.skip_run > 0
                and event.item_id not in self._clicked and event.dwell_ms >= self.cfg.dwell_threshold_ms):
            self._skips += 1
            if self._skips >= self.cfg.skip_run:
                self._skips = 0
                return self._fire("skip_run")
        return None

    def on_page_arrival(self, has_feedback: bool) -> str | None:
        if self.cfg.page_arrival and has_feedback:
            return self._fire("page_arrival")
        return None
