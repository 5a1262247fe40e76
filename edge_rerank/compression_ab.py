"""The compression benchmark's online columns: each measured method's file as a device arm in the simulator,
its QV_CTR against the fp32 model's arm on the same sessions (paired per session, bootstrap CI).

``compression`` builds, measures and gates offline; this floor adds the simulator on top of its rows and
rewrites the outputs. ``edge-rerank compress --benchmark`` and ``edge_rerank.api.compress_benchmark`` call
:func:`benchmark`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge_rerank.compression.benchmark import OK, MethodResult, run_benchmark
from edge_rerank.compression.methods import METHODS, REFERENCE
from edge_rerank.compression_report import write_outputs
from edge_rerank.converters.bundle import write_bundle
from edge_rerank.simulator.ab import paired_delta, run_ab
from edge_rerank.simulator.arms import ArmSpec, build_arm
from edge_rerank.simulator.lockstep import DEFAULT_BATCH
from edge_rerank.simulator.phone import PhoneConfig
from edge_rerank.simulator.transport import InProcessCloud
from edge_rerank.simulator.user_model import UserModel
from edge_rerank.simulator.world import World, WorldConfig


@dataclass
class SimulationSetup:
    """The world the logs came from: the simulator runs each method's file as a device arm there."""

    world: WorldConfig
    sessions: int
    device: str = "recent_iphone"
    seed: int = 0


def benchmark(model, train, test, out: str | Path, *, simulation: SimulationSetup | None = None,
              progress: bool = True, **kw) -> list[MethodResult]:
    """``compression.benchmark.run_benchmark`` (offline), then, with `simulation`, the simulator's QV_CTR
    columns and its summary in ``compression.json``; then the table and the Pareto plot."""
    rows = run_benchmark(model, train, test, out, progress=progress, **kw)
    summary = None
    if simulation is not None and simulation.sessions > 0:
        summary = {"simulation": simulate(rows, model, Path(out), simulation, progress)}
    write_outputs(rows, Path(out), summary)
    return rows


def simulate(rows: list[MethodResult], model, out: Path, setup: SimulationSetup, progress: bool = False) -> dict:
    """Run the cloud, the reference and every simulable method that built as arms on the same sessions; fill
    each row's ``qv_ctr_delta_pp`` / ``qv_ctr_ci_pp`` against the reference; return the run's summary."""
    methods = {m.name: m for m in METHODS}
    world = World(setup.world)
    cloud = InProcessCloud(str(world.provision_cloud(out / "sim_cloud_data")), wire=False)
    um = UserModel(world)
    arms, names = [build_arm(ArmSpec("cloud", "cloud"), um)], ["cloud"]
    results = {r.method: r for r in rows}
    for r in rows:
        m = methods.get(r.method)
        if m is None or not m.simulate or r.status != OK:
            continue
        try:
            bundle = write_bundle(out / "bundles" / r.method, model_file=Path(r.file), fmt=m.format,
                                  name="device-reranker", version=f"compress-{r.method}", feature_config=model.fcfg,
                                  metrics={"params": float(r.params or 0)})
            arms.append(build_arm(ArmSpec(r.method, "device", bundle=str(bundle), backend=m.runtime), um))
            names.append(r.method)
        except Exception as exc:  # noqa: BLE001 - a method the simulator cannot load is reported, not fatal
            r.extra["simulation_error"] = f"{type(exc).__name__}: {exc}"
    # lock-step: the same outcomes as one session at a time (the device arms batch their reranks); only the QV_CTR
    # deltas are reported, not the host-measured latency that lock-step turns into a share of a batch
    ab = run_ab(um, cloud, arms, setup.sessions, seed=2000 + setup.seed, progress=progress,
                config=PhoneConfig(device=setup.device), lockstep=DEFAULT_BATCH)
    by_name = dict(zip(names, ab, strict=True))
    ref = by_name.get(REFERENCE)
    summary = {"sessions": setup.sessions, "world_seed": setup.world.seed, "device": setup.device,
               "qv_ctr": {n: float(np.mean([o.clicks > 0 for o in r.outcomes])) for n, r in by_name.items()}}
    if ref is not None:
        for name, res in by_name.items():
            if name in results:
                est = paired_delta(ref, res, "qv_ctr", seed=setup.seed)
                results[name].qv_ctr_delta_pp = 100 * est.mean
                results[name].qv_ctr_ci_pp = (100 * est.lo, 100 * est.hi)
                results[name].qv_ctr_sessions = setup.sessions
        cloud_est = paired_delta(by_name["cloud"], ref, "qv_ctr", seed=setup.seed)
        summary["fp32_vs_cloud_pp"] = [100 * cloud_est.mean, 100 * cloud_est.lo, 100 * cloud_est.hi]
    return summary
