import time

import numpy as np
import pytest

from edge_rerank.device_sdk import backends
from edge_rerank.device_sdk.backends import BackendError
from edge_rerank.device_sdk.budgets import LatencyBudget
from edge_rerank.device_sdk.bundle import BundleError, read_bundle
from edge_rerank.device_sdk.contracts import EventKind, FeedbackEvent, SearchPage
from edge_rerank.device_sdk.feedback_store import FeedbackStore
from edge_rerank.device_sdk.model_manager import LoadedModel, ModelManager, load_model
from edge_rerank.device_sdk.reranker import RerankService, reinsert
from edge_rerank.device_sdk.session import RerankSession
from edge_rerank.device_sdk.triggers import TriggerConfig, TriggerPolicy
from tests.conftest import CTX, make_events, make_item


def test_reinsert_moves_only_unseen_items_within_the_window():
    scores = np.array([0.1, 0.9, 0.5, 0.9])
    order = reinsert(n_items=8, n_fixed=3, window=4, scores=scores)
    assert order[:3] == [0, 1, 2]  # seen: untouched
    assert order[3:7] == [4, 6, 5, 3]  # by score, ties keep cloud order (4 before 6)
    assert order[7:] == [7]  # beyond the window: untouched
    assert sorted(order) == list(range(8))


def test_trigger_policy_click_return_skip_run_page_arrival_and_debounce():
    rng = np.random.default_rng(0)
    from edge_rerank.device_sdk.features import FeatureConfig

    cfg = FeatureConfig(n_categories=12, n_brands=48)
    items = [make_item(k, rng, cfg, k) for k in range(6)]
    p = TriggerPolicy(TriggerConfig(skip_run=3), dwell_threshold_ms=1000)
    assert p.on_page_arrival(has_feedback=False) is None
    reasons = [p.observe(e) for e in make_events(items[:1], {items[0].item_id})]
    assert "click_return" in reasons
    long_skips = [FeedbackEvent.for_item(it, EventKind.EXPOSURE, 0, "r", k, 2000) for k, it in enumerate(items[1:4])]
    assert [p.observe(e) for e in long_skips] == [None, None, "skip_run"]
    short = [FeedbackEvent.for_item(it, EventKind.EXPOSURE, 0, "r", k, 200) for k, it in enumerate(items)]
    assert all(p.observe(e) is None for e in short)  # short exposures are not skips
    assert p.on_page_arrival(has_feedback=True) == "page_arrival"
    assert p.on_page_arrival(has_feedback=True) is None  # debounced: no event since the last trigger


def test_feedback_store_is_bounded():
    s = FeedbackStore(max_events_per_session=5, max_sessions=2)
    for k in range(8):
        s.add("a", FeedbackEvent(ts_ms=k, request_id="r", item_id=k, kind=EventKind.EXPOSURE))
    assert [e.item_id for e in s.events("a")] == [3, 4, 5, 6, 7]
    s.add("b", FeedbackEvent(ts_ms=0, request_id="r", item_id=0, kind=EventKind.CLICK))
    s.add("c", FeedbackEvent(ts_ms=0, request_id="r", item_id=0, kind=EventKind.CLICK))
    assert s.events("a") == [] and len(s.events("c")) == 1


class _Fake:
    """A backend double for failure paths only (the real backends are tested with real models)."""

    name = "fake"

    def __init__(self, fn):
        self.fn = fn

    def run(self, inputs):
        return self.fn(inputs)


def _service(bundle_dir, fn=None, **kw) -> RerankService:
    real = load_model(bundle_dir)
    backend = _Fake(fn) if fn else real.backend
    return RerankService(LoadedModel(real.bundle, backend), **kw)


def _page(fcfg, n=25):
    rng = np.random.default_rng(5)
    items = [make_item(k, rng, fcfg, k) for k in range(n)]
    return items, make_events(items[:4], {items[1].item_id})


def test_rerank_applies_and_keeps_seen_positions(bundle_dir, fcfg):
    items, ev = _page(fcfg)
    res = _service(bundle_dir).rerank(items, 4, ev, CTX)
    assert res.applied and res.fallback_reason is None
    assert res.order[:4] == [0, 1, 2, 3] and sorted(res.order) == list(range(25))
    assert set(res.timings_ms) == {"features", "inference", "reinsertion", "total"}


@pytest.mark.parametrize("fn,reason", [
    (lambda x: (_ for _ in ()).throw(RuntimeError("boom")), "inference"),
    (lambda x: np.full((1, 25), np.nan, np.float32), "non_finite_scores"),
    (lambda x: np.zeros((1, 7), np.float32), "bad_output_shape"),
])
def test_backend_failures_keep_the_cloud_order(bundle_dir, fcfg, fn, reason):
    items, ev = _page(fcfg)
    svc = _service(bundle_dir, fn)
    res = svc.rerank(items, 4, ev, CTX)
    assert not res.applied and res.order == list(range(25)) and res.fallback_reason.startswith(reason)
    assert svc.fallbacks[reason] == 1


