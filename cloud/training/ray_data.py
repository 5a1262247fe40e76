"""Sample building on Ray Data (issue 21): the single-process :func:`~edge_rerank.cloud.training.data.build_samples`
over a cluster, producing the same samples in the same order.

The pipeline: the live Parquet parts of a log directory (``cloud.logs.log_files``) become a dataset of paths; a
map task reads each part into contracts exactly as ``read_logs`` does (v1 and v2 files, the same row checks); a
second map stage builds every usable rerank point of every row with the device's own feature operators
(``samples_from_row``). A row's samples depend on that row only (its events and context), so rows of one session
may be built on different workers; the driver then orders them as the single-process path does (by session, page,
request, and the part / row read order for ties) and stacks them. Unreadable parts go to ``quarantine/`` (on the
driver) and skipped rows are counted in a :class:`~edge_rerank.cloud.logs.LogReadReport`, as in ``read_logs``.

The log directory must be readable at the same path from every Ray node (a shared filesystem, or one machine).
Ray (with its ``data`` extra) is imported only when a function here runs; without it the error names the extra."""

from __future__ import annotations

import json
import pickle
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edge_rerank.cloud.training.data import Samples, samples_from_row, warn_unknown_buckets
from edge_rerank.device_sdk.features import FeatureBuilder, FeatureConfig

RAY_EXTRA_HINT = "install the ray extra: pip install 'edge-rerank[ray]' (Ray core, Ray Data and Ray Train)"


def require_ray() -> Any:
    """The ``ray`` module with Ray Data and Ray Train importable, or an ImportError naming the extra."""
    try:
        import ray
        import ray.data  # noqa: F401
        import ray.train.torch  # noqa: F401
    except ImportError as exc:
        raise ImportError(f"Ray Data / Ray Train are not installed ({exc}); {RAY_EXTRA_HINT}") from exc
    return ray


def connect(address: str | None = None, **init_kwargs: Any) -> Any:
    """Join the Ray cluster at `address` (``ray start --head`` prints it; ``auto`` finds a local one), or start
    a local one when None; reuse a connection already made (e.g. by a test)."""
    ray = require_ray()
    if not ray.is_initialized():
        ray.init(address=address, include_dashboard=False, log_to_driver=False, **init_kwargs)
    ray.data.DataContext.get_current().enable_progress_bars = False  # no per-stage progress in the CLI's output
    return ray


@dataclass
class RaySampleReport:
    """What the Ray pipeline read: rows, parts, skipped parts and rows (as ``LogReadReport``)."""

    log_report: Any  # cloud.logs.LogReadReport
    rows: int
    parts: int


def _read_part(item: dict[str, Any]) -> dict[str, Any]:
    """One Parquet part -> its impression rows (pickled together: one blob per part, so the object store moves
    bytes, not per-row Python objects), their count, the skipped-row counts (JSON), or why the part cannot be
    read. The same conversions and checks as ``read_logs``."""
    from edge_rerank.cloud.logs import (
        LogReadReport,
        LogRowError,
        _read_file,
        _valid_v1_rows,
        parse_row_v2,
        table_to_rows,
    )

    f, part = Path(item["path"]), int(item["part"])
    try:
        table, decl = _read_file(f)
    except Exception as exc:  # anything a damaged file makes pyarrow raise (read_logs quarantines it)
        return {"part": part, "rows": b"", "n": 0, "error": f"{type(exc).__name__}: {str(exc)[:200]}",
                "skipped": ""}
    report = LogReadReport()
    if decl is None:
        rows = _valid_v1_rows(table_to_rows(table), f.name, report)
    else:
        rows = []
        for i, rec in enumerate(table.to_pylist()):
            try:
                rows.append(parse_row_v2(rec, decl))
            except LogRowError as exc:
                report.skip_row(f"{f.name} row {i}", str(exc))
    skipped = json.dumps([report.skipped_rows, report.examples]) if report.skipped_rows else ""
    return {"part": part, "rows": pickle.dumps(rows, protocol=pickle.HIGHEST_PROTOCOL), "n": len(rows),
            "error": "", "skipped": skipped}


def _build_features(batch: dict[str, np.ndarray], cfg_dict: dict) -> dict[str, np.ndarray]:
    """Map-batches stage: a batch of parts' impression rows -> the stacked samples of their usable rerank points,
    with the sort keys the driver orders them by and the feature builder's unknown-bucket counts."""
    builder = FeatureBuilder(FeatureConfig.from_dict(cfg_dict))
    feats, labels, ids, keys, sids, users, ctxs = [], [], [], [], [], [], []
    for part, blob in zip(batch["part"], batch["rows"], strict=True):
        for rowno, row in enumerate(pickle.loads(blob) if len(blob) else []):
            for rs in samples_from_row(row, builder):
                feats.append(rs.features)
                labels.append(rs.labels)
                ids.append(rs.item_ids)
                keys.append((row.session_id, int(row.page_index), row.request_id, int(part), rowno, rs.point))
                sids.append(row.session_id)
                users.append(row.user_id)
                ctxs.append(row.context)
    # the batch's unknown-bucket counts ride on its first record (a batch without samples built nothing)
    unknown = [{k: list(v) for k, v in builder.unknown_counts.items()}] + [None] * (len(feats) - 1)
    out: dict[str, np.ndarray] = {"key": _objects(keys), "session_id": _objects(sids), "user_id": _objects(users),
                                  "context": _objects(ctxs), "unknown": _objects(unknown[: len(feats)])}
    if feats:
        out |= {f"f_{k}": np.stack([f[k] for f in feats]) for k in feats[0]}
        out |= {"labels": np.stack(labels), "item_ids": np.stack(ids)}
    return out


