"""A simulated phone running one search session on a clock: viewport, scrolling, exposures with dwell, clicks,
detail pages, page requests with seeded network latency (prefetched a screen ahead), trigger points, and a
reranker whose *modelled* on-device latency decides whether its new order arrives in time.

Timeline of one screen (ms on the session clock ``t``)::

    reveal(items start..start+V)  ->  examine slot by slot (click -> detail page -> return -> trigger)
    -> screen dwell (the items' exposure dwell) -> exposures emitted (skip-run trigger) -> leave?
    -> scroll (scroll_ms / speed) -> next reveal

A rerank requested at ``t`` is scheduled on the device (``device_sdk.budgets.DeviceClock``: waits for the core
and for seeded busy time, wakes it if idle, computes for FLOPs / FLOP rate) and finishes at ``t_done``; a
rerank still running is superseded by the newer one (it has more feedback). At every reveal the phone first
applies finished reranks. A rerank that finishes after the user has already
revealed some of the positions it would move is **late**: with ``late_policy="remaining"`` only the items
still unseen are reordered (among themselves), with ``"drop"`` it is discarded; if nothing it would move is
still unseen it is dropped either way. Positions on screen or above never move.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from statistics import NormalDist
from typing import NamedTuple

import numpy as np

from edge_rerank.device_sdk.budgets import CostModel, DeviceClock, get_profile
from edge_rerank.device_sdk.contracts import (
    EventKind,
    FeedbackEvent,
    ImpressionRow,
    PageItem,
    SearchPage,
    SearchRequest,
)
from edge_rerank.device_sdk.feedback_store import FeedbackStore
from edge_rerank.device_sdk.impression_log import SessionLogger
from edge_rerank.device_sdk.privacy import PrivacyConfig, outgoing_log_rows
from edge_rerank.device_sdk.reranker import reinsert
from edge_rerank.device_sdk.triggers import TriggerConfig, TriggerPolicy
from edge_rerank.simulator.transport import CloudTransport
from edge_rerank.simulator.user_model import BUSY, NETWORK, UserModel, crn_uniform
from edge_rerank.simulator.world import SessionSpec

LATE_POLICIES = ("remaining", "drop")
_STD_NORMAL = NormalDist()


@dataclass(frozen=True)
class PhoneConfig:
    """The phone and its network (every field documented in docs/simulator.md)."""

    page_size: int = 25
    prefetch_items: int = 4  # request the next page once the user has revealed all but this many loaded items
    net_median_ms: float = 150.0  # page request round trip: lognormal(median, sigma) + server time
    net_sigma: float = 0.5
    server_ms: float = 15.0
    render_ms: float = 30.0  # from a page's arrival to its items being drawn (a page-arrival rerank can beat it)
    device: str = "recent_iphone"  # a device_sdk.budgets.PROFILES name
    late_policy: str = "remaining"  # what to do with a rerank that finishes after its positions were revealed

    def __post_init__(self) -> None:
        if self.late_policy not in LATE_POLICIES:
            raise ValueError(f"late_policy must be one of {LATE_POLICIES}, got {self.late_policy!r}")
        get_profile(self.device)


@dataclass
class SessionOutcome:
    session_id: str
    query: str
    predecided: bool
    clicks: int = 0
    orders: int = 0
    screens: int = 0
    pages: int = 0
    abandoned: bool = False  # left without any click while more results were available
    exhausted: bool = False  # scrolled to the end of the results
    duration_ms: float = 0.0
    wait_ms: float = 0.0  # time spent waiting for a page at the end of the loaded list
    exposed_positions: list[int] = field(default_factory=list)
    click_positions: list[int] = field(default_factory=list)
    examined_positions: list[int] = field(default_factory=list)  # ground truth the device never sees
    rerank_ms: list[float] = field(default_factory=list)  # measured on this machine (host wall clock)
    device_ms: list[float] = field(default_factory=list)  # modelled on the device profile: request -> result
    page_ms: list[float] = field(default_factory=list)  # modelled network latency per page request
    rerank_mj: float = 0.0  # modelled energy of the reranks
    radio_mj: float = 0.0  # modelled energy of the page requests
    screen_mj: float = 0.0  # display baseline for the session's duration (context; not caused by reranking)
    triggers: Counter[str] = field(default_factory=Counter)
    reranks_applied: int = 0
    reranks_late: int = 0  # applied after some of their positions were revealed (only the unseen rest moved)
    reranks_dropped: int = 0  # finished too late to move anything, or dropped by the late policy
    reranks_unfinished: int = 0  # still running when the session ended
    moved: int = 0
    fallbacks: Counter[str] = field(default_factory=Counter)
    rows: list[ImpressionRow] = field(default_factory=list)

    @property
    def energy_mj(self) -> float:
        """Energy the session's search costs beyond the display: reranks + page requests."""
        return self.rerank_mj + self.radio_mj


