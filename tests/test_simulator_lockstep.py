"""The lock-step runner (issue 18) gives every session the outcome the one-at-a-time runner gives it, for the
bundle's onnxruntime file (fixed batch 1: row by row), a batch-dynamic ONNX export (one call per round), the numpy
reference (natively batched) and a backend that fails on some lists (only those sessions fall back)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from edge_rerank.device_sdk import backends
from edge_rerank.device_sdk.backends import BackendError
from edge_rerank.device_sdk.bundle import read_bundle
from edge_rerank.device_sdk.model_manager import LoadedModel, load_model
from edge_rerank.device_sdk.reranker import RerankService
from edge_rerank.simulator.ab import Arm
from edge_rerank.simulator.lockstep import LockstepRunner, can_batch
from edge_rerank.simulator.user_model import UserModel

N_SESSIONS = 40


def _comparable(o) -> dict:
    d = dataclasses.asdict(o)
    d.pop("rerank_ms")  # host wall clock: a measurement of this machine, not a simulated quantity
    return d


def _both(world, cloud, model: LoadedModel, batch: int = 8):
    um = UserModel(world)
    phone = Arm("device", RerankService(model)).phone(um, cloud)
    specs = [world.session(i, 5) for i in range(N_SESSIONS)]
    one = [phone.run(s) for s in specs]
    runner = LockstepRunner(phone, batch=batch)
    assert can_batch(phone)
    locked = runner.run(specs)
    return one, locked, runner.stats


def _assert_same(one, locked, stats) -> None:
    assert [o.session_id for o in locked] == [o.session_id for o in one]
    for a, b in zip(one, locked, strict=True):
        assert _comparable(a) == _comparable(b), a.session_id
    reranks = sum(len(o.device_ms) for o in one)
    assert reranks > N_SESSIONS  # the device model was in the loop
    assert stats["requests"] / stats["rounds"] > 2  # it did batch: one rerank_many per round


@pytest.fixture(scope="module")
def onnx_model(bundle_dir) -> LoadedModel:
    return load_model(bundle_dir)


@pytest.mark.parametrize("batch", [8, 64])  # 64 > sessions: sessions that end without a rerank start the next
def test_lockstep_equals_one_at_a_time_onnxruntime_bundle(world, inproc_cloud, onnx_model, batch):
    assert not onnx_model.backend.batched  # the bundle's file has a fixed batch 1: rows run one by one
    _assert_same(*_both(world, inproc_cloud, onnx_model, batch=batch))


def test_lockstep_equals_one_at_a_time_batched_onnx_and_numpy(world, inproc_cloud, trained, bundle_dir, tmp_path):
    from edge_rerank.converters.numpy_ref.convert import export_numpy
    from edge_rerank.converters.onnx.convert import export_onnx

    model, _, test = trained
    bundle = read_bundle(bundle_dir)
    x = {k: v[:1] for k, v in test.inputs.items()}
    be = backends.create("onnxruntime", export_onnx(model, x, tmp_path / "dyn.onnx", dynamic_batch=True))
    assert be.batched
    _assert_same(*_both(world, inproc_cloud, LoadedModel(bundle=bundle, backend=be), batch=16))
    ref = backends.create("numpy", export_numpy(model, tmp_path / "reranker.npz"))
    _assert_same(*_both(world, inproc_cloud, LoadedModel(bundle=bundle, backend=ref)))


class _FailsOnSomeLists:
    """A backend that fails on every list with an odd number of candidates (a fault of one list, not the batch)."""

    name = "flaky"

    def __init__(self, real):
        self.real = real

    def run(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        if np.any(inputs["cand_mask"].sum(axis=1) % 2 == 1):
            raise BackendError("odd list")
        return self.real.run(inputs)


def test_a_failing_list_fails_only_its_own_session(world, inproc_cloud, onnx_model):
    model = LoadedModel(bundle=onnx_model.bundle, backend=_FailsOnSomeLists(onnx_model.backend))  # type: ignore[arg-type]
    one, locked, stats = _both(world, inproc_cloud, model)
    _assert_same(one, locked, stats)
    assert sum(o.fallbacks.get("inference", 0) for o in one) > 0  # the fault happened, and the same way


class _Counting:
    """Counts backend calls (and the lists they scored)."""

    name = "counting"

    def __init__(self, real):
        self.real, self.calls, self.lists = real, 0, 0
        self.batched = getattr(real, "batched", False)

    def run(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        self.calls += 1
        self.lists += len(inputs["cand_mask"])
        return self.real.run(inputs)


def test_one_feature_batch_and_one_backend_call_per_round(world, inproc_cloud, trained, bundle_dir, tmp_path):
    """The runner parks sessions at the rerank call: each round is one rerank_many (one build_many, one backend call
    for every parked list), and the outcomes stay those of the one-at-a-time runner."""
    from edge_rerank.converters.onnx.convert import export_onnx
    from edge_rerank.device_sdk.features.operators import FeatureBuilder

    model, _, test = trained
    x = {k: v[:1] for k, v in test.inputs.items()}
    counting = _Counting(backends.create("onnxruntime", export_onnx(model, x, tmp_path / "dyn.onnx",
                                                                    dynamic_batch=True)))
    loaded = LoadedModel(bundle=read_bundle(bundle_dir), backend=counting)  # type: ignore[arg-type]
    builds = {"many": 0, "requests": 0}
    real = FeatureBuilder.build_many

    def spy(self, requests):
        builds["many"] += 1
        builds["requests"] += len(requests)
        return real(self, requests)

    FeatureBuilder.build_many = spy  # type: ignore[method-assign]
    try:
        um = UserModel(world)
        phone = Arm("device", RerankService(loaded)).phone(um, inproc_cloud)
        specs = [world.session(i, 5) for i in range(N_SESSIONS)]
        one = [phone.run(s) for s in specs]
        counting.calls = counting.lists = 0
        runner = LockstepRunner(phone, batch=16)
        locked = runner.run(specs)
    finally:
        FeatureBuilder.build_many = real  # type: ignore[method-assign]
    _assert_same(one, locked, runner.stats)
    assert counting.calls == runner.stats["rounds"] == builds["many"]
    assert counting.lists == builds["requests"] == runner.stats["requests"]


def test_run_ab_lockstep_gives_the_one_at_a_time_outcomes(world, inproc_cloud, onnx_model, monkeypatch):
    """``run_ab(..., lockstep=B)``: every arm's outcomes and metrics as one session at a time (the device arm
    batched, the cloud arm run as it is), except the host-measured rerank latency."""
    from edge_rerank.simulator.ab import run_ab

    rounds = []
    real_answer = LockstepRunner._answer

    def answer(self, *args, **kwargs):
        rounds.append(1)
        return real_answer(self, *args, **kwargs)

    monkeypatch.setattr(LockstepRunner, "_answer", answer)
    um = UserModel(world)
    arms = [Arm("cloud"), Arm("device", RerankService(onnx_model))]
    one = run_ab(um, inproc_cloud, arms, N_SESSIONS, seed=7, progress=False)
    locked = run_ab(um, inproc_cloud, arms, N_SESSIONS, seed=7, progress=False, lockstep=4)
    for a, b in zip(one, locked, strict=True):
        assert a.name == b.name
        assert [_comparable(o) for o in a.outcomes] == [_comparable(o) for o in b.outcomes], a.name
        assert a.metrics == b.metrics and a.reranks_applied == b.reranks_applied
    assert one[1].reranks_applied > 0  # the device model was in the loop
    assert len(rounds) > 0 and sum(len(o.device_ms) for o in locked[1].outcomes) > len(rounds)  # it did batch
    # (8 * 4 = 32 sessions per chunk: 40 sessions span two chunks, the second one partly filled)
