"""Compression benchmark: every method x format on the demo's trained model (``make demo`` first), the same
run as ``edge-rerank compress --benchmark``, plus the dense/sparse split and embedding-row reports. Writes
``OUT/compression.json`` (methods), ``OUT/compression.md``, ``OUT/pareto.png`` and ``OUT/extras.json``.

    .venv/bin/python bench/compression_bench.py [--checkpoint runs/demo/checkpoint.pt --logs runs/demo/logs]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main(argv: list[str] | None = None) -> int:
    from edge_rerank.cli import main as cli

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", default="runs/demo/checkpoint.pt")
    p.add_argument("--logs", default="runs/demo/logs")
    p.add_argument("--out", default="runs/bench/compression")
    p.add_argument("--sim-sessions", type=int, default=1000)
    p.add_argument("--lists", type=int, default=300)
    p.add_argument("--catalog-items", type=int, default=10_000_000,
                   help="production catalog size for the dense/sparse split report")
    a = p.parse_args(argv)
    rc = cli(["compress", "--benchmark", "--checkpoint", a.checkpoint, "--logs", a.logs, "--out", a.out,
              "--sim-sessions", str(a.sim_sessions), "--lists", str(a.lists)])
    if rc:
        return rc
    import numpy as np

    from edge_rerank.api import load_held_out
    from edge_rerank.compression.embedding_rows import row_quant_report
    from edge_rerank.compression.split import split_report
    from edge_rerank.converters.export import torch_reference
    from edge_rerank.simulator.world import WorldConfig

    held = load_held_out(a.checkpoint, a.logs)  # the checkpoint's recorded test split (other logs are refused)
    model = held.model
    sub = held.test.subset(np.arange(min(a.lists, len(held.test))))
    extras = {"split_demo_catalog": split_report(model, WorldConfig().n_items).to_dict(),
              "split_production_catalog": split_report(model, a.catalog_items).to_dict(),
              "embedding_rows_int8": row_quant_report(torch_reference(model), sub).to_dict()}
    (Path(a.out) / "extras.json").write_text(json.dumps(extras, indent=2, default=str))
    for key in ("split_demo_catalog", "split_production_catalog"):
        print(split_report(model, extras[key]["n_items"]).lines()[0])
    rows = extras["embedding_rows_int8"]
    print(f"embedding rows int8 vs fp16 on {len(sub)} lists: NDCG@10 {rows['ndcg10_int8']:.4f} vs "
          f"{rows['ndcg10_fp16']:.4f}, mean tau {rows['mean_kendall_tau']:.4f}; page bytes "
          + ", ".join(f"{pg['encoding']} {pg['page_bytes']}" for pg in rows["pages"]))
    print(f"extras: {Path(a.out) / 'extras.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
