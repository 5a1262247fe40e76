"""Compaction of a partitioned log tree (issue 21): every partition directory compacted by
:func:`~edge_rerank.cloud.logs.compact_logs`, one after another or as Ray tasks.

A log *partition* is a directory that holds the server's ``part-*.parquet`` files (or a compaction journal, or a
``.*.tmp`` file to clean): the log root itself and any subdirectory below it, e.g. one per day
(``logs/dt=2026-12-01/``) or per server host; ``quarantine/`` and hidden directories are not partitions.
Partitions are independent (each has its own lock, journals, quarantine and temp files), so a compaction of the
tree is per-partition work: with ``address``/``ray=True`` each partition's ``compact_logs`` runs as one Ray task
(one CPU) on whichever node has a free CPU, and only its small result dict comes back. The result is the same
either way: the same rows in each partition's compacted file, the same parts quarantined with the same reasons,
the same stale temp files removed (a test compares them). Every Ray node must see the tree at the same path
(a shared filesystem whose ``flock`` works across nodes, as ``compact_logs`` locks each partition).

Ray is imported only when a Ray run is asked for; without it the error names the extra."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from edge_rerank.cloud.logs import QUARANTINE, compact_logs

_MARKERS = ("part-*.parquet", "compact-*.journal", ".*.tmp")


def log_partitions(root: str | Path) -> list[Path]:
    """The partition directories of a log tree (the root included when it holds parts), in path order."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"no log directory at {root}")
    out = []
    for d in [root, *sorted(p for p in root.rglob("*") if p.is_dir())]:
        rel = d.relative_to(root).parts
        if any(x == QUARANTINE or x.startswith(".") for x in rel):
            continue
        if any(next(d.glob(m), None) is not None for m in _MARKERS):
            out.append(d)
    return out


def _compact_one(path: str, min_parts: int) -> dict:
    return compact_logs(path, min_parts=min_parts)


def compact_tree(root: str | Path, *, min_parts: int = 2, ray: bool = False, address: str | None = None
                 ) -> dict[str, Any]:
    """Compact every partition of the log tree `root` (:func:`log_partitions`). `ray` (or an `address`): one Ray
    task per partition on the cluster at `address` (None: a local one, or the connection already made). Returns
    ``{"partitions": {relative path: compact_logs' counts}, "parts", "rows", "quarantined", "stale_tmp_removed",
    "seconds", "ray"}``; the per-partition counts are the single-process ones (only the compacted file's
    name, which carries a time stamp and a random suffix, differs between two runs)."""
    root = Path(root).resolve()  # the same paths (in quarantine reasons too) on the driver and on every node
    parts = log_partitions(root)
    t0 = time.perf_counter()
    use_ray = ray or address is not None
    if use_ray:
        from edge_rerank.cloud.training.ray_data import connect

        rt = connect(address)
        # a worker that dies mid-compaction leaves a journal or a temp file that the retry's compact_logs recovers
        task = rt.remote(num_cpus=1, max_retries=2)(_compact_one)
        results = rt.get([task.remote(str(p), min_parts) for p in parts])
    else:
        results = [compact_logs(p, min_parts=min_parts) for p in parts]
    by_part = {str(p.relative_to(root)): r for p, r in zip(parts, results, strict=True)}
    return {"partitions": by_part, "parts": sum(r["parts"] for r in results),
            "rows": sum(r["rows"] for r in results),
            "quarantined": {k: r["quarantined"] for k, r in by_part.items() if r["quarantined"]},
            "stale_tmp_removed": {k: r["stale_tmp_removed"] for k, r in by_part.items() if r["stale_tmp_removed"]},
            "seconds": time.perf_counter() - t0, "ray": {"address": address} if use_ray else None}
