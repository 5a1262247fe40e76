"""``RerankService.rerank_many`` (issue 18, branch h29): many reranks answered at once (one ``build_many``, one
backend call) give each request what ``rerank`` gives it alone: order, moved count, fallback reason, model version
and (with the bundle's fixed-batch file, which scores row by row) the scores, through sessions advancing side by
side, with bad requests mixed in; a backend that fails on some lists fails only those requests; a strict service
raises the first fault."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge_rerank.device_sdk.backends import BackendError
from edge_rerank.device_sdk.contracts import Context
from edge_rerank.device_sdk.faults import DeviceFault
from edge_rerank.device_sdk.feedback_store import FeedbackStore
from edge_rerank.device_sdk.model_manager import LoadedModel, load_model
from edge_rerank.device_sdk.reranker import RerankService
from tests.conftest import ScriptedSession, make_item

STEPS = ["events", "page", "shift", "reorder", "new_object", "clear", "same", "context"]


@pytest.fixture(scope="module")
def model(bundle_dir) -> LoadedModel:
    return load_model(bundle_dir)


def _same(a, b) -> None:
    assert a.order == b.order and a.applied == b.applied and a.moved == b.moved
    assert a.fallback_reason == b.fallback_reason and a.model_version == b.model_version
    assert a.scores == b.scores
    if a.applied:
        assert set(a.timings_ms) == set(b.timings_ms) == {"features", "inference", "reinsertion", "total"}


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 2**16), n_sessions=st.integers(1, 5), n_page=st.integers(3, 30),
       steps=st.lists(st.lists(st.tuples(st.sampled_from(STEPS), st.integers(1, 8)), min_size=1, max_size=5),
                      min_size=1, max_size=5), cache=st.sampled_from([40, 4096]))
def test_property_rerank_many_equals_rerank_one_at_a_time(model, seed, n_sessions, n_page, steps, cache):
    cfg = model.bundle.feature_config
    rng = np.random.default_rng(seed)
    many, one = RerankService(model, item_cache=cache), RerankService(model, item_cache=cache)
    store = FeedbackStore(max_events_per_session=40)
    sessions = [ScriptedSession(cfg, rng, store, n_page=n_page, dwell=3000.0, session=f"s{k}",
                                ctx=Context(1.0 + k, 2.0, (seed + k) % 24)) for k in range(n_sessions)]
    for round_ in steps:
        for k, sess in enumerate(sessions):
            sess.step(*round_[k % len(round_)])
        requests = [(list(s.items), s.n_fixed, store.snapshot(s.session), s.ctx) for s in sessions]
        requests.append(("not a list", 0, [], sessions[0].ctx))  # a bad request in the middle of the batch
        got = many.rerank_many(requests)
        assert len(got) == len(requests)
        for req, res in zip(requests, got, strict=True):
            _same(res, one.rerank(*req))
    assert many.calls == one.calls
    assert many.fallbacks == one.fallbacks


def test_bad_requests_and_a_list_with_a_non_finite_feature(model):
    cfg = model.bundle.feature_config
    rng = np.random.default_rng(2)
    items = [make_item(k, rng, cfg, k) for k in range(cfg.n_max + 5)]
    bad = [make_item(100 + k, rng, cfg, k) for k in range(6)]
    bad[2].cloud_score = float("nan")
    ctx = Context(1.0, 1.0, 3)
    requests = [(items, 0, [], ctx), (items, len(items) - 1, [], ctx), (bad, 0, [], ctx), (items, 3, [], "ctx"),
                (items, 2, [], ctx), (items, -1, [], ctx)]
    svc = RerankService(model)
    got = svc.rerank_many(requests)
    for req, res in zip(requests, got, strict=True):
        _same(res, RerankService(model).rerank(*req))
    assert [r.applied for r in got] == [True, False, False, False, True, False]
    assert got[1].fallback_reason == "nothing_to_rerank" and got[2].fallback_reason.startswith("features:")
    assert RerankService(None).rerank_many(requests[:2])[0].fallback_reason == "no_model"
    assert svc.rerank_many([]) == []


class _FailsOnSomeLists:
    """Fails on every batch holding a list with an odd number of candidates (a fault of one list, not the batch)."""

    name = "flaky"

    def __init__(self, real):
        self.real, self.calls = real, 0

    def run(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        self.calls += 1
        if np.any(inputs["cand_mask"].sum(axis=1) % 2 == 1):
            raise BackendError("odd list")
        return self.real.run(inputs)


def test_a_failing_list_fails_only_its_own_request_and_strict_raises(model):
    cfg = model.bundle.feature_config
    rng = np.random.default_rng(7)
    ctx = Context(1.0, 1.0, 3)
    lists = [[make_item(100 * r + k, rng, cfg, k) for k in range(4 + r)] for r in range(5)]  # 4..8 candidates
    flaky = _FailsOnSomeLists(model.backend)
    m = LoadedModel(bundle=model.bundle, backend=flaky)  # type: ignore[arg-type]
    got = RerankService(m).rerank_many([(x, 0, [], ctx) for x in lists])
    assert [r.applied for r in got] == [True, False, True, False, True]
    assert all(r.fallback_reason.startswith("inference: odd list") for r in got if not r.applied)
    assert flaky.calls == 1 + len(lists)  # the batch, then each list alone
    even = RerankService(m)
    flaky.calls = 0
    assert all(r.applied for r in even.rerank_many([(x, 0, [], ctx) for x in lists[::2]]))
    assert flaky.calls == 1  # one backend call for the whole batch
    with pytest.raises(DeviceFault):
        RerankService(m, strict=True).rerank_many([(x, 0, [], ctx) for x in lists])


def test_a_batch_build_that_fails_as_a_whole_falls_back_every_request(model, monkeypatch):
    """Whatever build_many raises (not a per-request error) reaches no caller: each request keeps the cloud order."""
    from edge_rerank.device_sdk.features.operators import FeatureBuilder

    cfg = model.bundle.feature_config
    rng = np.random.default_rng(3)
    ctx = Context(1.0, 1.0, 3)
    lists = [[make_item(100 * r + k, rng, cfg, k) for k in range(5)] for r in range(3)]

    def broken(self, requests):
        raise MemoryError("no room for the batch")

    monkeypatch.setattr(FeatureBuilder, "build_many", broken)
    got = RerankService(model).rerank_many([(x, 0, [], ctx) for x in lists])
    assert [r.applied for r in got] == [False] * 3
    assert all(r.order == list(range(5)) and r.fallback_reason == "features: no room for the batch" for r in got)
    with pytest.raises(DeviceFault):
        RerankService(model, strict=True).rerank_many([(x, 0, [], ctx) for x in lists])
