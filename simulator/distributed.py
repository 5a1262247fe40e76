"""The same A/B runs on Ray workers (``edge-rerank simulate --ray``).

Every session is a pure function of (world seed, run seed, session index) and of the pages the cloud returns,
and every random draw is counter-based, so splitting the session indexes into chunks and running them on
any number of workers gives *identical* outcomes to the local run (tests/test_simulator_ray.py checks it).
Workers rebuild the world, the user model, the cloud transport and the arms from plain-data specs; each
actor builds them once and runs many chunks. Host-measured rerank latency (``rerank_ms``) is the only
field that differs between runs: it is a measurement of this machine, not a simulated quantity.

Needs the ``[sim]`` extra (ray; the core package only, no torch).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

from edge_rerank.simulator.ab import ArmResult, summarize
from edge_rerank.simulator.arms import ArmSpec, build_arm
from edge_rerank.simulator.phone import PhoneConfig, SessionOutcome
from edge_rerank.simulator.user_model import UserModel, UserModelConfig
from edge_rerank.simulator.world import World, WorldConfig


def _ray():
    try:
        import ray
    except ImportError as exc:  # pragma: no cover - exercised only without the extra
        raise ImportError("simulate --ray needs ray: pip install 'edge-rerank[ray]'") from exc
    return ray


@dataclass(frozen=True)
class TransportSpec:
    """How a worker reaches the cloud: ``inproc`` (load the data dir) or ``http`` (the running server)."""

    kind: str
    data_dir: str = ""
    url: str = ""
    api_key: str | None = None
    wire: bool = True

    def build(self):
        from edge_rerank.simulator.transport import HttpCloud, InProcessCloud

        if self.kind == "inproc":
            return InProcessCloud(self.data_dir, wire=self.wire)
        if self.kind == "http":
            return HttpCloud(self.url, api_key=self.api_key)
        raise ValueError(f"unknown transport {self.kind!r}: 'inproc' or 'http'")


class SimWorker:
    """Builds a world, a cloud transport and the arms once, then runs chunks of sessions (device arms in lock-step
    batches of `lockstep` sessions when it is > 0: ``simulator.lockstep``, same outcomes)."""

    def __init__(self, world_cfg: WorldConfig, um_cfg: UserModelConfig, transport: TransportSpec,
                 arms: Sequence[ArmSpec], phone_cfg: PhoneConfig, lockstep: int = 0):
        self.world = World(world_cfg)
        self.um = UserModel(self.world, um_cfg)
        self.cloud = transport.build()
        self.phones = {a.name: build_arm(a, self.um).phone(self.um, self.cloud, config=phone_cfg) for a in arms}
        self.lockstep = lockstep

    def run(self, arm: str, seed: int, start: int, stop: int) -> list[SessionOutcome]:
        phone = self.phones[arm]
        specs = [self.world.session(i, seed) for i in range(start, stop)]
        if self.lockstep > 0:
            from edge_rerank.simulator.lockstep import LockstepRunner

            return LockstepRunner(phone, self.lockstep).run(specs)
        return [phone.run(s) for s in specs]

    def cpu_seconds(self) -> float:
        """CPU time this worker process has used (for scaling diagnostics)."""
        return time.process_time()


def auto_chunk(n_sessions: int, num_workers: int, tasks_per_worker: int = 4, lo: int = 250, hi: int = 5000) -> int:
    """Sessions per Ray task: about `tasks_per_worker` tasks per worker and arm, within [lo, hi] sessions (a task
    of 250 cloud-only sessions is ~0.15 s of work on one core, ~100x Ray's per-task cost)."""
    return max(lo, min(hi, -(-n_sessions // max(1, num_workers * tasks_per_worker))))


def run_ab_ray(world_cfg: WorldConfig, transport: TransportSpec, arms: Sequence[ArmSpec], n_sessions: int, *,
               seed: int, um_cfg: UserModelConfig | None = None, phone_cfg: PhoneConfig | None = None,
               num_workers: int = 2, chunk: int | None = None, progress: bool = True,
               stats: dict | None = None, lockstep: int = 0) -> list[ArmResult]:
    """Run every arm over sessions 0..n_sessions-1 on `num_workers` Ray actors (``ray.init`` is called with
    ``num_cpus=num_workers`` if Ray is not initialised yet). Same results as ``simulator.ab.run_ab`` over the
    same cloud for the same seed. If `stats` is a dict it receives the wall time of the simulation (actors
    ready to results gathered), each worker's CPU seconds over it, the driver's CPU seconds (dispatch and
    unpickling the outcomes) and the number of tasks.

    `chunk` (sessions per task; default :func:`auto_chunk`) is large enough that Ray's per-task cost (~1 ms of
    dispatch and a result object) is noise next to a task's work, and small enough that every worker gets a few
    tasks per arm, so a slow worker does not hold up the end. `lockstep` > 0 runs device arms in lock-step
    batches of that many sessions inside each task."""
    ray = _ray()
    from tqdm.auto import tqdm

    if not ray.is_initialized():
        ray.init(num_cpus=num_workers, include_dashboard=False, log_to_driver=False)
    um_cfg = um_cfg or UserModelConfig()
    phone_cfg = phone_cfg or PhoneConfig()
    actor = ray.remote(num_cpus=1)(SimWorker)
    workers = [actor.remote(world_cfg, um_cfg, transport, list(arms), phone_cfg, lockstep)
               for _ in range(num_workers)]
    cpu0 = ray.get([w.cpu_seconds.remote() for w in workers])  # also waits until every actor is built
    chunk = chunk or auto_chunk(n_sessions, num_workers)
    t0, driver0 = time.perf_counter(), time.process_time()
    jobs = [(a.name, s, min(s + chunk, n_sessions)) for a in arms for s in range(0, n_sessions, chunk)]
    futures = [workers[k % num_workers].run.remote(name, seed, s, e) for k, (name, s, e) in enumerate(jobs)]
    with tqdm(total=len(futures), desc=f"simulate on Ray ({num_workers} workers)", unit="chunk",
              disable=not progress, leave=False) as bar:
        pending = list(futures)
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            bar.update(len(done))
    chunks = ray.get(futures)
    if stats is not None:
        stats["wall_s"] = time.perf_counter() - t0
        stats["driver_cpu_s"] = time.process_time() - driver0
        stats["tasks"], stats["chunk"] = len(jobs), chunk
        stats["worker_cpu_s"] = [b - a for a, b in zip(cpu0, ray.get([w.cpu_seconds.remote() for w in workers]),
                                                         strict=True)]
    for w in workers:
        ray.kill(w)
    by_arm: dict[str, list[SessionOutcome]] = {a.name: [] for a in arms}
    for (name, _, _), outs in zip(jobs, chunks, strict=True):
        by_arm[name].extend(outs)
    return [summarize(a.name, by_arm[a.name], seed=seed) for a in arms]
