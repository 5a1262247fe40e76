"""A/B runs: the same sessions (users, queries, intents, luck) through several arms."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from tqdm.auto import tqdm

from device_sdk.reranker import RerankService
from device_sdk.triggers import TriggerConfig
from simulator.metrics import Estimate, bootstrap_mean, latency_percentiles, position_ctr, session_table
from simulator.phone import Phone, SessionOutcome
from simulator.transport import CloudTransport
from simulator.user_model import UserModel


@dataclass
class Arm:
    name: str
    reranker: RerankService | None = None  # None: the cloud order is kept
    triggers: TriggerConfig = field(default_factory=TriggerConfig)


@dataclass
class ArmResult:
    name: str
    outcomes: list[SessionOutcome]
    metrics: dict[str, Estimate]
    latency: dict[str, float]
    triggers: Counter[str]
    fallbacks: Counter[str]
    reranks_applied: int


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
    return ArmResult(name=name, outcomes=outcomes,
                     metrics={k: bootstrap_mean(v, seed=seed) for k, v in tab.items()},
                     latency=latency_percentiles(outcomes), triggers=trig, fallbacks=fb,
                     reranks_applied=sum(o.reranks_applied for o in outcomes))


def paired_delta(a: ArmResult, b: ArmResult, metric: str, seed: int = 0) -> Estimate:
    """CI of mean(B - A) over the same sessions (paired bootstrap)."""
    va, vb = session_table(a.outcomes)[metric], session_table(b.outcomes)[metric]
    return bootstrap_mean(vb - va, seed=seed)


def run_ab(user_model: UserModel, cloud: CloudTransport, arms: list[Arm], n_sessions: int, *, seed: int,
           progress: bool = True) -> list[ArmResult]:
    specs = [user_model.world.session(i, seed) for i in range(n_sessions)]
    results = []
    for arm in arms:
        phone = Phone(user_model, cloud, arm=arm.name, reranker=arm.reranker, triggers=arm.triggers,
                      keep_logs=False)
        outcomes = run_sessions(phone, specs, desc=f"A/B arm {arm.name}", progress=progress)
        results.append(summarize(arm.name, outcomes, seed=seed))
    return results


def position_curves(results: list[ArmResult], n_positions: int = 75) -> dict[str, np.ndarray]:
    return {r.name: position_ctr(r.outcomes, n_positions)[0] for r in results}
