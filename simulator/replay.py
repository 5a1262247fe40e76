"""Replay traces: what one simulated session looked like on the phone, event by event, for both arms of an A/B.

A trace records, per arm, everything the replay page (``edge_rerank.replay_page``) draws: pages arriving, the
items revealed screen by screen, exposures with their dwell, clicks, detail pages, orders, leaving, each trigger,
and each rerank from request to outcome (applied / late / dropped / superseded / unfinished / fallback and why),
with the list order after it was applied, the items it moved and their scores. Both arms run the same
:class:`~edge_rerank.simulator.world.SessionSpec`, so they see the same user, intent and random draws.

Recording is opt-in and separate from the normal run: :class:`ReplayPhone` runs sessions with a recording
subclass of :class:`~edge_rerank.simulator.phone.PhoneSession` (and of the SDK's ``RerankSession``), which only
reads state after calling the original methods, so outcomes are identical with and without it, and a plain
``Phone`` pays nothing. A trace is bounded: at most ``max_events`` events per arm (then ``truncated``), each
holding at most one list of the session's loaded items.

    traces = record_replays(user_model, cloud, arms, specs[:30])
    write_traces(traces, "runs/demo/replay/traces.json")   # edge-rerank replay runs/demo -> replay.html
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path

import numpy as np

from edge_rerank.device_sdk.contracts import EventKind, PageItem, SearchPage
from edge_rerank.device_sdk.session import Rerank, RerankSession
from edge_rerank.simulator.phone import Phone, PhoneConfig, PhoneSession, SessionOutcome
from edge_rerank.simulator.world import CATEGORY_QUERIES, SessionSpec

FORMAT = "edge-rerank-replay/1"
TRACES_FILE = "replay/traces.json"  # under a run directory
MAX_EVENTS = 800
LEFT_EARLY_SCREENS = 3  # "left early": left (not at the end of the results) within this many screens
_KINDS = {EventKind.CLICK: "click", EventKind.ORDER: "order", EventKind.DETAIL_RETURN: "detail"}


def _r(x: float, nd: int = 3) -> float:
    return round(float(x), nd)


class ArmTrace:
    """The events of one arm's session (plain JSON-ready dicts), at most `max_events` of them."""

    def __init__(self, arm: str, max_events: int, clock: Callable[[], float]):
        if max_events < 1:
            raise ValueError(f"max_events must be at least 1, got {max_events}")
        self.arm, self.max_events, self.clock = arm, max_events, clock
        self.events: list[dict] = []
        self.truncated = False
        self.items: dict[int, list] = {}  # item id -> [category, brand, price level, cloud score, km, appeal]
        self.outcome: dict = {}
        self.appeal: Callable[[int], float] = lambda item_id: float("nan")
        self.context = (0.0, 0.0)
        self.screen_start: Callable[[], int] = lambda: 0
        self._rerank_index: dict[int, int] = {}
        self._keep: list[Rerank] = []  # the Rerank objects indexed (keeps their ids unique)
        self.n_pages = 0

    def add(self, kind: str, **fields) -> dict | None:
        if len(self.events) >= self.max_events:
            self.truncated = True
            return None
        ev = {"t": _r(self.clock(), 1), "k": kind, **fields}
        self.events.append(ev)
        return ev

    def add_items(self, items: Sequence[PageItem]) -> None:
        lat, lon = self.context
        for it in items:
            if it.item_id not in self.items:
                self.items[it.item_id] = [int(it.category), int(it.brand), int(it.price_level),
                                          _r(it.cloud_score), _r(np.hypot(it.lat - lat, it.lon - lon), 2),
                                          _r(self.appeal(it.item_id))]

    def rerank_id(self, r: Rerank) -> int:
        key = id(r)
        if key not in self._rerank_index:
            self._rerank_index[key] = len(self._rerank_index)
            self._keep.append(r)
        return self._rerank_index[key]

    def to_dict(self) -> dict:
        return {"arm": self.arm, "outcome": self.outcome, "truncated": self.truncated, "events": self.events}


