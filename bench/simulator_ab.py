"""The simulator's reference A/B: cloud-only vs random order vs the click/skip heuristic vs the device model
vs the oracle, on the default world, in-process, with bootstrap CIs; report.md, report.json and plots.

    python bench/simulator_ab.py [--sessions 4000] [--bundle DIR] [--device recent_iphone] [--out DIR]
                                 [--world {shop,feed}] [--no-device]

Without --bundle a device model is trained first on cloud-only logs (needs the [train] extra); --no-device runs
only the model-free arms (cloud, random, heuristic, informed oracle, oracle). The informed oracle runs in every
A/B at the device's decision points (`informed`) and also reordering pages before any feedback (`informed_any`),
and the report gives each arm's share of the cloud -> informed-oracle gap for both. The README's
simulator table and position-CTR plot come from this script's report.json / position_ctr.png.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from edge_rerank.report_format import rate  # noqa: E402
from edge_rerank.simulator.ab import run_ab  # noqa: E402
from edge_rerank.simulator.arms import ArmSpec, build_arm  # noqa: E402
from edge_rerank.simulator.phone import PhoneConfig  # noqa: E402
from edge_rerank.simulator.report import write_report  # noqa: E402
from edge_rerank.simulator.transport import InProcessCloud  # noqa: E402
from edge_rerank.simulator.user_model import UserModel  # noqa: E402
from edge_rerank.simulator.world import World, WorldConfig  # noqa: E402


def train_bundle(world: World, cloud, out: Path, n_sessions: int, epochs: int, seed: int) -> tuple[Path, dict]:
    from edge_rerank.cloud.training.data import SplitConfig
    from edge_rerank.cloud.training.train import TrainConfig, fit
    from edge_rerank.pipeline import export_bundle, feature_config_for
    from edge_rerank.runs import simulate_cloud_only, split_samples

    fcfg = feature_config_for(world.cfg)
    rows = simulate_cloud_only(world, cloud, n_sessions, 1000 + seed, progress=False)
    split, train, valid, test = split_samples(rows, fcfg, SplitConfig(seed=seed))
    model, summary = fit(train, valid, fcfg, tcfg=TrainConfig(epochs=epochs, seed=seed), test=test, progress=True)
    summary["split"] = split.describe()
    bundle, _ = export_bundle(model, test, out, version=f"simulator-ab-{seed}", n_validate=50,
                              metrics=summary["test_model"])
    return bundle, {k: v for k, v in summary.items() if k != "history"}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sessions", type=int, default=4000)
    p.add_argument("--bundle")
    p.add_argument("--train-sessions", type=int, default=6000)
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--device", default="recent_iphone")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="runs/simulator_ab")
    p.add_argument("--world", choices=["shop", "feed"], default="shop", help="simulated domain")
    p.add_argument("--no-device", action="store_true", help="skip training and the device arm")
    a = p.parse_args(argv)

    out = Path(a.out)
    world = World(WorldConfig(seed=a.seed, domain=a.world))
    cloud = InProcessCloud(str(world.provision_cloud(out / "cloud_data")), wire=False)
    um = UserModel(world)
    extra: dict = {"config": vars(a)}
    bundle = a.bundle
    t0 = time.perf_counter()
    if bundle is None and not a.no_device:
        bundle, extra["train"] = train_bundle(world, cloud, out / "model", a.train_sessions, a.epochs, a.seed)
    extra["train_s"] = time.perf_counter() - t0
    specs = [ArmSpec("cloud", "cloud"), ArmSpec("random", "random"), ArmSpec("heuristic", "heuristic"),
             ArmSpec("device", "device", bundle=str(bundle)), ArmSpec("informed", "informed"),
             ArmSpec("informed_any", "informed_any"), ArmSpec("oracle", "oracle")]
    if a.no_device:
        specs = [s for s in specs if s.kind != "device"]
    t0 = time.perf_counter()
    results = run_ab(um, cloud, [build_arm(s, um) for s in specs], a.sessions, seed=2000 + a.seed,
                     config=PhoneConfig(device=a.device))
    extra["ab_s"] = time.perf_counter() - t0
    # the device arm on each device profile: modelled latency, late/dropped reranks, energy, battery
    from edge_rerank.device_sdk.budgets import PROFILES

    lines = ["## The device arm on each device profile", "",
             "| profile | QV_CTR | device latency p50 / p99 (ms) | applied (late) | dropped | superseded | "
             "rerank energy / session (mJ) | reranks + radio / session (mJ) | battery / 1,000 sessions |",
             "|---|---|---|---|---|---|---|---|---|"]
    extra["profiles"] = {}
    dev_spec = [s for s in specs if s.kind == "device"]
    for name, prof in PROFILES.items() if dev_spec else ():
        r = run_ab(um, cloud, [build_arm(s, um) for s in dev_spec], a.sessions, seed=2000 + a.seed,
                   config=PhoneConfig(device=name), progress=False)[0]
        b, lat = r.budget, r.latency
        battery = 1000 * (b["rerank_mj_per_session"] + b["radio_mj_per_session"]) / (prof.battery_wh * 3.6e6)
        extra["profiles"][name] = {"qv_ctr": vars(r.metrics["qv_ctr"]), "latency": lat, "budget": b,
                                   "reranks_applied": r.reranks_applied, "fallbacks": dict(r.fallbacks),
                                   "battery_share_per_1000_sessions": battery}
        lines.append(f"| {name} | {rate(r.metrics['qv_ctr'])} | {lat['device_p50_ms']:.2f} / "
                     f"{lat['device_p99_ms']:.2f} | {r.reranks_applied} ({b['late']}) | {b['dropped']} | "
                     f"{r.fallbacks.get('superseded', 0)} | {b['rerank_mj_per_session']:.2f} | "
                     f"{b['rerank_mj_per_session'] + b['radio_mj_per_session']:.1f} | {100 * battery:.3f} % |")
    data = write_report(out, results, title=f"Simulator A/B ({a.world} world, {a.device}, seed {a.seed})",
                        seed=a.seed, extra_json=extra, extra_md="\n".join(lines) if dev_spec else "")
    print((out / "report.md").read_text())
    print(json.dumps({k: data["arms"][k]["qv_ctr"] for k in data["arms"]}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