@dataclass
class _Pending:
    done_ms: float
    n_fixed: int  # positions that were fixed when the rerank was requested
    ids: list[int]  # the new order of the items from n_fixed on


class _LeanEvent(NamedTuple):
    """What the trigger policy reads of an event (used when no reranker or logger needs full events)."""

    kind: EventKind
    item_id: int
    dwell_ms: float


class _ItemInfo(NamedTuple):
    """The user's utility for an item (under the hidden intent) and the item's keyed random draws."""

    utility: float
    brand: int
    u_click: float
    u_order: float
    u_detail: float
    u_leave: float


class PhoneSession:
    """One session, advanced screen by screen (``Phone.run`` loops it; ``PhoneSessionEnv`` steps it)."""

    def __init__(self, phone: Phone, spec: SessionSpec):
        self.phone, self.spec = phone, spec
        self.um = phone.um
        self.world = phone.um.world
        self.V = self.um.cfg.viewport_items
        self.out = SessionOutcome(session_id=spec.session_id, query=spec.query, predecided=spec.predecided)
        self.user = self.um.new_state(spec)
        n_screens = self.um.cfg.max_pages * phone.cfg.page_size // self.V + 2
        draws = self.um.screen_draws(spec, n_screens)
        self.draws = {k: v.tolist() for k, v in draws.items()}  # plain floats: cheap to index in the loop
        self.info: dict[int, _ItemInfo] = {}
        self.store = FeedbackStore()
        self.policy = TriggerPolicy(phone.trigger_cfg)
        self.logger = (SessionLogger(spec.session_id, self.world.user_ids[spec.user], spec.query, spec.context,
                                     phone.arm) if phone.keep_logs else None)
        self.profile = get_profile(phone.cfg.device)
        self.device = DeviceClock(self.profile)
        self.display: list[PageItem] = []
        self.t = 0.0
        self.page_index = 0
        self.has_more = True
        self.request_id = ""
        self.inflight: tuple[float, SearchPage] | None = None
        self.pending: _Pending | None = None
        self.shown_upto = 0
        self.screen = 0
        self.done = False
        self._n_reranks = 0
        self._lean = phone.reranker is None and self.logger is None
        self._has_feedback = False
        if phone.reranker is not None and hasattr(phone.reranker, "begin_session"):
            phone.reranker.begin_session(spec)
        self._request_page()
        self._wait_for_page()

    # ---- pages ----
    def _request_page(self) -> None:
        spec, cfg = self.spec, self.phone.cfg
        req = SearchRequest(request_id=f"{spec.session_id}-p{self.page_index}", session_id=spec.session_id,
                            user_id=self.world.user_ids[spec.user], query=spec.query, context=spec.context,
                            page_index=self.page_index, page_size=cfg.page_size)
        page = self.phone.cloud.search(req)
        u = min(max(crn_uniform(spec.seed, NETWORK, self.page_index), 1e-12), 1 - 1e-12)
        latency = cfg.server_ms + cfg.net_median_ms * math.exp(cfg.net_sigma * _STD_NORMAL.inv_cdf(u))
        self.out.page_ms.append(latency)
        self.out.radio_mj += self.profile.radio_mj
        self.page_index += 1
        self.has_more = page.has_more and self.page_index < self.um.cfg.max_pages
        self.inflight = (self.t + latency, page)

    def _wait_for_page(self) -> None:
        if self.inflight is not None:
            ready = self.inflight[0] + self.phone.cfg.render_ms
            if ready > self.t:
                self.out.wait_ms += ready - self.t
                self.t = ready
        self._poll()

    def _receive(self, arrival_ms: float, page: SearchPage) -> None:
        self.inflight = None
        self.request_id = page.request_id
        self.out.pages += 1
        new = [it for it in page.items if it.item_id not in self.info]
        if new:
            ids = np.array([it.item_id for it in new], dtype=np.int64)
            util = self.um.utility(self.spec, ids - self.world.item_id[0]).tolist()
            d = self.um.item_draws(self.spec, ids)
            for it, u, uc, uo, ud, ul in zip(new, util, d["click"].tolist(), d["order"].tolist(),
                                             d["detail"].tolist(), d["leave_after_order"].tolist(), strict=True):
                self.info[it.item_id] = _ItemInfo(u, it.brand, uc, uo, ud, ul)
        self.display.extend(page.items)
        if self.logger is not None:
            self.logger.start_list(page)
        has_feedback = (self.phone.force_page_rerank or self._has_feedback
                        or bool(self.store.events(self.spec.session_id)))
        reason = self.policy.on_page_arrival(has_feedback=has_feedback)
        if reason:
            self._trigger(reason, arrival_ms)

    def _poll(self) -> None:
        """Deliver a page that has arrived by now and apply a rerank that has finished by now."""
        if self.inflight is not None and self.inflight[0] <= self.t:
            self._receive(*self.inflight)
        self._settle()

    # ---- reranks ----
    def _settle(self) -> None:
        p = self.pending
        if p is None or p.done_ms > self.t:
            return
        self.pending = None
        fixed = max(p.n_fixed, self.shown_upto)
        late = self.shown_upto > p.n_fixed
        if late and self.phone.cfg.late_policy == "drop":
            self.out.reranks_dropped += 1
            return
        rank = {iid: k for k, iid in enumerate(p.ids)}
        tail = self.display[fixed:]
        slots = [k for k, it in enumerate(tail) if it.item_id in rank]
        if len(slots) < 2:
            self.out.reranks_dropped += 1
            return
        chosen = sorted((tail[k] for k in slots), key=lambda it: rank[it.item_id])
        moved = 0
        for k, it in zip(slots, chosen, strict=True):
            moved += tail[k].item_id != it.item_id
            tail[k] = it
        self.display[fixed:] = tail
        self.out.reranks_applied += 1
        self.out.reranks_late += int(late)
        self.out.moved += moved

    def _trigger(self, reason: str, t_ms: float) -> None:
        self.out.triggers[reason] += 1
        if self.logger is not None:
            self.logger.mark_rerank_point()
        rr = self.phone.reranker
        if rr is None:
            return
        self._settle()
        events = self.store.events(self.spec.session_id)
        n_fixed = self.shown_upto
        res = rr.rerank(self.display, n_fixed, events, self.spec.context)
        if "total" in res.timings_ms:
            self.out.rerank_ms.append(res.timings_ms["total"])
        k = self._n_reranks
        self._n_reranks += 1
        busy = 0.0
        if crn_uniform(self.spec.seed, BUSY, 0, k) < self.profile.busy_prob:
            busy = self.profile.busy_ms * crn_uniform(self.spec.seed, BUSY, 1, k)
        n_window = max(min(len(self.display) - n_fixed, self.phone.window), 0)
        _, done, latency, energy = self.device.schedule(t_ms, self.phone.cost_model.cost(n_window, len(events)), busy)
        self.out.device_ms.append(latency)
        self.out.rerank_mj += energy
        self.policy.record_cost(latency, energy)  # the SDK's budget gate sees what each rerank cost
        if not res.applied:
            self.out.fallbacks[(res.fallback_reason or "").split(":")[0]] += 1
            return
        if latency > self.profile.latency_budget_ms:
            self.out.fallbacks["latency_budget"] += 1  # the SDK's budget gate on the device
            return
        if self.pending is not None:  # the previous rerank has not finished: this one (more feedback) wins
            self.out.fallbacks["superseded"] += 1
        self.pending = _Pending(done_ms=done, n_fixed=n_fixed,
                                ids=[self.display[i].item_id for i in res.order[n_fixed:]])
        self._settle()  # finished at once only if the clock already passed it (never: latency > 0)

    def apply_scores(self, scores: np.ndarray) -> int:
        """Reorder the next ``len(scores)`` unseen items now (for agents stepping the session); returns moved."""
        n = len(self.display)
        order = reinsert(n, self.shown_upto, len(scores), np.asarray(scores, dtype=np.float64))
        moved = sum(1 for p, i in enumerate(order) if p != i)
        self.display = [self.display[i] for i in order]
        return moved

    # ---- events ----
    def _emit(self, item: PageItem | None, kind: EventKind, position: int, dwell_ms: float = 0.0) -> None:
        if self._lean:  # nobody reads the events but the trigger policy: skip building and storing them
            self._has_feedback = True
            # (dwell values reaching here are float32-exact already, as FeedbackEvent would make them)
            reason = self.policy.observe(_LeanEvent(kind, -1 if item is None else item.item_id, dwell_ms))
            if reason:
                self._trigger(reason, self.t)
            return
        ts = int(self.t)
        if item is None:
            ev = FeedbackEvent(ts_ms=ts, request_id=self.request_id, item_id=-1, kind=kind)
        else:
            ev = FeedbackEvent.for_item(item, kind, ts, self.request_id, position, dwell_ms)
        self.store.add(self.spec.session_id, ev)
        self._has_feedback = True
        if self.logger is not None:
            self.logger.record(ev)
        reason = self.policy.observe(ev)
        if reason:
            self._trigger(reason, self.t)

    # ---- the user ----
    def next_items_available(self) -> bool:
        """Make sure the next screen's items are loaded (waiting for the network if needed)."""
        start = self.screen * self.V
        if start + self.V > len(self.display):
            if self.inflight is None and self.has_more:
                self._request_page()
            if self.inflight is not None:
                self._wait_for_page()
        return start < len(self.display)

    def play_screen(self) -> dict[str, int]:
        """Reveal the next screen and let the user act on it. Returns what happened on it."""
        if self.done:
            raise RuntimeError("the session is over")
        um, out, user, V = self.um, self.out, self.user, self.V
        self._poll()
        if not self.next_items_available():
            self.out.exhausted = True
            self._end()
            return {"clicks": 0, "orders": 0, "exposed": 0, "left": 1}
        start = self.screen * V
        slots = self.display[start: start + V]
        self.shown_upto = start + len(slots)  # revealed: these positions never move again
        out.screens += 1
        if self.inflight is None and self.has_more and self.shown_upto + self.phone.cfg.prefetch_items >= len(
                self.display):
            self._request_page()
        reason = self.policy.on_viewport(self.shown_upto - 1, self.phone.cfg.page_size, self._has_feedback)
        if reason:
            self._trigger(reason, self.t)
        screen = self.screen
        skim = self.draws["skim"][screen] < um.p_skim(screen, user.speed)
        p_exam = um.p_examine(screen, skim)
        examine = self.draws["examine"][screen]
        n_examined, clicks_here, orders_here, leave = 0, 0, 0, False
        for slot, item in enumerate(slots):
            if not examine[slot] < p_exam:
                continue
            n_examined += 1
            out.examined_positions.append(start + slot)
            info = self.info[item.item_id]
            util = um.effective_utility(info.utility, info.brand, user)
            user.brand_seen[info.brand] += 1
            if not info.u_click < um.p_click(util, user):
                continue
            pos = start + slot
            clicks_here += 1
            user.clicks += 1
            out.clicks += 1
            out.click_positions.append(pos)
            self._emit(item, EventKind.CLICK, pos)
            detail = um.detail_ms(util, info.u_detail)
            self.t += detail
            self._poll()  # a page that arrived while the user was on the detail page comes first
            ordered = info.u_order < um.p_order(util)
            if ordered:
                orders_here += 1
                user.orders += 1
                out.orders += 1
                self._emit(item, EventKind.ORDER, pos)
            self._emit(item, EventKind.DETAIL_RETURN, pos, float(np.float32(detail)))
            if ordered and info.u_leave < um.cfg.leave_after_order:
                leave = True
                break
        dwell = float(np.float32(um.dwell_ms(n_examined, skim, self.draws["dwell"][screen], user.speed)))
        self.t += dwell
        self._poll()
        for slot, item in enumerate(slots):
            out.exposed_positions.append(start + slot)
            self._emit(item, EventKind.EXPOSURE, start + slot, dwell)
        reason = self.policy.on_scroll_idle(dwell, self._has_feedback)  # the list rested for `dwell` ms
        if reason:
            self._trigger(reason, self.t)
        user.frustrated = 0 if clicks_here else user.frustrated + 1
        if not leave:
            leave = self.draws["leave"][screen] < um.p_leave(screen, user.frustrated, user.patience)
        if leave:
            out.abandoned = out.clicks == 0
            self._end()
        else:
            self.t += um.cfg.scroll_ms / user.speed
            self.screen += 1
        return {"clicks": clicks_here, "orders": orders_here, "exposed": len(slots), "left": int(leave)}

    def _end(self) -> None:
        self._emit(None, EventKind.LEAVE, -1)
        if self.pending is not None:
            self.out.reranks_unfinished += 1
            self.pending = None
        self.done = True
        if self.policy.budget_skips:
            self.out.fallbacks["budget_gate"] += self.policy.budget_skips
        self.out.duration_ms = self.t
        self.out.screen_mj = self.profile.screen_mw * self.t / 1e3
        if self.logger is not None:
            self.out.rows = outgoing_log_rows(self.logger.finish(self.display), self.phone.privacy)