class _RecordingRerankSession(RerankSession):
    """The SDK session, recording pages, reveals, triggers and rerank outcomes into `trace` (after or around
    the original methods; it changes nothing they do)."""

    def __init__(self, *args, trace: ArmTrace, **kwargs):
        self.trace = trace
        self._page_start: int | None = None
        self._before: list[int] | None = None
        super().__init__(*args, **kwargs)

    def _flush_page(self) -> None:
        if self._page_start is None:
            return
        added = self.items[self._page_start:]
        self._page_start = None
        self.trace.add_items(added)
        self.trace.n_pages += 1
        self.trace.add("page", page=self.trace.n_pages - 1, added=[it.item_id for it in added])

    def add_page(self, page: SearchPage) -> Rerank | None:
        self._page_start = len(self.items)
        try:
            return super().add_page(page)
        finally:
            self._flush_page()

    def reveal(self, n_revealed: int) -> Rerank | None:
        start = self.trace.screen_start()
        n = min(int(n_revealed), len(self.items))
        self.trace.add("reveal", start=start, ids=[it.item_id for it in self.items[start:n]])
        return super().reveal(n_revealed)

    def rerank_now(self, reason: str = "manual") -> Rerank | None:
        self._flush_page()  # a page-arrival trigger comes after its page
        self.trace.add("trigger", reason=reason, n_fixed=self.n_revealed)
        return super().rerank_now(reason)

    def poll(self) -> Rerank | None:
        p = self.pending
        if p is not None and p.ready_at_ms <= self.trace.clock():  # it is applied (or dropped) now
            self._before = [it.item_id for it in self.items]
        return super().poll()

    def _end(self, r: Rerank, status: str, reason: str | None = None) -> Rerank:
        out = super()._end(r, status, reason)
        ev: dict = {"r": self.trace.rerank_id(r), "status": status}
        if reason is not None:
            ev["why"] = reason
        if status in ("applied", "late") and self._before is not None:
            fixed = max(r.n_fixed, self.n_revealed)
            after = [it.item_id for it in self.items[fixed:]]
            old = {iid: fixed + k for k, iid in enumerate(self._before[fixed:])}
            ev.update(start=fixed, order=after, moved=r.moved,
                      moves=[[iid, old[iid], fixed + k] for k, iid in enumerate(after) if old.get(iid) != fixed + k])
        self._before = None
        self.trace.add("outcome", **ev)
        return out


class ReplayPhoneSession(PhoneSession):
    """A phone session that records an :class:`ArmTrace` (``self.trace``) as it runs."""

    def __init__(self, phone: Phone, spec: SessionSpec, max_events: int = MAX_EVENTS):
        self.trace = ArmTrace(phone.arm, max_events, clock=lambda: self.t)
        self.trace.context = (spec.context.lat, spec.context.lon)
        self.trace.appeal = lambda item_id: self.info[item_id].utility if item_id in self.info else 0.0
        self.trace.screen_start = lambda: self.screen * self.V
        self.device_session_class = partial(_RecordingRerankSession, trace=self.trace)
        self.t = 0.0
        super().__init__(phone, spec)

    def _schedule(self, r: Rerank | None, t_ms: float) -> None:
        if r is None:
            return super()._schedule(r, t_ms)
        n = r.n_fixed
        window = [it.item_id for it in self.device_session.items[n: n + r.n_window]]  # what it scored
        scores = r.result.scores
        ev = self.trace.add("rerank", r=self.trace.rerank_id(r), reason=r.reason, n_fixed=n, window=window,
                            scores=None if scores is None else [_r(s) for s in scores[: len(window)]])
        super()._schedule(r, t_ms)
        if ev is not None:
            ev["latency_ms"] = None if r.latency_ms is None else _r(r.latency_ms)
            ev["ready"] = _r(r.ready_at_ms, 1)

    def _emit(self, item: PageItem | None, kind: EventKind, position: int, dwell_ms: float = 0.0) -> None:
        tr = self.trace
        if kind == EventKind.EXPOSURE:
            last = tr.events[-1] if tr.events else None
            if (last is not None and last["k"] == "exposure" and last["t"] == _r(self.t, 1)
                    and last["start"] + len(last["ids"]) == position):
                last["ids"].append(item.item_id)  # the screen's exposures: one event
            else:
                tr.add("exposure", start=position, ids=[item.item_id], dwell=_r(dwell_ms, 1))
        elif kind == EventKind.LEAVE:
            o = self.out
            tr.add("leave", why="end of results" if o.exhausted else
                   ("without a click" if o.clicks == 0 else f"after {o.clicks} click(s)"))
        elif kind in _KINDS:
            fields = {"pos": position, "id": item.item_id}
            if kind == EventKind.DETAIL_RETURN:
                fields["ms"] = _r(dwell_ms, 1)
            tr.add(_KINDS[kind], **fields)
        super()._emit(item, kind, position, dwell_ms)

    def _end(self) -> None:
        super()._end()
        o = self.out
        self.trace.outcome = outcome_summary(o)


def outcome_summary(o: SessionOutcome) -> dict:
    return {"clicks": o.clicks, "orders": o.orders, "screens": o.screens, "pages": o.pages,
            "abandoned": o.abandoned, "exhausted": o.exhausted, "duration_ms": _r(o.duration_ms, 1),
            "reranks_applied": o.reranks_applied, "reranks_late": o.reranks_late,
            "reranks_dropped": o.reranks_dropped, "moved": o.moved, "triggers": dict(o.triggers),
            "fallbacks": dict(o.fallbacks), "examined": sorted(set(o.examined_positions)),
            "click_positions": list(o.click_positions)}


