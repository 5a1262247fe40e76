"""The app-facing device session: the loop an app adopts (pages, reveals, events -> triggers -> rerank of unseen
items), following model swaps, never raising into the app (unless strict), and the README's example."""

from __future__ import annotations

import logging
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest

from edge_rerank.device_sdk import (
    DeviceFault,
    EventKind,
    FeedbackEvent,
    LatencyBudget,
    ModelManager,
    RerankService,
    RerankSession,
    SearchPage,
    TriggerConfig,
    load_model,
)
from edge_rerank.device_sdk.wire import page_to_bytes
from tests.conftest import CTX, make_item

ROOT = Path(__file__).resolve().parents[1]


def _page(fcfg, n=25, start=0, index=0, seed=5) -> SearchPage:
    rng = np.random.default_rng(seed + index)
    items = [make_item(start + k, rng, fcfg, start + k) for k in range(n)]
    return SearchPage(request_id=f"r{index}", session_id="s", page_index=index, model_version="", items=items)


def _ids(items) -> list[int]:
    return [it.item_id for it in items]


def _click_and_return(session: RerankSession, pos: int, ts: int = 1000):
    item = session.items[pos]
    session.record(FeedbackEvent.for_item(item, EventKind.CLICK, ts, "r0", pos))
    return session.record(FeedbackEvent.for_item(item, EventKind.DETAIL_RETURN, ts + 9000, "r0", pos, 9000.0))


@pytest.fixture
def manager(bundle_dir) -> ModelManager:
    m = ModelManager()
    assert m.install(bundle_dir)
    return m


def test_click_return_reranks_only_unseen_items(manager, fcfg):
    s = RerankSession("s", CTX, RerankService(manager))
    page = _page(fcfg)
    assert s.add_page(page) is None  # no feedback yet: nothing to react to
    s.reveal(4)
    r = _click_and_return(s, 1)
    assert r is not None and r.reason == "click_return" and r.status == "applied" and r.moved > 0
    assert r.result.model_version == "test" and r.n_fixed == 4 and r.n_events == 2
    assert _ids(s.items[:4]) == _ids(page.items[:4])  # seen: untouched
    assert sorted(_ids(s.items)) == sorted(_ids(page.items))  # nothing lost or added
    assert s.stats.applied == 1 and s.stats.triggers["click_return"] == 1


def test_a_model_swap_reaches_the_next_rerank(manager, bundle_dir, tmp_path, fcfg):
    other = tmp_path / "v2"
    shutil.copytree(bundle_dir, other)
    manifest = (other / "manifest.json").read_text().replace('"version": "test"', '"version": "v2"')
    (other / "manifest.json").write_text(manifest)
    s = RerankSession("s", CTX, RerankService(manager))
    s.add_page(_page(fcfg))
    s.reveal(4)
    assert _click_and_return(s, 1).result.model_version == "test"
    assert manager.install(other)
    assert s.features is not None
    assert _click_and_return(s, 2, ts=30_000).result.model_version == "v2"


def test_swaps_under_concurrent_reranks_never_mix_models(manager, bundle_dir, fcfg):
    svc = RerankService(manager)
    page = _page(fcfg)
    events = [FeedbackEvent.for_item(page.items[1], EventKind.CLICK, 0, "r0", 1)]
    stop = threading.Event()

    def swapper():
        while not stop.is_set():
            manager.install(bundle_dir)

    t = threading.Thread(target=swapper)
    t.start()
    try:
        results = [svc.rerank(page.items, 4, events, CTX) for _ in range(40)]
    finally:
        stop.set()
        t.join()
    assert all(r.applied and sorted(r.order) == list(range(25)) for r in results)


@pytest.mark.parametrize("items,n_fixed,events,context", [
    ("page", -3, [], CTX),            # negative
    ("page", 26, [], CTX),            # past the end
    ("page", "3", [], CTX),           # wrong type
    ("page", True, [], CTX),          # bool is not a position
    ("page", 2.5, [], CTX),           # float
    (None, 0, [], CTX),               # no items
    ("text", 0, [], CTX),             # a string is not a list of items
    ("page", 0, [{"kind": 2}], CTX),  # an event of the wrong type
    ("page", 0, None, CTX),           # events missing
    ("page", 0, [], None),            # context missing
])
def test_invalid_rerank_arguments_fall_back_to_the_cloud_order(manager, fcfg, items, n_fixed, events, context):
    page = _page(fcfg)
    items = page.items if items == "page" else items
    svc = RerankService(manager)
    res = svc.rerank(items, n_fixed, events, context)
    assert not res.applied and res.fallback_reason.startswith("bad_arguments")
    n = len(items) if isinstance(items, list) else 0
    assert res.order == list(range(n))  # the cloud order, nothing dropped
    with pytest.raises(DeviceFault, match="bad_arguments"):
        RerankService(manager, strict=True).rerank(items, n_fixed, events, context)


