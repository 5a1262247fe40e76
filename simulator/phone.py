"""A simulated phone running one search session on a clock: viewport, scrolling, exposures with dwell, clicks,
detail pages, page requests with seeded network latency (prefetched a screen ahead), trigger points, and a
reranker whose *modelled* on-device latency decides whether its new order arrives in time.

Timeline of one screen (ms on the session clock ``t``)::

    reveal(items start..start+V)  ->  examine slot by slot (click -> detail page -> return -> trigger)
    -> screen dwell (the items' exposure dwell) -> exposures emitted (skip-run trigger) -> leave?
    -> scroll (scroll_ms / speed) -> next reveal

The device side is the SDK's own session object (``device_sdk.session.RerankSession``, ``timing="external"``):
the phone only tells it what arrived, what was revealed and what the user did, exactly as an app would. What the
phone adds is time: a rerank the session starts at ``t`` is scheduled on the modelled device
(``device_sdk.budgets.DeviceClock``: waits for the core and for seeded busy time, wakes it if idle, computes for
FLOPs / FLOP rate) and its result is ready at ``t_done``; the session applies it at the first reveal after that
(a rerank still running is superseded by the newer one; one that finishes after the user revealed some of the
positions it would move is **late**: with ``late_policy="remaining"`` only the still-unseen items are reordered,
with ``"drop"`` it is discarded). Positions on screen or above never move.
"""

from __future__ import annotations

import math
import weakref
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import repeat
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
from edge_rerank.device_sdk.impression_log import SessionLogger
from edge_rerank.device_sdk.privacy import PrivacyConfig
from edge_rerank.device_sdk.session import LATE_POLICIES, Rerank, RerankSession
from edge_rerank.device_sdk.triggers import TriggerConfig
from edge_rerank.simulator.randomness import BUSY, NETWORK, crn_uniform
from edge_rerank.simulator.transport import CloudTransport
from edge_rerank.simulator.user_model import UserModel
from edge_rerank.simulator.world import SessionSpec

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


