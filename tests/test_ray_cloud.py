"""Issue 21, the cloud side on a local 2-CPU Ray cluster: compaction of a partitioned log tree as Ray tasks gives
the single-process result (rows, quarantined parts, cleaned temp files), and the cloud ranker trained on Ray Train
is the single-process one with 1 worker and within noise with 2."""

from __future__ import annotations

import os
import shutil
import time

import numpy as np
import pyarrow.parquet as pq
import pytest

ray = pytest.importorskip("ray", reason="the ray extra is not installed")
pytest.importorskip("ray.train.torch", reason="Ray Train is not installed (the ray extra: ray[data,train])")

from edge_rerank.cloud.logs import rows_to_table  # noqa: E402


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


@pytest.fixture(scope="module")
def pages(logged_rows, cloud_data):
    """The cloud ranker's pages of the shared logs, split by session (a seeded hash) into train / validation."""
    from edge_rerank.cloud.training.cloud_ranker import CloudFeaturizer, page_lists
    from edge_rerank.cloud.training.data import _bucket

    lists = page_lists(logged_rows, CloudFeaturizer(cloud_data))
    valid = np.array([_bucket(s, 0) < 2500 for s in lists.session_ids])
    return lists.subset(np.flatnonzero(~valid)), lists.subset(np.flatnonzero(valid))


def _tcfg():
    import dataclasses

    from edge_rerank.cloud.training.cloud_ranker import CLOUD_TRAIN_CONFIG

    return dataclasses.replace(CLOUD_TRAIN_CONFIG, epochs=8, batch_size=16)  # ~280 pages: small batches to learn


def test_cloud_ranker_on_two_ray_train_workers_is_within_noise_in_the_single_process_format(local_ray, pages,
                                                                                            tmp_path):
    import torch

    from edge_rerank.cloud.training.cloud_ranker import fit_cloud_ranker, load_cloud_ranker, save_cloud_ranker
    from edge_rerank.cloud.training.ray_train import RayOptions, fit_cloud_ranker_ray

    train, valid = pages
    assert len(train) > 200 and len(valid) > 50
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the Ray workers train (tcfg.threads); 2 threads on a busy 2-core machine thrash
    try:
        m1, s1 = fit_cloud_ranker(train, valid, tcfg=_tcfg(), progress=False)
    finally:
        torch.set_num_threads(threads)
    m2, s2 = fit_cloud_ranker_ray(train, valid, tcfg=_tcfg(), options=RayOptions(workers=2))
    assert s2["ray"]["workers"] == 2 and s2.keys() - {"ray"} == s1.keys()
    assert not all(torch.equal(a, b) for a, b in zip(m2.state_dict().values(), m1.state_dict().values(), strict=True))
    # measured: single-process validation NDCG@10 differs by ~0.006 between seeds here; both beat the logged order
    assert abs(s2["valid_ndcg@10"] - s1["valid_ndcg@10"]) < 0.02, (s1["valid_ndcg@10"], s2["valid_ndcg@10"])
    assert min(s1["valid_ndcg@10"], s2["valid_ndcg@10"]) > s1["valid_ndcg@10_logged_order"] + 0.02
    # the single-process checkpoint format: saved and loaded by the same functions, the same keys
    one, two = save_cloud_ranker(m1, tmp_path / "one.pt", s1), save_cloud_ranker(m2, tmp_path / "two.pt", s2)
    raw1, raw2 = torch.load(one, weights_only=True), torch.load(two, weights_only=True)
    assert raw1.keys() == raw2.keys() and raw1["state_dict"].keys() == raw2["state_dict"].keys()
    assert raw1["config"] == raw2["config"] and raw1["n_features"] == raw2["n_features"]
    x = torch.from_numpy(valid.features[:3])
    assert torch.equal(load_cloud_ranker(two)(x)[0], m2(x)[0])


@pytest.mark.slow
def test_cloud_ranker_on_one_ray_train_worker_is_fit_bit_for_bit(local_ray, pages):
    import torch

    from edge_rerank.cloud.training.cloud_ranker import fit_cloud_ranker
    from edge_rerank.cloud.training.ray_train import RayOptions, fit_cloud_ranker_ray

    train, valid = pages
    m1, s1 = fit_cloud_ranker(train, valid, tcfg=_tcfg(), progress=False)
    m, s = fit_cloud_ranker_ray(train, valid, tcfg=_tcfg(), options=RayOptions(workers=1))
    assert s["history"] == s1["history"] and {k: v for k, v in s.items() if k != "ray"} == s1
    assert all(torch.equal(a, b) for a, b in zip(m.state_dict().values(), m1.state_dict().values(), strict=True))


@pytest.mark.slow
def test_cli_joint_training_with_ray_writes_the_single_process_files(local_ray, logged_rows, cloud_data, tmp_path):
    """`train --joint CLOUD_DATA --ray`: the three stages on Ray Train, the single-process files."""
    import json

    from edge_rerank.cli import main
    from edge_rerank.cloud.training.cloud_ranker import load_cloud_ranker
    from edge_rerank.cloud.training.train import read_checkpoint

    logs = tmp_path / "logs"
    logs.mkdir()
    for k in range(2):
        pq.write_table(rows_to_table(logged_rows[k::2]), logs / f"part-{k}.parquet")
    out = tmp_path / "joint"
    assert main(["--no-progress", "train", "--logs", str(logs), "--joint", str(cloud_data), "--epochs", "2",
                 "--out", str(out), "--ray", "--workers", "2"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["ray"]["workers"] == 2 and summary["ray"]["stages"] == ["cloud_ranker", "device", "fine-tune"]
    assert summary["cloud_ranker"]["ray"]["workers"] == 2 and summary["finetune"]["ray"]["workers"] == 2
    assert summary["finetune"]["epochs_run"] >= 1
    assert (out / "ranker.onnx").stat().st_size > 0 and load_cloud_ranker(out / "cloud_ranker.pt").n_features > 0
    assert read_checkpoint(out / "checkpoint.pt").split is not None
