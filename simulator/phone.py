"""A simulated phone running one search session: viewport, scrolling, exposures, clicks, detail pages,
page requests to the cloud, trigger points, and the device SDK reranking the unseen results."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from device_sdk.contracts import EventKind, FeedbackEvent, ImpressionRow, PageItem, SearchRequest
from device_sdk.feedback_store import FeedbackStore
from device_sdk.impression_log import SessionLogger
from device_sdk.reranker import RerankService
from device_sdk.triggers import TriggerConfig, TriggerPolicy
from simulator.transport import CloudTransport
from simulator.user_model import UserModel
from simulator.world import SessionSpec


@dataclass
class SessionOutcome:
    session_id: str
    query: str
    predecided: bool
    clicks: int = 0
    orders: int = 0
    screens: int = 0
    pages: int = 0
    exposed_positions: list[int] = field(default_factory=list)
    click_positions: list[int] = field(default_factory=list)
    rerank_ms: list[float] = field(default_factory=list)
    triggers: Counter[str] = field(default_factory=Counter)
    reranks_applied: int = 0
    moved: int = 0
    fallbacks: Counter[str] = field(default_factory=Counter)
    rows: list[ImpressionRow] = field(default_factory=list)


class Phone:
    def __init__(self, user_model: UserModel, cloud: CloudTransport, *, arm: str,
                 reranker: RerankService | None = None, triggers: TriggerConfig | None = None,
                 page_size: int = 25, keep_logs: bool = True):
        self.um = user_model
        self.cloud = cloud
        self.arm = arm
        self.reranker = reranker
        self.trigger_cfg = triggers or TriggerConfig()
        self.page_size = page_size
        self.keep_logs = keep_logs

    def run(self, spec: SessionSpec) -> SessionOutcome:
        um, world, V = self.um, self.um.world, self.um.cfg.viewport_items
        out = SessionOutcome(session_id=spec.session_id, query=spec.query, predecided=spec.predecided)
        store = FeedbackStore()
        policy = TriggerPolicy(self.trigger_cfg)
        logger = SessionLogger(spec.session_id, world.user_ids[spec.user], spec.query, spec.context, self.arm)
        display: list[PageItem] = []
        state = {"t": 0, "page_index": 0, "has_more": True, "request_id": "", "shown_upto": 0}

        def rerank(reason: str) -> None:
            nonlocal display
            out.triggers[reason] += 1
            logger.mark_rerank_point()
            if self.reranker is None:
                return
            res = self.reranker.rerank(display, state["shown_upto"], store.events(spec.session_id), spec.context)
            if "total" in res.timings_ms:
                out.rerank_ms.append(res.timings_ms["total"])
            if res.applied:
                display = [display[i] for i in res.order]
                out.reranks_applied += 1
                out.moved += res.moved
            else:
                out.fallbacks[(res.fallback_reason or "").split(":")[0]] += 1

        def emit(item: PageItem | None, kind: EventKind, position: int, dwell_ms: float = 0.0) -> None:
            if item is None:
                ev = FeedbackEvent(ts_ms=state["t"], request_id=state["request_id"], item_id=-1, kind=kind)
            else:
                ev = FeedbackEvent.for_item(item, kind, state["t"], state["request_id"], position, dwell_ms)
            store.add(spec.session_id, ev)
            logger.record(ev)
            reason = policy.observe(ev)
            if reason:
                rerank(reason)

        def fetch() -> None:
            req = SearchRequest(request_id=f"{spec.session_id}-p{state['page_index']}", session_id=spec.session_id,
                                user_id=world.user_ids[spec.user], query=spec.query, context=spec.context,
                                page_index=state["page_index"], page_size=self.page_size)
            page = self.cloud.search(req)
            state["request_id"] = page.request_id
            state["page_index"] += 1
            state["has_more"] = page.has_more and state["page_index"] < um.cfg.max_pages
            out.pages += 1
            display.extend(page.items)
            logger.start_list(page)
            reason = policy.on_page_arrival(has_feedback=bool(store.events(spec.session_id)))
            if reason:
                rerank(reason)

        fetch()
        screen, frustrated = 0, 0
        while True:
            start = screen * V
            if start + V > len(display) and state["has_more"]:
                fetch()
            if start >= len(display):
                break
            slots = display[start: start + V]
            state["shown_upto"] = start + len(slots)  # visible now: these positions never move again
            out.screens += 1
            skim = um.skims(spec, screen)
            n_examined, clicked_here, leave = 0, False, False
            for slot, item in enumerate(slots):
                if not um.examines(spec, screen, slot, skim):
                    continue
                n_examined += 1
                util = float(um.utility(spec, np.array([world.row_of(item.item_id)]))[0])
                if not um.clicks(spec, item.item_id, util):
                    continue
                pos = start + slot
                clicked_here = True
                out.clicks += 1
                out.click_positions.append(pos)
                emit(item, EventKind.CLICK, pos)
                detail = um.detail_dwell_ms(spec, item.item_id, util)
                state["t"] += int(detail)
                ordered = um.orders(spec, item.item_id, util)
                if ordered:
                    out.orders += 1
                    emit(item, EventKind.ORDER, pos)
                emit(item, EventKind.DETAIL_RETURN, pos, detail)
                if ordered and um.leaves_after_order(spec, item.item_id):
                    leave = True
                    break
            dwell = um.screen_dwell_ms(spec, screen, n_examined, skim)
            state["t"] += int(dwell)
            for slot, item in enumerate(slots):
                out.exposed_positions.append(start + slot)
                emit(item, EventKind.EXPOSURE, start + slot, dwell)
            if leave:
                break
            frustrated = 0 if clicked_here else frustrated + 1
            if um.leaves(spec, screen, frustrated):
                break
            screen += 1
        emit(None, EventKind.LEAVE, -1)
        if self.keep_logs:
            out.rows = logger.finish(display)
        return out
