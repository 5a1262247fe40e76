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
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from edge_rerank.simulator.ab import Arm  # noqa: E402
from edge_rerank.simulator.arms import ArmSpec, build_arm  # noqa: E402
from edge_rerank.simulator.transport import InProcessCloud  # noqa: E402
from edge_rerank.simulator.user_model import UserModel  # noqa: E402
from edge_rerank.simulator.world import World, WorldConfig  # noqa: E402


def rate(arm: Arm, um: UserModel, cloud, n: int, seed: int, warmup: int = 200, replay: bool = False) -> dict:
    """Sessions/s of `arm` (``replay``: on a phone recording replay traces, simulator/replay.py)."""
    phone = arm.phone(um, cloud)
    if replay:
        from edge_rerank.simulator.replay import ReplayPhone

        phone = ReplayPhone(um, cloud, arm=arm.name, reranker=arm.reranker, triggers=arm.triggers, keep_logs=False,
                            cost_model=arm.cost_model)
    for i in range(warmup):
        phone.run(um.world.session(i, seed + 1))
    t0, c0 = time.perf_counter(), time.process_time()
    for i in range(n):
        phone.run(um.world.session(i, seed))
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    return {"sessions": n, "wall_s": wall, "cpu_s": cpu, "sessions_per_s": n / wall,
            "sessions_per_cpu_s": n / max(cpu, 1e-9)}


def small_bundle(world: World, cloud, out: Path) -> Path:
    """Train a small device model on cloud-only logs (2 epochs) and export its ONNX bundle."""
    from edge_rerank.cloud.training.train import TrainConfig, fit
    from edge_rerank.pipeline import export_bundle, feature_config_for
    from edge_rerank.runs import simulate_cloud_only, split_samples

    fcfg = feature_config_for(world.cfg)
    rows = simulate_cloud_only(world, cloud, 600, 99, progress=False)
    _, train, valid, test = split_samples(rows, fcfg, progress=False)
    model, summary = fit(train, valid, fcfg, tcfg=TrainConfig(epochs=2, threads=1), test=test, progress=False)
    bundle, _ = export_bundle(model, test, out, version="bench", n_validate=20, metrics=summary["test_model"])
    return bundle


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
        run_ab_ray(world_cfg, transport, spec, n, seed=seed, num_workers=w, chunk=500, progress=False, stats=stats)
        total = time.perf_counter() - t0
        # wall_s: from actors ready to results gathered (actor start-up is reported separately)
        res[str(w)] = {"sessions": n, "wall_s": stats["wall_s"], "wall_with_startup_s": total,
                       "sessions_per_s": n / stats["wall_s"], "worker_cpu_s": stats["worker_cpu_s"],
                       "sessions_per_worker_cpu_s": n / sum(stats["worker_cpu_s"])}
    ray.shutdown()
    base = res[str(min(workers))]["sessions_per_s"]
    for w in workers:
        res[str(w)]["speedup"] = res[str(w)]["sessions_per_s"] / base
    return res


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sessions", type=int, default=5000, help="sessions per single-core measurement")
    p.add_argument("--device-sessions", type=int, default=1500, help="sessions with the device model in the loop")
    p.add_argument("--ray-sessions", type=int, default=20000, help="sessions per Ray measurement (0 skips Ray)")
    p.add_argument("--ray-workers", default="1,2")
    p.add_argument("--bundle", help="device bundle (default: train a small one first)")
    p.add_argument("--seed", type=int, default=0)
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
    bundle = a.bundle
    if bundle is None:
        try:
            bundle = str(small_bundle(world, fast, tmp / "export"))
        except ImportError as exc:
            print(f"skipping the device model (no [train] extra: {exc})")
    if bundle:
        dev = build_arm(ArmSpec("device", "device", bundle=bundle), um)
        r = rate(dev, um, fast, a.device_sessions, a.seed, warmup=50)
        record("device_model_inproc", "device model (features + onnxruntime) in the loop, 1 core", r)
    if a.ray_sessions:
        workers = [int(x) for x in a.ray_workers.split(",")]
        sc = ray_scaling(wcfg, data_dir, a.ray_sessions, workers, a.seed)
        results["ray_cloud_only"] = sc
        for w in workers:
            print(f"{'Ray, cloud-only, ' + str(w) + ' worker(s)':<62} {sc[str(w)]['sessions_per_s']:>9.0f} "
                  f"sessions/s  speedup {sc[str(w)]['speedup']:.2f}x  "
                  f"({sc[str(w)]['sessions_per_worker_cpu_s']:.0f} per worker CPU-second)", flush=True)
    results["machine"]["load_after"] = os.getloadavg()
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print(f"load average before {load0[0]:.2f}, after {results['machine']['load_after'][0]:.2f}; JSON: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
