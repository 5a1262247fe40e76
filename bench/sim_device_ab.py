"""The simulator's device loop (one session at a time, the device model in the loop), the SDK of this checkout
against the rerank service and feature builder of a git revision (``--baseline``), interleaved in one process:
chunks of sessions alternate between the two arms, each chunk timed in CPU seconds (what a shared machine's load
does not inflate as much as wall time). Same bundle, same sessions, same outcomes expected (checked).

    .venv/bin/python bench/sim_device_ab.py --bundle runs/demo/shipped/bundle [--sessions 600] [--chunk 25]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))

from device_bench import baseline_modules  # noqa: E402

from edge_rerank.device_sdk.features.operators import FeatureBuilder  # noqa: E402
from edge_rerank.device_sdk.model_manager import load_model  # noqa: E402
from edge_rerank.device_sdk.reranker import RerankService  # noqa: E402
from edge_rerank.simulator.ab import Arm  # noqa: E402
from edge_rerank.simulator.transport import InProcessCloud  # noqa: E402
from edge_rerank.simulator.user_model import UserModel  # noqa: E402
from edge_rerank.simulator.world import World, WorldConfig  # noqa: E402


def _cpu_timed(fn, acc: list):
    """`fn` adding its thread CPU time and call count to `acc` ([seconds, calls])."""
    def timed(*args, **kwargs):
        c = time.thread_time()
        try:
            return fn(*args, **kwargs)
        finally:
            acc[0] += time.thread_time() - c
            acc[1] += 1

    return timed


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bundle", required=True)
    p.add_argument("--sessions", type=int, default=600)
    p.add_argument("--chunk", type=int, default=25)
    p.add_argument("--baseline", default="ecc4a41")
    p.add_argument("--out", default="runs/bench/sim_device_ab.json")
    a = p.parse_args()
    world = World(WorldConfig(seed=0))
    um = UserModel(world)
    cloud = InProcessCloud(str(world.provision_cloud(Path(tempfile.mkdtemp()) / "cloud")), wire=False)
    old_ops, old = baseline_modules(a.baseline)
    # per call, each arm's feature build and whole rerank call in CPU time (the loop's share of them)
    spent = {k: [0.0, 0] for k in ("now_features", "baseline_features", "now_call", "baseline_call")}
    for cls, name, key in ((FeatureBuilder, "build", "now_features"), (old_ops.FeatureBuilder, "build",
                                                                          "baseline_features"),
                           (RerankService, "rerank", "now_call"), (old.RerankService, "rerank", "baseline_call")):
        setattr(cls, name, _cpu_timed(getattr(cls, name), spent[key]))
    phones = {"now": Arm("device", RerankService(load_model(a.bundle))).phone(um, cloud),
              "baseline": Arm("device", old.RerankService(load_model(a.bundle))).phone(um, cloud)}
    for ph in phones.values():  # warm-up
        for i in range(20):
            ph.run(world.session(i, 1))
    for v in spent.values():
        v[:] = [0.0, 0]
    cpu = {k: 0.0 for k in phones}
    clicks = {k: 0 for k in phones}
    specs = [world.session(i, 0) for i in range(a.sessions)]
    load0 = os.getloadavg()
    for start in range(0, len(specs), a.chunk):
        chunk = specs[start: start + a.chunk]
        order = list(phones) if (start // a.chunk) % 2 == 0 else list(phones)[::-1]
        for k in order:
            c = time.process_time()
            outs = [phones[k].run(s) for s in chunk]
            cpu[k] += time.process_time() - c
            clicks[k] += sum(int(o.clicks) for o in outs)
    res = {k: {"sessions": len(specs), "cpu_s": cpu[k], "sessions_per_cpu_s": len(specs) / cpu[k]} for k in phones}
    for k in phones:
        for part in ("features", "call"):
            t, n = spent[f"{k}_{part}"]
            res[k][f"{part}_cpu_ms_per_call"] = 1e3 * t / max(n, 1)
            res[k][f"{part}_cpu_share"] = t / cpu[k]
        res[k]["reranks"] = spent[f"{k}_call"][1]
    res["speedup"] = res["now"]["sessions_per_cpu_s"] / res["baseline"]["sessions_per_cpu_s"]
    res["baseline_rev"], res["load_avg"] = a.baseline, [load0, os.getloadavg()]
    res["same_clicks"] = clicks["now"] == clicks["baseline"]
    for k in phones:
        r = res[k]
        print(f"{k:<9} {r['sessions_per_cpu_s']:7.1f} sessions per CPU-second; per rerank call "
              f"{r['call_cpu_ms_per_call']:.3f} ms CPU ({100 * r['call_cpu_share']:.0f} % of the loop), features "
              f"{r['features_cpu_ms_per_call']:.3f} ms ({100 * r['features_cpu_share']:.0f} %)")
    print(f"clicks now {clicks['now']} / baseline {clicks['baseline']}")
    print(f"now / baseline: {res['speedup']:.2f}x (load average {load0[0]:.1f} -> {os.getloadavg()[0]:.1f})")
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