def test_bad_features_and_no_model_and_latency_budget_keep_the_cloud_order(bundle_dir, fcfg):
    items, ev = _page(fcfg)
    items[10].cloud_score = float("nan")
    res = _service(bundle_dir).rerank(items, 4, ev, CTX)
    assert not res.applied and res.fallback_reason.startswith("features")
    assert RerankService(None).rerank(items, 0, ev, CTX).fallback_reason == "no_model"

    def slow(x):
        time.sleep(0.02)
        return np.zeros((1, 25), np.float32)

    items, ev = _page(fcfg)
    session = RerankSession("s", CTX, _service(bundle_dir, slow), triggers=TriggerConfig(budget=LatencyBudget(ms=5.0)))
    session.add_page(SearchPage(request_id="r", session_id="s", page_index=0, model_version="", items=items))
    session.reveal(4)
    r = session.rerank_now()
    assert r.status == "fallback" and r.fallback_reason.startswith("latency_budget") and r.latency_ms >= 20
    assert [it.item_id for it in session.items] == [it.item_id for it in items]  # the cloud order stays


def test_bundle_verification_failures(bundle_dir, tmp_path, fcfg):
    import shutil

    b = read_bundle(bundle_dir, expected_fingerprint=fcfg.fingerprint())
    assert b.manifest.format == "onnx" and b.manifest.validation["torch.max_abs_diff"] < 1e-4
    bad = tmp_path / "bad"
    shutil.copytree(bundle_dir, bad)
    with open(bad / b.manifest.model_file, "r+b") as f:
        f.seek(100)
        f.write(b"\x00\x01\x02")
    with pytest.raises(BundleError, match="sha256"):
        read_bundle(bad)
    with pytest.raises(BundleError, match="app expects"):
        read_bundle(bundle_dir, expected_fingerprint="0" * 16)
    trunc = tmp_path / "trunc"
    shutil.copytree(bundle_dir, trunc)
    (trunc / b.manifest.model_file).write_bytes((bundle_dir / b.manifest.model_file).read_bytes()[:1000])
    with pytest.raises(BundleError):
        read_bundle(trunc)
    (trunc / "manifest.json").write_text("{not json")
    with pytest.raises(BundleError, match="JSON"):
        read_bundle(trunc)


def test_model_manager_keeps_last_good_model(bundle_dir, tmp_path):
    mm = ModelManager()
    assert mm.install(bundle_dir) and mm.current.version == "test"
    assert not mm.install(tmp_path)  # empty dir: rejected
    assert mm.current.version == "test" and "manifest" in mm.last_error


def test_unknown_backend_is_a_clear_error(bundle_dir):
    with pytest.raises(BackendError, match="unknown backend"):
        backends.create("tensorrt", bundle_dir / "x")
    with pytest.raises(BackendError, match="cannot load"):
        backends.create("onnxruntime", bundle_dir / "manifest.json")


def test_budget_gate_skips_triggers_while_reranks_are_slow_or_energy_is_spent():
    from edge_rerank.device_sdk.contracts import EventKind, FeedbackEvent
    from edge_rerank.device_sdk.triggers import TriggerConfig, TriggerPolicy

    ret = FeedbackEvent(ts_ms=0, request_id="r", item_id=1, kind=EventKind.DETAIL_RETURN, dwell_ms=5000)
    p = TriggerPolicy(TriggerConfig(budget=LatencyBudget(ms=50, window=3, over_max=2)))
    assert p.observe(ret) == "click_return"
    p.record_cost(80.0)
    assert p.observe(ret) == "click_return"  # one slow rerank of the last three: still allowed
    p.record_cost(90.0)
    assert p.observe(ret) is None and p.budget_skips == 1  # two of the last three over budget: skipped
    p.record_cost(10.0), p.record_cost(10.0)
    assert p.observe(ret) == "click_return"  # fast again
    e = TriggerPolicy(TriggerConfig(budget=LatencyBudget(energy_mj=5.0)))
    e.record_cost(1.0, energy_mj=5.0)
    assert e.observe(ret) is None and e.budget_skips == 1


def test_scroll_idle_and_page_boundary_triggers():
    from edge_rerank.device_sdk.triggers import TriggerConfig, TriggerPolicy

    p = TriggerPolicy(TriggerConfig(scroll_idle_ms=800, page_boundary_items=4, min_events_between=0))
    assert p.on_scroll_idle(500, has_feedback=True) is None
    assert p.on_scroll_idle(900, has_feedback=False) is None
    assert p.on_scroll_idle(900, has_feedback=True) == "scroll_idle"
    assert p.on_viewport(last_visible=10, page_size=25, has_feedback=True) is None
    assert p.on_viewport(last_visible=20, page_size=25, has_feedback=True) == "page_boundary"
    assert p.on_viewport(last_visible=22, page_size=25, has_feedback=True) is None  # once per page
    assert p.on_viewport(last_visible=46, page_size=25, has_feedback=True) == "page_boundary"  # next page
    assert TriggerPolicy().on_viewport(24, 25, True) is None  # off by default


def test_simulated_phone_fires_page_boundary_and_scroll_idle_triggers(world, inproc_cloud):
    from collections import Counter

    from edge_rerank.device_sdk.triggers import TriggerConfig
    from edge_rerank.simulator.phone import Phone
    from edge_rerank.simulator.user_model import UserModel

    cfg = TriggerConfig(page_boundary_items=6, scroll_idle_ms=4000)
    phone = Phone(UserModel(world), inproc_cloud, arm="cloud", triggers=cfg)
    fired = sum((phone.run(world.session(i, 3)).triggers for i in range(60)), Counter())
    assert fired["page_boundary"] > 0 and fired["scroll_idle"] > 0