def test_each_fallback_reason_is_warned_once(manager, fcfg, caplog):
    svc = RerankService(manager)
    page = _page(fcfg)
    with caplog.at_level(logging.WARNING, logger="edge_rerank.device_sdk.reranker"):
        for _ in range(5):
            svc.rerank(page.items, -1, [], CTX)
        svc.rerank(page.items, 0, [], None)
    assert len(caplog.records) == 1 and svc.fallbacks["bad_arguments"] == 6


def test_no_model_keeps_the_cloud_order_and_marks_trigger_points(fcfg):
    s = RerankSession("s", CTX, RerankService(ModelManager()))  # nothing installed yet
    page = _page(fcfg)
    s.add_page(page)
    s.reveal(4)
    r = _click_and_return(s, 1)
    assert r.status == "fallback" and r.fallback_reason == "no_model" and _ids(s.items) == _ids(page.items)
    cloud_only = RerankSession("s2", CTX)  # no reranker at all: only trigger points
    cloud_only.add_page(page)
    cloud_only.reveal(4)
    assert _click_and_return(cloud_only, 1) is None and cloud_only.stats.triggers["click_return"] == 1


@pytest.mark.parametrize("bad", [
    "not an event", None, 42,
    FeedbackEvent(ts_ms=0, request_id="r", item_id=1, kind=EventKind.EXPOSURE, dwell_ms=float("nan")),
    FeedbackEvent(ts_ms=0, request_id="r", item_id=1, kind=EventKind.EXPOSURE, dwell_ms=float("inf")),
    FeedbackEvent(ts_ms=0, request_id="r", item_id=1, kind=EventKind.EXPOSURE, dwell_ms=-5.0),
])
def test_bad_events_are_refused_alone(manager, fcfg, bad):
    s = RerankSession("s", CTX, RerankService(manager))
    s.add_page(_page(fcfg))
    good = FeedbackEvent.for_item(s.items[0], EventKind.CLICK, 0, "r0", 0)
    assert s.record(good) is None
    assert s.record(bad) is None and s.stats.refused_events == 1
    assert s.events() == [good]
    with pytest.raises(DeviceFault, match="bad_event"):
        RerankSession("t", CTX, RerankService(manager), strict=True).record(bad)


@pytest.mark.parametrize("page", [None, "page", {"items": []}, 3])
def test_bad_pages_and_arguments_are_refused(manager, fcfg, page):
    s = RerankSession("s", CTX, RerankService(manager))
    s.add_page(_page(fcfg))
    before = _ids(s.items)
    assert s.add_page(page) is None and _ids(s.items) == before
    assert s.reveal("4") is None and s.n_revealed == 0
    assert s.faults.counts["bad_page"] == 1 and s.faults.counts["bad_arguments"] == 1


def test_items_already_loaded_are_not_shown_twice(fcfg):
    s = RerankSession("s", CTX)
    s.add_page(_page(fcfg))
    s.add_page(_page(fcfg, start=20, index=1))  # overlaps 20..24
    assert len(s.items) == 45 and len(set(_ids(s.items))) == 45


def test_latency_budget_is_the_sessions_one_object(manager, fcfg):
    tight = TriggerConfig(budget=LatencyBudget(ms=1e-6))
    s = RerankSession("s", CTX, RerankService(manager), triggers=tight)
    page = _page(fcfg)
    s.add_page(page)
    s.reveal(4)
    r = _click_and_return(s, 1)
    assert r.status == "fallback" and r.fallback_reason.startswith("latency_budget")
    assert _ids(s.items) == _ids(page.items)


def _external(manager, late_policy="remaining"):
    now = [0.0]
    s = RerankSession("s", CTX, RerankService(manager), timing="external", late_policy=late_policy,
                      clock=lambda: now[0])
    return s, now


@pytest.mark.parametrize("late_policy", ["remaining", "drop"])
def test_external_timing_applies_late_results_to_what_is_still_unseen(manager, fcfg, late_policy):
    s, now = _external(manager, late_policy)
    s.add_page(_page(fcfg))
    s.reveal(4)
    r = _click_and_return(s, 1)
    assert r.status == "computed"  # the caller models the latency
    s.finish(r, latency_ms=30.0, ready_at_ms=30.0)
    assert r.status == "pending"
    s.reveal(8)  # the user scrolled on before the result arrived
    seen = _ids(s.items[:8])
    now[0] = 31.0
    s.poll()
    assert _ids(s.items[:8]) == seen  # revealed positions never move
    if late_policy == "drop":
        assert r.status == "dropped" and s.stats.dropped == 1
    else:
        assert r.status == "late" and s.stats.late == 1 and s.stats.applied == 1


def test_a_newer_rerank_supersedes_a_pending_one(manager, fcfg):
    s, now = _external(manager)
    s.add_page(_page(fcfg))
    s.reveal(4)
    first = _click_and_return(s, 1)
    s.finish(first, 10.0, ready_at_ms=100.0)
    second = _click_and_return(s, 2, ts=20_000)
    s.finish(second, 10.0, ready_at_ms=100.0)
    assert first.status == "superseded" and s.stats.fallbacks["superseded"] == 1
    now[0] = 100.0
    s.poll()
    assert second.status == "applied"
    s.close()
    assert s.stats.unfinished == 0 and s.record(FeedbackEvent(0, "r", 1, EventKind.CLICK)) is None