class _LeanEvent(NamedTuple):
    """What the trigger policy reads of an event (the session stores no events when no reranker or logger reads
    them, so the cloud-only arm skips building full ones)."""

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

    # what drives the device side; simulator.replay substitutes a recording subclass (the normal run is untouched)
    device_session_class: Callable[..., RerankSession] = RerankSession

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
        self.showings: Counter[int] = Counter()  # reveals per item id (the feed re-shows items)
        self._reshown: dict[tuple[int, int], _ItemInfo] = {}
        logger = (SessionLogger(spec.session_id, self.world.user_ids[spec.user], spec.query, spec.context,
                                phone.arm) if phone.keep_logs else None)
        self.t = 0.0
        self.device_session = self.device_session_class(spec.session_id, spec.context, phone.reranker,
                                                        triggers=phone.trigger_cfg, logger=logger,
                                                        privacy=phone.privacy, timing="external",
                                                        late_policy=phone.cfg.late_policy,
                                                        clock=self._clock(), strict=phone.strict,
                                                        keep_events=phone.keep_events or None,
                                                        reshow=self.world.reshows_items)
        self.profile = get_profile(phone.cfg.device)
        self.device = DeviceClock(self.profile)
        self.page_index = 0
        self.has_more = True
        self.request_id = ""
        self.inflight: tuple[float, SearchPage] | None = None
        self.screen = 0
        self.done = False
        self._n_reranks = 0
        self._lean = not self.device_session.keeps_events
        # the screen's exposures recorded in one loop when nothing overrides how events go out (replay does)
        cls = type(self)
        self._direct_exposures = (self._lean and cls._emit is PhoneSession._emit
                                  and cls._schedule is PhoneSession._schedule)
        self._reshows = self.world.reshows_items  # without re-shows every item is revealed once: showing 0
        if phone.reranker is not None and hasattr(phone.reranker, "begin_session"):
            phone.reranker.begin_session(spec)
        self._request_page()
        self._wait_for_page()

    def _clock(self) -> Callable[[], float]:
        """The session clock for the device session. It reads this session through a weak reference: a closure over
        ``self`` would make a reference cycle (this session -> device session -> clock -> this session), so a
        finished session, its pages and items would wait for the cyclic garbage collector instead of being freed at
        once; in long runs those collections were a fifth to a third of the loop's time."""
        ref = weakref.ref(self)
        return lambda: ref().t  # type: ignore[union-attr]

    @property
    def display(self) -> list[PageItem]:
        """The order on the phone (the session's)."""
        return self.device_session.items

    @property
    def shown_upto(self) -> int:
        return self.device_session.n_revealed

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
        info = self.info
        new = [it for it in page.items if it.item_id not in info]
        if new:
            id_list = [it.item_id for it in new]
            ids = np.array(id_list, dtype=np.int64)
            um = self.um
            util = um.utility(self.spec, ids - self.world.item_id[0]).tolist()
            d = um.item_draws(self.spec, ids)
            rows = zip(util, um.saturation_keys(new), d["click"].tolist(), d["order"].tolist(), d["detail"].tolist(),
                       d["leave_after_order"].tolist(), strict=True)
            info.update(zip(id_list, map(tuple.__new__, repeat(_ItemInfo), rows), strict=True))  # _ItemInfo(*row)
        self._schedule(self.device_session.add_page(page), arrival_ms)

    def _poll(self) -> None:
        """Deliver a page that has arrived by now and apply a rerank that has finished by now."""
        if self.inflight is not None and self.inflight[0] <= self.t:
            self._receive(*self.inflight)
        self.device_session.poll()

    # ---- reranks: the session computes them, the phone models when their result is ready ----
    def _schedule(self, r: Rerank | None, t_ms: float) -> None:
        if r is None:
            return
        if "total" in r.result.timings_ms:
            self.out.rerank_ms.append(r.result.timings_ms["total"])
        k = self._n_reranks
        self._n_reranks += 1
        busy = 0.0
        if crn_uniform(self.spec.seed, BUSY, 0, k) < self.profile.busy_prob:
            busy = self.profile.busy_ms * crn_uniform(self.spec.seed, BUSY, 1, k)
        _, done, latency, energy = self.device.schedule(t_ms, self.phone.cost_model.cost(r.n_window, r.n_events),
                                                        busy)
        self.out.device_ms.append(latency)
        self.out.rerank_mj += energy
        self.device_session.finish(r, latency, energy, ready_at_ms=done)

    def apply_scores(self, scores: np.ndarray) -> int:
        """Reorder the next ``len(scores)`` unseen items now (for agents stepping the session); returns moved."""
        return self.device_session.reorder_unseen(scores)

    # ---- events ----
    def _emit(self, item: PageItem | None, kind: EventKind, position: int, dwell_ms: float = 0.0) -> None:
        if self._lean:  # nobody reads the events but the trigger policy: skip building full ones
            # (dwell values reaching here are float32-exact already, as FeedbackEvent would make them)
            ev = _LeanEvent(kind, -1 if item is None else item.item_id, dwell_ms)
        elif item is None:
            ev = FeedbackEvent(ts_ms=int(self.t), request_id=self.request_id, item_id=-1, kind=kind)
        else:
            ev = FeedbackEvent.for_item(item, kind, int(self.t), self.request_id, position, dwell_ms)
        self._schedule(self.device_session.record(ev), self.t)  # type: ignore[arg-type]

    def _info_for(self, item_id: int, showing: int) -> _ItemInfo:
        """The item's utility and draws for its `showing`-th reveal in this session (0: the first; later showings of
        a re-shown item draw new luck, keyed by the showing)."""
        info = self.info[item_id]
        if showing == 0:
            return info
        key = (item_id, showing)
        hit = self._reshown.get(key)
        if hit is None:
            d = self.um.item_draws(self.spec, np.array([item_id], dtype=np.int64), showing=showing)
            hit = self._reshown[key] = info._replace(u_click=float(d["click"][0]), u_order=float(d["order"][0]),
                                                     u_detail=float(d["detail"][0]),
                                                     u_leave=float(d["leave_after_order"][0]))
        return hit

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
        n_revealed = start + len(slots)  # revealed: these positions never move again
        out.screens += 1
        if self.inflight is None and self.has_more and n_revealed + self.phone.cfg.prefetch_items >= len(
                self.display):
            self._request_page()
        self._schedule(self.device_session.reveal(n_revealed), self.t)
        screen = self.screen
        skim = self.draws["skim"][screen] < um.p_skim(screen, user.speed)
        p_exam = um.p_examine(screen, skim)
        examine = self.draws["examine"][screen]
        n_examined, clicks_here, orders_here, leave = 0, 0, 0, False
        if self._reshows:
            showings = [self.showings[it.item_id] for it in slots]
            self.showings.update(it.item_id for it in slots)
        for slot, item in enumerate(slots):
            if not examine[slot] < p_exam:
                continue
            n_examined += 1
            out.examined_positions.append(start + slot)
            info = self._info_for(item.item_id, showings[slot]) if self._reshows else self.info[item.item_id]
            util = um.effective_utility(info.utility, info.brand, user, item.item_id)
            user.brand_seen[info.brand] += 1
            user.item_seen[item.item_id] += 1
            if not info.u_click < um.p_click(util, user):
                continue
            pos = start + slot
            clicks_here += 1
            user.clicks += 1
            user.clicked_items.add(item.item_id)
            out.clicks += 1
            out.click_positions.append(pos)
            self._emit(item, EventKind.CLICK, pos)
            detail = um.detail_ms(util, info.u_detail)
            self.t += detail
            self._poll()  # a page that arrived while the user was on the detail page comes first
            ordered = info.u_order < um.p_order_item(util, item.item_id, user)
            if ordered:
                orders_here += 1
                user.orders += 1
                out.orders += 1
                self._emit(item, EventKind.ORDER, pos)
            self._emit(item, EventKind.DETAIL_RETURN, pos, float(np.float32(detail)))
            if ordered and info.u_leave < um.p_leave_after_order(user):
                leave = True
                break
        dwell = float(np.float32(um.dwell_ms(n_examined, skim, self.draws["dwell"][screen], user.speed)))
        self.t += dwell
        self._poll()
        if self._direct_exposures:  # what _emit does on the lean path, in one loop
            record, new_event, exposure = self.device_session.record, tuple.__new__, EventKind.EXPOSURE
            out.exposed_positions.extend(range(start, start + len(slots)))
            for item in slots:
                r = record(new_event(_LeanEvent, (exposure, item.item_id, dwell)))  # type: ignore[arg-type]
                if r is not None:
                    self._schedule(r, self.t)
        else:
            for slot, item in enumerate(slots):
                out.exposed_positions.append(start + slot)
                self._emit(item, EventKind.EXPOSURE, start + slot, dwell)
        self._schedule(self.device_session.scroll_idle(dwell), self.t)  # the list rested for `dwell` ms
        user.frustrated = 0 if clicks_here else user.frustrated + 1
        if not leave:
            leave = self.draws["leave"][screen] < um.p_leave_state(screen, user)
        if leave:
            out.abandoned = out.clicks == 0
            self._end()
        else:
            self.t += um.cfg.scroll_ms / user.speed
            self.screen += 1
        return {"clicks": clicks_here, "orders": orders_here, "exposed": len(slots), "left": int(leave)}

    def _end(self) -> None:
        self._emit(None, EventKind.LEAVE, -1)
        ds = self.device_session
        rows = ds.close()
        self.done = True
        st, out = ds.stats, self.out
        out.triggers, out.fallbacks = st.triggers, st.fallbacks
        out.reranks_applied, out.reranks_late, out.reranks_dropped = st.applied, st.late, st.dropped
        out.reranks_unfinished, out.moved = st.unfinished, st.moved
        out.duration_ms = self.t
        out.screen_mj = self.profile.screen_mw * self.t / 1e3
        if ds.logger is not None:
            out.rows = rows


class Phone:
    """Runs sessions for one A/B arm. ``reranker`` is anything the device session drives (``RerankService``,
    ``HeuristicReranker``, or a simulator arm with ``rerank``/``features`` and optionally ``begin_session(spec)``);
    None keeps the cloud order. ``strict`` makes the device session raise instead of falling back (tests)."""

    def __init__(self, user_model: UserModel, cloud: CloudTransport, *, arm: str, reranker=None,
                 triggers: TriggerConfig | None = None, page_size: int | None = None, keep_logs: bool = True,
                 config: PhoneConfig | None = None, cost_model: CostModel | None = None,
                 privacy: PrivacyConfig | None = None, strict: bool = False, keep_events: bool = False):
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
        self.strict = strict
        self.keep_events = keep_events  # keep feedback events even without a reranker or logger (agents read them)

    def session(self, spec: SessionSpec) -> PhoneSession:
        return PhoneSession(self, spec)

    def run(self, spec: SessionSpec) -> SessionOutcome:
        s = PhoneSession(self, spec)
        while not s.done:
            s.play_screen()
        return s.out
