"""Builds impression-log rows (one per shown list) on the device, for opt-in upload.

Row semantics are documented in docs/impression_log_schema.md: `events` is the session's feedback from
its start up to the end of this list, and `rerank_points[k]` says the rerank k saw `events[:rerank_points[k]]`.
"""

from __future__ import annotations

from collections.abc import Sequence

from edge_rerank.device_sdk.contracts import (
    Context,
    EventKind,
    FeedbackEvent,
    ImpressionRow,
    LoggedCandidate,
    PageItem,
    SearchPage,
)


class SessionLogger:
    """Builds one session's impression-log rows (one per shown list) from its pages, events and rerank points."""

    def __init__(self, session_id: str, user_id: str, query: str, context: Context, arm: str):
        self.session_id, self.user_id, self.query, self.context, self.arm = session_id, user_id, query, context, arm
        self.events: list[FeedbackEvent] = []
        self._lists: list[tuple[SearchPage, dict[int, LoggedCandidate], list[int], int]] = []

    def start_list(self, page: SearchPage) -> None:
        cands = {it.item_id: LoggedCandidate(item=it, shown_position=-1) for it in page.items}
        self._lists.append((page, cands, [], len(self.events)))

    def _find(self, item_id: int) -> LoggedCandidate | None:
        for _, cands, _, _ in reversed(self._lists):
            if item_id in cands:
                return cands[item_id]
        return None

    def record(self, event: FeedbackEvent) -> None:
        step = len(self.events)
        self.events.append(event)
        c = self._find(event.item_id)
        if c is None:
            return
        if event.kind == EventKind.EXPOSURE:
            if not c.exposed:
                c.exposed, c.first_exposure_step = True, step
            c.exposure_dwell_ms = max(c.exposure_dwell_ms, event.dwell_ms)
        elif event.kind == EventKind.CLICK and not c.clicked:
            c.clicked, c.click_step = True, step
        elif event.kind == EventKind.ORDER:
            c.ordered = True

    def mark_rerank_point(self) -> None:
        """The current feedback (all events so far) was (or would have been) used for a rerank."""
        if self._lists:
            self._lists[-1][2].append(len(self.events))

    def finish(self, display: Sequence[PageItem]) -> list[ImpressionRow]:
        """Close the session; `display` is the final shown order of all loaded items."""
        shown = {it.item_id: pos for pos, it in enumerate(display)}
        # an item a feed shows again is in the display twice: each list's candidate is placed where that list's
        # own copy is (the same PageItem object), else where the item is (a copy the session did not double)
        shown_obj = {id(it): pos for pos, it in enumerate(display)}
        rows = []
        for k, (page, cands, points, _) in enumerate(self._lists):
            for iid, c in cands.items():
                c.shown_position = shown_obj.get(id(c.item), shown.get(iid, -1))
            # events up to the end of this list's life: until the next page arrived, or the session ended
            # (or through the last event that touched one of its items, for a screen spanning two pages)
            end = self._lists[k + 1][3] if k + 1 < len(self._lists) else len(self.events)
            touched = [max(c.first_exposure_step, c.click_step) for c in cands.values()]
            end = max(end, max(touched, default=-1) + 1)
            rows.append(ImpressionRow(
                request_id=page.request_id, session_id=self.session_id, user_id=self.user_id, query=self.query,
                context=self.context, page_index=page.page_index, model_version=page.model_version, arm=self.arm,
                candidates=sorted(cands.values(), key=lambda c: (c.shown_position < 0, c.shown_position)),
                events=self.events[:end], rerank_points=list(points)))
        return rows
