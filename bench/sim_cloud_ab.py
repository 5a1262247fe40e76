"""The simulator's cloud-only rate, this checkout against a baseline revision, measured back to back.

    python bench/sim_cloud_ab.py [--baseline ac07634] [--sessions 1500] [--rounds 3] [--out FILE]

Each round runs the cloud-only arm of ``bench/simulator_bench.py`` (in-process cloud, no serialisation, one core)
once on the baseline and once on this checkout, in fresh processes, alternating which goes first; the baseline is
``git archive``-d into a temporary directory and imported from there. Both see the same world, cloud data and
sessions. Reported: sessions per CPU-second (the load-robust figure on a shared machine) and per wall second, each
round's ratio, and the 1-minute load average around every run. JSON: runs/bench/sim_cloud_ab.json by default.

``--profile`` instead prints a cProfile of this checkout's loop (cumulative and own time, top 40).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {"edge_rerank": "edge_rerank", "device_sdk": "device_sdk", "cloud": "cloud", "converters": "converters",
            "compression": "compression", "simulator": "simulator"}

CHILD = r"""
import json, os, sys, time
from pathlib import Path
import edge_rerank.simulator.phone as phone_mod
assert str(Path(phone_mod.__file__).resolve()).startswith(sys.argv[1]), phone_mod.__file__
from edge_rerank.simulator.arms import ArmSpec, build_arm
from edge_rerank.simulator.transport import InProcessCloud
from edge_rerank.simulator.user_model import UserModel
from edge_rerank.simulator.world import World, WorldConfig

n, seed, data_dir, profile = int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5] == "1"
world = World(WorldConfig(seed=seed))
um = UserModel(world)
phone = build_arm(ArmSpec("cloud", "cloud"), um).phone(um, InProcessCloud(data_dir, wire=False))
for i in range(200):
    phone.run(world.session(i, seed + 1))
specs = [world.session(i, seed) for i in range(n)]
if profile:
    import cProfile, pstats
    pr = cProfile.Profile()
    pr.enable()
    for s in specs:
        phone.run(s)
    pr.disable()
    st = pstats.Stats(pr)
    st.sort_stats("cumulative").print_stats(40)
    st.sort_stats("tottime").print_stats(40)
    sys.exit(0)
load0 = os.getloadavg()[0]
t0, c0 = time.perf_counter(), time.process_time()
clicks = 0
for s in specs:
    clicks += phone.run(s).clicks
wall, cpu = time.perf_counter() - t0, time.process_time() - c0
print(json.dumps({"sessions": n, "wall_s": wall, "cpu_s": cpu, "sessions_per_s": n / wall,
                  "sessions_per_cpu_s": n / cpu, "clicks": clicks, "load_before": load0,
                  "load_after": os.getloadavg()[0]}))
"""


def baseline_tree(rev: str, out: Path) -> Path:
    """`rev` extracted to out/src, and out/pkg/edge_rerank laid out as the installed package (symlinks)."""
    src = out / "src"
    src.mkdir(parents=True)
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(src)], input=archive, check=True)
    pkg = out / "pkg" / "edge_rerank"
    pkg.mkdir(parents=True)
    for f in (src / "edge_rerank").iterdir():
        (pkg / f.name).symlink_to(f)
    for name, d in PACKAGES.items():
        if name != "edge_rerank":
            (pkg / name).symlink_to(src / d)
    return out / "pkg"


def run_child(pythonpath: Path | None, root: Path, n: int, seed: int, data_dir: str, profile: bool = False) -> str:
    env = dict(os.environ)
    if pythonpath is not None:  # ahead of the editable install of this checkout
        env["PYTHONPATH"] = str(pythonpath)
    r = subprocess.run([sys.executable, "-c", CHILD, str(root.resolve()), str(n), str(seed), data_dir,
                        "1" if profile else "0"], env=env, capture_output=True, text=True,
                       cwd=tempfile.gettempdir())  # not a checkout: `python -c` puts the cwd first on sys.path
    if r.returncode != 0:
        raise RuntimeError(r.stderr[-3000:])
    return r.stdout


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--baseline", default="ac07634", help="git revision to compare with")
    p.add_argument("--sessions", type=int, default=1500)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--profile", action="store_true", help="print a cProfile of this checkout's loop instead")
    p.add_argument("--out", default="runs/bench/sim_cloud_ab.json")
    a = p.parse_args(argv)

    sys.path.insert(0, str(ROOT))
    from edge_rerank.simulator.world import World, WorldConfig

    tmp = Path(tempfile.mkdtemp(prefix="sim-cloud-ab-"))
    data_dir = str(World(WorldConfig(seed=a.seed)).provision_cloud(tmp / "cloud_data"))
    if a.profile:
        print(run_child(None, ROOT, a.sessions, a.seed, data_dir, profile=True))
        return 0
    base_path = baseline_tree(a.baseline, tmp / "baseline")
    base_root = (tmp / "baseline" / "src")
    runs: dict[str, list[dict]] = {"baseline": [], "this": []}
    for k in range(a.rounds):
        order = [("baseline", base_path, base_root), ("this", None, ROOT)]
        for name, path, root in order if k % 2 == 0 else order[::-1]:
            r = json.loads(run_child(path, root, a.sessions, a.seed, data_dir))
            runs[name].append(r)
            print(f"round {k}  {name:<8} {r['sessions_per_cpu_s']:7.0f} sessions per CPU-second "
                  f"{r['sessions_per_s']:7.0f} per second  (load {r['load_before']:.2f} -> {r['load_after']:.2f})",
                  flush=True)
    if any(b["clicks"] != t["clicks"] for b, t in zip(runs["baseline"], runs["this"], strict=True)):
        raise SystemExit("the two revisions' sessions differ in clicks: not the same simulation")
    ratios = [t["sessions_per_cpu_s"] / b["sessions_per_cpu_s"]
              for b, t in zip(runs["baseline"], runs["this"], strict=True)]
    best = {name: max(r["sessions_per_cpu_s"] for r in rs) for name, rs in runs.items()}
    res = {"baseline_rev": a.baseline, "sessions": a.sessions, "rounds": runs, "ratio_per_cpu_s": ratios,
           "best_sessions_per_cpu_s": best, "cpus": os.cpu_count()}
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2))
    print(f"per CPU-second, this / baseline by round: {', '.join(f'{x:.2f}x' for x in ratios)}; best "
          f"{best['baseline']:.0f} -> {best['this']:.0f}; JSON: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