def test_readme_device_example_runs_as_written(bundle_dir, fcfg, capsys):
    example = (ROOT / "docs/examples/device_session.py").read_text()
    assert example.strip() in (ROOT / "README.md").read_text(), "README's device example drifted from the file"
    assert len(example.strip().splitlines()) <= 15
    page = _page(fcfg)
    ns = {"BUNDLE_DIR": bundle_dir, "PAGE_BYTES": page_to_bytes(page)}
    exec(compile(example, "device_session.py", "exec"), ns)  # noqa: S102 - the README's own code
    out = capsys.readouterr().out.split()
    assert out[:2] == ["click_return", "applied"] and int(out[2]) > 0
    assert sorted(_ids(ns["session"].items)) == sorted(_ids(page.items))


def test_loaded_model_works_without_a_manager(bundle_dir, fcfg):
    s = RerankSession("s", CTX, RerankService(load_model(bundle_dir)))
    s.add_page(_page(fcfg))
    s.reveal(4)
    assert _click_and_return(s, 1).status == "applied"


# ---- page-arrival preparation (RerankService.prepare) -------------------------------------------------------------
def _session_scores(manager, fcfg, *, prepare: bool) -> list[list[float]]:
    """Scores of every rerank of a scripted session (two pages, clicks between scrolls), with the service's
    page-arrival preparation on or off."""
    service = RerankService(manager)
    if not prepare:
        service.prepare = None  # the session skips a reranker without it
    s = RerankSession("s", CTX, service)
    out = []
    for index in range(2):
        s.add_page(_page(fcfg, start=25 * index, index=index))
        for step in range(3):
            s.reveal(25 * index + 4 * (step + 1))
            r = _click_and_return(s, 25 * index + 4 * step + 1, ts=100_000 * index + 20_000 * step)
            assert r is not None and r.result.applied, r and r.result.fallback_reason
            out.append(r.result.scores)
    return out


def test_page_arrival_prepares_item_rows_and_reranks_score_the_same(manager, fcfg):
    service = RerankService(manager)
    s = RerankSession("s", CTX, service)
    page = _page(fcfg)
    s.add_page(page)
    table = service._builder._table
    assert all(id(it) in table.rows for it in page.items)  # rows written at page arrival, not at the first rerank
    assert s.stats.prepare_ms > 0.0
    misses = table.misses
    s.reveal(4)
    assert _click_and_return(s, 1).result.applied
    assert table.misses == misses  # the rerank found every row
    assert _session_scores(manager, fcfg, prepare=True) == _session_scores(manager, fcfg, prepare=False)


@pytest.mark.parametrize("items", [None, "items", [1, 2], [None], {"a": 1}, 3.5])
def test_prepare_never_raises_on_what_is_not_a_list_of_items(manager, items):
    assert RerankService(manager).prepare(items) == 0.0
    assert RerankService(None).prepare([]) == 0.0  # no model: nothing to prepare


def test_items_prepare_cannot_hold_are_left_to_the_reranks_own_checks(manager, fcfg):
    page = _page(fcfg)
    bad = page.items[3]
    bad.id_embedding = np.full_like(bad.id_embedding, np.nan)  # the rerank refuses it with its usual reason
    service = RerankService(manager)
    s = RerankSession("s", CTX, service)
    s.add_page(page)
    s.reveal(2)
    r = _click_and_return(s, 1)
    assert r.status == "fallback" and r.fallback_reason.startswith("features")
    assert _ids(s.items) == _ids(page.items)


class _PrepareFails:
    features = None

    def __init__(self, returns=None, raises=False):
        self.returns, self.raises = returns, raises

    def prepare(self, items):
        if self.raises:
            raise RuntimeError("prepare broke")
        return self.returns

    def rerank(self, items, n_fixed, events, context):
        from edge_rerank.device_sdk.reranker import RerankResult

        return RerankResult(order=list(range(len(items))), applied=False, fallback_reason="test")


@pytest.mark.parametrize("returns", [None, "1.0", float("nan"), float("inf"), -0.0, [1.0]])
def test_a_third_party_prepare_cannot_break_the_session(fcfg, returns):
    s = RerankSession("s", CTX, _PrepareFails(returns=returns))
    s.add_page(_page(fcfg))
    assert len(s.items) == 25 and s.stats.prepare_ms == 0.0
    s = RerankSession("s", CTX, _PrepareFails(raises=True))
    s.add_page(_page(fcfg))
    assert len(s.items) == 25
    with pytest.raises(RuntimeError, match="prepare broke"):
        RerankSession("s", CTX, _PrepareFails(raises=True), strict=True).add_page(_page(fcfg))
