"""Simulator throughput: sessions/s on one core (in-process cloud, cloud-only), with a reranker in the loop
(heuristic and the device model through onnxruntime), and Ray scaling from 1 to N workers.

    python bench/simulator_bench.py [--sessions 5000] [--bundle DIR] [--ray-sessions 20000] [--out FILE]

Writes JSON (default runs/bench/simulator_bench.json) and prints a table. Numbers are wall-clock on a
shared machine: run it when the machine is quiet and compare within one run (the load average before and
after is recorded). Without --bundle a small device model is trained first (needs the [train] extra).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from edge_rerank.simulator.ab import Arm  # noqa: E402
from edge_rerank.simulator.arms import ArmSpec, build_arm  # noqa: E402
from edge_rerank.simulator.transport import InProcessCloud  # noqa: E402
from edge_rerank.simulator.user_model import UserModel  # noqa: E402
from edge_rerank.simulator.world import World, WorldConfig  # noqa: E402


def rate(arm: Arm, um: UserModel, cloud, n: int, seed: int, warmup: int = 200, lockstep: int = 0,
         replay: bool = False) -> dict:
    """Sessions/s of one arm, one session at a time (or in lock-step batches of `lockstep` sessions; ``replay``: on
    a phone recording replay traces, simulator/replay.py)."""
    from edge_rerank.simulator.lockstep import LockstepRunner

    phone = arm.phone(um, cloud)
    if replay:
        from edge_rerank.simulator.replay import ReplayPhone

        phone = ReplayPhone(um, cloud, arm=arm.name, reranker=arm.reranker, triggers=arm.triggers, keep_logs=False,
                            cost_model=arm.cost_model)
    run = (LockstepRunner(phone, lockstep).run if lockstep else lambda specs: [phone.run(s) for s in specs])
    run([um.world.session(i, seed + 1) for i in range(warmup)])
    specs = [um.world.session(i, seed) for i in range(n)]
    t0, c0 = time.perf_counter(), time.process_time()
    outs = run(specs)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    return {"sessions": n, "wall_s": wall, "cpu_s": cpu, "sessions_per_s": n / wall,
            "sessions_per_cpu_s": n / max(cpu, 1e-9), "lockstep_batch": lockstep,
            "trigger_points_per_session": sum(sum(o.triggers.values()) for o in outs) / max(n, 1),
            "reranks_applied_per_session": sum(o.reranks_applied for o in outs) / max(n, 1)}


@contextmanager
def free_model(features: bool = True, inference: bool = True):
    """Measurement only (the ``--ceiling`` arms): the lock-step loop with the device model's features and/or
    inference costing nothing, to bound what making them faster can buy. Features: every request's inputs are zeros
    with its candidate mask set (no feedback state, no gathers); inference: every list scores zeros (the reinsertion
    then keeps the cloud order). Sessions still trigger, snapshot, call the service, reinsert and apply as usual; the
    reranked orders differ from the real model's, so the users act a little differently (the JSON keeps the
    reranks per session of each arm to compare)."""
    from edge_rerank.device_sdk.features.operators import FeatureBuilder
    from edge_rerank.device_sdk.reranker import RerankService

    real_build, real_score = FeatureBuilder.build_many, RerankService.__dict__["_score_many"]

    def build_many(self, requests):
        out = {name: np.zeros((len(requests), *shape), dtype) for name, shape, dtype in self.specs}
        for b, (candidates, _, _) in enumerate(requests):
            out["cand_mask"][b, :len(candidates)] = 1.0
        return out, [None] * len(requests)

    def score_many(model, x, m):
        return [(np.zeros((1, x["cand_mask"].shape[1]), np.float32), None) for _ in range(m)]

    try:
        if features:
            FeatureBuilder.build_many = build_many
        if inference:
            RerankService._score_many = staticmethod(score_many)
        yield
    finally:
        FeatureBuilder.build_many, RerankService._score_many = real_build, real_score


def batch_dynamic_arm(bundle: str, model, test, out: Path) -> Arm:
    """The bundle's model with a batch-dynamic ONNX export of the same weights (what lock-step batches through)."""
    from edge_rerank.converters.lean import export_graph
    from edge_rerank.converters.onnx.convert import export_onnx
    from edge_rerank.device_sdk import backends
    from edge_rerank.device_sdk.bundle import read_bundle
    from edge_rerank.device_sdk.model_manager import LoadedModel
    from edge_rerank.device_sdk.reranker import RerankService

    x = {k: v[:1] for k, v in test.inputs.items()}
    be = backends.create("onnxruntime", export_onnx(export_graph(model), x, out / "reranker.onnx", dynamic_batch=True))
    return Arm("device", RerankService(LoadedModel(bundle=read_bundle(bundle), backend=be)))


