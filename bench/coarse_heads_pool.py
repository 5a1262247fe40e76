"""Pool per-seed ``bench/coarse_heads_diag.py`` runs: one paired comparison over seeds, split all / polysemous / other.

Each diag run (one world, one seed) writes the paired click-AUC bootstrap replicates of every variant vs the first,
on all test views, on the polysemous queries' views and on the rest. Pooled over seeds: the mean of the per-seed
differences, and a 95 % CI from averaging one replicate per seed (replicate k of seed 0, of seed 1, ...), as in the
coarse-stage tables (docs/results/coarse_ranking.md). Also: the share of polysemous test views and each arm's mean AUC.

    python bench/coarse_heads_pool.py runs/bench/h27/p12_seed*.json [--label "12 polysemous"] [--out pooled.json]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np


def pool(runs: list[dict]) -> dict:
    """Per-seed and pooled paired differences from diag JSONs (all made with the same variants, one seed each)."""
    if not runs:
        raise ValueError("no runs to pool")
    variants = list(runs[0]["variants"])
    if any(list(r["variants"]) != variants for r in runs):
        raise ValueError("runs differ in their variants; pool only runs of the same comparison")
    out: dict = {"seeds": [r["args"]["seed"] for r in runs], "sessions": [r["args"]["sessions"] for r in runs],
                 "multi_intent": sorted({r["args"]["multi_intent"] for r in runs}),
                 "auc": {v: [r["variants"][v]["auc"] for r in runs] for v in variants},
                 "auc_polysemous": {v: [r["variants"][v].get("auc_polysemous", float("nan")) for r in runs]
                                    for v in variants},
                 "polysemous_test_views": [r["reference"]["polysemous_test_views"] for r in runs],
                 "test_views": [r.get("views", {}).get("test") for r in runs], "paired": {}}
    tv = out["test_views"]
    out["polysemous_share"] = (float(np.sum(out["polysemous_test_views"]) / np.sum(tv))
                               if all(t is not None for t in tv) else None)
    for key in runs[0]["paired"]:
        res = {}
        for part in runs[0]["paired"][key]:
            per = [r["paired"][key][part] for r in runs]
            n = min(len(p["replicates"]) for p in per)
            reps = np.mean([np.asarray(p["replicates"][:n]) for p in per], axis=0)
            res[part] = {"per_seed": [{"delta": p["delta"], "lo": p["lo"], "hi": p["hi"]} for p in per],
                         "pooled": {"delta": float(np.mean([p["delta"] for p in per])),
                                    "lo": float(np.percentile(reps, 2.5)), "hi": float(np.percentile(reps, 97.5))}}
        out["paired"][key] = res
    return out


def _fmt(d: dict) -> str:
    return f"{d['delta'] * 100:+.2f} [{d['lo'] * 100:+.2f}, {d['hi'] * 100:+.2f}]"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", help="coarse_heads_diag.py JSON outputs, one per seed")
    p.add_argument("--label", default="")
    p.add_argument("--out", default="")
    args = p.parse_args(argv)
    res = pool([json.loads(Path(f).read_text()) for f in args.runs])
    res["label"] = args.label
    share = res["polysemous_share"]
    print(f"{args.label or res['multi_intent']}: seeds {res['seeds']}, sessions {res['sessions']}, polysemous test "
          f"views {res['polysemous_test_views']} of {res['test_views']}"
          + (f" ({share:.1%})" if share is not None else ""))
    for v, a in res["auc"].items():
        print(f"  {v:16s} AUC " + " / ".join(f"{x:.4f}" for x in a) + f"  mean {np.mean(a):.4f}")
    for key, parts in res["paired"].items():
        for part, d in parts.items():
            print(f"  {key} [{part}]: per seed " + ", ".join(_fmt(s) for s in d["per_seed"])
                  + f"; pooled {_fmt(d['pooled'])} AUC points")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