class Phone:
    """Runs sessions for one A/B arm. ``reranker`` is anything with the RerankService ``rerank`` method
    (optionally ``begin_session(spec)``); None keeps the cloud order."""

    def __init__(self, user_model: UserModel, cloud: CloudTransport, *, arm: str, reranker=None,
                 triggers: TriggerConfig | None = None, page_size: int | None = None, keep_logs: bool = True,
                 config: PhoneConfig | None = None, cost_model: CostModel | None = None,
                 force_page_rerank: bool = False, window: int = 25, privacy: PrivacyConfig | None = None):
        self.um = user_model
        # The simulated app's users opted in to sharing impression logs (that is how training data exists);
        # the SDK's own default is off (device_sdk.privacy).
        self.privacy = privacy or PrivacyConfig(share_impression_logs=True)
        self.cloud = cloud
        self.arm = arm
        self.reranker = reranker
        self.trigger_cfg = triggers or TriggerConfig()
        cfg = config or PhoneConfig()
        self.cfg = cfg if page_size is None else PhoneConfig(**{**cfg.__dict__, "page_size": page_size})
        self.keep_logs = keep_logs
        self.cost_model = cost_model or CostModel()
        self.force_page_rerank = force_page_rerank
        self.window = window

    def session(self, spec: SessionSpec) -> PhoneSession:
        return PhoneSession(self, spec)

    def run(self, spec: SessionSpec) -> SessionOutcome:
        s = PhoneSession(self, spec)
        while not s.done:
            s.play_screen()
        return s.out