def small_bundle(world: World, cloud, out: Path, with_model: bool = False):
    """Train a small device model on cloud-only logs (2 epochs) and export its ONNX bundle (and, `with_model`, return
    (bundle, model, test lists))."""
    from edge_rerank.cloud.training.train import TrainConfig, fit
    from edge_rerank.pipeline import export_bundle, feature_config_for
    from edge_rerank.runs import simulate_cloud_only, split_samples

    fcfg = feature_config_for(world.cfg)
    rows = simulate_cloud_only(world, cloud, 600, 99, progress=False)
    _, train, valid, test = split_samples(rows, fcfg, progress=False)
    model, summary = fit(train, valid, fcfg, tcfg=TrainConfig(epochs=2, threads=1), test=test, progress=False)
    bundle, _ = export_bundle(model, test, out, version="bench", n_validate=20, metrics=summary["test_model"])
    return (bundle, model, test) if with_model else bundle


def ray_scaling(world_cfg: WorldConfig, data_dir: str, n: int, workers: list[int], seed: int) -> dict:
    import ray

    from edge_rerank.simulator.distributed import TransportSpec, run_ab_ray

    ray.init(num_cpus=max(workers), include_dashboard=False, log_to_driver=False)
    spec = [ArmSpec("cloud", "cloud")]
    transport = TransportSpec("inproc", data_dir=data_dir, wire=False)
    run_ab_ray(world_cfg, transport, spec, 400, seed=seed + 1, num_workers=max(workers), progress=False)  # warm
    res = {}
    for w in workers:
        stats: dict = {}
        t0 = time.perf_counter()
        load0 = os.getloadavg()[0]
        run_ab_ray(world_cfg, transport, spec, n, seed=seed, num_workers=w, progress=False, stats=stats)
        total = time.perf_counter() - t0
        # wall_s: from actors ready to results gathered (actor start-up is reported separately). The breakdown:
        # workers' CPU (the simulation), the driver's CPU (dispatch + unpickling outcomes), and the CPU share the
        # workers got (worker CPU / (wall x workers)): below 1 the machine had no idle core to give them.
        cpu = sum(stats["worker_cpu_s"])
        res[str(w)] = {"sessions": n, "wall_s": stats["wall_s"], "wall_with_startup_s": total,
                       "sessions_per_s": n / stats["wall_s"], "worker_cpu_s": stats["worker_cpu_s"],
                       "sessions_per_worker_cpu_s": n / cpu, "driver_cpu_s": stats["driver_cpu_s"],
                       "tasks": stats["tasks"], "chunk": stats["chunk"],
                       "worker_cpu_share": cpu / (stats["wall_s"] * w), "load_avg_1min_before": load0}
    ray.shutdown()
    base = res[str(min(workers))]["sessions_per_s"]
    for w in workers:
        res[str(w)]["speedup"] = res[str(w)]["sessions_per_s"] / base
    return res


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sessions", type=int, default=5000, help="sessions per single-core measurement")
    p.add_argument("--device-sessions", type=int, default=1500,
                   help="sessions with the device model in the loop (0 skips the device arms and their training)")
    p.add_argument("--ray-sessions", type=int, default=20000, help="sessions per Ray measurement (0 skips Ray)")
    p.add_argument("--ray-workers", default="1,2")
    p.add_argument("--bundle", help="device bundle (default: train a small one first)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--lockstep", type=int, default=64, help="lock-step batch for the device arm (0 skips it)")
    p.add_argument("--gc-freeze", action="store_true",
                   help="gc.freeze() before each device-arm measurement (after training): full collections stop "
                        "walking the imported modules' objects (torch: ~0.5 M)")
    p.add_argument("--ceiling", action="store_true",
                   help="also run the lock-step device arm with its features free, then with features and inference "
                        "free (stubs, measurement only): how fast the loop could get if the model cost nothing")
    p.add_argument("--out", default="runs/bench/simulator_bench.json")
    a = p.parse_args(argv)

    load0 = os.getloadavg()
    wcfg = WorldConfig(seed=a.seed)
    world = World(wcfg)
    um = UserModel(world)
    tmp = Path(tempfile.mkdtemp(prefix="simbench-"))
    data_dir = str(world.provision_cloud(tmp / "cloud_data"))
    fast, wire = InProcessCloud(data_dir, wire=False), InProcessCloud(data_dir, wire=True)
    results: dict = {"machine": {"python": platform.python_version(), "cpus": os.cpu_count(), "load_before": load0}}
    rows = []

    def record(key: str, label: str, r: dict) -> None:
        results[key] = r
        rows.append((label, r["sessions_per_s"], r.get("sessions_per_cpu_s", float("nan"))))
        print(f"{label:<62} {r['sessions_per_s']:>9.0f} sessions/s", flush=True)

    record("cloud_only_inproc", "cloud-only, in-process (no serialisation), 1 core",
           rate(build_arm(ArmSpec("cloud", "cloud"), um), um, fast, a.sessions, a.seed))
    record("cloud_only_inproc_protobuf", "cloud-only, in-process with protobuf round trip, 1 core",
           rate(build_arm(ArmSpec("cloud", "cloud"), um), um, wire, a.sessions // 2, a.seed))
    record("heuristic_inproc", "heuristic reranker in the loop, 1 core",
           rate(build_arm(ArmSpec("heuristic", "heuristic"), um), um, fast, a.sessions // 2, a.seed))
    record("cloud_only_replay", "cloud-only, recording replay traces, 1 core",
           rate(build_arm(ArmSpec("cloud", "cloud"), um), um, fast, a.sessions // 2, a.seed, replay=True))
    record("heuristic_replay", "heuristic reranker, recording replay traces, 1 core",
           rate(build_arm(ArmSpec("heuristic", "heuristic"), um), um, fast, a.sessions // 2, a.seed, replay=True))
    record("oracle_inproc", "oracle arm, 1 core",
           rate(build_arm(ArmSpec("oracle", "oracle"), um), um, fast, a.sessions // 2, a.seed))
    bundle, trained = a.bundle, None
    if bundle is None and a.device_sessions > 0:  # --device-sessions 0: no device arm, nothing to train
        try:
            bundle, *trained = small_bundle(world, fast, tmp / "export", with_model=True)
            bundle = str(bundle)
        except ImportError as exc:
            print(f"skipping the device model (no [train] extra: {exc})")
    if bundle and a.device_sessions > 0:
        if a.gc_freeze:
            import gc

            gc.collect()
            gc.freeze()
        results["machine"]["gc_freeze_device_arms"] = a.gc_freeze
        dev = build_arm(ArmSpec("device", "device", bundle=bundle), um)
        r = rate(dev, um, fast, a.device_sessions, a.seed, warmup=50)
        record("device_model_inproc", "device model (features + onnxruntime) in the loop, 1 core", r)
        if a.lockstep:
            r = rate(dev, um, fast, a.device_sessions, a.seed, warmup=50, lockstep=a.lockstep)
            record("device_model_lockstep_b1file", f"  same, lock-step x{a.lockstep} (bundle's batch-1 file: rows)", r)
            if trained:
                dyn = batch_dynamic_arm(bundle, *trained, tmp / "onnx-batch")
                r = rate(dyn, um, fast, a.device_sessions, a.seed, warmup=50)
                record("device_model_dynamic_onnx", "  batch-dynamic ONNX of the same model, one at a time", r)
                r = rate(dyn, um, fast, a.device_sessions, a.seed, warmup=50, lockstep=a.lockstep)
                record("device_model_lockstep", f"  batch-dynamic ONNX, lock-step x{a.lockstep}", r)
                if a.ceiling:
                    for key, label, inference in (("ceiling_features_free", "features free", False),
                                                  ("ceiling_model_free", "features and inference free", True)):
                        with free_model(features=True, inference=inference):
                            r = rate(dyn, um, fast, a.device_sessions, a.seed, warmup=50, lockstep=a.lockstep)
                        record(key, f"  (ceiling) lock-step x{a.lockstep}, {label}", r)
    if a.ray_sessions:
        workers = [int(x) for x in a.ray_workers.split(",")]
        sc = ray_scaling(wcfg, data_dir, a.ray_sessions, workers, a.seed)
        results["ray_cloud_only"] = sc
        for w in workers:
            r = sc[str(w)]
            print(f"{'Ray, cloud-only, ' + str(w) + ' worker(s)':<62} {r['sessions_per_s']:>9.0f} "
                  f"sessions/s  speedup {r['speedup']:.2f}x  ({r['sessions_per_worker_cpu_s']:.0f} per worker "
                  f"CPU-second; workers got {r['worker_cpu_share']:.2f} of their cores; driver CPU "
                  f"{r['driver_cpu_s']:.2f} s; {r['tasks']} tasks of {r['chunk']})", flush=True)
    results["machine"]["load_after"] = os.getloadavg()
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print(f"load average before {load0[0]:.2f}, after {results['machine']['load_after'][0]:.2f}; JSON: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
