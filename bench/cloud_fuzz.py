"""The API fuzz tests (tests/test_cloud_app.py: search, logs, registry routes; no input may produce a 5xx)
with many more cases than CI runs, JSON out."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--cases", type=int, default=20_000, help="hypothesis examples for the main fuzz test")
    p.add_argument("--out", default="runs/bench/cloud_fuzz.json")
    a = p.parse_args()
    env = {**os.environ, "EDGE_RERANK_FUZZ_CASES": str(a.cases)}
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_cloud_app.py",
                        "-k", "fuzz"], cwd=ROOT, env=env, capture_output=True, text=True)
    res = {"cases_main": a.cases, "cases_paths": a.cases // 4, "passed": r.returncode == 0,
           "seconds": time.perf_counter() - t0, "pytest_tail": r.stdout.strip().splitlines()[-1:]}
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2))
    print(json.dumps(res, indent=2))
    if r.returncode:
        print(r.stdout[-3000:], r.stderr[-2000:], file=sys.stderr)
    return r.returncode


if __name__ == "__main__":
    sys.exit(main())