class ReplayPhone(Phone):
    """A :class:`Phone` whose sessions record replay traces (``run_traced``); ``run`` returns the same outcomes
    a plain ``Phone`` does."""

    max_events = MAX_EVENTS

    def session(self, spec: SessionSpec) -> ReplayPhoneSession:
        return ReplayPhoneSession(self, spec, self.max_events)

    def run_traced(self, spec: SessionSpec) -> tuple[SessionOutcome, ArmTrace]:
        s = self.session(spec)
        while not s.done:
            s.play_screen()
        return s.out, s.trace

    def run(self, spec: SessionSpec) -> SessionOutcome:
        return self.run_traced(spec)[0]


def _left_early(o: dict) -> bool:
    return not o.get("exhausted", False) and o.get("screens", 0) <= LEFT_EARLY_SCREENS


def _category_names(world) -> list[str]:
    names = CATEGORY_QUERIES if world.cfg.domain == "shop" else None
    if world.cfg.domain == "feed":
        from edge_rerank.simulator.feed import TOPICS

        names = TOPICS
    n = world.cfg.n_categories
    return [str(names[c]) if names is not None and c < len(names) else f"category {c}" for c in range(n)]


def record_replays(user_model, cloud, arms: Sequence, specs: Sequence[SessionSpec], *,
                   config: PhoneConfig | None = None, max_events: int = MAX_EVENTS) -> dict:
    """Run `specs` through every arm (``simulator.ab.Arm``; two or more, the first the baseline) on recording
    phones; returns the JSON-ready traces document (see :func:`write_traces`)."""
    if len(arms) < 2:
        raise ValueError("a replay compares two arms (the first is the baseline)")
    phones = []
    for arm in arms:
        phone = ReplayPhone(user_model, cloud, arm=arm.name, reranker=arm.reranker, triggers=arm.triggers,
                            keep_logs=False, config=config, cost_model=arm.cost_model)
        phone.max_events = max_events
        phones.append(phone)
    world = user_model.world
    sessions = []
    for spec in specs:
        traced = [p.run_traced(spec)[1] for p in phones]
        items: dict[int, list] = {}
        for tr in traced:
            items.update(tr.items)
        outs = [tr.outcome for tr in traced]
        key = [(o["clicks"], o["orders"], o["screens"], o["abandoned"]) for o in outs]
        sessions.append({
            "id": spec.session_id, "index": spec.index, "query": spec.query, "user": world.user_ids[spec.user],
            "predecided": bool(spec.predecided),
            "context": {"lat": _r(spec.context.lat, 2), "lon": _r(spec.context.lon, 2), "hour": spec.context.hour},
            "items": {str(k): v for k, v in items.items()},
            "arms": [tr.to_dict() for tr in traced],
            "outcome_differs": len(set(key)) > 1,
            "has_orders": any(o["orders"] > 0 for o in outs),
            "left_early": any(_left_early(o) for o in outs),
        })
    ucfg = user_model.cfg
    return {"format": FORMAT, "arms": [a.name for a in arms], "viewport_items": ucfg.viewport_items,
            "page_size": phones[0].cfg.page_size, "domain": world.cfg.domain,
            "category_names": _category_names(world), "max_events": max_events,
            "left_early_screens": LEFT_EARLY_SCREENS, "sessions": sessions}


def write_traces(traces: dict, path: str | Path) -> Path:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps(traces, separators=(",", ":"), allow_nan=False))
    return p


def read_traces(path: str | Path) -> dict:
    """A traces file, or the one under a run directory (``RUN_DIR/replay/traces.json``)."""
    p = Path(path)
    if p.is_dir():
        p = p / TRACES_FILE
    if not p.is_file():
        raise FileNotFoundError(f"{p}: no replay traces (run `edge-rerank demo` or `edge-rerank simulate --arms "
                                f"... --replay N` to write them)")
    data = json.loads(p.read_text())
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ValueError(f"{p}: not a replay traces file (format {FORMAT!r} expected)")
    return data


def list_states(arm: dict) -> list[list[int]]:
    """The phone's list (item ids in display order) after each event of an arm trace: what the page draws."""
    ids: list[int] = []
    states = []
    for ev in arm["events"]:
        if ev["k"] == "page":
            ids = ids + ev["added"]
        elif ev["k"] == "outcome" and "order" in ev:
            ids = ids[: ev["start"]] + ev["order"]
        states.append(ids)
    return states

