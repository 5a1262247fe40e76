"""A/B runs: the same sessions (users, queries, intents, luck) through several arms."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from tqdm.auto import tqdm

from edge_rerank.device_sdk.budgets import CostModel
from edge_rerank.device_sdk.triggers import TriggerConfig
from edge_rerank.simulator.lockstep import LockstepRunner
from edge_rerank.simulator.lockstep import available as lockstep_available
from edge_rerank.simulator.phone import Phone, PhoneConfig, SessionOutcome
from edge_rerank.simulator.session_metrics import (
    Estimate,
    bootstrap_mean,
    latency_percentiles,
    position_ctr,
    session_table,
)
from edge_rerank.simulator.transport import CloudTransport
from edge_rerank.simulator.user_model import UserModel


@dataclass
class Arm:
    name: str
    reranker: object | None = None  # anything with RerankService.rerank's signature; None keeps the cloud order
    triggers: TriggerConfig = field(default_factory=TriggerConfig)
    cost_model: CostModel | None = None  # the reranker's work (device latency/energy); None: derived or zero

    def __post_init__(self) -> None:
        if self.cost_model is None:
            model = getattr(self.reranker, "model", None)  # a RerankService with a bundle
            if model is not None and hasattr(model, "bundle"):
                fc, manifest = model.bundle.feature_config, model.bundle.manifest
                # the work is set by the parameter count (the manifest's metrics say it; quantization shrinks
                # the bytes, not the FLOPs); older bundles without it: fp32, params ~ bytes / 4
                params = int(manifest.metrics.get("params", 0)) or manifest.model_bytes // 4
                self.cost_model = CostModel.for_dense_model(params, feature_ops=fc.n_candidate_features,
                                                            bytes_per_param=manifest.model_bytes / max(params, 1))
            else:
                self.cost_model = CostModel()

    def phone(self, user_model: UserModel, cloud: CloudTransport, *, config: PhoneConfig | None = None,
              keep_logs: bool = False) -> Phone:
        return Phone(user_model, cloud, arm=self.name, reranker=self.reranker, triggers=self.triggers,
                     keep_logs=keep_logs, config=config, cost_model=self.cost_model)


@dataclass
class ArmResult:
    name: str
    outcomes: list[SessionOutcome]
    metrics: dict[str, Estimate]
    latency: dict[str, float]
    triggers: Counter[str]
    fallbacks: Counter[str]
    reranks_applied: int
    budget: dict[str, float] = field(default_factory=dict)  # late / dropped / unfinished reranks, energy


def run_sessions(phone: Phone, specs, *, desc: str, progress: bool = True,
                 on_rows: Callable[[list], None] | None = None, log_batch: int = 50) -> list[SessionOutcome]:
    outcomes, pending = [], []
    for spec in tqdm(specs, desc=desc, unit="session", disable=not progress, leave=False):
        o = phone.run(spec)
        outcomes.append(o)
        if on_rows is not None:
            pending.extend(o.rows)
            if len(pending) >= log_batch:
                on_rows(pending)
                pending = []
        o.rows = [] if on_rows is not None else o.rows
    if on_rows is not None and pending:
        on_rows(pending)
    return outcomes


def summarize(name: str, outcomes: list[SessionOutcome], seed: int = 0) -> ArmResult:
    tab = session_table(outcomes)
    trig: Counter[str] = Counter()
    fb: Counter[str] = Counter()
    for o in outcomes:
        trig.update(o.triggers)
        fb.update(o.fallbacks)
    n = max(len(outcomes), 1)
    budget = {"late": sum(o.reranks_late for o in outcomes), "dropped": sum(o.reranks_dropped for o in outcomes),
              "unfinished": sum(o.reranks_unfinished for o in outcomes),
              "rerank_mj_per_session": sum(o.rerank_mj for o in outcomes) / n,
              "radio_mj_per_session": sum(o.radio_mj for o in outcomes) / n,
              "screen_mj_per_session": sum(o.screen_mj for o in outcomes) / n}
    return ArmResult(name=name, outcomes=outcomes,
                     metrics={k: bootstrap_mean(v, seed=seed) for k, v in tab.items()},
                     latency=latency_percentiles(outcomes), triggers=trig, fallbacks=fb,
                     reranks_applied=sum(o.reranks_applied for o in outcomes), budget=budget)


def paired_delta(a: ArmResult, b: ArmResult, metric: str, seed: int = 0) -> Estimate:
    """CI of mean(B - A) over the same sessions (paired bootstrap)."""
    va, vb = session_table(a.outcomes)[metric], session_table(b.outcomes)[metric]
    return bootstrap_mean(vb - va, seed=seed)


def run_ab(user_model: UserModel, cloud: CloudTransport, arms: list[Arm], n_sessions: int, *, seed: int,
           progress: bool = True, config: PhoneConfig | None = None, lockstep: int = 0) -> list[ArmResult]:
    """The same `n_sessions` sessions through every arm. ``lockstep`` > 0: arms that can batch (a
    ``RerankService`` over a fixed model) run their sessions in lock-step batches of that many
    (``simulator.lockstep``): the same outcomes, faster, except the host-measured rerank latency, which is then
    each request's share of its batch (``ArmResult.latency``'s ``p50_ms``/``p99_ms``; the modelled device latency
    is unchanged). Without greenlet (the ``[sim]`` extra) every arm runs one session at a time."""
    specs = [user_model.world.session(i, seed) for i in range(n_sessions)]
    results = []
    for arm in arms:
        phone = arm.phone(user_model, cloud, config=config)
        desc = f"A/B arm {arm.name}"
        outcomes = (_run_lockstep(phone, specs, lockstep, desc, progress) if lockstep > 0 and lockstep_available()
                    else run_sessions(phone, specs, desc=desc, progress=progress))
        results.append(summarize(arm.name, outcomes, seed=seed))
    return results


def _run_lockstep(phone: Phone, specs: list, batch: int, desc: str, progress: bool) -> list[SessionOutcome]:
    """``LockstepRunner`` over `specs` in chunks of 8 batches (for the progress bar)."""
    runner = LockstepRunner(phone, batch)
    outcomes: list[SessionOutcome] = []
    step = 8 * batch
    with tqdm(total=len(specs), desc=desc, unit="session", disable=not progress, leave=False) as bar:
        for k in range(0, len(specs), step):
            chunk = specs[k: k + step]
            outcomes.extend(runner.run(chunk))
            bar.update(len(chunk))
    return outcomes


def position_curves(results: list[ArmResult], n_positions: int = 75) -> dict[str, np.ndarray]:
    return {r.name: position_ctr(r.outcomes, n_positions)[0] for r in results}