def _objects(values: list) -> np.ndarray:
    a = np.empty(len(values), dtype=object)
    a[:] = values
    return a


def log_part_paths(logs: str | Path) -> list[Path]:
    """The live Parquet parts ``read_logs`` would read, in its order."""
    from edge_rerank.cloud.logs import log_files

    return log_files(logs)


def read_rows_dataset(logs: str | Path, *, parallelism: int | None = None) -> tuple[Any, RaySampleReport]:
    """Stage 1: the parts read in parallel (one map task per part) into a materialized dataset of one record per
    part: ``part``, ``rows`` (the part's impression rows, pickled), ``n``, ``error``, ``skipped``.
    Unreadable parts are quarantined on the driver, as ``read_logs`` does."""
    from edge_rerank.cloud.logs import LogFormatError, LogReadReport, quarantine

    ray = require_ray()
    path = Path(logs)
    parts = log_part_paths(path)
    items = [{"path": str(p.resolve()), "part": i} for i, p in enumerate(parts)]
    ds = ray.data.from_items(items, override_num_blocks=min(len(items), parallelism or len(items)))
    ds = ds.map(_read_part).materialize()
    report = LogReadReport()
    for m in sorted(ds.select_columns(["part", "n", "error", "skipped"]).take_all(), key=lambda r: r["part"]):
        f = parts[m["part"]]
        if m["error"]:
            if not path.is_dir():
                raise LogFormatError(f"{f.name}: {m['error']}")
            quarantine(path, f, m["error"])
            report.skipped_files[f.name] = m["error"]
        elif m["skipped"]:
            counts, examples = json.loads(m["skipped"])
            for k, v in counts.items():
                report.skipped_rows[k] = report.skipped_rows.get(k, 0) + v
            report.examples.extend(examples[: max(0, 10 - len(report.examples))])
        report.rows_read += int(m["n"])
    report.files_read = len(parts) - len(report.skipped_files)
    return ds, RaySampleReport(report, report.rows_read, len(parts))


def build_samples_dataset(rows_ds: Any, cfg: FeatureConfig, *, batch_size: int = 1) -> Any:
    """Stage 2 (lazy): feature building in map tasks (`batch_size` parts each) with the device's operators."""
    return rows_ds.map_batches(_build_features, fn_kwargs={"cfg_dict": cfg.to_dict()}, batch_size=batch_size,
                               batch_format="numpy")


def collect_samples(samples_ds: Any) -> Samples:
    """The driver's side: the stage-2 batches in the single-process order, stacked into one :class:`Samples`."""
    batches: list[dict[str, np.ndarray]] = list(samples_ds.iter_batches(batch_size=None, batch_format="numpy"))
    builder_counts: dict[str, list[int]] = {}
    for b in batches:  # a map batch's counts ride on its first record
        for counts in b["unknown"]:
            for k, (u, t) in (counts or {}).items():
                c = builder_counts.setdefault(k, [0, 0])
                c[0] += u
                c[1] += t
    batches = [b for b in batches if "labels" in b and len(b["labels"])]
    if not batches:
        raise ValueError("the logs hold no usable rerank samples (need rerank points followed by clicks)")
    cat = {k: np.concatenate([b[k] for b in batches]) for k in batches[0] if k != "unknown"}
    keys = list(cat["key"])
    order = sorted(range(len(keys)), key=keys.__getitem__)
    idx = np.asarray(order, dtype=np.int64)
    inputs = {k[2:]: np.ascontiguousarray(v[idx]) for k, v in cat.items() if k.startswith("f_")}
    _warn_merged(builder_counts)
    return Samples(inputs, np.ascontiguousarray(cat["labels"][idx]), [str(s) for s in cat["session_id"][idx]],
                   np.ascontiguousarray(cat["item_ids"][idx]), [str(u) for u in cat["user_id"][idx]],
                   list(cat["context"][idx]))


def _warn_merged(counts: dict[str, list[int]]) -> None:
    class _Merged:  # what warn_unknown_buckets reads of a FeatureBuilder
        unknown_counts = counts

        def unknown_rates(self) -> dict[str, float]:
            return {f: u / t for f, (u, t) in counts.items() if t}

    warn_unknown_buckets(_Merged())  # type: ignore[arg-type]


def build_samples_ray(logs: str | Path, cfg: FeatureConfig | None = None, *, address: str | None = None,
                      batch_size: int = 1) -> tuple[Samples, RaySampleReport]:
    """Read `logs` and build their samples on Ray: equal (arrays and order) to
    ``build_samples(read_logs(logs), cfg)``. `cfg` None: the config ``edge-rerank train`` would pick (the
    simulator world's for v1 logs, one fitted to v2 logs, inferred after unreadable parts are quarantined)."""
    connect(address)
    rows_ds, report = read_rows_dataset(logs)
    if cfg is None:
        from edge_rerank.api import feature_config_for
        from edge_rerank.cloud.log_tools import infer_config, logs_are_v2

        cfg = infer_config(logs)[0] if logs_are_v2(logs) else feature_config_for()
    return collect_samples(build_samples_dataset(rows_ds, cfg, batch_size=batch_size)), report


def iter_sample_batches(samples_ds: Any) -> Iterator[dict[str, np.ndarray]]:
    """Stream stage-2 batches without collecting them (e.g. to write shards or feed a trainer)."""
    yield from samples_ds.iter_batches(batch_size=None, batch_format="numpy")
