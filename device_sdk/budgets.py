"""Latency and energy accounting for on-device reranking (numpy-free, no dependencies).

A :class:`DeviceProfile` turns the *work* of one rerank (FLOPs, bytes moved, whether the compute core had
to be woken) into a modelled latency and energy on a class of phone. The numbers in :data:`PROFILES` are
order-of-magnitude assumptions for small fp32 models on one CPU core (documented in docs/simulator.md), not
measurements of a specific handset: replace them with your own measurements (the 10-minute scripted
session of SPEC §1 is the way to get them) and the simulator's energy/latency columns follow.

The model, per rerank::

    latency_ms = (wake_ms if the core was idle for > idle_after_ms) + overhead_ms
                 + flops / flops_per_s + bytes / bytes_per_s            (+ device busy time, by the caller)
    energy_mj  = (wake_mj if woken) + flops * pj_per_flop + bytes * pj_per_byte
                 + active_mw * (compute time)

and per page request ``radio_mj``; the screen's own power (``screen_mw``) is reported separately so the
rerank cost can be compared with what the session costs anyway.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class DeviceProfile:
    name: str
    flops_per_s: float  # effective fp32 FLOP/s of a small model on one core (not the chip's peak)
    bytes_per_s: float  # effective memory bandwidth for weights/activations
    overhead_ms: float  # fixed per-call cost: feature building glue, runtime dispatch
    pj_per_flop: float
    pj_per_byte: float
    active_mw: float  # extra power of the busy core while computing
    wake_ms: float  # latency to bring an idle core/cluster back
    wake_mj: float  # energy of that wake-up
    idle_after_ms: float  # the core counts as idle after this long without work
    radio_mj: float  # energy of one page request (radio already connected: transfer + short tail)
    screen_mw: float  # display + UI baseline while the user browses (for context, the same in every arm)
    battery_wh: float
    busy_prob: float = 0.1  # chance the main thread is busy (UI work, GC) when a rerank is requested
    busy_ms: float = 40.0  # upper bound of that busy wait (uniform)

    def __post_init__(self) -> None:
        for k in ("flops_per_s", "bytes_per_s", "battery_wh"):
            if getattr(self, k) <= 0:
                raise ValueError(f"{k} must be > 0")
        if not 0.0 <= self.busy_prob <= 1.0:
            raise ValueError("busy_prob must be in [0, 1]")


PROFILES: dict[str, DeviceProfile] = {
    # ~2018-era 8x Cortex-A53 handset, LPDDR3, 3000 mAh
    "low_end_android": DeviceProfile(
        name="low_end_android", flops_per_s=1.5e9, bytes_per_s=2.0e9, overhead_ms=0.6, pj_per_flop=250.0,
        pj_per_byte=120.0, active_mw=450.0, wake_ms=3.0, wake_mj=1.2, idle_after_ms=2000.0, radio_mj=120.0,
        screen_mw=700.0, battery_wh=11.5, busy_prob=0.2, busy_ms=80.0),
    # recent iPhone performance core, LPDDR5, ~3300 mAh
    "recent_iphone": DeviceProfile(
        name="recent_iphone", flops_per_s=1.5e10, bytes_per_s=1.5e10, overhead_ms=0.08, pj_per_flop=60.0,
        pj_per_byte=40.0, active_mw=1200.0, wake_ms=0.5, wake_mj=0.3, idle_after_ms=2000.0, radio_mj=60.0,
        screen_mw=450.0, battery_wh=12.7, busy_prob=0.05, busy_ms=20.0),
}


def get_profile(name: str) -> DeviceProfile:
    if name not in PROFILES:
        raise ValueError(f"unknown device profile {name!r}; available: {sorted(PROFILES)}")
    return PROFILES[name]


@dataclass(frozen=True)
class LatencyBudget:
    """The one latency / energy budget of the device loop (``device_sdk.session`` applies it; the trigger gate
    reads it).

    - a rerank whose result took longer than ``ms`` (request -> new order, measured on the host or modelled by
      the simulator) is not applied: the cloud order stays (fallback reason ``latency_budget``);
    - the trigger gate skips triggers while ``over_max`` of the last ``window`` reranks were over ``ms``
      (0 turns the gate off), and once a session's reranks used ``energy_mj`` (0: unlimited).
    """

    ms: float = 50.0
    window: int = 3
    over_max: int = 2
    energy_mj: float = 0.0

    def __post_init__(self) -> None:
        if not self.ms > 0:  # also refuses NaN; inf is allowed (no budget)
            raise ValueError(f"LatencyBudget.ms must be > 0, got {self.ms}")
        if self.window < 1 or self.over_max < 0 or not self.energy_mj >= 0:
            raise ValueError("LatencyBudget needs window >= 1, over_max >= 0, energy_mj >= 0")


@dataclass(frozen=True)
class InferenceCost:
    """The work of one rerank call: arithmetic and memory traffic."""

    flops: float
    bytes_moved: float


@dataclass(frozen=True)
class CostModel:
    """How a reranker's work grows with the list and the feedback it sees.

    flops = fixed_flops + per_candidate_flops * n + per_pair_flops * n * n_events;
    bytes = weight_bytes + per_candidate_bytes * n.
    """

    fixed_flops: float = 0.0
    per_candidate_flops: float = 0.0
    per_pair_flops: float = 0.0
    weight_bytes: float = 0.0
    per_candidate_bytes: float = 0.0

    def cost(self, n_candidates: int, n_events: int) -> InferenceCost:
        n = max(int(n_candidates), 0)
        flops = self.fixed_flops + self.per_candidate_flops * n + self.per_pair_flops * n * max(int(n_events), 0)
        return InferenceCost(flops=flops, bytes_moved=self.weight_bytes + self.per_candidate_bytes * n)

    @staticmethod
    def for_dense_model(n_params: int, *, feature_ops: int = 25, bytes_per_param: float = 4.0) -> CostModel:
        """A dense reranker whose every weight is applied once per candidate (MLP/transformer blocks over the
        list; attention's n^2 terms are small at n <= 25 and folded in), plus Match&Aggregate features that
        compare every candidate with every feedback event for each of `feature_ops` operators."""
        return CostModel(fixed_flops=2.0 * n_params, per_candidate_flops=2.0 * n_params,
                         per_pair_flops=4.0 * feature_ops, weight_bytes=bytes_per_param * n_params,
                         per_candidate_bytes=4.0 * (feature_ops + 64))

    @staticmethod
    def for_heuristic(n_fields: int = 4) -> CostModel:
        """Similarity of every candidate to every feedback event over a few fields and the ID embedding."""
        return CostModel(fixed_flops=100.0, per_candidate_flops=20.0, per_pair_flops=8.0 * n_fields + 32.0,
                         weight_bytes=0.0, per_candidate_bytes=80.0)


def compute_ms(profile: DeviceProfile, cost: InferenceCost) -> float:
    """Time on the core for this work, without wake-up or waiting."""
    return profile.overhead_ms + 1e3 * (cost.flops / profile.flops_per_s + cost.bytes_moved / profile.bytes_per_s)


def energy_mj(profile: DeviceProfile, cost: InferenceCost, *, woke: bool) -> float:
    """Energy of one call in millijoules."""
    dyn = 1e-9 * (cost.flops * profile.pj_per_flop + cost.bytes_moved * profile.pj_per_byte)
    return dyn + profile.active_mw * compute_ms(profile, cost) / 1e3 + (profile.wake_mj if woke else 0.0)


@dataclass
class DeviceClock:
    """Tracks when the device's inference core is free and whether it is idle, and adds up the cost.

    ``schedule(t_ms, cost, busy_ms)`` returns (start_ms, done_ms, latency_ms, energy_mj) of a rerank requested
    at ``t_ms``: it waits for the previous call and for ``busy_ms`` of other work, wakes the core if it was
    idle, then computes.
    """

    profile: DeviceProfile
    free_at_ms: float = float("-inf")
    last_work_ms: float = float("-inf")
    calls: int = 0
    wakeups: int = 0
    total_ms: float = 0.0
    total_mj: float = 0.0
    latencies_ms: list[float] = field(default_factory=list)

    def schedule(self, t_ms: float, cost: InferenceCost, busy_ms: float = 0.0) -> tuple[float, float, float, float]:
        p = self.profile
        start = max(t_ms, self.free_at_ms) + max(busy_ms, 0.0)
        woke = start - self.last_work_ms > p.idle_after_ms
        run = compute_ms(p, cost) + (p.wake_ms if woke else 0.0)
        done = start + run
        e = energy_mj(p, cost, woke=woke)
        self.free_at_ms = self.last_work_ms = done
        self.calls += 1
        self.wakeups += int(woke)
        self.total_ms += run
        self.total_mj += e
        self.latencies_ms.append(done - t_ms)
        return start, done, done - t_ms, e

    def battery_share(self, extra_mj: float = 0.0) -> float:
        """Share of a full battery used by the reranks so far (plus `extra_mj`)."""
        return (self.total_mj + extra_mj) / (self.profile.battery_wh * 3.6e6)
